"""Readers for the image benchmarks: a dataset's folder, as distributed, to one :class:`ImageSet` per split.

Formats (``FORMATS``, name -> :class:`ImageFormat`). Each is found by the names of its files (``layout``) and then
confirmed by their content (``check``: pickle header, record sizes, IDX magic, MAT header, JPEG magic), so a file
with the right name but the wrong content is an :class:`~jetkd.errors.InputError` naming it and what was expected:

=================  ====================================================  ==================================
name               folder as distributed                                 splits
=================  ====================================================  ==================================
``cifar10``        ``cifar-10-batches-py/``: ``data_batch_1..5``,          train, test
                   ``test_batch``, ``batches.meta`` (pickles)
``cifar100``       ``cifar-100-python/``: ``train``, ``test``, ``meta``    train, test
``cifar10-bin``    ``cifar-10-batches-bin/``: ``data_batch_1..5.bin``,     train, test
                   ``test_batch.bin`` (records: label byte + 3072 bytes)
``cifar100-bin``   ``cifar-100-binary/``: ``train.bin``, ``test.bin``      train, test
                   (records: coarse byte + fine byte + 3072 bytes)
``mnist``          ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,  train, test
``fashion-mnist``  ``t10k-*`` (gzipped or not, found by content; Fashion-MNIST
                   when the folder or its parent is named ``*fashion*``)
``svhn``           ``train_32x32.mat``, ``test_32x32.mat``,                train, test, extra
                   ``extra_32x32.mat`` (MATLAB 5, read by scipy.io)
``veri``           VeRi-776: ``image_train/``, ``image_query/``,           train, query, gallery
                   ``image_test/`` (gallery) of ``VVVV_cCCC_FFFFFFFF_K.jpg``
``digits``         ``path="digits"``: scikit-learn's bundled 8x8 digits    train, test (stratified 80/20,
                   (no files)                                              seed ``DIGITS_SPLIT_SEED``)
=================  ====================================================  ==================================

``path`` may also be a folder that holds exactly one dataset folder (``data/`` with ``cifar-10-batches-py/``
inside). Pixel values are kept as stored (uint8); CIFAR-100 labels are the fine ones unless ``labels="coarse"``;
SVHN label 10 is digit 0; VeRi images are resized to ``size`` (default :data:`VERI_SIZE`, 256x256, the usual
vehicle re-id input) with bilinear filtering so that they stack into one array (about 7.4 GB for the 37,778
training images: pass a smaller ``size`` on small machines).

CIFAR's python version is made of pickles, and unpickling can run code: :func:`load_pickle` admits only the
globals that a dict of lists, strings and numpy arrays needs and refuses anything else before it is called.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from jetkd.errors import InputError

VERI_SIZE = (256, 256)
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]


# ----------------------------------------------------------------------------------------------------- ImageSet


@dataclass
class ImageSet:
    """One split of an image benchmark, in memory.

    images:      (N, H, W, C) uint8, pixel values as stored (C = 1 for grey, 3 for RGB)
    labels:      (N,) int64 class index (re-identification: the identity; contiguous 0..K-1 for ``veri`` train,
                 the raw vehicle ids for query/gallery so that they match each other)
    cameras:     (N,) int64 camera id for re-identification, else None
    class_names: ``class_names[label]`` is the name of a class (``veri`` train: the raw vehicle id), or None
    format:      the :data:`FORMATS` name it was read as
    """

    images: np.ndarray
    labels: np.ndarray
    cameras: np.ndarray | None = None
    class_names: list[str] | None = None
    format: str = ""

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def validate(self, where: str = "images") -> ImageSet:
        """``self`` if the fields have the documented dtypes and shapes, else :class:`InputError` naming ``where``."""
        n = len(self.images) if isinstance(self.images, np.ndarray) else -1
        if not (isinstance(self.images, np.ndarray) and self.images.dtype == np.uint8 and self.images.ndim == 4):
            raise InputError(where, f"images are {_describe(self.images)}; expected a uint8 array (N, H, W, C)")
        for field in ("labels", "cameras"):
            value = getattr(self, field)
            if value is None and field == "cameras":
                continue
            if not (isinstance(value, np.ndarray) and value.dtype == np.int64 and value.shape == (n,)):
                raise InputError(where, f"{field} are {_describe(value)}; expected int64 of shape ({n},)")
        if n and self.labels.min() < 0:
            raise InputError(where, f"negative label {self.labels.min()}; expected class indices >= 0")
        if self.class_names is not None:
            if not all(isinstance(c, str) for c in self.class_names):
                raise InputError(where, "class_names must be strings")
            if n and self.labels.max() >= len(self.class_names):
                raise InputError(where, f"label {self.labels.max()} but only {len(self.class_names)} class names")
        return self


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} of shape {value.shape}"
    return type(value).__name__


# ----------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ImageFormat:
    """One dataset layout.

    layout: ``layout(folder)`` True when ``folder`` has this format's file names (cheap; no content read).
    check:  ``check(folder)`` reads a few bytes of its files and raises :class:`InputError` naming the file
            whose content does not fit (the names alone are never trusted).
    read:   ``read(folder, split, **options) -> ImageSet``; validates everything it reads.
    splits: the split names ``read`` accepts.
    options: the keyword options ``read`` accepts.
    auto_hint: for automatic detection only: tells apart formats whose files are byte-for-byte alike
            (MNIST and Fashion-MNIST) by the folder's name; None when the layout is enough.
    """

    name: str
    description: str
    splits: tuple[str, ...]
    layout: Callable[[Path], bool]
    check: Callable[[Path], None]
    read: Callable[..., ImageSet]
    options: tuple[str, ...] = ()
    auto_hint: Callable[[Path], bool] | None = None

    def detects(self, folder: Path) -> bool:
        """Whether automatic detection considers ``folder`` a candidate (layout and hint)."""
        return self.layout(folder) and (self.auto_hint is None or self.auto_hint(folder))


FORMATS: dict[str, ImageFormat] = {}


def register(fmt: ImageFormat) -> ImageFormat:
    if fmt.name in FORMATS:
        raise ValueError(f"image format {fmt.name!r} registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


# ----------------------------------------------------------------------------------------------------- plumbing


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def _reading(path, what: str = "cannot read the file"):
    """Turn a library error raised inside the block (gzip, numpy, scipy, Pillow, pickle) into an InputError naming
    ``path``: a truncated or corrupt file is bad input, not a bug. Keep the block to calls that touch the file."""
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as err:
        what = _one_line(f"{what} ({type(err).__name__}: {err}); is it truncated or corrupt?")
        raise InputError(str(path), what) from err


def _head(path: Path, n: int) -> bytes:
    with _reading(path), open(path, "rb") as f:
        return f.read(n)


def _first_file(folder: Path, names) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _require(folder: Path, name: str, expected: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise InputError(str(path), f"missing; expected {expected}")
    return path


# ----------------------------------------------------------------------------------------------------- pickles

GZIP_MAGIC = b"\x1f\x8b"


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as Python 3 uses it in protocol 0-2 pickles of ``bytes`` (``encode(str, 'latin1')``),
    and nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
    return text.encode("latin1")


def _pickle_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name.

    A numpy array pickles as ``numpy.core.multiarray._reconstruct(numpy.ndarray, shape, numpy.dtype(...))`` plus its
    state (protocols 0-4; the distributed CIFAR files are Python 2 protocol-2 pickles, which need exactly these
    three), or ``numpy.core.numeric._frombuffer(buffer, dtype, shape, order)`` (protocol 5). numpy 2 writes
    ``numpy._core`` for ``numpy.core``. Python 3 writes ``bytes`` in protocol 0-2 pickles as
    ``_codecs.encode(str, 'latin1')``, admitted for latin-1 only.
    """
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy without the numpy._core alias
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_PICKLE_GLOBALS = _pickle_globals()


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers (dict, list, tuple, str, bytes, numbers) and numpy arrays.

    Any other global (``os.system``, ``builtins.eval``, a class) is refused in :meth:`find_class`, before it can be
    called, with an :class:`InputError` naming the file.
    """

    def __init__(self, file, where: str, **kwargs):
        super().__init__(file, **kwargs)
        self.where = where

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise InputError(self.where, f"the pickle asks for {module}.{name}; only plain containers and numpy "
                                         "arrays are admitted, so it was refused and nothing in it was run") from None


def load_pickle(path) -> object:
    """The object in the pickle at ``path``, built by :class:`SafeUnpickler`.

    Strings of Python 2 pickles (the distributed CIFAR files) are decoded as latin-1, as numpy arrays need.
    """
    with _reading(path, "cannot unpickle"), open(path, "rb") as f:
        return SafeUnpickler(f, str(path), encoding="latin1").load()


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _pickled_dict(path: Path) -> dict[str, object]:
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise InputError(str(path), f"holds a {type(obj).__name__}; expected a dict (CIFAR python version)")
    return {_text(k): v for k, v in obj.items()}


# ----------------------------------------------------------------------------------------------------- CIFAR

CIFAR_PIXELS = 3 * 32 * 32


def _cifar_rows(data: np.ndarray) -> np.ndarray:
    """(N, 3072) uint8 rows (1024 red, 1024 green, 1024 blue, each 32x32 row-major) -> (N, 32, 32, 3)."""
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _check_labels(path, labels: np.ndarray, n_classes: int, what: str = "labels") -> np.ndarray:
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)][0]
        raise InputError(str(path), f"{what} value {bad}; expected 0..{n_classes - 1}")
    return labels.astype(np.int64)


def _cifar_python_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: ``{'data': (N, 3072) uint8, label_key: N ints, ...}`` -> (N,32,32,3), (N,)."""
    batch = _pickled_dict(path)
    data = batch.get("data")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == CIFAR_PIXELS):
        raise InputError(str(path), f"'data' is {_describe(data) if 'data' in batch else 'missing'}; expected a uint8 "
                                    f"array of shape (N, {CIFAR_PIXELS}) (32x32 RGB, channel-major)")
    if label_key not in batch:
        raise InputError(str(path), f"no {label_key!r}; expected keys 'data' and {label_key!r}")
    try:
        labels = np.asarray(batch[label_key])
    except (TypeError, ValueError):
        labels = np.asarray(None)
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise InputError(str(path), f"{label_key!r} is {_describe(labels)}; expected {len(data)} integers, one per "
                                    "row of 'data'")
    return _cifar_rows(data), _check_labels(path, labels, n_classes, label_key)


