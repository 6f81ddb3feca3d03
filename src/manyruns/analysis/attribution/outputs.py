"""Model outputs on test examples, the targets of datamodels and of the linear datamodeling score.

For test example ``z`` with label ``y`` and a run's logits ``l (C,)``:

* ``margin``: ``l_y - logsumexp_{k != y} l_k`` (TRAK's choice);
* ``neg_loss``: ``-CE = l_y - logsumexp_k l_k``;
* ``prob``: the correct-class probability ``exp(neg_loss)``.

Computed in float64 from the stored float16 logits, a block of runs at a time: ``(R, T)``.
"""

from __future__ import annotations

import numpy as np

from ...population import Population
from ...streaming import run_blocks

OUTPUTS = ("margin", "neg_loss", "prob")


def model_output(logits: np.ndarray, labels: np.ndarray, kind: str) -> np.ndarray:
    """``(b, T)`` outputs of logits ``(b, T, C)`` for labels ``(T,)`` (see the module)."""
    x = np.asarray(logits, dtype=np.float64)
    T = x.shape[1]
    correct = x[:, np.arange(T), labels]  # (b, T)
    if kind == "margin":
        others = x.copy()
        others[:, np.arange(T), labels] = -np.inf
        top = others.max(-1, keepdims=True)
        return correct - (top[..., 0] + np.log(np.exp(others - top).sum(-1)))
    top = x.max(-1, keepdims=True)
    neg_loss = correct - (top[..., 0] + np.log(np.exp(x - top).sum(-1)))
    return neg_loss if kind == "neg_loss" else np.exp(neg_loss)


def outputs(pop: Population, runs: np.ndarray, kind: str, split: str = "test", block_size: int = 64) -> np.ndarray:
    """``(R, T)`` float64: the output ``kind`` of every selected run on every ``split`` example."""
    labels = pop.targets(split)
    parts = [model_output(pop.read(f"logits/{split}", block), labels, kind) for block in run_blocks(runs, block_size)]
    return np.concatenate(parts) if parts else np.zeros((0, labels.size))


def masks_and_outputs(pop: Population, runs: np.ndarray, kind: str, block_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``(masks (R, N) bool, outputs (R, T) float64)`` of the selected runs on the test examples."""
    masks = [pop.read("mask/train", block).astype(bool) for block in run_blocks(runs, block_size)]
    n_train = int(pop.layout["n_train"])
    return (np.concatenate(masks) if masks else np.zeros((0, n_train), dtype=bool)), outputs(pop, runs, kind, "test", block_size)
