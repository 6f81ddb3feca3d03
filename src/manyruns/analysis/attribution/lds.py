"""The linear datamodeling score (LDS) of attribution scores, on evaluation runs of the population.

Evaluation runs are grouped by their training subset (identical masks): subset ``S_j``,
``j = 1..m``, trained with one or more seeds. For attribution scores ``tau (T, N)`` and test
example ``z``::

    f_j(z) = mean over the seeds of S_j of the output (:mod:`.outputs`)
    g_j(z) = sum_{i in S_j} tau_i(z)
    LDS(z) = Spearman_j(f_j(z), g_j(z))          (average ranks for ties)

reported as the mean over test examples (NaN ones, where either side is constant, left out),
with a bootstrap 95% interval over test examples. The **noise ceiling** (two seeds or more
per subset): the seeds of each subset split in two halves, the Spearman over ``j`` between
the halves' means per test example, averaged: how well one training of a subset predicts
another, the most a linear model of the subset can reach at half the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ...errors import InputError, check_choice, check_number
from ...population import Population
from ..contract import Options, Result, options_of
from .outputs import OUTPUTS, masks_and_outputs


@dataclass(frozen=True, kw_only=True)
class LdsOptions(Options):
    """``output`` (:mod:`.outputs`); ``bootstrap``: resamples of the test examples for the
    interval; ``seed`` of the resampling; ``runs``: the evaluation runs."""

    output: str = "margin"
    bootstrap: int = 1000
    seed: int = 0
    block_size: int = 64

    def validate(self) -> None:
        super().validate()
        check_choice("output", self.output, OUTPUTS)
        check_number("bootstrap", self.bootstrap, 0, integer=True)
        check_number("seed", self.seed, 0, integer=True)
        check_number("block_size", self.block_size, 1, integer=True)


@dataclass(kw_only=True)
class LdsResult(Result):
    """``per_test (T,)``: LDS per test example; ``lds`` their mean; ``ci`` its 95% interval;
    ``ceiling``: the noise ceiling (None with one seed per subset); ``subset_sizes (m,)``."""

    name = "lds"
    per_test: np.ndarray
    lds: float
    ci: tuple[float, float]
    ceiling: float | None
    seeds: int
    subset_sizes: np.ndarray
    notes: list[str] = field(default_factory=list)
    options: LdsOptions = field(default_factory=LdsOptions)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"test_index": np.arange(self.per_test.size), "lds": self.per_test})

    def _summary(self) -> dict:
        return {
            "lds": self.lds, "ci": list(self.ci), "n_test": int(np.isfinite(self.per_test).sum()), "n_subsets": int(self.subset_sizes.size),
            "seeds_per_subset": self.seeds, "ceiling": self.ceiling, "output": self.options.output, "notes": self.notes,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"per_test": self.per_test, "subset_sizes": self.subset_sizes}


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(T,)``: Spearman correlation of ``a[:, t]`` and ``b[:, t]`` (each ``(m, T)``), NaN
    where either column is constant."""
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1), np.nan)


def group_subsets(masks: np.ndarray) -> list[np.ndarray]:
    """Positions of the rows of ``masks (R, N)`` grouped by identical rows, in order of first appearance."""
    groups: dict[bytes, list[int]] = {}
    for r, row in enumerate(np.packbits(masks.astype(bool), axis=1)):
        groups.setdefault(row.tobytes(), []).append(r)
    return [np.asarray(g) for g in groups.values()]


def lds_from_arrays(scores: np.ndarray, masks: np.ndarray, outputs: np.ndarray, options: LdsOptions | None = None) -> LdsResult:
    """LDS of ``scores (T, N)`` on evaluation runs with ``masks (R, N)`` and ``outputs (R, T)``."""
    options = options or LdsOptions()
    T, N = outputs.shape[1], masks.shape[1]
    if scores.shape != (T, N):
        raise InputError(f"scores: expected shape (n_test, n_train) = ({T}, {N}), got {tuple(scores.shape)}")
    groups = group_subsets(masks)
    notes = []
    seeds = {g.size for g in groups}
    if len(seeds) > 1:
        notes.append(f"subsets were trained with different numbers of seeds ({sorted(seeds)}); the ceiling uses the fewest")
    subset_masks = np.stack([masks[g[0]] for g in groups]).astype(np.float64)  # (m, N)
    sizes = subset_masks.sum(1).astype(np.int64)
    if np.unique(sizes).size > 1:
        notes.append(f"evaluation subsets differ in size ({int(sizes.min())} to {int(sizes.max())} examples): the LDS compares subsets of one size")
    f = np.stack([outputs[g].mean(0) for g in groups])  # (m, T)
    g_pred = subset_masks @ np.nan_to_num(scores.astype(np.float64)).T  # (m, T)
    per_test = spearman_columns(f, g_pred)
    ok = per_test[np.isfinite(per_test)]
    lds = float(ok.mean()) if ok.size else float("nan")
    ci = (float("nan"), float("nan"))
    if ok.size and options.bootstrap:
        rng = np.random.default_rng(options.seed)
        means = ok[rng.integers(0, ok.size, size=(options.bootstrap, ok.size))].mean(1)
        ci = (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))
    s = min(seeds)
    ceiling = None
    if s >= 2:
        half = s // 2
        fa = np.stack([outputs[g[:half]].mean(0) for g in groups])
        fb = np.stack([outputs[g[half : 2 * half]].mean(0) for g in groups])
        c = spearman_columns(fa, fb)
        ceiling = float(np.nanmean(c)) if np.isfinite(c).any() else None
    return LdsResult(per_test=per_test, lds=lds, ci=ci, ceiling=ceiling, seeds=s, subset_sizes=sizes, notes=notes, runs=None, options=options)


