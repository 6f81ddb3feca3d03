"""The data audit of a population: label issues, near-duplicates, train/test leaks and outliers.

Per training example ``i`` (``N`` of them, ``C`` classes):

* **label quality** from the out-of-sample probabilities ``p (N, C)`` of the runs that held
  ``i`` out (:mod:`.outofsample`): the confident-learning flag (prune by noise rate), the
  estimated joint of given and true labels (:mod:`.confident`) and the suggested label
  ``argmax_c p(i, c)``; the ranking scores (self-confidence, normalized margin) from the pooled
  probabilities ``p_w``, where the runs that trained on ``i`` add their predictions with weight
  ``w = in_sample`` (``"auto"``: ``max(0, 1 - 2 m)`` with ``m`` the runs' measured memorization
  of the doubtful labels: the flagged examples, or the 1% least confident when fewer than 10 are
  flagged; 0 where the audited labels are not the ones the runs trained with). Pooling lowers
  the variance of the ranking where the runs do not memorize; the filter keeps held-out
  probabilities, which its counts assume. Examples held out by fewer than ``min_out`` runs get
  NaN scores, no flag, and are counted as ``not_scored``;
* **memorization and C-score** (:mod:`..heldout`) where the runs hold examples out;
* with the ensemble kernel ``K`` over all ``R`` selected runs (:mod:`..kernel`): the nearest
  other training example ``j = argmax_{j != i} K(i, j)`` and its **correlation**
  ``rho(i) = K(i, j) R / (R - 1)`` (the kernel's largest possible value is ``(R - 1) / R``, so
  ``rho`` is the mean Pearson correlation across runs, at most 1 whatever ``R``); the
  near-duplicate flag ``rho(i) >= near_duplicate``; and the **outlier score** ``1 - mean of the
  outlier_k largest K(i, .)`` (an example the runs treat like no other), flagged for the
  ``outlier_fraction`` largest.

Per test example ``t``: its nearest training example by ``K`` and the **leak** flag
``rho(t) >= leak``. With few runs the correlations of unrelated examples are noisy and high;
the defaults (0.98) were chosen on planted copies (docs/audit.md).

Memory: the selected runs' logits, masks and labels as stored when they fit in half of
``memory_gib`` (read once for every check; else read again by each), the probabilities
``(N, C)`` in float64 and the kernel's own budget (``memory_gib``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...errors import InputError, OptionError, check_choice, check_number
from ...population import Population
from ...streaming import run_blocks
from ..contract import Result, describe_values, options_of
from ..kernel import KernelOptions
from ..neighbours import NeighbourOptions, stored_or_computed
from .confident import ConfidentLearning, confident_learning, normalized_margin, self_confidence
from .outofsample import OutOfSample, memorized, out_of_sample, pooled

SCORES = ("self_confidence", "normalized_margin")
NEIGHBOUR_METHODS = ("projected", "exact")
DOUBTFUL = 10  # fewest flagged examples that measure memorization; else the least confident


@dataclass(frozen=True, kw_only=True)
class AuditOptions(KernelOptions):
    """``score``: the label-quality score (self_confidence or normalized_margin); ``in_sample``:
    the weight of the training runs' predictions in the scores, a number in [0, 1] (0: held-out
    runs only) or "auto" (see the module); ``min_out``: held-out runs an example needs to be
    scored; ``near_duplicate``, ``leak``: correlations at or above which a train pair is a
    near-duplicate and a test example a leak; ``outlier_k``: neighbours averaged by the outlier
    score; ``outlier_fraction``: the share of training examples flagged as outliers; ``kernel``:
    run the kernel checks; ``heldout_stats``: add memorization and C-scores; ``block_size``: runs read at a time; ``top``: examples of each
    issue type listed in the summary; ``neighbours``: projected (an exact scan of the kernel
    when ``R C' <= 2 dims``, else a ``dims``-dimensional sketch whose best ``candidates`` per
    example are re-ranked by their exact values, :mod:`..kernel_projected`) or exact (the
    streaming kernel); ``class_gap``: projected, each example is compared with the training
    examples of its predicted class, and of its second where the two mean log-probabilities
    are within ``class_gap`` (None: with every training example); and the kernel's options
    (:class:`~..kernel.KernelOptions`)."""

    score: str = "self_confidence"
    in_sample: str | float = "auto"
    min_out: int = 1
    near_duplicate: float = 0.98
    leak: float = 0.98
    outlier_k: int = 10
    outlier_fraction: float = 0.01
    kernel: bool = True
    heldout_stats: bool = True
    block_size: int = 32
    top: int = 24
    neighbours: str = "projected"
    dims: int = 128
    candidates: int = 32
    class_gap: float | None = 2.0

    def validate(self) -> None:
        super().validate()
        check_choice("score", self.score, SCORES)
        if self.in_sample != "auto":
            if isinstance(self.in_sample, bool) or not isinstance(self.in_sample, (int, float)):
                raise OptionError("in_sample", f"must be \"auto\" or a weight in [0, 1], got {self.in_sample!r}")
            check_number("in_sample", self.in_sample, 0, 1)
        check_number("min_out", self.min_out, 1, integer=True)
        for name in ("near_duplicate", "leak"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
                raise OptionError(name, f"must be a kernel value in [-1, 1], got {value!r}")
        check_number("outlier_k", self.outlier_k, 1, integer=True)
        if isinstance(self.outlier_fraction, bool) or not isinstance(self.outlier_fraction, (int, float)) or not 0 <= self.outlier_fraction <= 1:
            raise OptionError("outlier_fraction", f"must be in [0, 1], got {self.outlier_fraction!r}")
        check_choice("kernel", self.kernel, (True, False))
        check_choice("heldout_stats", self.heldout_stats, (True, False))
        check_number("block_size", self.block_size, 1, integer=True)
        check_number("top", self.top, 0, integer=True)
        check_choice("neighbours", self.neighbours, NEIGHBOUR_METHODS)
        check_number("dims", self.dims, 1, integer=True)
        check_number("candidates", self.candidates, 1, integer=True)
        if self.class_gap is not None:
            check_number("class_gap", self.class_gap, 0)

    def kernel_options(self, queries: str, k: int) -> NeighbourOptions:
        names = ("runs", "log_softmax", "classes", "precision", "device", "memory_gib", "block_runs", "tile")
        return NeighbourOptions(k=k, queries=queries, **{n: getattr(self, n) for n in names})


@dataclass(kw_only=True)
class AuditResult(Result):
    """Per-example audit columns, ``(N,)`` for the training set and ``(T,)`` for the test set
    (NaN or -1 where a check did not run or an example was not scored), and the confident-learning
    estimates (``cl``, over the scored examples; None when no example was held out)."""

    name = "audit"
    labels: np.ndarray
    probs: np.ndarray  # (N, C) float32
    n_out: np.ndarray
    self_confidence: np.ndarray
    normalized_margin: np.ndarray
    suggested_label: np.ndarray
    is_label_issue: np.ndarray
    cl: ConfidentLearning | None
    in_sample_weight: float = 0.0
    memorized: float | None = None
    memorization: np.ndarray | None = None
    cscore: np.ndarray | None = None
    nearest_train: np.ndarray | None = None
    kernel: np.ndarray | None = None
    outlier_score: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_nearest_train: np.ndarray | None = None
    test_kernel: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    runs: np.ndarray | None = None
    options: AuditOptions = field(default_factory=AuditOptions)

    @property
    def label_quality(self) -> np.ndarray:
        return self.self_confidence if self.options.score == "self_confidence" else self.normalized_margin

    @property
    def scored(self) -> np.ndarray:
        return self.n_out >= self.options.min_out

    @property
    def is_near_duplicate(self) -> np.ndarray:
        if self.kernel is None:
            return np.zeros(self.labels.size, dtype=bool)
        return self.correlation >= self.options.near_duplicate

    @property
    def _scale(self) -> float:
        R = self.run_count
        return R / (R - 1) if R > 1 else 1.0

    @property
    def correlation(self) -> np.ndarray | None:
        """``(N,)``: the nearest training example's kernel value over its largest possible value."""
        return None if self.kernel is None else self.kernel.astype(np.float64) * self._scale

    @property
    def test_correlation(self) -> np.ndarray | None:
        return None if self.test_kernel is None else self.test_kernel.astype(np.float64) * self._scale

    @property
    def is_outlier(self) -> np.ndarray:
        out = np.zeros(self.labels.size, dtype=bool)
        if self.outlier_score is None:
            return out
        count = int(round(self.options.outlier_fraction * self.labels.size))
        if count:
            out[np.argsort(-self.outlier_score, kind="stable")[:count]] = True
        return out

    @property
    def is_leak(self) -> np.ndarray | None:
        return None if self.test_kernel is None else self.test_correlation >= self.options.leak

    def near_duplicate_pairs(self) -> pd.DataFrame:
        """Distinct training pairs ``(a, b)``, ``a < b``, where one is the other's nearest example
        with a correlation at least ``near_duplicate``, most similar first."""
        if self.kernel is None:
            return pd.DataFrame({"a": [], "b": [], "kernel": [], "label_a": [], "label_b": []})
        i = np.flatnonzero(self.is_near_duplicate)
        j = self.nearest_train[i]
        a, b = np.minimum(i, j), np.maximum(i, j)
        pairs = pd.DataFrame({"a": a, "b": b, "kernel": self.kernel[i].astype(np.float64)}).drop_duplicates(["a", "b"])
        pairs = pairs.sort_values(["kernel", "a", "b"], ascending=[False, True, True], kind="stable").reset_index(drop=True)
        pairs["label_a"], pairs["label_b"] = self.labels[pairs.a.to_numpy()], self.labels[pairs.b.to_numpy()]
        return pairs

    def table(self) -> pd.DataFrame:
        """One row per training example."""
        n = self.labels.size
        missing = np.full(n, np.nan)
        scored = self.scored
        quality = np.where(scored, self.label_quality, np.nan)
        out = {  # the columns every consumer relies on first, in this order
            "index": np.arange(n),
            "label": self.labels,
            "suggested_label": self.suggested_label,
            "label_quality": quality,
            "is_label_issue": self.is_label_issue,
            "n_out": self.n_out,
            "nearest_train": np.full(n, -1) if self.nearest_train is None else self.nearest_train,
            "kernel": missing if self.kernel is None else self.kernel.astype(np.float64),
            "is_near_duplicate": self.is_near_duplicate,
            "correlation": missing if self.kernel is None else self.correlation,
            "self_confidence": np.where(scored, self.self_confidence, np.nan),
            "normalized_margin": np.where(scored, self.normalized_margin, np.nan),
            "prob_label": np.where(scored, self.probs[np.arange(n), self.labels], np.nan),
            "prob_suggested": np.where(scored, self.probs[np.arange(n), np.maximum(self.suggested_label, 0)], np.nan),
            "memorization": missing if self.memorization is None else self.memorization,
            "cscore": missing if self.cscore is None else self.cscore,
            "outlier_score": missing if self.outlier_score is None else self.outlier_score,
            "is_outlier": self.is_outlier,
        }
        return pd.DataFrame(out)

    def test_table(self) -> pd.DataFrame:
        """One row per test example: its nearest training example by the kernel and the leak flag."""
        if self.test_kernel is None:
            return pd.DataFrame({"index": [], "label": [], "nearest_train": [], "train_label": [], "kernel": [], "correlation": [], "is_leak": []})
        return pd.DataFrame(
            {
                "index": np.arange(self.test_kernel.size),
                "label": self.test_labels,
                "nearest_train": self.test_nearest_train,
                "train_label": self.labels[self.test_nearest_train],
                "kernel": self.test_kernel.astype(np.float64),
                "correlation": self.test_correlation,
                "is_leak": self.is_leak,
            }
        )

    def top_label_issues(self, k: int | None = None) -> np.ndarray:
        """Flagged examples, lowest label quality first."""
        flagged = np.flatnonzero(self.is_label_issue)
        order = np.argsort(self.label_quality[flagged], kind="stable")
        return flagged[order][: self.options.top if k is None else k]

    def _summary(self) -> dict:
        o = self.options
        C = self.probs.shape[1]
        scored = self.scored
        out: dict = {
            "examples": int(self.labels.size),
            "scored": int(scored.sum()),
            "not_scored": int((~scored).sum()),
            "n_out": describe_values(self.n_out),
            "n_label_issues": int(self.is_label_issue.sum()),
            "label_issues_by_class": np.bincount(self.labels[self.is_label_issue], minlength=C).tolist(),
            "noise_rate": None if self.cl is None else self.cl.noise_rate,
            "in_sample_weight": self.in_sample_weight,
            "memorized": self.memorized,
            "noise_rate_by_class": None if self.cl is None else [float(x) for x in self.cl.noise_rate_by_class],
            "joint": None if self.cl is None else self.cl.joint.tolist(),
            "confident_joint": None if self.cl is None else self.cl.confident_joint.tolist(),
            "thresholds": None if self.cl is None else self.cl.thresholds.tolist(),
            "label_quality": describe_values(np.where(scored, self.label_quality, np.nan)),
            "top_label_issues": self.top_label_issues().tolist(),
            "notes": list(self.notes),
        }
        if self.kernel is not None:
            pairs = self.near_duplicate_pairs()
            out["near_duplicates"] = {
                "threshold": o.near_duplicate,
                "examples": int(self.is_near_duplicate.sum()),
                "pairs": int(len(pairs)),
                "pairs_with_different_labels": int((pairs.label_a != pairs.label_b).sum()),
                "top": pairs.head(o.top)[["a", "b", "kernel"]].values.tolist(),
            }
            outliers = self.is_outlier
            out["outliers"] = {
                "fraction": o.outlier_fraction,
                "count": int(outliers.sum()),
                "score": describe_values(self.outlier_score),
                "top": np.argsort(-self.outlier_score, kind="stable")[: min(o.top, int(outliers.sum()))].tolist(),
            }
        if self.test_kernel is not None:
            leak = self.is_leak
            order = np.argsort(-self.test_kernel, kind="stable")
            top = [t for t in order if leak[t]][: o.top]
            out["leaks"] = {
                "threshold": o.leak,
                "count": int(leak.sum()),
                "with_different_labels": int((leak & (self.labels[self.test_nearest_train] != self.test_labels)).sum()),
                "top": [[int(t), int(self.test_nearest_train[t]), float(self.test_kernel[t])] for t in top],
            }
        if self.memorization is not None:
            out["memorization"] = describe_values(self.memorization)
        if self.cscore is not None:
            out["cscore"] = describe_values(self.cscore)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "labels": self.labels,
            "probs": self.probs,
            "n_out": self.n_out,
            "is_label_issue": self.is_label_issue,
            "suggested_label": self.suggested_label,
        }
        for name in ("nearest_train", "kernel", "outlier_score", "test_nearest_train", "test_kernel", "memorization", "cscore"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _given_labels(labels, n: int, classes: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise InputError(f"labels: expected one label per training example, shape ({n},), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError("labels: expected integer class indices")
        arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= classes):
        raise InputError(f"labels: class indices must be in [0, {classes - 1}], got values from {int(arr.min())} to {int(arr.max())}")
    return arr.astype(np.int64)


def audit(pop: Population, options: AuditOptions | None = None, labels: np.ndarray | None = None, **fields) -> AuditResult:
    """Audit the training set of ``pop`` (see the module). ``labels``: the labels to audit
    ``(N,)`` (default: the labels the runs trained with)."""
    options = options_of(AuditOptions, options, fields)
    runs = pop.select(options.runs)
    pop = _read_once(pop, runs, options)
    layout = pop.layout
    N, C = int(layout["n_train"]), int(layout["num_classes"])
    given = None if labels is None else _given_labels(labels, N, C)
    oos = out_of_sample(pop, runs, options.block_size)
    y = oos.labels if given is None else given
    notes: list[str] = []
    probs = oos.probs
    scored = oos.n_out >= options.min_out
    sc = np.full(N, np.nan)
    nm = np.full(N, np.nan)
    suggested = np.full(N, -1, dtype=np.int64)
    flags = np.zeros(N, dtype=bool)
    cl, weight, memo = None, 0.0, None
    if not scored.any():
        reason = "no selected run held any training example out" if not oos.n_out.any() else f"no example was held out by {options.min_out} or more runs"
        notes.append(
            f"no label-quality scores: {reason}; label issues need runs trained on random subsets "
            "(e.g. population.subset = 0.5); the kernel checks ran"
        )
    else:
        p = probs[scored].astype(np.float64)
        ys = y[scored]
        suggested[scored] = p.argmax(1)
        cl = confident_learning(p, ys)
        flags[scored] = cl.is_label_issue
        weight, memo = _in_sample_weight(oos, y, flags, scored, options, notes)
        ranked = pooled(oos, weight)[scored] if weight > 0 else p
        sc[scored] = self_confidence(ranked, ys)
        nm[scored] = normalized_margin(ranked, ys)
        if (~scored).any():
            fewer = "by no run" if options.min_out == 1 else f"by fewer than {options.min_out} runs"
            notes.append(f"{int((~scored).sum()):,} training examples were held out {fewer}: not scored (NaN); train more runs")
    result = AuditResult(
        labels=y, probs=probs, n_out=oos.n_out, self_confidence=sc, normalized_margin=nm, suggested_label=suggested,
        is_label_issue=flags, cl=cl, in_sample_weight=weight, memorized=memo, notes=notes, runs=runs, options=options,
    )
    if options.heldout_stats and scored.any() and "mask/train" in pop.arrays:
        from ..heldout import cscore, memorization

        result.memorization = memorization(pop, runs=runs).estimate
        result.cscore = cscore(pop, runs=runs, learning_speed=False).cscore
    if options.kernel:
        _kernel_checks(pop, runs, options, result)
    return result


def _in_sample_weight(oos: OutOfSample, y: np.ndarray, flags: np.ndarray, scored: np.ndarray,
                      options: AuditOptions, notes: list[str]) -> tuple[float, float | None]:
    """The training runs' weight in the scores and their memorization ``m`` (None where not
    measured: no doubtful example that a run trained on, or other labels than the runs')."""
    own = np.array_equal(y, oos.labels)
    memo = None
    if own:
        if flags.sum() >= DOUBTFUL:
            doubtful = flags
        else:
            count = min(int(scored.sum()), max(DOUBTFUL, int(np.ceil(0.01 * scored.sum()))))
            held = oos.probs[np.flatnonzero(scored), y[scored]]
            doubtful = np.flatnonzero(scored)[np.argsort(held, kind="stable")[:count]]
        m = memorized(oos, doubtful)
        memo = None if np.isnan(m) else m
    if options.in_sample != "auto":
        weight = float(options.in_sample)
    elif not own:
        weight = 0.0
        notes.append("label-quality scores from held-out runs only: the audited labels are not the ones the runs trained with")
    else:
        weight = 0.0 if memo is None else max(0.0, 1.0 - 2.0 * memo)
    if weight > 0:
        how = "" if memo is None else f"; they close {100 * memo:.0f}% of a doubtful label's gap to certainty"
        notes.append(f"label-quality scores pool the training runs' predictions with weight {weight:.2f}{how} (in_sample=0: held-out runs only)")
    return weight, memo


PRELOADED = ("logits/train", "logits/test", "mask/train", "labels/train")


def _read_once(pop: Population, runs: np.ndarray, options: AuditOptions) -> Population:
    """The out-of-sample probabilities, memorization, C-scores and the kernel each pass over the
    runs' logits: read them once when they fit in half the memory budget, with each run's
    correctness on the labels it trained with (``correct/train``), which memorization and
    C-scores both read, computed once."""
    size = sum(runs.size * int(np.prod(pop.array(n).shape[1:])) * pop.array(n).dtype.itemsize for n in PRELOADED if n in pop.arrays)
    if size > options.memory_gib * 2**30 / 2:
        return pop
    view = pop.preloaded(PRELOADED, runs)
    if options.heldout_stats and "correct/train" not in view.arrays and {"logits/train", "labels/train"} <= set(view.arrays):
        from ..heldout.values import values_from_logits

        blocks = run_blocks(runs, options.block_size)
        view.derive("correct/train", np.concatenate([values_from_logits(view.read("logits/train", b), view.read("labels/train", b), "correct") for b in blocks]))
    return view


def _kernel_checks(pop: Population, runs: np.ndarray, options: AuditOptions, result: AuditResult) -> None:
    """Nearest training neighbours of every training and test example by the kernel."""
    from ..kernel import PopulationLogits
    from ..kernel_projected import Sketch, projected_topk, standardized

    k = max(options.outlier_k, 1)
    has_test = "logits/test" in pop.arrays
    layout = pop.layout
    classes = len(options.classes) if options.classes is not None else int(layout["num_classes"])
    n = int(layout["n_train"]) + (int(layout["n_test"]) if has_test else 0)
    in_memory = 3 * 4 * n * runs.size * classes  # Z of both splits, and one split's values while it is built
    if options.neighbours == "projected" and in_memory <= options.memory_gib * 2**30:
        source = PopulationLogits(pop, runs, ("train", "test") if has_test else ("train",))
        def operand(split: str):  # Z, and each example's class groups (None: every pair)
            out = standardized(source, split, options, class_gap=options.class_gap)
            return (out, None) if options.class_gap is None else out

        Zt, train_classes = operand("train")
        groups = (lambda classes: None) if train_classes is None else (lambda classes: (train_classes[:, 0], classes))
        sketch = Sketch(Zt, options.dims) if Zt.shape[1] > 2 * options.dims else None  # fitted once, for both splits
        train = projected_topk(Zt, None, k, options.dims, options.candidates, groups=groups(train_classes), sketch=sketch)
        test = None
        if has_test:
            Zq, test_classes = operand("test")
            test = projected_topk(Zt, Zq, 1, options.dims, options.candidates, groups=groups(test_classes), sketch=sketch)
        if not train.exact:
            result.notes.append(
                f"kernel neighbours from a {train.dims}-dimensional sketch, the best {train.candidates} "
                "re-ranked by their exact values (neighbours=\"exact\" for the exact kernel)"
            )
        if train.grouped:
            result.notes.append(
                f"kernel neighbours searched within each example's predicted class (and its second within {options.class_gap:g} "
                "nats); class_gap=None searches every training example"
            )
    else:
        train = stored_or_computed(pop, options.kernel_options("train", k))
        test = stored_or_computed(pop, options.kernel_options("test", 1)) if has_test else None
    result.nearest_train = train.indices[:, 0]
    result.kernel = train.values[:, 0]
    result.outlier_score = 1.0 - train.values[:, : options.outlier_k].astype(np.float64).mean(1)
    if test is not None:
        result.test_nearest_train = test.indices[:, 0]
        result.test_kernel = test.values[:, 0]
        result.test_labels = pop.targets("test")
