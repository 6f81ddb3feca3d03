"""Planted label noise: how well memorization, C-scores and the learning-speed proxy single out
corrupted training labels (docs/heldout.md).

Trains ``--runs`` runs of ``examples/mnist-planted-noise.toml`` (5% of the MNIST training
labels replaced by another class, the same for every run; random subsets at three ratios; per-
epoch true-class probabilities recorded), then scores every training example by

* memorization (higher: more suspicious), from all runs;
* the C-score (lower: more suspicious), over the three ratios;
* the learning-speed proxy (lower: more suspicious);
* the held-out value alone at each ratio (lower: more suspicious),

each against the labels the runs trained with, and reports the ROC AUC of each score for
telling the corrupted examples from the clean ones, with the precision among the 5% most
suspicious. Writes into ``--out``: ``noise_roc.png``, ``noise_hist.png``, ``noise_grid.png``
(the most memorized examples, corrupted ones framed red, captions with the label trained
with), ``noise_results.json``.

    python experiments/heldout/run_planted_noise.py --store runs/mnist-noise --runs 900 [--out docs/heldout]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

import manyruns
from manyruns.analysis.heldout import cscore, memorization
from manyruns.report.grids import Cell, image_grid

from common import REPO, default_data_dir, histogram, train_to, write_json


def detection(scores: dict[str, np.ndarray], corrupted: np.ndarray) -> dict:
    """ROC AUC of each score (larger = more suspicious) and precision among the top
    ``corrupted.sum()`` examples; examples with a NaN score are ranked last."""
    out = {}
    k = int(corrupted.sum())
    for name, s in scores.items():
        filled = np.where(np.isfinite(s), s, -np.inf)
        finite = np.isfinite(s)
        top = np.argsort(-filled, kind="stable")[:k]
        out[name] = {
            "auc": float(roc_auc_score(corrupted[finite], s[finite])) if finite.any() and corrupted[finite].any() and (~corrupted[finite]).any() else None,
            "precision_at_noise_rate": float(corrupted[top].mean()) if k else None,
            "undefined": int((~finite).sum()),
        }
    return out


def plot_roc(scores: dict[str, np.ndarray], corrupted: np.ndarray, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, s in scores.items():
        finite = np.isfinite(s)
        fpr, tpr, _ = roc_curve(corrupted[finite], s[finite])
        ax.plot(fpr, tpr, label=f"{name} (AUC {results[name]['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (clean examples flagged)")
    ax.set_ylabel("true positive rate (corrupted examples found)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "mnist-planted-noise.toml")
    parser.add_argument("--runs", type=int, default=900)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "heldout")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    training = train_to(args.recipe, args.store, args.runs, args.data_dir, args.workers)
    pop = manyruns.open(args.store)
    runs = pop.select("ok")[: args.runs]
    data = pop.dataset(args.data_dir)
    trained_labels = pop.load("labels/train", runs[:1])[0].astype(np.int64)  # dataset scope: the same for every run
    corrupted = trained_labels != data.y_train
    print(f"{runs.size} ok runs; {corrupted.sum()} corrupted labels ({corrupted.mean():.2%}); training {training['seconds']:.0f} s", flush=True)

    t0 = time.perf_counter()
    mem = memorization(pop, runs=runs)
    cs = cscore(pop, runs=runs, learning_speed=True)
    seconds = time.perf_counter() - t0
    scores = {
        "memorization": mem.estimate,
        "C-score (negated)": -cs.cscore,
        "learning speed (negated)": -cs.learning_speed,
    }
    for ratio, values in zip(cs.ratios, cs.per_ratio):
        scores[f"held-out at {ratio:g} (negated)"] = -values
    result = detection(scores, corrupted)
    for name, r in result.items():
        print(f"  {name:32s} AUC {r['auc']:.4f}  precision at {corrupted.mean():.0%}: {r['precision_at_noise_rate']:.3f}", flush=True)

    main_scores = {k: scores[k] for k in ("memorization", "C-score (negated)", "learning speed (negated)")}
    plot_roc(main_scores, corrupted, result, args.out / "noise_roc.png")
    histogram(mem.estimate, args.out / "noise_hist.png", "memorization", "MNIST with 5% planted label noise", groups={"corrupted": corrupted, "clean": ~corrupted}, log=False)
    order = np.argsort(-np.where(np.isfinite(mem.estimate), mem.estimate, -np.inf), kind="stable")[:60]
    cells = [
        Cell(data.x_train[i], f"#{i} mem {mem.estimate[i]:.2f}\nlabel {trained_labels[i]} (true {data.y_train[i]})", "tab:red" if corrupted[i] else "tab:green")
        for i in order
    ]
    image_grid([cells[k : k + 10] for k in range(0, len(cells), 10)], args.out / "noise_grid.png",
               title="most memorized training examples: corrupted label (red) or clean (green)", cell_inches=1.4)

    write_json(
        {
            "store": str(args.store),
            "runs": int(runs.size),
            "training": training,
            "seconds_statistics": seconds,
            "corrupted": int(corrupted.sum()),
            "noise_rate": float(corrupted.mean()),
            "mean_test_accuracy": float(pop.runs.test_acc.to_numpy()[runs].mean()),
            "mean_train_accuracy": float(pop.runs.train_acc.to_numpy()[runs].mean()),
            "detection": result,
            "memorization_mean": {"corrupted": float(np.nanmean(mem.estimate[corrupted])), "clean": float(np.nanmean(mem.estimate[~corrupted]))},
            "cscore_mean": {"corrupted": float(np.nanmean(cs.cscore[corrupted])), "clean": float(np.nanmean(cs.cscore[~corrupted]))},
            "learning_speed_cscore_spearman": cs.learning_speed_spearman,
            "memorization_stability": mem.stability.to_dict(),
            "cscore_stability": cs.stability.to_dict(),
            "cscore_missing_a_ratio": cs.incomplete,
        },
        args.out / "noise_results.json",
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
