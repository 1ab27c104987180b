"""Jet data: readers, the constituent cache and the training loader."""