def lds(pop: Population, scores: np.ndarray, options: LdsOptions | None = None, **fields) -> LdsResult:
    """LDS of ``scores (T, N)`` on the selected evaluation runs of ``pop`` (see the module)."""
    options = options_of(LdsOptions, options, fields)
    runs = pop.select(options.runs)
    masks, outs = masks_and_outputs(pop, runs, options.output, options.block_size)
    result = lds_from_arrays(np.asarray(scores), masks, outs, options)
    result.runs = runs
    return result


@dataclass
class GroundTruth:
    """The evaluation subsets and their outputs, in the layouts other tools read: ``masks
    (m, N) bool`` and ``values (m, T)`` (TRAK's masks and margins), or ``indices (m, k)`` of
    each subset and ``values`` (dattri's ground truth); ``seeds (m,)`` averaged per subset."""

    masks: np.ndarray
    values: np.ndarray
    seeds: np.ndarray
    output: str

    def save(self, path) -> None:
        """An ``.npz`` with ``masks``, ``values``, ``margins`` (= values, for the margin),
        ``indices`` (when every subset has one size), ``seeds`` and ``output``."""
        arrays = {"masks": self.masks, "values": self.values, "seeds": self.seeds, "output": np.array(self.output)}
        if self.output == "margin":
            arrays["margins"] = self.values
        sizes = self.masks.sum(1)
        if np.unique(sizes).size == 1:
            arrays["indices"] = np.stack([np.flatnonzero(row) for row in self.masks])
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path, n_train: int) -> GroundTruth:
        """Read :meth:`save`'s file, TRAK's layout (``masks`` and ``margins``) or dattri's
        (``values`` and ``indices`` of each subset, training examples ``0..n_train-1``)."""
        data = np.load(path, allow_pickle=False)
        values = data["values"] if "values" in data else data["margins"] if "margins" in data else None
        if values is None:
            raise InputError(f"{path}: a ground truth needs 'values' (or TRAK's 'margins')")
        if "masks" in data:
            masks = data["masks"].astype(bool)
        elif "indices" in data:
            idx = data["indices"].astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n_train):
                raise InputError(f"{path}: indices must lie in 0..{n_train - 1} (the store's training examples)")
            masks = np.zeros((idx.shape[0], n_train), dtype=bool)
            masks[np.arange(idx.shape[0])[:, None], idx] = True
        else:
            raise InputError(f"{path}: a ground truth needs 'masks' (TRAK) or 'indices' (dattri) of each subset")
        if masks.shape[0] != values.shape[0] or masks.shape[1] != n_train:
            raise InputError(f"{path}: masks {masks.shape} and values {values.shape} do not match {n_train} training examples and one row per subset")
        output = str(data["output"]) if "output" in data else "margin"
        seeds = data["seeds"] if "seeds" in data else np.ones(masks.shape[0], dtype=np.int64)
        return cls(masks=masks, values=np.asarray(values, dtype=np.float64), seeds=seeds, output=output)


def ground_truth(pop: Population, runs: np.ndarray, output: str, block_size: int = 64) -> GroundTruth:
    """The evaluation runs grouped by subset, outputs averaged over each subset's seeds."""
    masks, outs = masks_and_outputs(pop, runs, output, block_size)
    groups = group_subsets(masks)
    return GroundTruth(
        masks=np.stack([masks[g[0]] for g in groups]), values=np.stack([outs[g].mean(0) for g in groups]),
        seeds=np.array([g.size for g in groups]), output=output,
    )
