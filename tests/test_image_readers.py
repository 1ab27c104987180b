"""Image readers: miniature datasets in each real layout are read back exactly; bad input is a one-line InputError;
CIFAR pickles are unpickled without running anything but numpy's array reconstruction."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from jetkd.errors import InputError
from jetkd.images import FORMATS, ImageSet, detect_image_format, read_images
from jetkd.images.readers import DIGITS_TEST_FRACTION, SafeUnpickler, _pickle_globals, load_pickle

RNG = np.random.default_rng(7)


# ----------------------------------------------------------------------------- writers (the real layouts)


class Py2Pickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` as Python 2 strings (BINSTRING), as the distributed CIFAR pickles do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def dump(obj, path: Path, style="py2"):
    with open(path, "wb") as f:
        if style == "py2":
            Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=style)


def rgb(n, h=32, w=32):
    return RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def cifar_rows(images):
    """(N, 32, 32, 3) -> (N, 3072) channel-major rows, as CIFAR stores them."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10_py(folder: Path, per_batch=3, style="py2"):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, names in {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}.items():
        imgs, labs = [], []
        for name in names:
            images, labels = rgb(per_batch), RNG.integers(0, 10, per_batch).tolist()
            dump({b"batch_label": b"training batch", b"labels": labels, b"data": cifar_rows(images),
                  b"filenames": [b"x.png"] * per_batch}, folder / name, style)
            imgs.append(images)
            labs += labels
        expected[split] = (np.concatenate(imgs), np.array(labs))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump({b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}, folder / "batches.meta", style)
    return expected


def write_cifar100_py(folder: Path, n=4, style="py2"):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split in ("train", "test"):
        images, fine, coarse = rgb(n), RNG.integers(0, 100, n).tolist(), RNG.integers(0, 20, n).tolist()
        dump({b"filenames": [b"a.png"] * n, b"batch_label": b"x", b"fine_labels": fine, b"coarse_labels": coarse,
              b"data": cifar_rows(images)}, folder / split, style)
        expected[split] = (images, np.array(fine), np.array(coarse))
    dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
          b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, folder / "meta", style)
    return expected


