"""The in-memory dataset every loader returns, its fingerprint, and the data-root convention."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

DATA_ENV = "MANYRUNS_DATA"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing: the message names them, the directory and the source."""


class DatasetMismatchError(InputError):
    """The data found on disk is not the data a store was planned with."""


class DatasetFormatError(InputError):
    """A dataset file is not in the format its loader reads."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset held in memory.

    ``x_train (N_train, C, H, W) uint8``, ``y_train (N_train,) int64``,
    ``x_test (N_test, C, H, W) uint8``, ``y_test (N_test,) int64``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    source: str = ""
    _fingerprint: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4 or x.dtype != np.uint8:
                raise ValueError(f"{self.name}: x_{split} must be (N, C, H, W) uint8, got {x.shape} {x.dtype}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"{self.name}: y_{split} has shape {y.shape}, expected ({x.shape[0]},)")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(f"{self.name}: y_{split} has labels outside 0..{len(self.classes) - 1}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images {self.x_train.shape[1:]} and test images {self.x_test.shape[1:]} differ")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def head(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first ``n_train`` training and ``n_test`` test examples (all where None); the
        same object when nothing is cut. A count above the split's size raises ValueError."""
        if n_train is None and n_test is None:
            return self
        for split, n, have in (("train", n_train, self.n_train), ("test", n_test, self.n_test)):
            if n is not None and n > have:
                raise ValueError(f"{split} has {have:,} examples, {n:,} asked for")
        tr, te = slice(n_train), slice(n_test)
        return Dataset(
            self.name, self.x_train[tr].copy(), self.y_train[tr].copy(), self.x_test[te].copy(), self.y_test[te].copy(), self.classes, self.source
        )

    def fingerprint(self) -> dict:
        """Shapes, class count and hashes of the labels and of the pixels.

        Two datasets with equal fingerprints are, for every practical purpose, the same data in
        the same order. Pixels are hashed in full (about 0.1 s for 60,000 MNIST images).
        """
        if not self._fingerprint:
            labels = hashlib.sha256()
            labels.update(np.ascontiguousarray(self.y_train, dtype=np.int64).tobytes())
            labels.update(np.ascontiguousarray(self.y_test, dtype=np.int64).tobytes())
            pixels = hashlib.sha256()
            pixels.update(np.ascontiguousarray(self.x_train).data)
            pixels.update(np.ascontiguousarray(self.x_test).data)
            self._fingerprint.update(
                name=self.name,
                train_shape=list(self.x_train.shape),
                test_shape=list(self.x_test.shape),
                num_classes=self.num_classes,
                labels_sha256=labels.hexdigest(),
                pixels_sha256=pixels.hexdigest(),
            )
        return dict(self._fingerprint)

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation of the training images, ``(C,)`` each, in [0, 255]."""
        x = self.x_train.astype(np.float64)
        return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def check_fingerprint(expected: dict, dataset: Dataset, where: str) -> None:
    found = dataset.fingerprint()
    diffs = [k for k in expected if expected.get(k) != found.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: store has {expected.get(k)!r}, data has {found.get(k)!r}" for k in diffs if not k.endswith("_sha256"))
        hashes = [k for k in diffs if k.endswith("_sha256")]
        if hashes:
            detail = (detail + "; " if detail else "") + "different " + " and ".join(h.split("_")[0] for h in hashes)
        raise DatasetMismatchError(
            f"the {dataset.name} data in {dataset.source or 'memory'} is not the data {where} was planned with ({detail})"
        )


def resolve_data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The data root: ``data_dir`` if given, else ``$MANYRUNS_DATA``, else None."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else None


def require_files(name: str, folder: Path | None, files: list[str], published: str, folder_name: str) -> Path:
    """Return ``folder`` if every file in ``files`` exists in it, else raise a helpful error."""
    if folder is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} needs a data directory: give one (--data-dir DIR, data_dir= in Python) or set {DATA_ENV}=DIR, "
            f"with the files {', '.join(files)} in DIR/{folder_name}/. Published at {published}"
        )
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"dataset {name!r}: missing {', '.join(missing)} in {folder} "
            f"(expected {', '.join(files)}; the data root comes from --data-dir (data_dir= in Python) or {DATA_ENV}). "
            f"Published at {published}"
        )
    return folder


def to_grayscale(x: np.ndarray) -> np.ndarray:
    """``(N, 3, H, W) uint8`` RGB to ``(N, 1, H, W) uint8`` luma (ITU-R BT.601 weights)."""
    gray = np.zeros((x.shape[0], 1, *x.shape[2:]), dtype=np.float32)
    for channel, weight in enumerate((0.2989, 0.5870, 0.1140)):
        gray[:, 0] += np.float32(weight) * x[:, channel]
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)
