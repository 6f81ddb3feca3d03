"""Dataset loaders (real on-disk formats, written tiny into tmp_path) and the randomizing transforms."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manyruns.data import (
    DATA_ENV,
    Dataset,
    DatasetMismatchError,
    DatasetNotFoundError,
    check_fingerprint,
    load_dataset,
)
from manyruns.data.loaders import FASHION_CLASSES, IDX_FILES
from manyruns.data.transforms import corrupt_labels, randomize_inputs, subset_mask

# --------------------------------------------------------------------------------------------
# Writers for the on-disk formats
# --------------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, dims: tuple[int, ...] | None = None) -> None:
    """Gzipped idx: magic 0, 0, 0x08 (unsigned byte), ndim; big-endian uint32 dims; uint8 data.

    ``dims`` overrides the header (to write a corrupted file)."""
    array = np.asarray(array, dtype=np.uint8)
    dims = array.shape if dims is None else dims
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes(order="C"))


def write_idx_dataset(root: Path, folder: str, rng: np.random.Generator, n_train: int = 7, n_test: int = 4) -> dict:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=n_test).astype(np.uint8),
    }
    # make sure the extremes and every label end up in the files at least once
    arrays["x_train"][0] = 0
    arrays["x_train"][1] = 255
    arrays["y_train"][:] = np.arange(n_train) % 10
    for name, key in zip(IDX_FILES, ("x_train", "y_train", "x_test", "y_test")):
        write_idx(d / name, arrays[key])
    return arrays


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(n, 3, 32, 32) -> (n, 3072) rows: the 1024 red values, then green, then blue, each row-major."""
    return np.stack([np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()]) for img in images]).astype(np.uint8)


def dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_BATCH_SIZES = (2, 3, 1, 2, 4)


def write_cifar10(root: Path, rng: np.random.Generator, n_test: int = 3) -> dict:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for i, n in enumerate(CIFAR10_BATCH_SIZES, start=1):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, size=n)]
        if i == 1:
            x[0] = 255  # all-white image: luma 0.9999 * 255 must still round (and clip) to 255
            x[1] = 0
        dump(d / f"data_batch_{i}", {b"batch_label": f"training batch {i} of 5".encode(), b"data": cifar_rows(x), b"labels": y})
        xs.append(x)
        ys.append(y)
    x_test = rng.integers(0, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    y_test = [int(v) for v in rng.integers(0, 10, size=n_test)]
    dump(d / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"data": cifar_rows(x_test), b"labels": y_test})
    dump(d / "batches.meta", {b"label_names": [s.encode() for s in CIFAR10_NAMES], b"num_cases_per_batch": 10000, b"num_vis": 3072})
    return {"x_train": np.concatenate(xs), "y_train": [v for y in ys for v in y], "x_test": x_test, "y_test": y_test}


def luma_float64(x: np.ndarray) -> np.ndarray:
    """Independent reference: (N, 3, H, W) -> (N, 1, H, W) float64 BT.601 luma, unrounded."""
    x = x.astype(np.float64)
    return (0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2])[:, None]


def assert_grayscale_matches(gray: np.ndarray, rgb: np.ndarray) -> None:
    assert gray.dtype == np.uint8
    assert gray.shape == (rgb.shape[0], 1, *rgb.shape[2:])
    ref = luma_float64(rgb)
    expected = np.clip(np.round(ref), 0, 255)
    diff = np.abs(gray.astype(np.float64) - expected)
    assert diff.max() <= 1
    # any disagreement can only come from float32 vs float64 rounding right at a .5 boundary
    frac = ref - np.floor(ref)
    assert np.all(np.abs(frac[diff > 0] - 0.5) < 1e-3)
    assert diff.mean() < 1e-3


