"""Out-of-sample class probabilities of every training example, from the runs that held it out.

For training example ``i``, class ``c`` and the selected runs ``r`` with ``m_r(i) = 0`` (run
``r`` did not train on ``i``)::

    p(i, c) = (1 / n_out(i)) sum_{r: m_r(i) = 0} softmax(l_r(i))_c,      n_out(i) = #{r: m_r(i) = 0}

the mean of the held-out runs' softmax probabilities (NaN where ``n_out(i) = 0``), and in the
same pass the mean ``p_in(i, c)`` of the runs that trained on ``i`` (``n_in(i)`` of them). The given
label of ``i`` is the label the runs trained with (``labels/train``), which must be the same in
every selected run (a planted-noise population with dataset-wide noise qualifies; per-run noise
does not, since then no single label is "given"). Runs are read ``block_size`` at a time;
memory is two float64 sums ``(N, C)`` plus one block of logits ``(b, N, C)`` as float32.
Precision: a block's sums are float32 (at most ``block_size`` probabilities, error below 1e-5),
added into the float64 sums.

**Pooled probabilities** for the label-quality ranking (:func:`pooled`): the training runs'
predictions count with weight ``w``::

    p_w(i, c) = (n_out(i) p(i, c) + w n_in(i) p_in(i, c)) / (n_out(i) + w n_in(i))

A run that trained on ``i`` saw its given label, so it is biased towards it as far as it
memorizes; how far is measured on the doubtful examples ``D`` (:func:`memorized`)::

    m = mean over i in D with n_in(i) > 0 of clip((p_in(i, y_i) - p(i, y_i)) / (1 - p(i, y_i)), 0, 1)

the share of the gap between the held-out probability of the given label and certainty that
training on it closes (0: the runs learn nothing of a doubtful label by seeing it, 1: they fit
it exactly). The audit's default weight is ``w = max(0, 1 - 2 m)``: runs that do not memorize
add their predictions, runs that close half the gap or more add nothing.
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
    ``labels (N,)`` the labels the runs trained with, the runs read ``(R,)``, and the training
    runs' mean ``in_probs (N, C) float32`` (NaN where none trained on the example), ``n_in (N,)``."""

    probs: np.ndarray
    n_out: np.ndarray
    labels: np.ndarray
    runs: np.ndarray
    in_probs: np.ndarray
    n_in: np.ndarray


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
    in_sums = torch.zeros(N, C, dtype=torch.float64)
    n_out = np.zeros(N, dtype=np.int64)
    n_in = np.zeros(N, dtype=np.int64)
    has_mask = "mask/train" in pop.arrays
    for block in run_blocks(runs, block_size):
        if not has_mask:
            break
        trained = pop.read("mask/train", block).astype(bool, copy=False)  # (b, N)
        n_out += (~trained).sum(0)
        n_in += trained.sum(0)
        logits = torch.from_numpy(np.ascontiguousarray(pop.read("logits/train", block))).float()  # (b, N, C)
        probs = logits.softmax(-1)
        inside = torch.from_numpy(trained).float()  # (b, N)
        in_sums += torch.einsum("bn,bnc->nc", inside, probs)  # each (N, C): the block's training runs
        sums += torch.einsum("bn,bnc->nc", 1.0 - inside, probs)  # and its held-out runs
    return OutOfSample(
        probs=_mean(sums, n_out), n_out=n_out, labels=training_labels(pop, runs), runs=np.asarray(runs),
        in_probs=_mean(in_sums, n_in), n_in=n_in,
    )


def _mean(sums, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = (sums.numpy() / counts[:, None]).astype(np.float32)
    probs[counts == 0] = np.nan
    return probs


def memorized(oos: OutOfSample, doubtful: np.ndarray) -> float:
    """``m`` (see the module) over the ``doubtful`` examples (indices or a boolean mask) that
    some run trained on; NaN when there are none."""
    i = np.arange(oos.n_out.size)[doubtful]
    i = i[(oos.n_in[i] > 0) & (oos.n_out[i] > 0)]
    if i.size == 0:
        return float("nan")
    y = oos.labels[i]
    held, trained = oos.probs[i, y].astype(np.float64), oos.in_probs[i, y].astype(np.float64)
    return float(np.clip((trained - held) / np.maximum(1.0 - held, 1e-12), 0.0, 1.0).mean())


def pooled(oos: OutOfSample, weight: float) -> np.ndarray:
    """``p_w (N, C) float64`` (see the module): the held-out runs with weight 1, the training
    runs with ``weight``; NaN where no run held the example out."""
    held = np.nan_to_num(oos.probs.astype(np.float64)) * oos.n_out[:, None]
    trained = np.nan_to_num(oos.in_probs.astype(np.float64)) * (weight * oos.n_in)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (held + trained) / (oos.n_out + weight * oos.n_in)[:, None]
    out[oos.n_out == 0] = np.nan
    return out
