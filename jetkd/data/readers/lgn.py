"""LorentzNet / LGN-converted top-tagging HDF5 files, read with h5py.

Datasets: ``Nobj`` (N,) constituent count, ``Pmu`` (N, M, 4) ``[E, px, py, pz]`` in GeV with the real
constituents first and zero padding after ``Nobj[i]``, ``is_signal`` (N,) 1 = top. Other datasets (``truth_Pmu``,
``jet_pt``, ``label``, ...) are ignored. ``branch_map`` keys: ``Pmu``, ``Nobj``, ``label`` (default ``is_signal``;
class names ``("QCD", "top")``, None for another label dataset).
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np

from jetkd.data.arrays import JetArrays
from jetkd.data.readers._common import (check_label_mode, check_step_size, check_validate, chunk_ranges, class_index,
                                        name_list, no_label, no_labels, open_hdf5, options, p4_from_padded, reading,
                                        wants_labels)
from jetkd.errors import InputError

DEFAULTS = {"Pmu": "Pmu", "Nobj": "Nobj", "label": "is_signal"}
CLASS_NAMES = ("QCD", "top")  # of the default label


def sniff(h5: h5py.File) -> bool:
    """Whether an open HDF5 file has the LorentzNet datasets ``Pmu`` and ``Nobj``."""
    return isinstance(h5.get("Pmu"), h5py.Dataset) and isinstance(h5.get("Nobj"), h5py.Dataset)


def _datasets(path: str, h5: h5py.File, opts: dict, branch_map, label_mode: str):
    """``(Pmu, Nobj, label)`` datasets, with their shapes checked against each other; ``label`` is None when
    :func:`wants_labels` says the labels are not read."""
    explicit = "label" in (branch_map or {})
    keys = ["Pmu", "Nobj"]
    if wants_labels(label_mode, explicit, isinstance(h5.get(opts["label"]), h5py.Dataset)):
        keys.append("label")
    found = []
    for key in keys:
        ds = h5.get(opts[key])
        if not isinstance(ds, h5py.Dataset):
            raise InputError(path, f"no dataset {opts[key]!r}; datasets: "
                                   f"{name_list(k for k in h5 if isinstance(h5[k], h5py.Dataset))}")
        found.append(ds)
    pmu, nobj = found[:2]
    label = found[2] if len(found) == 3 else None
    if pmu.ndim != 3 or pmu.shape[2] != 4:
        raise InputError(path, f"dataset {pmu.name!r} must have shape (n_jets, max_particles, 4), got {pmu.shape}")
    for ds in found[1:]:
        if ds.shape != (pmu.shape[0],):
            raise InputError(path, f"dataset {ds.name!r} must have shape ({pmu.shape[0]},) like {pmu.name!r}, got {ds.shape}")
    return pmu, nobj, label


def count(path, branch_map=None, labels=None, label_mode: str = "required") -> int:
    """Number of jets: the length of ``Nobj`` (dataset shape)."""
    path, opts = str(path), options(branch_map, DEFAULTS, "lgn")
    mode = check_label_mode(label_mode)
    no_labels(labels, path, "lgn", opts["label"])
    with open_hdf5(path) as h5:
        return int(_datasets(path, h5, opts, branch_map, mode)[1].shape[0])


def iterate(path, step_size: int = 100_000, branch_map=None, labels=None, label_mode: str = "required",
            validate: bool = True) -> Iterator[JetArrays]:
    """Yield :class:`JetArrays` chunks of at most ``step_size`` jets, in file order, as read (:func:`iter_jets`
    validates them; ``validate`` is taken for the readers' common signature)."""
    path, step = str(path), check_step_size(step_size)
    opts = options(branch_map, DEFAULTS, "lgn")
    mode, validate = check_label_mode(label_mode), check_validate(validate)
    no_labels(labels, path, "lgn", opts["label"])
    with open_hdf5(path) as h5:
        pmu_ds, nobj_ds, label_ds = _datasets(path, h5, opts, branch_map, mode)
        names = CLASS_NAMES if label_ds is not None and opts["label"] == DEFAULTS["label"] else None
        max_particles = pmu_ds.shape[1]
        branches = {**dict.fromkeys(("px", "py", "pz", "E"), opts["Pmu"]), "n": opts["Nobj"], "label": opts["label"]}
        for start, stop in chunk_ranges(nobj_ds.shape[0], step):
            entries = (start, stop - 1)
            with reading(path, entries, what="cannot read the datasets"):
                pmu, nobj = pmu_ds[start:stop], nobj_ds[start:stop]
                label = no_label(stop - start) if label_ds is None else label_ds[start:stop]
            nobj = class_index(nobj, path, entries, opts["Nobj"])  # same integer checks as a label
            bad = (nobj < 0) | (nobj > max_particles)
            if bad.any():
                raise InputError(path, f"{opts['Nobj']} must be in [0, {max_particles}], got {nobj[bad][0]} at entry "
                                       f"{start + int(np.flatnonzero(bad)[0])}", entries=entries)
            keep = np.arange(max_particles) < nobj[:, None]
            p4 = p4_from_padded(pmu[..., 0], pmu[..., 1], pmu[..., 2], pmu[..., 3], keep)
            label = class_index(label, path, entries, opts["label"])
            yield JetArrays(p4, label, path, start, names, branches)