# --------------------------------------------------------------------------------------------
# mnist / fashion-mnist
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_load_exactly(tmp_path, name):
    written = write_idx_dataset(tmp_path, name, np.random.default_rng(0))
    ds = load_dataset(name, tmp_path)
    assert ds.name == name
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (4, 1, 28, 28) and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train[:, 0], written["x_train"])
    np.testing.assert_array_equal(ds.x_test[:, 0], written["x_test"])
    np.testing.assert_array_equal(ds.y_train, written["y_train"].astype(np.int64))
    np.testing.assert_array_equal(ds.y_test, written["y_test"].astype(np.int64))
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.n_train == 7 and ds.n_test == 4
    assert Path(ds.source) == tmp_path / name
    if name == "fashion-mnist":
        assert ds.classes == (
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        )  # fmt: skip
        assert ds.classes == FASHION_CLASSES
    else:
        assert ds.classes == tuple("0123456789")


def test_idx_corrupted_header_names_the_file(tmp_path):
    write_idx_dataset(tmp_path, "mnist", np.random.default_rng(1))
    images = np.zeros((7, 28, 28), dtype=np.uint8)
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    write_idx(bad, images, dims=(8, 28, 28))  # header promises one image more than the file holds
    with pytest.raises(ValueError, match=re.escape(str(bad))) as info:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert not isinstance(info.value, DatasetNotFoundError)


def test_idx_bad_magic_names_the_file(tmp_path):
    write_idx_dataset(tmp_path, "mnist", np.random.default_rng(2))
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:  # 0x0D: float data, not unsigned bytes
        f.write(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 4) + b"\0" * 16)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


# --------------------------------------------------------------------------------------------
# cifar10 / cifar10-gs / cifar100
# --------------------------------------------------------------------------------------------