def _pickled_names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    names = _pickled_dict(path).get(key)
    if not isinstance(names, (list, tuple)):
        raise InputError(str(path), f"{key!r} is {type(names).__name__}; expected a list of class names")
    return [_text(n) for n in names]


def _concat(parts, class_names, fmt: str) -> ImageSet:
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageSet(np.ascontiguousarray(images), labels.astype(np.int64), None, class_names, fmt)


CIFAR10_PY_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_PY_FILES = {"train": ["train"], "test": ["test"]}


def _check_pickle(folder: Path, names) -> None:
    path = _first_file(folder, names)
    head = _head(path, 2)
    if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
        raise InputError(str(path), f"not a pickle (starts with {head!r}); expected a protocol-2+ pickle as in the "
                                    "CIFAR python version")


def _read_cifar10_python(folder: Path, split: str) -> ImageSet:
    expected = "a CIFAR-10 python batch (cifar-10-batches-py/)"
    parts = [_cifar_python_batch(_require(folder, f, expected), "labels", 10) for f in CIFAR10_PY_FILES[split]]
    return _concat(parts, _pickled_names(folder / "batches.meta", "label_names"), "cifar10")


def _read_cifar100_python(folder: Path, split: str, labels: str = "fine") -> ImageSet:
    kind = _label_kind(labels)
    path = _require(folder, CIFAR100_PY_FILES[split][0], "a CIFAR-100 python file (cifar-100-python/)")
    part = _cifar_python_batch(path, f"{kind}_labels", 100 if kind == "fine" else 20)
    return _concat([part], _pickled_names(folder / "meta", f"{kind}_label_names"), "cifar100")


