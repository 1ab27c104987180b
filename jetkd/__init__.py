"""jetkd: distil Lorentz-equivariant jet taggers into small, fast, boost-robust students."""

__version__ = "0.1.0"