def test_cifar10_channel_major_and_batch_order(tmp_path):
    written = write_cifar10(tmp_path, np.random.default_rng(3))
    ds = load_dataset("cifar10", tmp_path)
    n_train = sum(CIFAR10_BATCH_SIZES)
    assert ds.name == "cifar10"
    assert ds.x_train.shape == (n_train, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(ds.x_train, written["x_train"])
    np.testing.assert_array_equal(ds.x_test, written["x_test"])
    # spot-check the row layout by hand: row[c*1024 + h*32 + w] is pixel (c, h, w)
    row = cifar_rows(written["x_test"][1:2])[0]
    for c, h, w in [(0, 0, 0), (1, 0, 0), (2, 31, 31), (1, 5, 17), (0, 31, 0)]:
        assert ds.x_test[1, c, h, w] == row[c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(ds.y_train, np.array(written["y_train"], dtype=np.int64))
    np.testing.assert_array_equal(ds.y_test, np.array(written["y_test"], dtype=np.int64))
    assert ds.y_train.dtype == np.int64
    assert ds.classes == tuple(CIFAR10_NAMES)


def test_cifar10_grayscale(tmp_path):
    written = write_cifar10(tmp_path, np.random.default_rng(4))
    ds = load_dataset("cifar10-gs", tmp_path)
    assert ds.name == "cifar10-gs"
    assert ds.x_train.shape == (sum(CIFAR10_BATCH_SIZES), 1, 32, 32)
    assert ds.x_test.shape == (3, 1, 32, 32)
    assert_grayscale_matches(ds.x_train, written["x_train"])
    assert_grayscale_matches(ds.x_test, written["x_test"])
    assert (ds.x_train[0] == 255).all() and (ds.x_train[1] == 0).all()
    np.testing.assert_array_equal(ds.y_train, np.array(written["y_train"], dtype=np.int64))
    assert ds.classes == tuple(CIFAR10_NAMES)


def test_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(5)
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    x_train = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    fine_train, coarse_train = [99, 0, 57, 23, 81, 40], [3, 19, 7, 0, 1, 2]
    fine_test, coarse_test = [12, 98, 64], [5, 6, 7]
    dump(d / "train", {b"data": cifar_rows(x_train), b"fine_labels": fine_train, b"coarse_labels": coarse_train})
    dump(d / "test", {b"data": cifar_rows(x_test), b"fine_labels": fine_test, b"coarse_labels": coarse_test})
    fine_names = [f"fine{i:02d}" for i in range(100)]
    dump(d / "meta", {b"fine_label_names": [s.encode() for s in fine_names], b"coarse_label_names": [f"c{i}".encode() for i in range(20)]})
    ds = load_dataset("cifar100", tmp_path)
    assert ds.name == "cifar100"
    assert ds.num_classes == 100 and ds.classes == tuple(fine_names)
    np.testing.assert_array_equal(ds.y_train, fine_train)
    np.testing.assert_array_equal(ds.y_test, fine_test)
    assert ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.x_train, x_train)
    np.testing.assert_array_equal(ds.x_test, x_test)


def test_cifar_bad_row_length_is_reported(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(6))
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    dump(path, {b"data": np.zeros((2, 3000), dtype=np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------------------------
# svhn / svhn-gs
# --------------------------------------------------------------------------------------------


def write_svhn(root: Path, rng: np.random.Generator, n_train: int = 5, n_test: int = 3) -> dict:
    from scipy.io import savemat

    d = root / "svhn"
    d.mkdir()
    out = {}
    for split, n, fname in (("train", n_train, "train_32x32.mat"), ("test", n_test, "test_32x32.mat")):
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as in the real files
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # 1..10, 10 meaning the digit 0
        y[0, 0] = 10
        if n > 1:
            y[1, 0] = 1
        savemat(d / fname, {"X": X, "y": y})
        out[split] = (X, y)
    return out


def test_svhn_transpose_and_zero_label(tmp_path):
    written = write_svhn(tmp_path, np.random.default_rng(7))
    ds = load_dataset("svhn", tmp_path)
    assert ds.name == "svhn" and ds.classes == tuple("0123456789")
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        X, Y = written[split]
        n = X.shape[3]
        assert x.shape == (n, 3, 32, 32) and x.dtype == np.uint8
        for i in range(n):
            for c in range(3):
                np.testing.assert_array_equal(x[i, c], X[:, :, c, i])
        assert x[0, 2, 7, 3] == X[7, 3, 2, 0]  # row index h first, then column w
        assert y.dtype == np.int64 and y.shape == (n,)
        expected = Y[:, 0].astype(np.int64)
        expected[expected == 10] = 0
        np.testing.assert_array_equal(y, expected)
        assert y[0] == 0 and 10 not in y
    assert ds.y_train[1] == 1


def test_svhn_grayscale(tmp_path):
    written = write_svhn(tmp_path, np.random.default_rng(8))
    ds = load_dataset("svhn-gs", tmp_path)
    assert ds.name == "svhn-gs"
    assert ds.x_train.shape == (5, 1, 32, 32) and ds.x_test.shape == (3, 1, 32, 32)
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        rgb = written[split][0].transpose(3, 2, 0, 1)
        assert_grayscale_matches(x, rgb)


# --------------------------------------------------------------------------------------------
# Missing data and the data root
# --------------------------------------------------------------------------------------------


def test_no_data_dir_and_no_env(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist")
    msg = str(info.value)
    assert "MANYRUNS_DATA" in msg
    for f in IDX_FILES:
        assert f in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_file_is_named_with_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    write_idx_dataset(tmp_path, "mnist", np.random.default_rng(9))
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", tmp_path)
    msg = str(info.value)
    assert "missing t10k-labels-idx1-ubyte.gz in" in msg
    assert str(tmp_path / "mnist") in msg
    # only the absent file is reported missing
    missing_part = msg.split(" in ")[0]
    assert "train-images-idx3-ubyte.gz" not in missing_part


@pytest.mark.parametrize(
    "name, folder, a_file",
    [
        ("fashion-mnist", "fashion-mnist", "train-labels-idx1-ubyte.gz"),
        ("cifar10", "cifar-10-batches-py", "batches.meta"),
        ("cifar10-gs", "cifar-10-batches-py", "data_batch_5"),
        ("cifar100", "cifar-100-python", "meta"),
        ("svhn", "svhn", "train_32x32.mat"),
        ("svhn-gs", "svhn", "test_32x32.mat"),
    ],
)
def test_empty_data_dir_names_folder_and_files(tmp_path, monkeypatch, name, folder, a_file):
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path)
    msg = str(info.value)
    assert str(tmp_path / folder) in msg and a_file in msg


def test_env_var_is_the_data_root(tmp_path, monkeypatch):
    written = write_idx_dataset(tmp_path / "root", "mnist", np.random.default_rng(10))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "root"))
    ds = load_dataset("mnist")
    np.testing.assert_array_equal(ds.x_train[:, 0], written["x_train"])
    assert Path(ds.source) == tmp_path / "root" / "mnist"
    # an explicit data_dir wins over the environment
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "elsewhere"))):
        load_dataset("mnist")
    assert load_dataset("mnist", tmp_path / "root").n_train == 7


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_fixed_split_matches_sklearn(monkeypatch):
    from sklearn.datasets import load_digits

    monkeypatch.delenv(DATA_ENV, raising=False)
    ds = load_dataset("digits")
    bunch = load_digits()
    idx = np.arange(len(bunch.target))
    test = idx % 5 == 4
    assert ds.n_train == 1438 and ds.n_test == 359
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds.y_train, bunch.target[~test])
    np.testing.assert_array_equal(ds.y_test, bunch.target[test])
    expected = np.array([[round(float(v) * 255 / 16) for v in img.ravel()] for img in bunch.images], dtype=np.int64).reshape(-1, 8, 8)
    np.testing.assert_array_equal(ds.x_train[:, 0], expected[~test])
    np.testing.assert_array_equal(ds.x_test[:, 0], expected[test])
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    assert set(np.unique(ds.y_test)) == set(range(10)) and set(np.unique(ds.y_train)) == set(range(10))


