"""What the report's example panel shows, per training and per test example, and its galleries.

Columns come from the saved analyses that are current (:mod:`.saved`), plus two computed here
in one pass over the runs: the share of runs that classify each example correctly, and, for
training examples of held-out runs, the same share over the runs that did not train on it.

Training example ``i``: ``label`` (the dataset's), ``given`` (the label the runs trained with,
when all runs share it), ``acc`` and ``acc_out``, ``n_out``, ``mem`` and ``mem_se``
(memorization), ``cscore``, ``nn`` / ``nn_k`` (nearest training examples by the kernel, with the
values), ``infl_test`` / ``infl_value`` (the test examples it influences most) and the audit's
``issue``, ``suggested``, ``quality``, ``dup``, ``outlier``. Test example ``t``: ``label``,
``acc``, ``nn`` / ``nn_k``, ``infl_train`` / ``infl_value`` (its top influencers), ``leak``.
Missing values are None.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from ...population import Population
from ...streaming import run_blocks
from .saved import Saved

TOP = 5  # neighbours and influences listed per example


@dataclass
class ExampleData:
    """``train``, ``test``: column name -> ``(N,)`` or ``(N, k)`` array (None where absent)."""

    train: dict[str, np.ndarray] = field(default_factory=dict)
    test: dict[str, np.ndarray] = field(default_factory=dict)


def run_accuracy(pop: Population, runs: np.ndarray, split: str, labels: np.ndarray, masked: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(acc, acc_out, n_out)``: per example, the share of ``runs`` that classify it as
    ``labels``, and (``masked``) that share over the runs that did not train on it."""
    n = labels.size
    right = np.zeros(n)
    right_out = np.zeros(n)
    n_out = np.zeros(n, dtype=np.int64)
    for block in run_blocks(runs, 32):
        correct = pop.read(f"logits/{split}", block).argmax(-1) == labels  # (b, N)
        right += correct.sum(0)
        if masked:
            out = ~pop.read("mask/train", block).astype(bool)
            right_out += (correct & out).sum(0)
            n_out += out.sum(0)
    acc = right / max(runs.size, 1)
    if not masked:
        return acc, None, None
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc, np.where(n_out > 0, right_out / n_out, np.nan), n_out


def collect_examples(pop: Population, runs: np.ndarray, current: dict[str, Saved]) -> ExampleData:
    """The panel's columns (see the module) from the ``current`` saved analyses."""
    from ...analysis.audit.outofsample import training_labels

    data = ExampleData()
    tr, te = data.train, data.test
    tr["label"] = pop.targets("train")
    has_test = "logits/test" in pop.arrays
    te["label"] = pop.targets("test") if has_test else np.zeros(0, dtype=np.int64)
    if runs.size and "logits/train" in pop.arrays:
        try:
            tr["given"] = training_labels(pop, runs)
        except InputError:
            tr["given"] = None  # per-run labels: no single given label
        given = tr["given"] if tr["given"] is not None else tr["label"]
        tr["acc"], tr["acc_out"], tr["n_out"] = run_accuracy(pop, runs, "train", given, "mask/train" in pop.arrays)
    if runs.size and has_test:
        te["acc"], _, _ = run_accuracy(pop, runs, "test", te["label"], False)
    if "memorization" in current:
        tr["mem"], tr["mem_se"] = current["memorization"].array("estimate"), current["memorization"].array("se")
    if "cscore" in current:
        tr["cscore"] = current["cscore"].array("cscore")
    for split, cols in (("train", tr), ("test", te)):
        nb = current.get(f"kernel-{split}")
        if nb is not None:
            cols["nn"], cols["nn_k"] = nb.array("indices")[:, :TOP], nb.array("values")[:, :TOP]
    audit = current.get("audit")
    if audit is not None:
        _audit_columns(audit, tr, te)
    influence = current.get("influence")
    if influence is not None:
        _influence_columns(influence, tr, te)
    return data


def _audit_columns(audit: Saved, tr: dict, te: dict) -> None:
    params = audit.params
    R = max(int(audit.runs.size) if audit.runs is not None else 2, 2)
    scale = R / (R - 1)
    tr["issue"] = audit.array("is_label_issue")
    tr["suggested"] = audit.array("suggested_label")
    probs, labels = audit.array("probs"), audit.array("labels")
    if probs is not None and labels is not None:
        tr["quality"] = probs[np.arange(labels.size), labels].astype(np.float64)
    kernel = audit.array("kernel")
    if kernel is not None:
        tr["dup"] = kernel.astype(np.float64) * scale >= params.get("near_duplicate", 0.98)
        if "nn" not in tr:
            tr["nn"], tr["nn_k"] = audit.array("nearest_train")[:, None], kernel[:, None]
        score = audit.array("outlier_score")
        count = int(round(params.get("outlier_fraction", 0.01) * score.size))
        flag = np.zeros(score.size, dtype=bool)
        flag[np.argsort(-score, kind="stable")[:count]] = True
        tr["outlier"] = flag
    test_kernel = audit.array("test_kernel")
    if test_kernel is not None:
        te["leak"] = test_kernel.astype(np.float64) * scale >= params.get("leak", 0.98)
        if "nn" not in te:
            te["nn"], te["nn_k"] = audit.array("test_nearest_train")[:, None], test_kernel[:, None]


def _influence_columns(influence: Saved, tr: dict, te: dict) -> None:
    top_index, top_value = influence.array("top_index"), influence.array("top_value")
    if top_index is not None:
        te["infl_train"], te["infl_value"] = top_index[:, :TOP], top_value[:, :TOP]
    train, test, value = (influence.array(f"pairs/{c}") for c in ("train_index", "test_index", "infl"))
    if train is None or train.size == 0:
        return
    N = tr["label"].size
    order = np.lexsort((-value, train))  # by training example, most influential first
    train, test, value = train[order], test[order], value[order]
    first = np.searchsorted(train, np.arange(N))
    rank = np.arange(train.size) - first[train]
    keep = rank < TOP
    idx = np.full((N, TOP), -1, dtype=np.int64)
    val = np.full((N, TOP), np.nan)
    idx[train[keep], rank[keep]] = test[keep]
    val[train[keep], rank[keep]] = value[keep]
    tr["infl_test"], tr["infl_value"] = idx, val


# ------------------------------------------------------------------------------- galleries


def _item(split: str, index: int, caption: str) -> dict:
    return {"split": split, "index": int(index), "caption": caption}


def per_class_extremes(values: np.ndarray, labels: np.ndarray, classes: list[str], count: int, largest: bool, fmt: str) -> list[dict]:
    """The ``count`` largest (or smallest) finite ``values`` of each class, class after class."""
    out = []
    for c, name in enumerate(classes):
        idx = np.flatnonzero((labels == c) & np.isfinite(values))
        order = idx[np.argsort(-values[idx] if largest else values[idx], kind="stable")[:count]]
        out += [_item("train", i, f"{name} {fmt.format(values[i])}") for i in order]
    return out


def pair_item(a: dict, b: dict, caption: str) -> dict:
    return {"pair": [a, b], "caption": caption}