def write_cifar10_bin(folder: Path, per_batch=3):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, names in {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}.items():
        imgs, labs = [], []
        for name in names:
            images, labels = rgb(per_batch), RNG.integers(0, 10, per_batch, dtype=np.uint8)
            np.concatenate([labels[:, None], cifar_rows(images)], 1).tofile(folder / name)
            imgs.append(images)
            labs.append(labels)
        expected[split] = (np.concatenate(imgs), np.concatenate(labs))
    (folder / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return expected


def write_cifar100_bin(folder: Path, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split in ("train", "test"):
        images = rgb(n)
        coarse, fine = RNG.integers(0, 20, n, dtype=np.uint8), RNG.integers(0, 100, n, dtype=np.uint8)
        np.concatenate([coarse[:, None], fine[:, None], cifar_rows(images)], 1).tofile(folder / f"{split}.bin")
        expected[split] = (images, fine, coarse)
    (folder / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    (folder / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
    return expected


def idx_bytes(array: np.ndarray) -> bytes:
    magic = {3: 2051, 1: 2049}[array.ndim]
    return struct.pack(">i", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, gz=False, n=(5, 3), names="{p}-{k}-idx{d}-ubyte", gz_suffix=None):
    """MNIST-style files; ``gz`` compresses the content, ``gz_suffix`` (default: ``gz``) appends ``.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    gz_suffix = gz if gz_suffix is None else gz_suffix
    expected = {}
    for split, prefix, count in (("train", "train", n[0]), ("test", "t10k", n[1])):
        images = RNG.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, count, dtype=np.uint8)
        for kind, dims, array in (("images", 3, images), ("labels", 1, labels)):
            raw = idx_bytes(array)
            name = names.format(p=prefix, k=kind, d=dims) + (".gz" if gz_suffix else "")
            (folder / name).write_bytes(gzip.compress(raw) if gz else raw)
        expected[split] = (images, labels)
    return expected


def write_svhn(folder: Path, n=6, splits=("train", "test")):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split in splits:
        images = rgb(n)
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0] = 10  # digit 0 is stored as 10
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
        expected[split] = (images, np.where(y[:, 0] == 10, 0, y[:, 0]))
    return expected


def smooth_image(h, w, seed):
    """An (h, w, 3) uint8 gradient (JPEG reproduces it to within a few levels)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 200 / max(h - 1, 1), xx * 200 / max(w - 1, 1), (yy + xx) * 100 / (h + w)], -1)
    return (base + 20 * (seed % 3)).astype(np.uint8)


VERI_FILES = {
    "image_train": ["0002_c002_00030600_0.jpg", "0002_c003_00084280_0.jpg", "0007_c004_00075330_0.jpg",
                    "0010_c013_00012345_1.jpg"],
    "image_query": ["0005_c001_00013460_0.jpg", "0776_c019_00088660_1.jpg"],
    "image_test": ["0005_c002_00012540_0.jpg", "0005_c011_00045800_0.jpg", "0776_c020_00081175_0.jpg"],
}


def write_veri(folder: Path, size=(16, 16)):
    expected = {}
    for directory, names in VERI_FILES.items():
        (folder / directory).mkdir(parents=True, exist_ok=True)
        images = []
        for i, name in enumerate(names):
            image = smooth_image(*size, i)
            Image.fromarray(image).save(folder / directory / name, format="JPEG", quality=100, subsampling=0)
            images.append(image)
        expected[directory] = np.stack(images)
    (folder / "name_train.txt").write_text("\n".join(VERI_FILES["image_train"]))
    return expected


def raises_input_error(fn, *needles) -> str:
    """``fn()`` raises a one-line InputError whose message contains every needle; returns the message."""
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


def check_set(s: ImageSet, images, labels, fmt):
    assert isinstance(s, ImageSet) and s.format == fmt
    assert s.images.dtype == np.uint8 and s.labels.dtype == np.int64
    np.testing.assert_array_equal(s.images, images)
    np.testing.assert_array_equal(s.labels, labels)


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("style", ["py2", 2, 4, 5])
def test_cifar10_python_reads_back_exactly(tmp_path, style):
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar10_py(folder, style=style)
    for split in ("train", "test"):
        s = read_images(folder, split)
        check_set(s, *expected[split], "cifar10")
        assert s.images.shape == (15 if split == "train" else 3, 32, 32, 3)
        assert s.cameras is None
        assert s.class_names[:3] == ["airplane", "automobile", "bird"] and len(s.class_names) == 10
    assert detect_image_format(folder) == "cifar10"
    assert detect_image_format(tmp_path) == "cifar10"  # the folder holding the dataset's folder
    check_set(read_images(tmp_path, "test"), *expected["test"], "cifar10")


def test_cifar_python_channel_layout(tmp_path):
    """A row is 1024 red, 1024 green, 1024 blue bytes, each 32x32 row-major."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    row = np.zeros((1, 3072), np.uint8)
    row[0, 0], row[0, 1024 + 1], row[0, 2048 + 32] = 11, 22, 33  # R(0,0), G(0,1), B(1,0)
    dump({b"labels": [3], b"data": row}, folder / "test_batch")
    image = read_images(folder, "test").images[0]
    assert image[0, 0, 0] == 11 and image[0, 1, 1] == 22 and image[1, 0, 2] == 33
    assert image.sum() == 66


def test_cifar100_python_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    expected = write_cifar100_py(folder)
    images, fine, coarse = expected["train"]
    s = read_images(folder, "train")
    check_set(s, images, fine, "cifar100")
    assert len(s.class_names) == 100 and s.class_names[5] == "f5"
    c = read_images(folder, "train", labels="coarse")
    check_set(c, images, coarse, "cifar100")
    assert len(c.class_names) == 20
    check_set(read_images(folder, "test"), *expected["test"][:2], "cifar100")
    assert detect_image_format(folder) == "cifar100"
    raises_input_error(lambda: read_images(folder, "train", labels="superfine"), "labels", "coarse")


def test_cifar_binary_reads_back_exactly(tmp_path):
    ten = write_cifar10_bin(tmp_path / "cifar-10-batches-bin")
    for split in ("train", "test"):
        s = read_images(tmp_path / "cifar-10-batches-bin", split)
        check_set(s, *ten[split], "cifar10-bin")
        assert s.class_names == [f"class{i}" for i in range(10)]
    hundred = write_cifar100_bin(tmp_path / "cifar-100-binary")
    images, fine, coarse = hundred["test"]
    check_set(read_images(tmp_path / "cifar-100-binary", "test"), images, fine, "cifar100-bin")
    s = read_images(tmp_path / "cifar-100-binary", "test", labels="coarse")
    check_set(s, images, coarse, "cifar100-bin")
    assert s.class_names == [f"c{i}" for i in range(20)]
    assert detect_image_format(tmp_path / "cifar-10-batches-bin") == "cifar10-bin"
    assert detect_image_format(tmp_path / "cifar-100-binary") == "cifar100-bin"


# ----------------------------------------------------------------------------- pickles


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getpid()",)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_runs_nothing(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": RunsShell(marker), b"labels": [1]}, f, protocol=max(protocol, 2))
    msg = raises_input_error(lambda: read_images(folder, "test"), "test_batch", "system", "refused")
    assert "nothing in it was run" in msg
    assert not marker.exists()
    evil = tmp_path / "evil.pkl"
    for gadget in (RunsShell(marker), CallsEval(), {"x": [CallsEval()]}):
        evil.write_bytes(pickle.dumps(gadget, protocol=protocol))
        raises_input_error(lambda: load_pickle(evil), "evil.pkl", "refused")
    assert not marker.exists()


def test_safe_unpickler_admits_exactly_numpy_array_reconstruction(tmp_path):
    """The admitted globals are numpy's array reconstruction (both numpy.core and numpy._core spellings), ndarray,
    dtype and latin-1 ``_codecs.encode``; every other global, however harmless-looking, is refused."""
    expected = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
    for core in ("numpy.core", "numpy._core"):
        expected |= {(f"{core}.multiarray", "_reconstruct"), (f"{core}.numeric", "_frombuffer")}
    assert set(_pickle_globals()) == expected

    for module, name in [("builtins", "getattr"), ("numpy", "load"), ("subprocess", "Popen"), ("posix", "system"),
                         ("numpy.core.multiarray", "scalar"), ("collections", "OrderedDict")]:
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
        with pytest.raises(InputError, match=f"{module}.{name}"):
            SafeUnpickler(io.BytesIO(data), "x.pkl", encoding="latin1").load()
    # _codecs.encode is admitted for latin-1 only (how Python 3 writes bytes in protocol 0-2 pickles)
    bad = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    (tmp_path / "rot13.pkl").write_bytes(bad)
    raises_input_error(lambda: load_pickle(tmp_path / "rot13.pkl"), "rot13.pkl", "cannot unpickle", "'rot13'")


def test_cifar_content_is_checked_not_the_names(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    (folder / "data_batch_1").write_bytes(bytes(3073 * 2))  # a binary batch under a python-version name
    raises_input_error(lambda: read_images(folder, "train"), "data_batch_1", "not a pickle")
    raises_input_error(lambda: detect_image_format(folder), "data_batch_1", "not a pickle")


@pytest.mark.parametrize("case, needles", [
    ("wrong_width", ("data_batch_2", "'data' is uint8 of shape (3, 3000)", "(N, 3072)")),
    ("wrong_dtype", ("data_batch_2", "float32", "uint8")),
    ("few_labels", ("data_batch_2", "'labels'", "expected 3 integers")),
    ("label_range", ("data_batch_2", "labels value 10", "0..9")),
    ("no_data", ("data_batch_2", "'data' is missing")),
    ("not_dict", ("data_batch_2", "holds a list", "expected a dict")),
    ("missing_file", ("data_batch_2", "missing", "CIFAR-10 python batch")),
    ("truncated", ("data_batch_2", "cannot unpickle", "truncated")),
])
def test_cifar_python_malformed(tmp_path, case, needles):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    path = folder / "data_batch_2"
    good = {b"labels": [1, 2, 3], b"data": np.zeros((3, 3072), np.uint8)}
    bad = {
        "wrong_width": {**good, b"data": np.zeros((3, 3000), np.uint8)},
        "wrong_dtype": {**good, b"data": np.zeros((3, 3072), np.float32)},
        "few_labels": {**good, b"labels": [1, 2]},
        "label_range": {**good, b"labels": [1, 2, 10]},
        "no_data": {b"labels": [1, 2, 3]},
        "not_dict": [1, 2],
    }
    if case in bad:
        dump(bad[case], path)
    elif case == "missing_file":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:100])
    raises_input_error(lambda: read_images(folder, "train"), *needles)
    read_images(folder, "test")  # the other split is unaffected


def test_cifar_binary_malformed(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10_bin(folder)
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 * 2 + 5))
    raises_input_error(lambda: read_images(folder, "train"), "data_batch_3.bin", "6151 bytes", "multiple of 3073")
    record = np.zeros(3073, np.uint8)
    record[0] = 12
    record.tofile(folder / "test_batch.bin")
    raises_input_error(lambda: read_images(folder, "test"), "test_batch.bin", "12", "0..9")
    hundred = tmp_path / "cifar-100-binary"
    write_cifar100_bin(hundred)
    (hundred / "train.bin").write_bytes(bytes(3073))  # CIFAR-10 sized record
    raises_input_error(lambda: read_images(hundred, "train"), "train.bin", "multiple of 3074")


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz, gz_suffix, names", [
    (False, False, "{p}-{k}-idx{d}-ubyte"),
    (True, True, "{p}-{k}-idx{d}-ubyte"),
    (True, False, "{p}-{k}-idx{d}-ubyte"),   # gzip content without the suffix: found by content
    (False, True, "{p}-{k}-idx{d}-ubyte"),   # a .gz name on plain content
    (False, False, "{p}-{k}.idx{d}-ubyte"),  # the dotted spelling of some mirrors
])
def test_mnist_idx_reads_back_exactly(tmp_path, gz, gz_suffix, names):
    folder = tmp_path / "MNIST" / "raw"
    expected = write_idx(folder, gz=gz, gz_suffix=gz_suffix, names=names)
    for split in ("train", "test"):
        images, labels = expected[split]
        s = read_images(folder, split)
        check_set(s, images[..., None], labels, "mnist")
        assert s.images.shape[1:] == (28, 28, 1)
        assert s.class_names == [str(d) for d in range(10)]
    assert detect_image_format(folder) == "mnist"


def test_fashion_mnist_by_folder_name_or_explicit_format(tmp_path):
    fashion = tmp_path / "fashion-mnist"
    expected = write_idx(fashion, gz=True)
    assert detect_image_format(fashion) == "fashion-mnist"
    s = read_images(fashion, "test")
    check_set(s, expected["test"][0][..., None], expected["test"][1], "fashion-mnist")
    assert s.class_names[0] == "T-shirt/top" and s.class_names[9] == "Ankle boot"
    write_idx(tmp_path / "FashionMNIST" / "raw")  # torchvision's layout: the parent names it
    assert detect_image_format(tmp_path / "FashionMNIST" / "raw") == "fashion-mnist"
    plain = tmp_path / "data"
    write_idx(plain)
    assert read_images(plain, "train", format="fashion-mnist").format == "fashion-mnist"
    assert read_images(fashion, "train", format="mnist").format == "mnist"


@pytest.mark.parametrize("case, needles", [
    ("truncated_images", ("train-images-idx3-ubyte", "bytes; expected", "truncated")),
    ("truncated_gz", ("train-images-idx3-ubyte.gz", "truncated")),
    ("wrong_magic", ("train-images-idx3-ubyte", "magic number 2049", "expected 2051")),
    ("labels_magic", ("train-labels-idx1-ubyte", "magic number 2051", "expected 2049")),
    ("count_mismatch", ("train-labels-idx1-ubyte", "4 labels", "expected 5")),
    ("label_range", ("train-labels-idx1-ubyte", "value 10", "0..9")),
    ("missing_labels", ("train-labels-idx1-ubyte", "missing")),
])
def test_idx_malformed(tmp_path, case, needles):
    folder = tmp_path / "mnist"
    gz = case == "truncated_gz"
    write_idx(folder, gz=gz)
    images = folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    labels = folder / "train-labels-idx1-ubyte"
    if case == "truncated_images":
        images.write_bytes(images.read_bytes()[:-7])
    elif case == "truncated_gz":
        images.write_bytes(images.read_bytes()[:-40])
    elif case == "wrong_magic":
        images.write_bytes(struct.pack(">i", 2049) + images.read_bytes()[4:])
    elif case == "labels_magic":
        labels.write_bytes(idx_bytes(np.zeros((5, 2, 2), np.uint8)))
    elif case == "count_mismatch":
        labels.write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    elif case == "label_range":
        labels.write_bytes(idx_bytes(np.array([0, 1, 2, 3, 10], np.uint8)))
    else:
        labels.unlink()
    raises_input_error(lambda: read_images(folder, "train"), *needles)


# ----------------------------------------------------------------------------- SVHN


def test_svhn_reads_back_exactly_with_10_as_0(tmp_path):
    folder = tmp_path / "svhn"
    expected = write_svhn(folder, splits=("train", "test", "extra"))
    for split in ("train", "test", "extra"):
        s = read_images(folder, split)
        check_set(s, *expected[split], "svhn")
        assert s.labels[0] == 0 and s.labels.max() <= 9
    assert detect_image_format(folder) == "svhn"


@pytest.mark.parametrize("case, needles", [
    ("no_X", ("train_32x32.mat", "no variable 'X'", "(32, 32, 3, N)")),
    ("no_y", ("train_32x32.mat", "no variable 'y'")),
    ("X_shape", ("train_32x32.mat", "X is uint8 of shape (28, 28, 3, 4)")),
    ("y_count", ("train_32x32.mat", "y is", "(N, 1)")),
    ("y_range", ("train_32x32.mat", "label 11", "1..10")),
    ("hdf5", ("train_32x32.mat", "MATLAB 7.3 (HDF5)")),
    ("garbage", ("train_32x32.mat", "not a .mat file")),
    ("truncated", ("train_32x32.mat", "cannot read the .mat file")),
])
def test_svhn_malformed(tmp_path, case, needles):
    folder = tmp_path / "svhn"
    write_svhn(folder, n=4)
    path = folder / "train_32x32.mat"
    x, y = rgb(4).transpose(1, 2, 3, 0), np.ones((4, 1), np.uint8)
    content = {"no_X": {"y": y}, "no_y": {"X": x}, "X_shape": {"X": rgb(4, 28, 28).transpose(1, 2, 3, 0), "y": y},
               "y_count": {"X": x, "y": y[:3]}, "y_range": {"X": x, "y": y + 10}}
    if case in content:
        scipy.io.savemat(path, content[case])
    elif case == "hdf5":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    elif case == "garbage":
        path.write_bytes(b"hello world" * 20)
    else:
        path.write_bytes(path.read_bytes()[:300])
    raises_input_error(lambda: read_images(folder, "train"), *needles)


# ----------------------------------------------------------------------------- VeRi-776


def test_veri_reads_ids_cameras_and_pixels(tmp_path):
    folder = tmp_path / "VeRi"
    expected = write_veri(folder)
    train = read_images(folder, "train", size=(16, 16))
    assert train.format == "veri" and train.images.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 2])  # 0002, 0002, 0007, 0010 -> contiguous
    assert train.class_names == ["0002", "0007", "0010"]
    np.testing.assert_array_equal(train.cameras, [2, 3, 4, 13])
    diff = np.abs(train.images.astype(int) - expected["image_train"].astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 8  # JPEG quality 100
    query, gallery = read_images(folder, "query", size=(16, 16)), read_images(folder, "gallery", size=(16, 16))
    np.testing.assert_array_equal(query.labels, [5, 776])  # raw ids, comparable across query and gallery
    np.testing.assert_array_equal(gallery.labels, [5, 5, 776])
    np.testing.assert_array_equal(query.cameras, [1, 19])
    np.testing.assert_array_equal(gallery.cameras, [2, 11, 20])
    assert query.class_names is None and gallery.class_names is None
    assert np.abs(gallery.images.astype(int) - expected["image_test"].astype(int)).mean() < 1.5
    assert detect_image_format(folder) == "veri"
    for split in ("train", "query", "gallery"):
        assert read_images(folder, split, format="veri", size=(16, 16)).cameras.dtype == np.int64


def test_veri_resizes_to_a_fixed_size(tmp_path):
    folder = tmp_path / "VeRi"
    (folder / "image_query").mkdir(parents=True)
    for name, (w, h) in (("0001_c001_00000001_0.jpg", (20, 10)), ("0002_c002_00000002_0.jpg", (7, 30))):
        Image.new("RGB", (w, h), (200, 40, 90)).save(folder / "image_query" / name, quality=100)
    s = read_images(folder, "query", size=(8, 12))
    assert s.images.shape == (2, 8, 12, 3)
    assert np.abs(s.images.astype(int) - np.array([200, 40, 90])).max() <= 3
    assert read_images(folder, "query").images.shape == (2, 256, 256, 3)  # default size
    raises_input_error(lambda: read_images(folder, "query", size=(8,)), "size", "(height, width)")


@pytest.mark.parametrize("case, needles", [
    ("empty", ("image_train", "no images", "0002_c002_00030600_0.jpg")),
    ("missing_dir", ("image_query", "missing")),
    ("bad_name", ("car_12.jpg", "does not match VVVV_cCCC_FFFFFFFF_K.jpg")),
    ("not_jpeg", ("0001_c001_00000001_0.jpg", "not a JPEG")),
    ("corrupt_jpeg", ("0001_c001_00000001_0.jpg", "cannot decode the image")),
])
def test_veri_malformed(tmp_path, case, needles):
    folder = tmp_path / "VeRi"
    split = "query" if case == "missing_dir" else "train"
    (folder / "image_train").mkdir(parents=True)
    if case == "missing_dir":
        Image.new("RGB", (4, 4)).save(folder / "image_train" / "0001_c001_00000001_0.jpg")
    elif case == "bad_name":
        Image.new("RGB", (4, 4)).save(folder / "image_train" / "car_12.jpg", format="JPEG")
    elif case == "not_jpeg":
        Image.new("RGB", (4, 4)).save(folder / "image_train" / "0001_c001_00000001_0.jpg", format="PNG")
    elif case == "corrupt_jpeg":
        path = folder / "image_train" / "0001_c001_00000001_0.jpg"
        Image.new("RGB", (40, 40)).save(path, format="JPEG")
        path.write_bytes(path.read_bytes()[:30])
    raises_input_error(lambda: read_images(folder, split, size=(8, 8)), *needles)


# ----------------------------------------------------------------------------- sklearn digits


def test_digits_embedded_default_split():
    from sklearn.datasets import load_digits

    train, test = read_images("digits", "train"), read_images("digits", "test")
    assert train.format == test.format == "digits" and detect_image_format("digits") == "digits"
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and train.images.min() == 0
    full = load_digits()
    counts = np.bincount(full.target)
    np.testing.assert_array_equal(np.bincount(test.labels), np.round(DIGITS_TEST_FRACTION * counts))
    np.testing.assert_array_equal(np.bincount(train.labels) + np.bincount(test.labels), counts)
    # the two splits partition the full set (values 0..16 scaled to 0..255)
    scaled = np.rint(full.images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    got = np.concatenate([train.images, test.images]).reshape(1797, -1)
    np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], scaled[np.lexsort(scaled.T[::-1])])
    again = read_images("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)


# ----------------------------------------------------------------------------- entry-point errors


def test_unknown_split_lists_the_valid_ones(tmp_path):
    write_veri(tmp_path / "VeRi")
    raises_input_error(lambda: read_images(tmp_path / "VeRi", "test"), "split", "'test'", "train, query, gallery")
    raises_input_error(lambda: read_images("digits", "val"), "split", "train, test")
    write_svhn(tmp_path / "svhn", n=2)
    raises_input_error(lambda: read_images(tmp_path / "svhn", "valid"), "train, test, extra")


def test_bad_paths_formats_and_options(tmp_path):
    raises_input_error(lambda: read_images(tmp_path / "nope", "train"), "nope", "no such folder")
    (tmp_path / "file.txt").write_text("x")
    raises_input_error(lambda: read_images(tmp_path / "file.txt", "train"), "file.txt", "is a file")
    (tmp_path / "empty").mkdir()
    raises_input_error(lambda: read_images(tmp_path / "empty", "train"), "empty", "no known image dataset")
    raises_input_error(lambda: read_images("digits", "train", format="png"), "format", "'png'", "cifar10")
    raises_input_error(lambda: read_images("digits", "train", size=(8, 8)), "option size", "digits")
    raises_input_error(lambda: read_images("digits", "train", format="svhn"), "format", "bundled digits")
    write_svhn(tmp_path / "data" / "svhn", n=2)
    write_idx(tmp_path / "data" / "mnist")
    raises_input_error(lambda: read_images(tmp_path / "data", "train"), "several image datasets", "svhn", "mnist")
    assert read_images(tmp_path / "data", "train", format="svhn").format == "svhn"
    raises_input_error(lambda: read_images(tmp_path / "data" / "svhn", "train", format="mnist"), "no known")


def test_every_format_is_covered():
    assert set(FORMATS) == {"cifar10", "cifar100", "cifar10-bin", "cifar100-bin", "mnist", "fashion-mnist", "svhn",
                            "veri", "digits"}
    for fmt in FORMATS.values():
        assert fmt.splits and fmt.description