# --------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------


def make_ds(rng_seed: int = 0, **overrides) -> Dataset:
    rng = np.random.default_rng(rng_seed)
    parts = dict(
        x_train=rng.integers(0, 256, size=(6, 1, 4, 4), dtype=np.uint8),
        y_train=rng.integers(0, 3, size=6).astype(np.int64),
        x_test=rng.integers(0, 256, size=(2, 1, 4, 4), dtype=np.uint8),
        y_test=rng.integers(0, 3, size=2).astype(np.int64),
    )
    parts.update(overrides)
    return Dataset("toy", classes=("a", "b", "c"), **parts)


def test_fingerprint_equal_for_same_data_and_changes_on_any_edit():
    a, b = make_ds(), make_ds()
    assert a.x_train is not b.x_train
    fa = a.fingerprint()
    assert fa == b.fingerprint()
    assert fa["train_shape"] == [6, 1, 4, 4] and fa["num_classes"] == 3
    check_fingerprint(fa, b, "the store")  # no error

    y = a.y_train.copy()
    y[3] = (y[3] + 1) % 3
    relabelled = make_ds(y_train=y)
    assert relabelled.fingerprint()["labels_sha256"] != fa["labels_sha256"]
    assert relabelled.fingerprint()["pixels_sha256"] == fa["pixels_sha256"]

    x = a.x_test.copy()
    x[1, 0, 2, 3] ^= 1
    repainted = make_ds(x_test=x)
    assert repainted.fingerprint()["pixels_sha256"] != fa["pixels_sha256"]
    assert repainted.fingerprint()["labels_sha256"] == fa["labels_sha256"]

    # moving an image from test to train changes the fingerprint even though the bytes are the same
    moved = make_ds(
        x_train=np.concatenate([a.x_train, a.x_test[:1]]),
        y_train=np.concatenate([a.y_train, a.y_test[:1]]),
        x_test=a.x_test[1:],
        y_test=a.y_test[1:],
    )
    assert moved.fingerprint() != fa

    with pytest.raises(DatasetMismatchError, match="labels"):
        check_fingerprint(fa, relabelled, "the store")
    with pytest.raises(DatasetMismatchError, match="pixels"):
        check_fingerprint(fa, repainted, "the store")
    # a shape change is spelled out (and is not mistaken for a hash: "shape" contains "sha")
    with pytest.raises(DatasetMismatchError) as info:
        check_fingerprint(fa, moved, "the store")
    msg = str(info.value)
    assert "train_shape: store has [6, 1, 4, 4], data has [7, 1, 4, 4]" in msg
    assert "test_shape: store has [2, 1, 4, 4], data has [1, 1, 4, 4]" in msg
    assert "the store" in msg and "toy" in msg


