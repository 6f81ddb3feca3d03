"""The ensemble-kernel experiment on a trained population (docs/kernel.md).

Given a store of many runs of one recipe (logits on every train and test example; the first
runs keeping penultimate features), computes and writes into ``--out``:

* ``ensemble.png``: single-run accuracy (mean +- std) and the mean-logit / mean-probability
  ensemble accuracy against the number of runs n = 1, 2, 4, ..., R;
* ``knn_vs_runs.png``: kernel k-NN test accuracy against n (majority vote k=3, and votes
  weighted by kernel^4 over the top 20), with and without the log-softmax, next to the
  ensemble of the same n runs;
* ``per_class.png``: k-NN accuracy of each single-class kernel, with and without the
  log-softmax, against the full kernel, for a few n;
* grids: near-duplicate pairs (ranks 1-48 and 601-648), failure modes (nearest train example
  with another label, 9 neighbours), random test examples with their nearest train examples by
  the kernel and by one run's penultimate features, the most similar pairs by features, and
  (unless ``--skip-train-pairs``) near-duplicates inside the training set;
* ``results.json``: every number above, plus nearest-neighbour label agreement and pixel
  distances of the most similar pairs by kernel and by features; inside the training set, label
  mismatches and the mean nearest kernel value both over every train query (``queries``) and
  over the distinct pairs, (a, b) and (b, a) counted once (``distinct_pairs``).

    python experiments/kernel/run_kernel_experiment.py STORE [--out docs/kernel] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import manyruns
from manyruns.analysis.ensemble import ensemble_accuracy, ensemble_curve
from manyruns.analysis.kernel import Workspace
from manyruns.analysis.knn import knn_accuracy
from manyruns.analysis.neighbours import Neighbours, neighbours
from manyruns.analysis.pairs import drop_mirrored, feature_neighbours, feature_run, label_agreement, rank_pairs, select_ranks
from manyruns.report.ensemble import ensemble_table, plot_ensemble
from manyruns.report.pairs import kernel_vs_features_grid, neighbour_grid
from manyruns.streaming import doubling_sizes

MAJORITY = (3, 0.0)  # k, power
WEIGHTED = (20, 4.0)


def plot_knn(rows: list[dict], single: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["runs"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(n, [100 * r["ensemble_logit_accuracy"] for r in rows], "k-o", label="ensemble (mean logits)")
    styles = {"log_softmax": "-", "raw": ":"}
    for variant, style in styles.items():
        label = "log-softmax" if variant == "log_softmax" else "raw logits"
        ax.plot(n, [100 * r[variant]["majority_k3"] for r in rows], style, marker="s", color="tab:blue", label=f"k-NN k=3 majority, {label}")
        ax.plot(n, [100 * r[variant]["weighted_k20_p4"] for r in rows], style, marker="^", color="tab:red", label=f"k-NN top-20 kernel^4, {label}")
    ax.axhline(100 * single, color="grey", lw=1, label="single run (mean)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("runs n")
    ax.set_ylabel("test accuracy (%)")
    shown = [100 * r[v][m] for r in rows for v in styles for m in ("majority_k3", "weighted_k20_p4")]
    shown += [100 * r["ensemble_logit_accuracy"] for r in rows] + [100 * single]
    ax.set_ylim(max(min(shown), 100 * single - 8) - 0.5, max(shown) + 0.5)  # very small n may fall below
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_per_class(rows: list[dict], classes: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False, sharey=True)
    x = np.arange(len(classes))
    for ax, row in zip(axes[0], rows):
        ax.bar(x - 0.2, [100 * a for a in row["log_softmax"]["class_kernels"]], 0.4, label="one class, log-softmax")
        ax.bar(x + 0.2, [100 * a for a in row["raw"]["class_kernels"]], 0.4, label="one class, raw logits")
        ax.axhline(100 * row["log_softmax"]["full_kernel"], color="tab:blue", lw=1.5, label="all classes, log-softmax")
        ax.axhline(100 * row["raw"]["full_kernel"], color="tab:orange", lw=1.5, ls=":", label="all classes, raw logits")
        ax.set_xticks(x, [c[:8] for c in classes], rotation=60, fontsize=7)
        ax.set_title(f"{row['runs']} runs", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("k-NN (k=3) test accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def pixel_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square pixel difference (0..1 scale) of paired images ``(n, C, H, W)``."""
    d = a.astype(np.float32) / 255 - b.astype(np.float32) / 255
    return np.sqrt((d * d).reshape(len(d), -1).mean(1))


