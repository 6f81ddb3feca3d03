"""Small files in published layouts for the kernel and import tests: multirun-logits ``log.pt``
files (torch-saved dicts) and a tiny CIFAR-10 in the canonical python batch layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch


def synthetic_logits(runs: int, labels: np.ndarray, num_classes: int = 10, seed: int = 0, signal: float = 2.0) -> np.ndarray:
    """``(runs, N, C)`` float16 logits: a per-example pattern shared by all runs (so that
    examples have a character the kernel can find), the label's class raised, and run noise."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    pattern = np.random.default_rng(1234).normal(size=(n, num_classes))  # the same in every file
    onehot = np.eye(num_classes)[labels]
    noise = rng.normal(size=(runs, n, num_classes))
    return (signal * onehot + pattern + noise).astype(np.float16)


def write_log(
    path: Path,
    runs: int,
    y_train: np.ndarray,
    y_test: np.ndarray,
    num_classes: int = 10,
    seed: int = 0,
    tta: bool = False,
    code: str | None = "print('train')\n",
    **overrides,
) -> dict:
    """Write a multirun-logits file; ``overrides`` replace (or, with value None, drop) keys."""
    obj = {
        "logits": torch.from_numpy(synthetic_logits(runs, y_test, num_classes, seed)),
        "logits_train": torch.from_numpy(synthetic_logits(runs, y_train, num_classes, seed + 1000)),
    }
    if tta:
        obj["logits_tta"] = torch.from_numpy(synthetic_logits(runs, y_test, num_classes, seed + 2000))
    obj["accs"] = (obj["logits"].float().argmax(-1) == torch.from_numpy(np.asarray(y_test))).float().mean(1)
    if code is not None:
        obj["code"] = code
    for key, value in overrides.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    torch.save(obj, path)
    return obj


def write_tiny_cifar10(root: Path, per_batch: int = 8, n_test: int = 12, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches and a test batch of random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, count: int) -> None:
        batch = {b"data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, size=count).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)

    for i in range(1, 6):
        dump(f"data_batch_{i}", per_batch)
    dump("test_batch", n_test)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names}, f)
    return root