def test_fingerprint_of_loaded_data_is_stable(tmp_path):
    write_idx_dataset(tmp_path, "mnist", np.random.default_rng(11))
    first = load_dataset("mnist", tmp_path).fingerprint()
    second = load_dataset("mnist", tmp_path)
    assert second.fingerprint() == first
    check_fingerprint(first, second, "the store")
    # one pixel changed on disk: the loaded data no longer matches
    x = second.x_train[:, 0].copy()
    x[2, 10, 10] ^= 0x80
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", x)
    with pytest.raises(DatasetMismatchError, match=re.escape(str(tmp_path / "mnist"))):
        check_fingerprint(first, load_dataset("mnist", tmp_path), "the store")


# --------------------------------------------------------------------------------------------
# Transforms: subset_mask
# --------------------------------------------------------------------------------------------


def test_subset_mask_exact_counts():
    rng = np.random.default_rng(12)
    for n, ratio in [(10, 0.5), (1000, 0.25), (7, 0.3), (60000, 0.1), (101, 0.999)]:
        mask = subset_mask(n, ratio, rng)
        assert mask.dtype == np.bool_ and mask.shape == (n,)
        assert mask.sum() == round(ratio * n)
    assert subset_mask(50, 1.0, rng).all()
    assert subset_mask(50, 0.001, rng).sum() == 1  # never empty
    # the same seed draws the same subset, another seed a different one
    m1 = subset_mask(1000, 0.5, np.random.default_rng(1))
    assert np.array_equal(m1, subset_mask(1000, 0.5, np.random.default_rng(1)))
    assert not np.array_equal(m1, subset_mask(1000, 0.5, np.random.default_rng(2)))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), ratio=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_subset_mask_size_property(n, ratio, seed):
    mask = subset_mask(n, ratio, np.random.default_rng(seed))
    assert mask.shape == (n,) and mask.dtype == np.bool_
    expected = n if ratio >= 1.0 else max(1, round(ratio * n))
    assert int(mask.sum()) == expected


# --------------------------------------------------------------------------------------------
# Transforms: corrupt_labels
# --------------------------------------------------------------------------------------------


def five_sigma(p: float, n: int) -> float:
    return 5 * np.sqrt(p * (1 - p) / n)


def test_corrupt_labels_p0_is_identity():
    labels = np.random.default_rng(13).integers(0, 10, size=1000)
    out = corrupt_labels(labels, 0.0, 10, np.random.default_rng(0))
    assert out.dtype == np.int64 and out is not labels
    np.testing.assert_array_equal(out, labels)
    out = corrupt_labels(labels, 0.0, 10, np.random.default_rng(0), exclude_true=True)
    np.testing.assert_array_equal(out, labels)


def test_corrupt_labels_p1_exclude_true_always_wrong():
    C, n = 10, 50_000
    labels = np.random.default_rng(14).integers(0, C, size=n)
    before = labels.copy()
    out = corrupt_labels(labels, 1.0, C, np.random.default_rng(1), exclude_true=True)
    np.testing.assert_array_equal(labels, before)  # input untouched
    assert (out != labels).all()
    assert out.min() >= 0 and out.max() < C
    # replacements are uniform over the other C - 1 classes
    for c in range(C):
        others = out[labels == c]
        counts = np.bincount(others, minlength=C)
        assert counts[c] == 0
        frac = counts[np.arange(C) != c] / others.size
        assert np.all(np.abs(frac - 1 / (C - 1)) < five_sigma(1 / (C - 1), others.size))


def test_corrupt_labels_p1_keeps_about_one_in_c():
    C, n = 10, 200_000
    labels = np.random.default_rng(15).integers(0, C, size=n)
    out = corrupt_labels(labels, 1.0, C, np.random.default_rng(2), exclude_true=False)
    kept = np.mean(out == labels)
    assert abs(kept - 1 / C) < five_sigma(1 / C, n)
    counts = np.bincount(out, minlength=C) / n
    assert np.all(np.abs(counts - 1 / C) < five_sigma(1 / C, n))


