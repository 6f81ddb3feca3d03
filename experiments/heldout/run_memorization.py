"""Memorization and influence on MNIST with the published memorization recipe (docs/heldout.md).

Trains ``--runs`` runs of ``examples/mnist-memorization.toml`` (MLP 784-512-256-10 on random
70% subsets; the store plans 2,000 and more runs can be added later by running this again with
a larger ``--runs``), then writes into ``--out``:

* ``mem_hist.png``: the distribution of memorization estimates;
* ``mem_grid.png``: the highest and lowest memorization per class;
* ``infl_grid.png``: test examples with their most influential training examples and random
  training examples of their class;
* ``stability.png``: split-half Spearman correlation of memorization against the number of runs;
* ``mem_top.csv``, ``pairs.csv``: the 100 most memorized examples and the high-influence pairs;
* ``results.json``: training time, summaries of memorization and influence, stability curve.

    python experiments/heldout/run_memorization.py --store runs/mnist-mem --runs 300 [--out docs/heldout]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import manyruns
from manyruns.analysis.heldout import influence, memorization
from manyruns.report.heldout import extremes_grid, influence_grid

from common import REPO, default_data_dir, histogram, memorization_stability_curve, plot_stability, train_to, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "mnist-memorization.toml")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "heldout")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="memory in GiB for influence's accumulators of one block of training examples")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    training = train_to(args.recipe, args.store, args.runs, args.data_dir, args.workers)
    pop = manyruns.open(args.store)
    runs = pop.select("ok")[: args.runs]
    data = pop.dataset(args.data_dir)
    print(f"{runs.size} ok runs; training {training['seconds']:.0f} s", flush=True)

    t0 = time.perf_counter()
    mem = memorization(pop, runs=runs)
    t_mem = time.perf_counter() - t0
    mem.save(pop)
    t0 = time.perf_counter()
    infl = influence(pop, runs=runs, top=10, memory_gib=args.memory_gib)
    t_infl = time.perf_counter() - t0
    infl.save(pop)
    print(f"memorization {t_mem:.1f} s, influence {t_infl:.1f} s", flush=True)

    est = mem.estimate
    histogram(est, args.out / "mem_hist.png", "memorization", f"MNIST, {runs.size} runs at 70% subsets")
    extremes_grid(est, data.y_train, data.x_train, list(data.classes), args.out / "mem_grid.png", "mem", per_class=8)
    influence_grid(infl.top_index, infl.top_value, data.x_test, data.y_test, data.x_train, data.y_train, list(data.classes), args.out / "infl_grid.png", rows=12)
    curve = memorization_stability_curve(pop, runs.size)
    plot_stability(curve, args.out / "stability.png", "memorization on MNIST: stability against runs")

    table = mem.table()
    table.sort_values("mem", ascending=False).head(100).to_csv(args.out / "mem_top.csv", index=False)
    infl.pairs.to_csv(args.out / "pairs.csv", index=False)
    ok = np.isfinite(est)
    pair_classes = infl.pairs.groupby("label").size().to_dict() if len(infl.pairs) else {}
    results = {
        "store": str(args.store),
        "runs": int(runs.size),
        "training": training,
        "mean_test_accuracy": float(pop.runs.test_acc.to_numpy()[runs].mean()),
        "mean_heldout_accuracy": float(pop.runs.heldout_acc.to_numpy()[runs].mean()),
        "seconds": {"memorization": t_mem, "influence": t_infl},
        "memorization": mem.summary(top=20),
        "memorization_fraction_at_least": {str(t): float(np.mean(est[ok] >= t)) for t in (0.1, 0.25, 0.5, 0.75)},
        "influence": infl.summary(top=20),
        "pairs_per_class": {int(k): int(v) for k, v in pair_classes.items()},
        "pairs_distinct_train": int(infl.pairs.train_index.nunique()) if len(infl.pairs) else 0,
        "pairs_distinct_test": int(infl.pairs.test_index.nunique()) if len(infl.pairs) else 0,
        "stability_curve": curve,
    }
    write_json(results, args.out / "results.json")
    s = mem.summary()
    print(f"memorization: mean {s['mean']:.4f}, >= 0.25: {s['at_least_0.25']}, split-half {s['stability']['split_half_spearman']:.3f}")
    print(f"influence: {len(infl.pairs)} pairs; wrote {args.out}")


if __name__ == "__main__":
    main()
