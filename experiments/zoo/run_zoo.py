"""Train a CPU-sized Small CNN Zoo and predict test accuracy from weights.

Plans and trains (resumably) the zoo of ``examples/small-cnn-zoo-mnist-cpu.toml`` on MNIST or
Fashion-MNIST, then fits every predictor (linear, gbm, dnn) on every feature set (stats,
weights, hyper, stats+hyper) for the published task (the test accuracy of the checkpoint whose
weights are given; by default the last checkpoint), over one or more network splits, and
predicts the final accuracy from early checkpoints. Writes into ``--out``:

    zoo-<dataset>.json           every score, the training time, the zoo's accuracy spread
    zoo-<dataset>.md             the R^2 / Kendall tau table next to the published best R^2
    zoo-<dataset>-accuracy.png   test accuracy histogram and train-vs-test accuracy
    zoo-<dataset>-scatter.png    predicted vs true accuracy, best predictor per feature set

Full run (about 1.6 h of training on 2 cores, then 10-20 minutes of fitting):

    python experiments/zoo/run_zoo.py --dataset mnist --workers 2
    python experiments/zoo/run_zoo.py --dataset fashion-mnist --workers 2

Quick check of the whole pipeline (about 20 networks):

    python experiments/zoo/run_zoo.py --runs 20 --store /tmp/zoo-check --out /tmp/zoo-check-out
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PUBLISHED_BEST_R2 = {"mnist": 0.993, "fashion-mnist": 0.993, "cifar10-gs": 0.984, "svhn-gs": 0.986}
FEATURES = ("stats", "weights", "hyper", "stats+hyper")
MODELS = ("linear", "gbm", "dnn")


def default_data_dir() -> str | None:
    shared = REPO.parent / "shared" / "data"
    return os.environ.get("MANYRUNS_DATA") or (str(shared) if shared.is_dir() else None)


def train_zoo(args) -> dict:
    import manyruns
    from manyruns.recipe import Recipe

    recipe = Recipe.load(args.recipe)
    overrides = {"data.dataset": args.dataset}
    if args.runs:
        overrides["population.runs"] = args.runs
    recipe = recipe.with_overrides(overrides)
    recipe = recipe.model_copy(update={"name": f"{recipe.name}-{args.dataset}"})
    t0 = time.perf_counter()
    manyruns.plan(recipe, args.store, data_dir=args.data_dir)
    report = manyruns.train(args.store, workers=args.workers, device="cpu", data_dir=args.data_dir, progress=not args.quiet)
    return {"train_call": report.to_dict(), "wall_seconds": time.perf_counter() - t0}


def accuracy_figure(pop, path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pop.runs
    ok = table[table.status == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].hist(ok.test_acc, bins=30, color="C2")
    axes[0].set_xlabel("final test accuracy")
    axes[0].set_ylabel("networks")
    for fraction, group in ok.groupby("subset"):
        axes[1].scatter(group.test_acc, group.train_acc, s=4, alpha=0.5, label=f"train fraction {fraction:g}")
    axes[1].plot([0, 1], [0, 1], "k--", lw=0.8)
    axes[1].set_xlabel("test accuracy")
    axes[1].set_ylabel("train accuracy")
    axes[1].legend(fontsize=7, markerscale=3)
    fig.suptitle(f"{pop.recipe.data.dataset}: {len(ok)} networks ({int((table.status == 'diverged').sum())} diverged)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    q = np.quantile(ok.test_acc, [0.0, 0.1, 0.5, 0.9, 1.0]).tolist()
    return {"networks_ok": int(len(ok)), "diverged": int((table.status == "diverged").sum()), "test_acc_quantiles_0_10_50_90_100": q}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "examples" / "small-cnn-zoo-mnist-cpu.toml")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    parser.add_argument("--store", type=Path, default=None, help="default: runs/zoo-cpu-<dataset>")
    parser.add_argument("--runs", type=int, default=None, help="override population.runs (e.g. 20 for a quick check)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--skip-train", action="store_true", help="use the store as it is")
    parser.add_argument("--features", default=",".join(FEATURES))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", type=int, default=3, help="network splits to average over")
    parser.add_argument("--gbm-backend", default="auto")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "zoo")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    args.store = args.store or REPO / "runs" / f"zoo-cpu-{args.dataset}"
    args.out.mkdir(parents=True, exist_ok=True)

    import manyruns
    from manyruns.analysis.zoo import checkpoint_epochs, predict_accuracy
    from manyruns.report.zoo import prediction_scatter

    results: dict = {"dataset": args.dataset, "store": str(args.store), "recipe": str(args.recipe)}
    if not args.skip_train:
        results["training"] = train_zoo(args)
    pop = manyruns.open(args.store)
    results["zoo"] = accuracy_figure(pop, args.out / f"zoo-{args.dataset}-accuracy.png")
    checkpoints = checkpoint_epochs(pop)
    results["checkpoints"] = checkpoints

    # the published task: weights of the last checkpoint -> that checkpoint's test accuracy
    scores: dict = {}
    best: dict = {}
    for features in args.features.split(","):
        for model in args.models.split(","):
            runs = []
            for seed in range(args.seeds):
                result = predict_accuracy(
                    pop, features=features, model=model, checkpoints=None, target="checkpoint", seed=seed, gbm_backend=args.gbm_backend, runs="committed"
                )
                if seed == 0:
                    result.save(pop)
                runs.append(result.metrics)
                if seed == 0 and (features not in best or result.metrics["r2"] > best[features][0].metrics["r2"]):
                    best[features] = (result, model)
            r2 = [m["r2"] for m in runs]
            tau = [m["kendall_tau"] for m in runs]
            scores[f"{features}/{model}"] = {
                "r2_mean": float(np.mean(r2)),
                "r2_std": float(np.std(r2, ddof=1)) if len(r2) > 1 else None,
                "kendall_tau_mean": float(np.mean(tau)),
                "kendall_tau_std": float(np.std(tau, ddof=1)) if len(tau) > 1 else None,
                "per_seed": runs,
            }
            print(f"{features:12s} {model:7s} R^2 {np.mean(r2):.4f}  tau {np.mean(tau):.4f}  ({runs[0]['seconds_fit']:.1f} s fit)", flush=True)
    results["scores"] = scores

    # early prediction: weights of an earlier checkpoint -> final test accuracy
    early = {}
    for epoch in checkpoints[:-1]:
        result = predict_accuracy(pop, features="stats", model="gbm", checkpoints=epoch, target="final", seed=0, gbm_backend=args.gbm_backend, runs="committed")
        early[str(epoch)] = {"r2": result.metrics["r2"], "kendall_tau": result.metrics["kendall_tau"]}
        print(f"epoch {epoch} weights -> final accuracy (stats, gbm): R^2 {result.metrics['r2']:.4f}  tau {result.metrics['kendall_tau']:.4f}", flush=True)
    results["early_prediction_stats_gbm"] = early

    scatter_scores(best, args, prediction_scatter)
    (args.out / f"zoo-{args.dataset}.json").write_text(json.dumps(results, indent=2, default=float))
    (args.out / f"zoo-{args.dataset}.md").write_text(markdown_table(results, args))
    print(f"results in {args.out}")


def scatter_scores(best: dict, args, prediction_scatter) -> None:
    """One panel per feature set: its best predictor's test predictions (split seed 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    paths = []
    for features, (result, model) in best.items():
        test = result.split == 2
        m = result.metrics
        paths.append(
            prediction_scatter(
                result.y_true[test], result.y_pred[test], args.out / f".panel-{features.replace('+', '-')}.png",
                title=f"{features}, {model}", note=f"R$^2$ = {m['r2']:.3f}\n$\\tau$ = {m['kendall_tau']:.3f}",
            )
        )
    if not paths:
        return
    images = [Image.open(p) for p in paths]
    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 4.0))
    for ax, image in zip(np.atleast_1d(axes), images):
        ax.imshow(image)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out / f"zoo-{args.dataset}-scatter.png", dpi=110)
    plt.close(fig)
    for p in paths:
        p.unlink()


def markdown_table(results: dict, args) -> str:
    lines = [
        f"R^2 and Kendall's tau on the test networks ({args.dataset}; mean over {args.seeds} network split(s); "
        f"published best R^2: {PUBLISHED_BEST_R2[args.dataset]})",
        "",
        "| features | linear R^2 | linear tau | gbm R^2 | gbm tau | dnn R^2 | dnn tau |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for features in args.features.split(","):
        cells = []
        for model in MODELS:
            s = results["scores"].get(f"{features}/{model}")
            cells += [f"{s['r2_mean']:.3f}", f"{s['kendall_tau_mean']:.3f}"] if s else ["", ""]
        lines.append(f"| {features} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