@pytest.mark.parametrize("C", [2, 10, 100])
def test_corrupt_labels_p03_changes_expected_fraction(C):
    n, p = 200_000, 0.3
    labels = np.random.default_rng(16).integers(0, C, size=n)
    out = corrupt_labels(labels, p, C, np.random.default_rng(3), exclude_true=False)
    changed = np.mean(out != labels)
    q = p * (C - 1) / C
    assert abs(changed - q) < five_sigma(q, n)
    out = corrupt_labels(labels, p, C, np.random.default_rng(3), exclude_true=True)
    changed = np.mean(out != labels)
    assert abs(changed - p) < five_sigma(p, n)


@settings(max_examples=100, deadline=None)
@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=200),
    p=st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0),
    exclude_true=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_corrupt_labels_properties(labels, p, exclude_true, seed):
    y = np.array(labels, dtype=np.int64)
    before = y.copy()
    out = corrupt_labels(y, p, 10, np.random.default_rng(seed), exclude_true=exclude_true)
    np.testing.assert_array_equal(y, before)
    assert out.shape == y.shape and out.dtype == np.int64
    assert out.min() >= 0 and out.max() < 10
    if p == 0.0:
        np.testing.assert_array_equal(out, y)
    if p == 1.0 and exclude_true:
        assert (out != y).all()
    # the same seed reproduces the same corruption
    again = corrupt_labels(y, p, 10, np.random.default_rng(seed), exclude_true=exclude_true)
    np.testing.assert_array_equal(out, again)


# --------------------------------------------------------------------------------------------
# Transforms: randomize_inputs
# --------------------------------------------------------------------------------------------


def distinct_pixel_images(n: int, c: int, side: int = 8) -> np.ndarray:
    """(n, c, side, side) uint8 where every image-channel holds distinct values: value - offset = position."""
    hw = side * side
    offsets = (np.arange(n)[:, None] * 7 + np.arange(c)[None, :] * 64) % (256 - hw + 1)
    x = offsets[:, :, None] + np.arange(hw)[None, None, :]
    return x.reshape(n, c, side, side).astype(np.uint8), offsets


