"""Out-of-sample class probabilities of every training example, from the runs that held it out.

For training example ``i``, class ``c`` and the selected runs ``r`` with ``m_r(i) = 0`` (run
``r`` did not train on ``i``)::

    p(i, c) = (1 / n_out(i)) sum_{r: m_r(i) = 0} softmax(l_r(i))_c,      n_out(i) = #{r: m_r(i) = 0}

the mean of the held-out runs' softmax probabilities (NaN where ``n_out(i) = 0``). The given
label of ``i`` is the label the runs trained with (``labels/train``), which must be the same in
every selected run (a planted-noise population with dataset-wide noise qualifies; per-run noise
does not, since then no single label is "given"). Runs are read ``block_size`` at a time;
memory is the float64 sums ``(N, C)`` plus one block of logits ``(b, N, C)`` as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError, NotApplicableError
from ...population import Population
from ...streaming import run_blocks


@dataclass
class OutOfSample:
    """``probs (N, C) float32`` (NaN rows where no run held the example out), ``n_out (N,)``,
    ``labels (N,)`` the labels the runs trained with, and the runs read ``(R,)``."""

    probs: np.ndarray
    n_out: np.ndarray
    labels: np.ndarray
    runs: np.ndarray


def training_labels(pop: Population, runs: np.ndarray) -> np.ndarray:
    """``(N,)``: the labels the selected runs trained with, refused if they differ between runs."""
    if "labels/train" not in pop.arrays:
        return pop.targets("train")
    first = np.asarray(pop.read("labels/train", runs[:1])[0], dtype=np.int64)
    for block in run_blocks(runs[1:], 256):
        labels = pop.read("labels/train", block)
        differ = np.flatnonzero((labels != first).any(1))
        if differ.size:
            raise InputError(
                f"{pop.path}: runs {int(runs[0])} and {int(block[differ[0]])} trained with different labels "
                "(per-run label noise), so no label is the given one; audit a population whose runs share "
                "their labels, or pass the labels to audit with labels="
            )
    return first


def out_of_sample(pop: Population, runs: np.ndarray, block_size: int = 32) -> OutOfSample:
    """Mean held-out softmax probabilities of every training example (see the module)."""
    import torch

    if "logits/train" not in pop.arrays:
        raise NotApplicableError(f"{pop.path}: the audit needs logits/train, and this store has none (see the recipe's record.logits)")
    layout = pop.layout
    N, C = int(layout["n_train"]), int(layout["num_classes"])
    sums = torch.zeros(N, C, dtype=torch.float64)
    n_out = np.zeros(N, dtype=np.int64)
    has_mask = "mask/train" in pop.arrays
    for block in run_blocks(runs, block_size):
        if not has_mask:
            break
        out = ~pop.read("mask/train", block).astype(bool, copy=False)  # (b, N)
        if not out.any():
            continue
        n_out += out.sum(0)
        logits = torch.from_numpy(np.ascontiguousarray(pop.read("logits/train", block))).float()  # (b, N, C)
        probs = logits.softmax(-1) * torch.from_numpy(out).unsqueeze(-1)
        sums += probs.sum(0, dtype=torch.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = (sums.numpy() / n_out[:, None]).astype(np.float32)
    probs[n_out == 0] = np.nan
    return OutOfSample(probs=probs, n_out=n_out, labels=training_labels(pop, runs), runs=np.asarray(runs))
