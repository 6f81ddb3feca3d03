"""What more runs cannot reach: the clean examples every model doubts, and a kernel-neighbour score.

On the stores ``run_audit_vs_cleanlab.py`` trained (``--work``, default ``runs/audit``), for one
setting and seed (``TAG``, e.g. ``mnist-sym-0.2-s0``):

1. **Doubted clean examples.** The clean examples (given label = true label) that both the
   audit on the first ``--runs`` halves and cleanlab's 5-fold cross-validation give a
   probability below ``t`` for their label (t = 0.01, 0.05, 0.1); the AP of both rankings with
   those examples left out; and the planted errors both rank as clean (noisy label above 0.5).
2. **Kernel-neighbour label agreement** (``--knn``): the share of each training example's ``k``
   nearest kernel neighbours (within its class group, as the audit searches) that carry its
   given label, uniform or weighted by the kernel, alone and mixed into the self-confidence.

    python experiments/audit/doubted.py mnist-sym-0.2-s0 --runs 50
    python experiments/audit/doubted.py mnist-sym-0.2-s0 --runs 200 --knn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

import manyruns
from manyruns.analysis.audit import AuditOptions, audit
from manyruns.analysis.kernel import PopulationLogits
from manyruns.analysis.kernel_projected import projected_topk, standardized
from manyruns.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_audit_vs_cleanlab import truth_of  # noqa: E402


def doubted(truth: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> None:
    """``ours``, ``theirs``: each ranking's probability of the given label (examples that no
    run of the audit held out, NaN, are left out of both)."""
    ok = np.isfinite(ours)
    truth, ours, theirs = truth[ok], ours[ok], theirs[ok]
    print(f"AP audit {average_precision_score(truth, 1 - ours):.4f}, cleanlab CV {average_precision_score(truth, 1 - theirs):.4f}")
    for t in (0.01, 0.05, 0.1):
        keep = ~((~truth) & (ours < t) & (theirs < t))
        print(f"  clean examples both give their label < {t}: {int((~keep).sum())}; AP without them: "
              f"audit {average_precision_score(truth[keep], 1 - ours[keep]):.4f}, cleanlab {average_precision_score(truth[keep], 1 - theirs[keep]):.4f}")
    missed = truth & (ours > 0.5) & (theirs > 0.5)
    print(f"  planted errors both rank as clean (noisy label > 0.5): {int(missed.sum())} of {int(truth.sum())}")


def neighbour_agreement(pop, runs: np.ndarray, labels: np.ndarray, truth: np.ndarray, quality: np.ndarray) -> None:
    options = AuditOptions(runs=runs)
    Z, classes = standardized(PopulationLogits(pop, runs, ("train",)), "train", options, class_gap=options.class_gap)
    nb = projected_topk(Z, None, 50, options.dims, max(options.candidates, 50), groups=(classes[:, 0], classes))
    values = np.clip(nb.values.astype(np.float64), 0, None)
    ok = np.isfinite(quality)  # examples no run of the audit held out have no score
    for k in (5, 10, 25, 50):
        agree = (labels[nb.indices[:, :k]] == labels[:, None]).astype(np.float64)
        for name, w in (("uniform", np.ones_like(values[:, :k])), ("kernel", values[:, :k])):
            q = (agree * w).sum(1) / np.maximum(w.sum(1), 1e-12)
            mixed = "  ".join(f"mixed {lam}: {average_precision_score(truth[ok], 1 - ((1 - lam) * quality + lam * q)[ok]):.4f}" for lam in (0.25, 0.5, 0.75))
            print(f"  k={k} {name}: alone {average_precision_score(truth[ok], 1 - q[ok]):.4f}  {mixed}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tag", help="DATASET-NOISE-sSEED, e.g. mnist-sym-0.2-s0")
    ap.add_argument("--runs", type=int, default=50, help="halves the audit reads")
    ap.add_argument("--knn", action="store_true", help="also score kernel-neighbour label agreement")
    ap.add_argument("--work", type=Path, default=Path("runs/audit"))
    a = ap.parse_args()
    dataset, seed = a.tag.split("-sym")[0].split("-cc")[0], a.tag.rsplit("-s", 1)[1]
    ds = load_dataset(dataset, a.work / f"data-{dataset}-s{seed}")
    pop, cv = manyruns.open(a.work / f"{a.tag}-pop"), manyruns.open(a.work / f"{a.tag}-cv")
    runs = pop.select("ok")[: a.runs]
    result = audit(pop, runs=runs, kernel=False, heldout_stats=False)
    oos, labels, truth = truth_of(cv, ds)  # cleanlab's arm: the first 5 fold runs' probabilities
    held = oos.probs[np.arange(labels.size), labels]
    print(f"{a.tag}, {runs.size} halves against 5 folds")
    doubted(truth, result.self_confidence, held)
    if a.knn:
        neighbour_agreement(pop, runs, labels, truth, result.self_confidence)


if __name__ == "__main__":
    main()