def recovered_perms(out: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n, c, hw): out[i, ch].ravel()[j] was input position perm[i, ch, j]."""
    n, c = out.shape[:2]
    return out.reshape(n, c, -1).astype(np.int64) - offsets[:, :, None]


def test_shuffled_pixels_one_permutation_for_all():
    x, offsets = distinct_pixel_images(20, 3)
    out = randomize_inputs(x, "shuffled-pixels", np.random.default_rng(17))
    assert out.shape == x.shape and out.dtype == np.uint8
    perms = recovered_perms(out, offsets)
    perm = perms[0, 0]
    assert sorted(perm) == list(range(64)) and not np.array_equal(perm, np.arange(64))
    assert (perms == perm).all()  # every image and every channel
    # on random images: each image keeps its pixel values, and the same perm explains all of them
    xr = np.random.default_rng(18).integers(0, 256, size=(30, 3, 8, 8), dtype=np.uint8)
    outr = randomize_inputs(xr, "shuffled-pixels", np.random.default_rng(17))
    flat_in, flat_out = xr.reshape(30, 3, 64), outr.reshape(30, 3, 64)
    np.testing.assert_array_equal(np.sort(flat_in, axis=2), np.sort(flat_out, axis=2))
    np.testing.assert_array_equal(flat_out, flat_in[:, :, perm])


def test_permuted_pixels_per_image_permutations():
    x, offsets = distinct_pixel_images(20, 3)
    out = randomize_inputs(x, "permuted-pixels", np.random.default_rng(19))
    assert out.shape == x.shape and out.dtype == np.uint8
    perms = recovered_perms(out, offsets)
    for i in range(20):
        assert sorted(perms[i, 0]) == list(range(64))
        assert (perms[i] == perms[i, 0]).all()  # same permutation for every channel of an image
    distinct = {tuple(perms[i, 0]) for i in range(20)}
    assert len(distinct) == 20  # a different permutation for each image
    xr = np.random.default_rng(20).integers(0, 256, size=(30, 1, 8, 8), dtype=np.uint8)
    outr = randomize_inputs(xr, "permuted-pixels", np.random.default_rng(21))
    np.testing.assert_array_equal(np.sort(xr.reshape(30, -1), axis=1), np.sort(outr.reshape(30, -1), axis=1))
    assert not np.array_equal(xr, outr)


def test_random_pixels_span_range_and_ignore_input():
    shape = (200, 3, 8, 8)
    zeros, whites = np.zeros(shape, dtype=np.uint8), np.full(shape, 255, dtype=np.uint8)
    a = randomize_inputs(zeros, "random-pixels", np.random.default_rng(22))
    b = randomize_inputs(whites, "random-pixels", np.random.default_rng(22))
    assert a.dtype == np.uint8 and a.shape == shape
    np.testing.assert_array_equal(a, b)  # identical draws whatever the input
    assert a.min() == 0 and a.max() == 255
    assert len(np.unique(a)) == 256
    n = a.size
    assert abs(a.mean() - 127.5) < 5 * np.sqrt((256**2 - 1) / 12 / n)
    # and uncorrelated with a random input
    xr = np.random.default_rng(23).integers(0, 256, size=shape, dtype=np.uint8)
    c = randomize_inputs(xr, "random-pixels", np.random.default_rng(24))
    r = np.corrcoef(xr.ravel().astype(float), c.ravel().astype(float))[0, 1]
    assert abs(r) < 5 / np.sqrt(n)
    # float inputs: uniform over the input's range, same dtype
    xf = np.random.default_rng(25).uniform(-1.0, 2.0, size=shape).astype(np.float32)
    f = randomize_inputs(xf, "random-pixels", np.random.default_rng(26))
    assert f.dtype == np.float32 and f.shape == shape
    assert f.min() >= xf.min() and f.max() <= xf.max()


def test_gaussian_matches_channel_stats():
    shape = (500, 3, 8, 8)
    mean, std = np.array([100.0, 50.0, 200.0]), np.array([20.0, 10.0, 5.0])
    for x in (np.zeros(shape, dtype=np.uint8), np.zeros(shape, dtype=np.float64)):
        out = randomize_inputs(x, "gaussian", np.random.default_rng(27), stats=(mean, std))
        assert out.dtype == np.float32 and out.shape == shape
        per_channel = out.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
        m = per_channel.shape[1]
        assert np.all(np.abs(per_channel.mean(axis=1) - mean) < 5 * std / np.sqrt(m))
        assert np.all(np.abs(per_channel.std(axis=1) - std) < 5 * std / np.sqrt(2 * m))
        assert not np.allclose(out, np.round(out))
    # neither clipped nor rounded to the pixel range: a mean near 255 gives values above it
    wide = randomize_inputs(np.zeros(shape, dtype=np.uint8), "gaussian", np.random.default_rng(28), stats=(np.full(3, 250.0), np.full(3, 30.0)))
    assert wide.max() > 300 and (wide > 255).mean() > 0.3
    low = randomize_inputs(np.zeros(shape, dtype=np.uint8), "gaussian", np.random.default_rng(29), stats=(np.zeros(3), np.ones(3)))
    assert low.min() < -3 and low.max() > 3
    with pytest.raises(ValueError, match="mean, std"):
        randomize_inputs(np.zeros(shape, dtype=np.uint8), "gaussian", np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["none", "shuffled-pixels", "permuted-pixels", "random-pixels", "gaussian"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_randomize_inputs_keeps_shape_and_dtype(kind, dtype):
    """Every kind keeps the shape and dtype, except gaussian inputs: always float32."""
    x = np.random.default_rng(30).integers(0, 256, size=(4, 3, 5, 7)).astype(dtype)
    stats = (np.full(3, 120.0), np.full(3, 40.0))
    out = randomize_inputs(x, kind, np.random.default_rng(31), stats=stats)
    assert out.shape == x.shape and out.dtype == (np.float32 if kind == "gaussian" else x.dtype)
    if kind == "none":
        np.testing.assert_array_equal(out, x)
    else:
        assert out.flags["C_CONTIGUOUS"]
        assert not np.array_equal(out, x)


def test_randomize_inputs_unknown_kind():
    with pytest.raises(ValueError, match="unknown input randomization"):
        randomize_inputs(np.zeros((1, 1, 2, 2), dtype=np.uint8), "blur", np.random.default_rng(0))