def _label_kind(labels) -> str:
    if labels not in ("fine", "coarse"):
        raise InputError("labels", f"expected 'fine' (100 classes) or 'coarse' (20 superclasses), got {labels!r}")
    return labels


register(ImageFormat(
    "cifar10", "CIFAR-10 python version (cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta)",
    ("train", "test"),
    layout=lambda d: _first_file(d, ["data_batch_1", "test_batch"]) is not None,
    check=lambda d: _check_pickle(d, ["data_batch_1", "test_batch"]),
    read=_read_cifar10_python))

register(ImageFormat(
    "cifar100", "CIFAR-100 python version (cifar-100-python/: train, test, meta)",
    ("train", "test"),
    layout=lambda d: (d / "meta").is_file() and _first_file(d, ["train", "test"]) is not None,
    check=lambda d: _check_pickle(d, ["train", "test"]),
    read=_read_cifar100_python, options=("labels",)))


CIFAR10_BIN_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
CIFAR100_BIN_FILES = {"train": ["train.bin"], "test": ["test.bin"]}


def _bin_records(path: Path, n_label_bytes: int) -> np.ndarray:
    """(N, n_label_bytes + 3072) uint8 records of a CIFAR binary file, checking its size."""
    record = n_label_bytes + CIFAR_PIXELS
    with _reading(path):
        raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) == 0 or len(raw) % record:
        raise InputError(str(path), f"{len(raw)} bytes; expected a positive multiple of {record} (records of "
                                    f"{n_label_bytes} label byte(s) + {CIFAR_PIXELS} pixel bytes)")
    return raw.reshape(-1, record)


