"""One loader per on-disk format. Every loader reads local files only and returns a Dataset.

Data-root convention (``--data-dir`` or ``$MANYRUNS_DATA``)::

    DIR/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
    DIR/fashion-mnist/  (same four names)
    DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    DIR/cifar-100-python/{train,test,meta}
    DIR/svhn/{train_32x32.mat,test_32x32.mat}

``digits`` needs no files: it is scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import Dataset, DatasetFormatError, require_files, resolve_data_root, to_grayscale

IDX_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
MNIST_URL = "https://yann.lecun.com/exdb/mnist/ (mirror: https://ossci-datasets.s3.amazonaws.com/mnist/)"
FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist (files under data/fashion)"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpack into the data root)"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (unpack into the data root)"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat and test_32x32.mat)"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images) with a fixed split: image ``i`` is a test image
    when ``i % 5 == 4`` (359 test, 1,438 train, every writer in both). Pixels 0..16 are rescaled
    to 0..255 (``round(v * 255 / 16)``)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    test = np.arange(len(y)) % 5 == 4
    return Dataset("digits", x[~test], y[~test], x[test], y[test], tuple(str(c) for c in range(10)), source="scikit-learn")


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) idx file into an array of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetFormatError(f"{path}: not an unsigned-byte idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DatasetFormatError(f"{path}: header says {dims} ({expected} bytes) but the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _load_idx_dataset(name: str, folder_name: str, data_dir, url: str, classes: tuple[str, ...]) -> Dataset:
    root = resolve_data_root(data_dir)
    folder = require_files(name, root / folder_name if root else None, IDX_FILES, url, folder_name)
    xtr, ytr, xte, yte = (read_idx(folder / f) for f in IDX_FILES)
    return Dataset(
        name,
        np.ascontiguousarray(xtr[:, None]),
        ytr.astype(np.int64),
        np.ascontiguousarray(xte[:, None]),
        yte.astype(np.int64),
        classes,
        source=str(folder),
    )


def load_mnist(data_dir=None) -> Dataset:
    return _load_idx_dataset("mnist", "mnist", data_dir, MNIST_URL, tuple(str(c) for c in range(10)))


def load_fashion_mnist(data_dir=None) -> Dataset:
    return _load_idx_dataset("fashion-mnist", "fashion-mnist", data_dir, FASHION_URL, FASHION_CLASSES)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _rows_to_images(data: np.ndarray, path: Path) -> np.ndarray:
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetFormatError(f"{path}: expected rows of 3072 bytes (3x32x32, channel-major), got {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(data_dir=None, grayscale: bool = False) -> Dataset:
    root = resolve_data_root(data_dir)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    folder = require_files("cifar10", root / "cifar-10-batches-py" if root else None, files, CIFAR10_URL, "cifar-10-batches-py")
    xs, ys = [], []
    for f in files[:5]:
        batch = _unpickle(folder / f)
        xs.append(_rows_to_images(batch[b"data"], folder / f))
        ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
    test = _unpickle(folder / "test_batch")
    meta = _unpickle(folder / "batches.meta")
    classes = tuple(c.decode() for c in meta[b"label_names"])
    x_train, x_test = np.concatenate(xs), _rows_to_images(test[b"data"], folder / "test_batch")
    if grayscale:
        x_train, x_test = to_grayscale(x_train), to_grayscale(x_test)
    name = "cifar10-gs" if grayscale else "cifar10"
    return Dataset(name, x_train, np.concatenate(ys), x_test, np.asarray(test[b"labels"], dtype=np.int64), classes, source=str(folder))


def load_cifar100(data_dir=None) -> Dataset:
    """CIFAR-100 with its 100 fine labels."""
    root = resolve_data_root(data_dir)
    files = ["train", "test", "meta"]
    folder = require_files("cifar100", root / "cifar-100-python" if root else None, files, CIFAR100_URL, "cifar-100-python")
    train, test, meta = (_unpickle(folder / f) for f in files)
    classes = tuple(c.decode() for c in meta[b"fine_label_names"])
    return Dataset(
        "cifar100",
        _rows_to_images(train[b"data"], folder / "train"),
        np.asarray(train[b"fine_labels"], dtype=np.int64),
        _rows_to_images(test[b"data"], folder / "test"),
        np.asarray(test[b"fine_labels"], dtype=np.int64),
        classes,
        source=str(folder),
    )


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    mat = loadmat(path)
    if "X" not in mat or "y" not in mat:
        raise DatasetFormatError(f"{path}: expected variables 'X' (32, 32, 3, N) and 'y' (N, 1)")
    x = np.asarray(mat["X"], dtype=np.uint8)
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise DatasetFormatError(f"{path}: X has shape {x.shape} and y {mat['y'].shape}; expected (32, 32, 3, N) and (N, 1)")
    y = np.where(y == 10, 0, y)  # the .mat files label the digit 0 as 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def load_svhn(data_dir=None, grayscale: bool = False) -> Dataset:
    root = resolve_data_root(data_dir)
    files = ["train_32x32.mat", "test_32x32.mat"]
    folder = require_files("svhn", root / "svhn" if root else None, files, SVHN_URL, "svhn")
    x_train, y_train = _read_svhn(folder / files[0])
    x_test, y_test = _read_svhn(folder / files[1])
    if grayscale:
        x_train, x_test = to_grayscale(x_train), to_grayscale(x_test)
    return Dataset("svhn-gs" if grayscale else "svhn", x_train, y_train, x_test, y_test, tuple(str(c) for c in range(10)), source=str(folder))


LOADERS = {
    "digits": lambda data_dir=None: load_digits(),
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar10-gs": lambda data_dir=None: load_cifar10(data_dir, grayscale=True),
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "svhn-gs": lambda data_dir=None: load_svhn(data_dir, grayscale=True),
}


def load_dataset(name: str, data_dir=None) -> Dataset:
    """Load a dataset by name from ``data_dir`` (or ``$MANYRUNS_DATA``)."""
    try:
        loader = LOADERS[name]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}") from None
    return loader(data_dir)
