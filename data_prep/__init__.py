"""Producing jet datasets: Pythia 8 generation and converters of public formats."""
