"""Dataset transformations used by randomization tests and held-out training.

Pure functions of arrays and a numpy ``Generator``: the caller picks the random stream.
"""

from __future__ import annotations

import numpy as np


def subset_mask(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """``(n,) bool``: exactly ``max(1, round(ratio * n))`` examples drawn without replacement."""
    k = n if ratio >= 1.0 else max(1, int(round(ratio * n)))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def corrupt_labels(
    labels: np.ndarray,
    p: float,
    num_classes: int,
    rng: np.random.Generator,
    exclude_true: bool = False,
) -> np.ndarray:
    """Replace each label, with probability ``p``, by a uniformly drawn class.

    ``labels``: ``(N,)`` ints. With ``exclude_true`` the replacement is drawn from the other
    ``num_classes - 1`` classes, so every drawn label is wrong; without it (the randomization
    papers' convention) a replacement equals the true label with probability ``1/num_classes``.
    Returns a new ``(N,) int64`` array.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    drawn = rng.random(n) < p
    if exclude_true:
        shift = rng.integers(1, num_classes, size=n)
        replacement = (labels + shift) % num_classes
    else:
        replacement = rng.integers(0, num_classes, size=n)
    return np.where(drawn, replacement, labels)


def corrupt_labels_by_matrix(labels: np.ndarray, p: float, matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class-conditional noise: each label is redrawn, with probability ``p``, from row
    ``labels[i]`` of ``matrix (C, C)`` (the distribution of the noisy label given the true
    class). Returns a new ``(N,) int64`` array."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.shape[0]
    drawn = rng.random(n) < p
    u = rng.random(n)
    cdf = np.cumsum(np.asarray(matrix, dtype=np.float64), axis=1)[labels]  # (N, C)
    replacement = np.minimum((u[:, None] >= cdf).sum(1), cdf.shape[1] - 1)
    return np.where(drawn, replacement, labels)


def fold_mask(n: int, folds: int, fold: int, rng: np.random.Generator) -> np.ndarray:
    """``(n,) bool``: every example but those of ``fold`` in a random partition of ``n`` into
    ``folds`` folds of equal size (up to one example)."""
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[rng.permutation(n)] = np.arange(n) % folds
    return fold_of != fold


def randomize_inputs(x: np.ndarray, kind: str, rng: np.random.Generator, stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Randomize images ``x`` of shape ``(N, C, H, W)`` (uint8 or float).

    shuffled-pixels: one permutation of the H*W pixel positions applied to every image;
    permuted-pixels: an independent permutation per image;
    random-pixels: independent uniform values over the pixel range;
    gaussian: independent normal values with the per-channel ``stats = (mean, std)`` (each
    ``(C,)``, in the units of ``x``), real-valued: float32, neither rounded nor clipped to the
    pixel range, so their mean and standard deviation are the requested ones.
    The same pixel permutation is applied to all channels of an image. Every kind but
    gaussian keeps the dtype of ``x``.
    """
    if kind == "none":
        return x
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    if kind == "shuffled-pixels":
        perm = rng.permutation(h * w)
        out = flat[:, :, perm]
    elif kind == "permuted-pixels":
        perms = np.argsort(rng.random((n, h * w)), axis=1)
        out = np.take_along_axis(flat, perms[:, None, :], axis=2)
    elif kind == "random-pixels":
        if x.dtype == np.uint8:
            out = rng.integers(0, 256, size=flat.shape, dtype=np.uint8)
        else:
            out = rng.uniform(float(x.min()), float(x.max()), size=flat.shape).astype(x.dtype)
    elif kind == "gaussian":
        if stats is None:
            raise ValueError("gaussian inputs need the dataset's (mean, std) per channel")
        mean, std = (np.asarray(s, dtype=np.float32)[None, :, None] for s in stats)
        out = rng.standard_normal(flat.shape, dtype=np.float32)
        out *= std
        out += mean
    else:
        raise ValueError(f"unknown input randomization {kind!r}")
    return np.ascontiguousarray(out.reshape(n, c, h, w))
