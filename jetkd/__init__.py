"""jetkd: distil Lorentz-equivariant jet taggers into small, fast, boost-robust students."""

__version__ = "0.1.0"


def load(path, *, device="cpu", strict=False, name=None):
    """The :class:`jetkd.tagger.Tagger` of a run folder or checkpoint (see :func:`jetkd.tagger.load`)."""
    from jetkd.tagger import load as _load

    return _load(path, device=device, strict=strict, name=name)
