"""Which reader a file needs, from its content (magic bytes, then internal keys), never its extension."""

from __future__ import annotations

import os
import zipfile

import h5py

from jetkd.data.readers import efqg, lgn, toptagging
from jetkd.data.readers._common import FORMAT_HELP, name_list, reading
from jetkd.errors import InputError

ROOT_MAGIC = b"root"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def detect_format(path) -> str:
    """One of ``FORMATS`` for the file at ``path``; :class:`InputError` for a missing, unreadable or unknown file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(str(path), "no such file")
    with reading(path, what="cannot read the file"), open(path, "rb") as f:
        head = f.read(8)
        hdf5 = _has_hdf5_signature(f, os.path.getsize(path))
    if head[:4] == ROOT_MAGIC:
        return "root"
    if hdf5:
        return _hdf5_format(path)
    if head[:4] in ZIP_MAGICS:
        return _zip_format(path)
    raise InputError(path, f"unrecognised file content (first bytes {head!r}); supported formats: {FORMAT_HELP}")


def _has_hdf5_signature(f, size: int) -> bool:
    """HDF5 signature at offset 0, 512, 1024, 2048, ... (where it sits after a user block)."""
    offset = 0
    while offset + len(HDF5_MAGIC) <= size:
        f.seek(offset)
        if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            return True
        offset = 512 if offset == 0 else 2 * offset
    return False


def _hdf5_format(path: str) -> str:
    with reading(path, what="cannot open the HDF5 file"):
        h5 = h5py.File(path, "r")
    with h5:
        if toptagging.sniff(h5):
            return "toptagging"
        if lgn.sniff(h5):
            return "lgn"
        keys = list(h5)
    raise InputError(path, f"HDF5 file with keys {name_list(keys)} matches no supported layout; supported formats: {FORMAT_HELP}")


def _zip_format(path: str) -> str:
    with reading(path, what="cannot open the zip (npz) archive"):
        with zipfile.ZipFile(path) as zf:
            members = zf.namelist()
    if efqg.sniff(members):
        return "efqg"
    raise InputError(path, f"zip/npz archive with members {name_list(members)} matches no supported layout; "
                           f"supported formats: {FORMAT_HELP}")