def train_pair_counts(train_nb: Neighbours, y_train: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Near-duplicates inside the training set from ``train_nb`` (train examples as queries,
    each with its nearest other train example): the table of distinct pairs ((a, b) and (b, a)
    once, ranked), and counts both over every query and over the distinct pairs."""
    by_query = rank_pairs(train_nb, y_train, y_train, query_name="query")
    distinct = drop_mirrored(by_query)

    def differs(table: pd.DataFrame) -> int:
        return int((table.query_label != table.train_label).sum())

    return distinct, {
        "queries": int(len(by_query)),
        "distinct_pairs": int(len(distinct)),
        "top1_kernel": {
            "mean_over_queries": float(by_query.kernel.mean()),
            "mean_over_distinct_pairs": float(distinct.kernel.mean()),
            "max": float(by_query.kernel.max()),
        },
        "nearest_label_differs": {"queries": differs(by_query), "distinct_pairs": differs(distinct)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/kernel"))
    parser.add_argument("--data-dir", type=Path, default=None, help="data root for the images (default: $MANYRUNS_DATA, then the store's)")
    parser.add_argument("--sizes", type=str, default=None, help="run counts for the k-NN curves (default 2, 4, 8, ..., R)")
    parser.add_argument("--class-sizes", type=str, default=None, help="run counts for the per-class kernels (default 16, 64, R)")
    parser.add_argument("--memory-gib", type=float, default=6.0)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-train-pairs", action="store_true", help="skip near-duplicates inside the training set (the costliest kernel)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t_start = time.perf_counter()
    pop = manyruns.open(args.store)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    R = int(pop.select("ok").size)
    if R < 2:
        raise SystemExit(f"{args.store}: needs at least 2 ok runs, has {R}")
    data = pop.dataset(args.data_dir)
    y_train, y_test, C = pop.targets("train"), pop.targets("test"), pop.classes
    ws = Workspace()
    opts = {"precision": args.precision, "memory_gib": args.memory_gib, "workspace": ws}
    timings: dict[str, float] = {}
    results: dict = {"store": str(args.store), "recipe": pop.recipe.name, "dataset": data.name, "runs": R, "precision": args.precision}

    def timed(name, fn, *a, **kw):
        t0 = time.perf_counter()
        value = fn(*a, **kw)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return value

    # 1. single runs and ensembles
    curve = timed("ensemble", ensemble_curve, pop)
    plot_ensemble(curve, out / "ensemble.png", f"{pop.recipe.name}: ensemble test accuracy")
    results["ensemble"] = curve.summary()
    print(ensemble_table(curve), flush=True)

    # 2. kernel k-NN against the number of runs, with and without the log-softmax
    sizes = [int(n) for n in args.sizes.split(",")] if args.sizes else [n for n in doubling_sizes(R) if n >= 2]
    k_max = max(MAJORITY[0], WEIGHTED[0])
    rows, kept = [], {}
    for n in sizes:
        ens = ensemble_accuracy(pop, "test", n)
        row = {"runs": n, "ensemble_logit_accuracy": ens["logit_accuracy"], "ensemble_prob_accuracy": ens["prob_accuracy"]}
        for variant, log_softmax in (("log_softmax", True), ("raw", False)):
            nb = timed("kernel_by_runs", neighbours, pop, k=k_max, runs=n, log_softmax=log_softmax, **opts)
            row[variant] = {
                "majority_k3": knn_accuracy(nb, y_train, y_test, C, *MAJORITY),
                "weighted_k20_p4": knn_accuracy(nb, y_train, y_test, C, *WEIGHTED),
                "nearest": knn_accuracy(nb, y_train, y_test, C, 1),
                "top1_kernel_mean": float(nb.values[:, 0].mean()),
            }
            if n == R:
                kept[variant] = nb
        rows.append(row)
        print(f"n={n}: ensemble {100 * row['ensemble_logit_accuracy']:.2f}%, k-NN k=3 {100 * row['log_softmax']['majority_k3']:.2f}% "
              f"(raw {100 * row['raw']['majority_k3']:.2f}%), weighted {100 * row['log_softmax']['weighted_k20_p4']:.2f}% "
              f"(raw {100 * row['raw']['weighted_k20_p4']:.2f}%)", flush=True)
    results["knn_by_runs"] = rows
    plot_knn(rows, curve.mean_accuracy, out / "knn_vs_runs.png", f"{pop.recipe.name}: kernel k-NN vs ensemble")
    if "log_softmax" not in kept:
        kept["log_softmax"] = timed("kernel_by_runs", neighbours, pop, k=k_max, runs=R, **opts)

    # 3. per-class kernels
    class_sizes = [int(n) for n in args.class_sizes.split(",")] if args.class_sizes else sorted({min(16, R), min(64, R), R} - {1})
    per_class = []
    for n in class_sizes:
        row = {"runs": n}
        for variant, log_softmax in (("log_softmax", True), ("raw", False)):
            accs = []
            for c in range(C):
                nb = timed("kernel_per_class", neighbours, pop, k=MAJORITY[0], runs=n, log_softmax=log_softmax, classes=[c], **opts)
                accs.append(knn_accuracy(nb, y_train, y_test, C, *MAJORITY))
            full = next((r[variant]["majority_k3"] for r in rows if r["runs"] == n), None)
            if full is None:
                nb = timed("kernel_per_class", neighbours, pop, k=MAJORITY[0], runs=n, log_softmax=log_softmax, **opts)
                full = knn_accuracy(nb, y_train, y_test, C, *MAJORITY)
            row[variant] = {"class_kernels": accs, "mean_class_kernel": float(np.mean(accs)), "full_kernel": full}
        per_class.append(row)
        print(f"per-class kernels, n={n}: mean k-NN {100 * row['log_softmax']['mean_class_kernel']:.2f}% with log-softmax, "
              f"{100 * row['raw']['mean_class_kernel']:.2f}% raw (full kernel {100 * row['log_softmax']['full_kernel']:.2f}%)", flush=True)
    results["per_class"] = per_class
    plot_per_class(per_class, data.classes, out / "per_class.png", f"{pop.recipe.name}: k-NN accuracy of single-class kernels")

    # 4. pairs: near-duplicates and failure modes (all runs, log-softmax)
    nb = kept["log_softmax"]
    table = rank_pairs(nb, y_test, y_train)
    failures = rank_pairs(nb, y_test, y_train, different_labels=True)
    table.to_csv(out / "pairs.csv", index=False, float_format="%.6f")
    title = f"{pop.recipe.name}: test images ranked by the kernel value of their nearest train image ({R} runs)"
    for first, last in ((1, 48), (601, 648)):
        if first <= len(table):
            neighbour_grid(select_ranks(table, first, last), nb, data.x_test, data.x_train, y_train, data.classes, out / f"pairs_{first:03d}_{last:03d}.png", 1, f"{title}, ranks {first}-{last}")
    if len(failures):
        neighbour_grid(select_ranks(failures, 1, 8), nb, data.x_test, data.x_train, y_train, data.classes, out / "failures.png", 9,
                       f"{pop.recipe.name}: most similar pairs whose labels differ, with 9 nearest train images ({R} runs)")
    results["pairs"] = {
        "top1_kernel": {"mean": float(table.kernel.mean()), "max": float(table.kernel.max()), "rank_600": float(table.kernel.iloc[min(599, len(table) - 1)])},
        "nearest_label_differs": int(len(failures)),
        "first_failures": failures.head(8).to_dict(orient="records"),
    }

    # 5. kernel against penultimate features
    try:
        run = feature_run(pop)
    except Exception as exc:  # a store without features: skip this part, say why
        results["features"] = {"skipped": str(exc)}
        run = None
    if run is not None:
        _, chosen = kernel_vs_features_grid(pop, data, nb, out / "random_pairs.png", 10, 2, args.seed, run)
        train_f = np.asarray(pop.array("features/train")[run], dtype=np.float32)
        test_f = np.asarray(pop.array("features/test")[run], dtype=np.float32)
        t0 = time.perf_counter()
        by_features = feature_neighbours(train_f, test_f, MAJORITY[0])
        timings["feature_neighbours"] = time.perf_counter() - t0
        dist = np.sqrt(((test_f[:, None, :] - train_f[by_features]) ** 2).sum(2))  # (T, k), nearest first
        feature_nb = Neighbours(indices=by_features, values=(-dist).astype(np.float32), runs=np.array([run]))  # similarity = -distance
        feature_table = rank_pairs(feature_nb, y_test, y_train)
        neighbour_grid(select_ranks(feature_table, 1, 48), feature_nb, data.x_test, data.x_train, y_train, data.classes, out / "feature_pairs_001_048.png", 1,
                       f"{pop.recipe.name}: most similar pairs by penultimate features of run {run} (negative distance shown)")
        top = 100
        k_pairs, f_pairs = table.head(top), feature_table.head(top)
        rng = np.random.default_rng(args.seed)
        random_test = rng.integers(0, len(y_test), 1000)
        random_train = np.array([rng.choice(np.flatnonzero(y_train == y_test[q])) for q in random_test])
        results["features"] = {
            "feature_run": run,
            "random_examples": chosen,
            "nearest_same_label": {"kernel": label_agreement(nb, y_test, y_train), "features": label_agreement(feature_nb, y_test, y_train)},
            "knn_k3_accuracy": {"kernel": knn_accuracy(nb, y_train, y_test, C, *MAJORITY), "features": knn_accuracy(feature_nb, y_train, y_test, C, *MAJORITY)},
            "single_run_accuracy_of_feature_run": float(pop.runs.test_acc.iloc[run]),
            "pixel_rms_distance": {
                f"kernel_top{top}_pairs": float(pixel_distance(data.x_test[k_pairs.test_index], data.x_train[k_pairs.train_index]).mean()),
                f"features_top{top}_pairs": float(pixel_distance(data.x_test[f_pairs.test_index], data.x_train[f_pairs.train_index]).mean()),
                "kernel_nearest_all": float(pixel_distance(data.x_test, data.x_train[nb.indices[:, 0]]).mean()),
                "features_nearest_all": float(pixel_distance(data.x_test, data.x_train[by_features[:, 0]]).mean()),
                "random_same_class": float(pixel_distance(data.x_test[random_test], data.x_train[random_train]).mean()),
            },
        }

    # 6. near-duplicates inside the training set
    if not args.skip_train_pairs:
        train_nb = timed("kernel_train_queries", neighbours, pop, k=1, queries="train", **opts)
        train_table, results["train_pairs"] = train_pair_counts(train_nb, y_train)
        neighbour_grid(select_ranks(train_table, 1, 48), train_nb, data.x_train, data.x_train, y_train, data.classes, out / "train_pairs_001_048.png", 1,
                       f"{pop.recipe.name}: most similar pairs of training examples ({R} runs)", query_name="query")
        results["train_pairs"]["top48"] = train_table.head(48).to_dict(orient="records")
        counts = results["train_pairs"]["nearest_label_differs"]
        print(f"training set: nearest other train example has another label for {counts['queries']} of {results['train_pairs']['queries']} "
              f"queries, {counts['distinct_pairs']} of {results['train_pairs']['distinct_pairs']} distinct pairs", flush=True)

    timings["total"] = time.perf_counter() - t_start
    results["seconds"] = timings
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {out}/results.json and figures in {timings['total']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
