"""C-scores over subset ratios 0.1 to 0.9 and the learning-speed proxy (docs/heldout.md).

Trains ``--runs`` runs of ``examples/fashion-mnist-cscore-ratios.toml`` (nine ratios, runs
assigned to them in turn, per-epoch true-class probabilities recorded), then writes into
``--out``:

* ``cscore_ratios.png``: held-out accuracy against the subset ratio (mean and quartiles over
  examples), per class;
* ``cscore_hist.png``: the distribution of C-scores;
* ``cscore_speed.png``: the learning-speed proxy against the C-score (a sample of examples);
* ``cscore_grid.png``: the highest and lowest C-scores per class;
* ``cscore_results.json``: per-ratio means, the Spearman correlation of the learning-speed
  proxy with the C-score (and with each ratio's held-out accuracy), split-half stability.

    python experiments/heldout/run_cscore_ratios.py --store runs/fashion-cscore --runs 900 [--out docs/heldout]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import manyruns
from manyruns.analysis.heldout import cscore, spearman
from manyruns.report.heldout import extremes_grid

from common import REPO, default_data_dir, histogram, plot_speed, train_to, write_json


def plot_ratios(result, labels: np.ndarray, class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    r = result.ratios
    q = np.nanquantile(result.per_ratio, [0.25, 0.5, 0.75], axis=1)
    axes[0].plot(r, np.nanmean(result.per_ratio, 1), "k-o", label="mean")
    axes[0].fill_between(r, q[0], q[2], alpha=0.3, label="quartiles")
    axes[0].plot(r, q[1], "k:", label="median")
    axes[0].set_xlabel("subset ratio")
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    for c, name in enumerate(class_names):
        axes[1].plot(r, np.nanmean(result.per_ratio[:, labels == c], 1), "-o", ms=3, label=name)
    axes[1].set_xlabel("subset ratio")
    axes[1].set_ylabel("mean held-out accuracy")
    axes[1].legend(fontsize=6, ncol=2)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "fashion-mnist-cscore-ratios.toml")
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
    print(f"{runs.size} ok runs; training {training['seconds']:.0f} s", flush=True)

    t0 = time.perf_counter()
    result = cscore(pop, runs=runs, learning_speed=True)
    seconds = time.perf_counter() - t0
    result.save(pop)
    labels = data.y_train
    plot_ratios(result, labels, list(data.classes), args.out / "cscore_ratios.png")
    histogram(result.cscore, args.out / "cscore_hist.png", "C-score", f"Fashion-MNIST, {runs.size} runs over 9 ratios", log=True)
    plot_speed(result.learning_speed, result.cscore, result.learning_speed_spearman, args.out / "cscore_speed.png")
    extremes_grid(result.cscore, labels, data.x_train, list(data.classes), args.out / "cscore_grid.png", "C", per_class=8, high_color="tab:green", low_color="tab:red")
    per_ratio_speed = {f"{r:g}": spearman(result.learning_speed, v)[0] for r, v in zip(result.ratios, result.per_ratio)}
    summary = result.summary(top=20)
    write_json(
        {
            "store": str(args.store),
            "runs": int(runs.size),
            "training": training,
            "seconds_statistics": seconds,
            "mean_test_accuracy_per_ratio": {f"{r:g}": float(pop.runs.test_acc.to_numpy()[runs][pop.runs.subset.to_numpy()[runs] == r].mean()) for r in result.ratios},
            "cscore": summary,
            "learning_speed_spearman": result.learning_speed_spearman,
            "learning_speed_spearman_per_ratio": per_ratio_speed,
            "cscore_per_class_mean": {data.classes[c]: float(np.nanmean(result.cscore[labels == c])) for c in range(len(data.classes))},
        },
        args.out / "cscore_results.json",
    )
    print(f"C-score mean {summary['mean']:.4f}; learning-speed Spearman {result.learning_speed_spearman:.3f}; split-half {summary['stability']['split_half_spearman']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