def _text_names(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with _reading(path):
        lines = path.read_text(encoding="latin1").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _check_bin(folder: Path, names, n_label_bytes: int, n_classes: tuple[int, ...]) -> None:
    path = _first_file(folder, names)
    records = _bin_records(path, n_label_bytes)
    for col, n in enumerate(n_classes):
        _check_labels(path, records[:1, col], n, "label byte")


def _read_cifar10_bin(folder: Path, split: str) -> ImageSet:
    parts = []
    for name in CIFAR10_BIN_FILES[split]:
        path = _require(folder, name, "a CIFAR-10 binary batch (cifar-10-batches-bin/)")
        records = _bin_records(path, 1)
        parts.append((_cifar_rows(records[:, 1:]), _check_labels(path, records[:, 0], 10)))
    return _concat(parts, _text_names(folder / "batches.meta.txt"), "cifar10-bin")


def _read_cifar100_bin(folder: Path, split: str, labels: str = "fine") -> ImageSet:
    kind = _label_kind(labels)
    path = _require(folder, CIFAR100_BIN_FILES[split][0], "a CIFAR-100 binary file (cifar-100-binary/)")
    records = _bin_records(path, 2)
    coarse = _check_labels(path, records[:, 0], 20, "coarse label")
    fine = _check_labels(path, records[:, 1], 100, "fine label")
    names = _text_names(folder / f"{kind}_label_names.txt")
    return _concat([(_cifar_rows(records[:, 2:]), fine if kind == "fine" else coarse)], names, "cifar100-bin")


register(ImageFormat(
    "cifar10-bin", "CIFAR-10 binary version (cifar-10-batches-bin/: data_batch_1..5.bin, test_batch.bin)",
    ("train", "test"),
    layout=lambda d: _first_file(d, ["data_batch_1.bin", "test_batch.bin"]) is not None,
    check=lambda d: _check_bin(d, ["data_batch_1.bin", "test_batch.bin"], 1, (10,)),
    read=_read_cifar10_bin))

register(ImageFormat(
    "cifar100-bin", "CIFAR-100 binary version (cifar-100-binary/: train.bin, test.bin)",
    ("train", "test"),
    layout=lambda d: _first_file(d, ["train.bin", "test.bin"]) is not None,
    check=lambda d: _check_bin(d, ["train.bin", "test.bin"], 2, (20, 100)),
    read=_read_cifar100_bin, options=("labels",)))


# ----------------------------------------------------------------------------------------------------- MNIST IDX

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
IDX_PREFIX = {"train": "train", "test": "t10k"}


def _idx_names(prefix: str, kind: str) -> list[str]:
    """File names of an IDX file as distributed (``train-images-idx3-ubyte``) or as some mirrors spell it
    (``train-images.idx3-ubyte``), each plain or ``.gz``; gzip is recognised by content, not by the suffix."""
    dims = 3 if kind == "images" else 1
    stems = [f"{prefix}-{kind}-idx{dims}-ubyte", f"{prefix}-{kind}.idx{dims}-ubyte"]
    return [s + ext for s in stems for ext in ("", ".gz")]


def _idx_file(folder: Path, split: str, kind: str) -> Path:
    names = _idx_names(IDX_PREFIX[split], kind)
    path = _first_file(folder, names)
    if path is None:
        raise InputError(str(folder / names[0]), f"missing (also looked for {', '.join(names[1:])}); expected the "
                                                 f"MNIST-style IDX {kind} file of the {split} split")
    return path


def _idx_bytes(path: Path, limit: int = -1) -> bytes:
    """The bytes of an IDX file (the first ``limit`` only when given), gunzipped when it starts with the gzip magic."""
    with _reading(path), open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
        f.seek(0)
        if gz:
            with gzip.GzipFile(fileobj=f) as g:
                return g.read(limit)
        return f.read(limit)


def _idx_magic(path: Path, raw: bytes, magic: int) -> None:
    if len(raw) < 4 or struct.unpack(">i", raw[:4])[0] != magic:
        found = struct.unpack(">i", raw[:4])[0] if len(raw) >= 4 else f"none ({len(raw)} bytes)"
        what = "images, uint8, 3 dimensions" if magic == IDX_IMAGES_MAGIC else "labels, uint8, 1 dimension"
        raise InputError(str(path), f"magic number {found}; expected {magic} (IDX {what})")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """The array in an IDX file: (N, rows, cols) for images (magic 2051), (N,) for labels (magic 2049)."""
    raw = _idx_bytes(path)
    _idx_magic(path, raw, magic)
    ndim = 3 if magic == IDX_IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(str(path), f"{len(raw)} bytes; expected an IDX header of {header} bytes")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise InputError(str(path), f"{len(raw)} bytes; expected {expected} for dimensions {dims} (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _check_idx(folder: Path) -> None:
    split = "train" if _first_file(folder, _idx_names("train", "images")) else "test"
    path = _idx_file(folder, split, "images")
    _idx_magic(path, _idx_bytes(path, 4), IDX_IMAGES_MAGIC)


def _idx_layout(folder: Path) -> bool:
    return any(_first_file(folder, _idx_names(p, "images")) for p in IDX_PREFIX.values())


def _is_fashion(folder: Path) -> bool:
    return any("fashion" in part.lower() for part in folder.absolute().parts[-2:])


def _idx_reader(fmt: str, class_names: list[str]):
    def read(folder: Path, split: str) -> ImageSet:
        images_path, labels_path = _idx_file(folder, split, "images"), _idx_file(folder, split, "labels")
        images, labels = _read_idx(images_path, IDX_IMAGES_MAGIC), _read_idx(labels_path, IDX_LABELS_MAGIC)
        if len(labels) != len(images):
            raise InputError(str(labels_path), f"{len(labels)} labels; expected {len(images)}, one per image of "
                                               f"{images_path.name}")
        labels = _check_labels(labels_path, labels, len(class_names))
        return ImageSet(np.ascontiguousarray(images[..., None]), labels, None, list(class_names), fmt)

    return read


register(ImageFormat(
    "mnist", "MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*; .gz or not)",
    ("train", "test"), layout=_idx_layout, check=_check_idx, read=_idx_reader("mnist", DIGIT_CLASSES),
    auto_hint=lambda d: not _is_fashion(d)))

register(ImageFormat(
    "fashion-mnist", "Fashion-MNIST IDX files (as MNIST; detected when the folder or its parent is named *fashion*)",
    ("train", "test"), layout=_idx_layout, check=_check_idx, read=_idx_reader("fashion-mnist", FASHION_CLASSES),
    auto_hint=_is_fashion))


# ----------------------------------------------------------------------------------------------------- SVHN

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
MAT5_MAGIC = b"MATLAB 5.0 MAT-file"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _check_mat(path: Path) -> None:
    head = _head(path, 128)
    if head.startswith(MAT5_MAGIC):
        return
    what = "a MATLAB 7.3 (HDF5) file" if head.startswith(HDF5_MAGIC) else f"not a .mat file (starts with {head[:20]!r})"
    raise InputError(str(path), f"{what}; expected the MATLAB 5 .mat of SVHN cropped digits, readable by scipy.io")


def _read_svhn(folder: Path, split: str) -> ImageSet:
    from scipy.io import loadmat

    path = _require(folder, SVHN_FILES[split], "the SVHN cropped-digits .mat file")
    _check_mat(path)
    with _reading(path, "cannot read the .mat file"):
        mat = loadmat(path, variable_names=["X", "y"])
    expected = "X (32, 32, 3, N) uint8 and y (N, 1) with labels 1..10"
    for key in ("X", "y"):
        if key not in mat:
            raise InputError(str(path), f"no variable {key!r}; expected {expected}")
    x, y = mat["X"], np.asarray(mat["y"])
    if not (x.dtype == np.uint8 and x.ndim == 4 and x.shape[:3] == (32, 32, 3)):
        raise InputError(str(path), f"X is {_describe(x)}; expected {expected}")
    if y.dtype.kind not in "iu" or y.size != x.shape[3] or y.ndim > 2:
        raise InputError(str(path), f"y is {_describe(y)}; expected {expected}")
    labels = y.reshape(-1).astype(np.int64)
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise InputError(str(path), f"y has label {labels.min() if labels.min() < 1 else labels.max()}; expected 1..10")
    labels[labels == 10] = 0
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    return ImageSet(images, labels, None, list(DIGIT_CLASSES), "svhn")


register(ImageFormat(
    "svhn", "SVHN cropped digits (train_32x32.mat, test_32x32.mat, extra_32x32.mat)",
    ("train", "test", "extra"),
    layout=lambda d: _first_file(d, SVHN_FILES.values()) is not None,
    check=lambda d: _check_mat(_first_file(d, SVHN_FILES.values())),
    read=_read_svhn))


# ----------------------------------------------------------------------------------------------------- VeRi-776

VERI_DIRS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
VERI_NAME = re.compile(r"^(\d+)_c(\d+)_(\d+)_(\d+)\.jpg$", re.IGNORECASE)
VERI_IGNORED = frozenset({"Thumbs.db", "desktop.ini"})
JPEG_MAGIC = b"\xff\xd8\xff"


def _veri_files(directory: Path) -> list[Path]:
    """The image files of a VeRi split folder, sorted by name (hidden files and Thumbs.db skipped)."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in VERI_IGNORED)


def _check_veri(folder: Path) -> None:
    for name in VERI_DIRS.values():
        if (folder / name).is_dir():
            files = _veri_files(folder / name)
            if files:
                if not _head(files[0], 3) == JPEG_MAGIC:
                    raise InputError(str(files[0]), "not a JPEG; expected the VeRi-776 JPEG images")
                return


def _check_size(size) -> tuple[int, int]:
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size))
    if not ok:
        raise InputError("size", f"expected (height, width) in pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _read_jpeg(path: Path, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8: the image at ``path`` as RGB, resized bilinearly to ``size`` = (H, W) when it differs."""
    from PIL import Image

    with _reading(path, "cannot decode the image"), Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size[1], size[0]):
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _read_veri(folder: Path, split: str, size=VERI_SIZE) -> ImageSet:
    size = _check_size(size)
    directory = folder / VERI_DIRS[split]
    expected = "JPEGs named like 0002_c002_00030600_0.jpg (vehicle id, camera, frame, index)"
    if not directory.is_dir():
        raise InputError(str(directory), f"missing; expected the VeRi-776 folder {VERI_DIRS[split]}/ of {expected}")
    files = _veri_files(directory)
    if not files:
        raise InputError(str(directory), f"no images; expected {expected}")
    ids, cameras = np.empty(len(files), np.int64), np.empty(len(files), np.int64)
    for i, path in enumerate(files):
        match = VERI_NAME.match(path.name)
        if match is None:
            raise InputError(str(path), f"file name does not match VVVV_cCCC_FFFFFFFF_K.jpg; expected {expected}")
        ids[i], cameras[i] = int(match.group(1)), int(match.group(2))
    images = np.empty((len(files), *size, 3), np.uint8)
    for i, path in enumerate(files):
        images[i] = _read_jpeg(path, size)
    if split != "train":
        return ImageSet(images, ids, cameras, None, "veri")
    raw_ids, labels = np.unique(ids, return_inverse=True)
    return ImageSet(images, labels.astype(np.int64).reshape(-1), cameras, [f"{v:04d}" for v in raw_ids], "veri")


register(ImageFormat(
    "veri", "VeRi-776 (image_train/, image_query/, image_test/ of VVVV_cCCC_FFFFFFFF_K.jpg; gallery = image_test)",
    ("train", "query", "gallery"),
    layout=lambda d: any((d / n).is_dir() for n in VERI_DIRS.values()),
    check=_check_veri, read=_read_veri, options=("size",)))


# ----------------------------------------------------------------------------------------------------- digits

DIGITS = "digits"


def digits_test_mask(labels: np.ndarray, fraction: float = DIGITS_TEST_FRACTION,
                     seed: int = DIGITS_SPLIT_SEED) -> np.ndarray:
    """(N,) bool, True for the test rows: per class, ``round(fraction * n_class)`` rows drawn by a seeded numpy
    permutation (stratified, and the same on every machine and scikit-learn version)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        test[rng.permutation(rows)[: round(fraction * len(rows))]] = True
    return test


def _read_digits(_folder, split: str) -> ImageSet:
    """scikit-learn's bundled digits (1,797 8x8 grey images, values 0..16 scaled to 0..255, C = 1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    rows = digits_test_mask(labels)
    if split == "train":
        rows = ~rows
    return ImageSet(np.ascontiguousarray(images[rows]), labels[rows], None, list(DIGIT_CLASSES), "digits")


register(ImageFormat(
    "digits", "scikit-learn's bundled 8x8 digits: path='digits' (no files)", ("train", "test"),
    layout=lambda d: False, check=lambda d: None, read=_read_digits))


# ----------------------------------------------------------------------------------------------------- entry points


def _candidates(folder: Path, formats) -> list[tuple[ImageFormat, Path]]:
    """(format, dataset folder) pairs whose layout matches ``folder`` or, when none does, its subfolders."""
    found = [(f, folder) for f in formats if f.detects(folder)]
    if found:
        return found
    with _reading(folder, "cannot list the folder"):
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    return [(f, sub) for sub in subfolders for f in formats if f.detects(sub)]


def _resolve(path, format: str = "auto") -> tuple[ImageFormat, Path | None]:
    """The format of ``path`` and the folder to read (None for the embedded digits)."""
    if format != "auto" and format not in FORMATS:
        raise InputError("format", f"unknown image format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    if isinstance(path, str) and path == DIGITS:
        if format not in ("auto", DIGITS):
            raise InputError("format", f"path 'digits' is scikit-learn's bundled digits, not a {format!r} folder "
                                       "(give a folder named digits as './digits')")
        return FORMATS[DIGITS], None
    folder = Path(os.fspath(path))
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "no such folder"
        raise InputError(str(folder), f"{what}; expected a dataset's folder as distributed, or 'digits'")
    if format == "auto":
        formats = [f for f in FORMATS.values() if f.name != DIGITS]
    else:
        formats = [replace(FORMATS[format], auto_hint=None)]  # named: the folder's name is no hint
    pairs = _candidates(folder, formats)
    if not pairs:
        raise InputError(str(folder), "no known image dataset here; expected one of: "
                                      + "; ".join(f.description for f in formats))
    confirmed, errors = [], []
    for fmt, directory in pairs:
        try:
            fmt.check(directory)
            confirmed.append((fmt, directory))
        except InputError as err:
            errors.append(err)
    if not confirmed:
        raise errors[0]
    if len(confirmed) > 1:
        listed = ", ".join(f"{f.name} ({d})" for f, d in confirmed)
        raise InputError(str(folder), f"holds several image datasets: {listed}; pass format= or the dataset's folder")
    return confirmed[0]


def detect_image_format(path) -> str:
    """The :data:`FORMATS` name of the dataset at ``path`` (a dataset folder, a folder holding one, or
    ``"digits"``), from its file names confirmed by their content; :class:`InputError` when none or several fit."""
    return _resolve(path)[0].name


def read_images(path, split: str, *, format: str = "auto", **options) -> ImageSet:
    """One split of an image benchmark as an :class:`ImageSet` (see the module docstring for the formats).

    path:    the dataset's folder as distributed (``cifar-10-batches-py/``, ``VeRi/``...), a folder holding exactly
             one such folder, or the string ``"digits"`` for scikit-learn's bundled digits
    split:   one of the format's splits (``FORMATS[name].splits``): train/test, train/test/extra for SVHN,
             train/query/gallery for VeRi
    format:  ``"auto"`` (detect) or a :data:`FORMATS` name (its files' content is still checked)
    options: format options: ``labels="fine"|"coarse"`` (cifar100, cifar100-bin), ``size=(H, W)`` (veri)

    Bad input (missing or malformed files, an unknown split or option) raises :class:`InputError`.
    """
    fmt, folder = _resolve(path, format)
    if split not in fmt.splits:
        raise InputError("split", f"unknown split {split!r} for {fmt.name}; expected one of {', '.join(fmt.splits)}")
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        accepted = ", ".join(fmt.options) if fmt.options else "none"
        raise InputError(f"option {unknown[0]}", f"not an option of image format {fmt.name} (its options: {accepted})")
    images = fmt.read(folder, split, **options)
    return images.validate(str(folder) if folder is not None else fmt.name)


__all__ = ["DIGITS", "FORMATS", "VERI_SIZE", "ImageFormat", "ImageSet", "SafeUnpickler", "detect_image_format",
           "digits_test_mask", "load_pickle", "read_images", "register"]
