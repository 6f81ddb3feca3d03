"""The seeds' experiments on a CIFAR-10 population (docs/cifar10.md).

Trains ``--runs`` runs of ``examples/cifar10-cpu.toml`` (the fast convnet at CPU size, each run
on its own random half of the training set, per-epoch label probabilities recorded, the first
four runs keeping penultimate features) unless the store already holds them, then writes into
``--out``:

* ``kernel/``: the ensemble-kernel experiment of ``experiments/kernel/run_kernel_experiment.py``
  (single-run, ensemble and kernel k-NN accuracy against n; per-class kernels; near-duplicate
  pairs and failure modes; kernel against penultimate features; ``results.json``);
* ``mem_hist.png``, ``mem_grid.png``: memorization estimates and their extremes per class;
* ``infl_grid.png``: test images with their most influential training images;
* ``cscore_hist.png``, ``cscore_speed.png``, ``cscore_grid.png``: C-scores at the 50% ratio
  (held-out accuracy), the learning-speed proxy against them, and their extremes per class
  (ties in the C-score broken by the learning-speed proxy);
* ``stability.png``: split-half Spearman correlation of memorization against the number of runs;
* ``results.json``: training time, accuracies, memorization, influence, C-score and
  learning-speed summaries, the stability curve, timings of each analysis.

    python experiments/cifar10/run_cifar10.py --store runs/c10-cpu --runs 64 [--out docs/cifar10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "heldout"))

import manyruns  # noqa: E402
from manyruns.analysis.heldout import cscore, influence, memorization, spearman  # noqa: E402
from manyruns.report.heldout import extremes_grid, influence_grid  # noqa: E402

from common import REPO, default_data_dir, histogram, memorization_stability_curve, plot_speed, plot_stability, train_to, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "cifar10-cpu.toml")
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "cifar10")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="memory in GiB for influence's accumulators")
    parser.add_argument("--skip-kernel", action="store_true", help="skip the ensemble-kernel experiment")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    training = train_to(args.recipe, args.store, args.runs, args.data_dir, args.workers)
    pop = manyruns.open(args.store)
    runs = pop.select("ok")[: args.runs]
    data = pop.dataset(args.data_dir)
    classes = list(data.classes)
    table = pop.runs.iloc[runs]
    print(f"{runs.size} ok runs; {table.seconds.sum() / 3600:.2f} worker-hours of training", flush=True)
    seconds: dict[str, float] = {}

    if not args.skip_kernel:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(REPO / "experiments" / "kernel" / "run_kernel_experiment.py"), str(args.store), "--out", str(args.out / "kernel")]
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir)]
        subprocess.run(cmd, check=True)
        seconds["kernel_experiment"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    mem = memorization(pop, runs=runs)
    seconds["memorization"] = time.perf_counter() - t0
    mem.save(pop)
    t0 = time.perf_counter()
    infl = influence(pop, runs=runs, top=10, memory_gib=args.memory_gib)
    seconds["influence"] = time.perf_counter() - t0
    infl.save(pop)
    t0 = time.perf_counter()
    cs = cscore(pop, runs=runs, learning_speed=True)
    seconds["cscore"] = time.perf_counter() - t0
    cs.save(pop)
    print("; ".join(f"{k} {v:.1f} s" for k, v in seconds.items()), flush=True)

    est, labels = mem.estimate, data.y_train
    note = f"CIFAR-10, {runs.size} runs at 50% subsets"
    histogram(est, args.out / "mem_hist.png", "memorization", note)
    extremes_grid(est, labels, data.x_train, classes, args.out / "mem_grid.png", "mem", per_class=8)
    influence_grid(infl.top_index, infl.top_value, data.x_test, data.y_test, data.x_train, labels, classes, args.out / "infl_grid.png", rows=12)
    histogram(cs.cscore, args.out / "cscore_hist.png", "C-score (held-out accuracy at 50%)", note)
    plot_speed(cs.learning_speed, cs.cscore, cs.learning_speed_spearman, args.out / "cscore_speed.png", ylabel="C-score at 50% (jittered)", jitter=0.01)
    # with ~32 held-out runs per example many C-scores tie at 0 and 1: the learning-speed proxy
    # breaks the ties (the grid shows the C-score itself)
    ranked = cs.cscore + 1e-3 * np.nan_to_num(cs.learning_speed, nan=0.0)
    extremes_grid(ranked, labels, data.x_train, classes, args.out / "cscore_grid.png", "C", per_class=8, high_color="tab:green", low_color="tab:red")
    curve = memorization_stability_curve(pop, runs.size)
    plot_stability(curve, args.out / "stability.png", "memorization on CIFAR-10: stability against runs")

    ok = np.isfinite(est)
    # memorization against the C-score: an example the runs get right only when they train on
    # it has a high memorization and a low held-out accuracy
    rho_mem_c = spearman(est, cs.cscore)[0]
    pair_classes = infl.pairs.groupby("label").size().to_dict() if len(infl.pairs) else {}
    write_json(
        {
            "store": str(args.store),
            "runs": int(runs.size),
            "training": training,
            "training_worker_hours": float(table.seconds.sum() / 3600),
            "training_seconds_per_run": float(table.seconds.mean()),
            "mean_test_accuracy": float(table.test_acc.mean()),
            "std_test_accuracy": float(table.test_acc.std(ddof=1)),
            "mean_heldout_accuracy": float(table.heldout_acc.mean()),
            "mean_train_accuracy": float(table.train_acc.mean()),
            "seconds": seconds,
            "memorization": mem.summary(top=20),
            "memorization_fraction_at_least": {str(t): float(np.mean(est[ok] >= t)) for t in (0.1, 0.25, 0.5, 0.75)},
            "memorization_per_class_mean": {classes[c]: float(np.nanmean(est[labels == c])) for c in range(len(classes))},
            "influence": infl.summary(top=20),
            "pairs_per_class": {classes[int(k)]: int(v) for k, v in pair_classes.items()},
            "cscore": cs.summary(top=20),
            "cscore_per_class_mean": {classes[c]: float(np.nanmean(cs.cscore[labels == c])) for c in range(len(classes))},
            "learning_speed_spearman": cs.learning_speed_spearman,
            "memorization_cscore_spearman": rho_mem_c,
            "stability_curve": curve,
        },
        args.out / "results.json",
    )
    print(f"memorization mean {mem.summary()['mean']:.4f}; C-score mean {cs.summary()['mean']:.4f}; learning-speed Spearman {cs.learning_speed_spearman:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
