"""Model zoo throughput: training the CPU-sized Small CNN Zoo, and reading and writing zoo files.

1. Training: plans ``examples/small-cnn-zoo-mnist-cpu.toml`` with ``--runs`` networks (the
   four train fractions in equal shares) in a fresh store and times ``manyruns.train`` with
   ``--workers`` processes: seconds per network (wall), networks per hour, the projection for
   the recipe's 1,200 networks, and the mean per-network time by train fraction (as the
   workers measured it). Against it, in the same run: the first ``--baseline-networks`` of the
   same networks (same sampled hyperparameters and train fractions) trained by a plain
   sequential PyTorch loop, one after another (a ``DataLoader`` over a ``TensorDataset`` of
   the network's subset, the same optimizer, dropout, per-epoch test and train-subset
   evaluation and checkpoints; torch's default threads), and the floor: the networks' FLOPs
   over the float32 GEMM rate measured in the same run. Needs MNIST (``--data-dir`` or
   ``$MANYRUNS_DATA``); skipped without.
2. Files: writes a synthetic zoo directory of ``--synthetic-networks`` networks x 9
   checkpoints (random weights, the published layout and names), then times
   ``import smallcnnzoo`` into a store, per-tensor statistics over every checkpoint, and
   ``export smallcnnzoo`` back (rows per second each).

    python benchmarks/bench_zoo.py [--runs 24] [--baseline-networks 8] [--workers 2] [--synthetic-networks 2000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import layer_flops  # noqa: E402
from common import REPO, default_data_dir, gemm_rate, machine, plain_epoch  # noqa: E402

import manyruns  # noqa: E402
from manyruns.analysis.zoo import zoo_samples  # noqa: E402
from manyruns.data import load_dataset  # noqa: E402
from manyruns.models.architectures import create_model  # noqa: E402
from manyruns.plan import plan_runs, run_recipe  # noqa: E402
from manyruns.training.data import scale  # noqa: E402
from manyruns.training.optim import make_optimizer  # noqa: E402
from manyruns.formats.smallcnnzoo import Architecture, export_smallcnnzoo, import_smallcnnzoo, our_layout, write_layout, zoo_tensors_for  # noqa: E402
from manyruns.recipe import Recipe  # noqa: E402

CHECKPOINTS = [0, 1, 2, 3, 20, 40, 60, 80, 86]


def bench_training(runs: int, workers: int, data_dir: str, root: Path) -> dict:
    recipe = Recipe.load(REPO / "examples" / "small-cnn-zoo-mnist-cpu.toml")
    full = recipe.population.runs
    recipe = recipe.with_overrides({"population.runs": runs})
    store = root / "train"
    manyruns.plan(recipe, store, data_dir=data_dir)
    t0 = time.perf_counter()
    report = manyruns.train(store, workers=workers, device="cpu", data_dir=data_dir, progress=False)
    wall = time.perf_counter() - t0
    table = manyruns.open(store).runs
    per_fraction = table.groupby("subset").seconds.mean().to_dict()
    return {
        "networks": runs,
        "workers": workers,
        "wall_seconds": wall,
        "seconds_per_network": wall / runs,
        "networks_per_hour": 3600 * runs / wall,
        "projected_hours_for_recipe": full * wall / runs / 3600,
        "recipe_networks": full,
        "worker_seconds_per_network_by_train_fraction": {str(k): v for k, v in per_fraction.items()},
        "worker_seconds_first": table.seconds.tolist(),
        "diverged": report.diverged,
    }


def network_flops(recipe: Recipe, ratio: float, dataset) -> float:
    """Matrix-product FLOPs of one zoo network: per training example per epoch the forward pass,
    the weight gradients and the input gradients of every layer but the first; the evaluations
    (test set and the training subset, at initialization and after every epoch); the final
    logits on every train and test example."""
    layers = layer_flops(create_model(recipe.model, dataset.input_shape, dataset.num_classes, 0), dataset.input_shape)
    fwd = sum(layers)
    n = round(ratio * dataset.n_train)
    E = recipe.training.epochs
    evaluations = (E + 1) * (dataset.n_test + n) * fwd
    return float(E * n * (3 * fwd - layers[0]) + evaluations + (dataset.n_train + dataset.n_test) * fwd)


def baseline_network(recipe: Recipe, ratio: float, dataset, seed: int) -> float:
    """Seconds for one zoo network as a plain PyTorch script would train and evaluate it."""
    torch.manual_seed(seed)
    x = torch.from_numpy(scale(dataset.x_train, recipe.data.normalize, None))
    xt = torch.from_numpy(scale(dataset.x_test, recipe.data.normalize, None))
    y, yt = torch.from_numpy(dataset.y_train), torch.from_numpy(dataset.y_test)
    t0 = time.perf_counter()
    subset = torch.randperm(dataset.n_train)[: round(ratio * dataset.n_train)]
    model = create_model(recipe.model, dataset.input_shape, dataset.num_classes, seed)
    opt = make_optimizer(model.parameters(), recipe.optimizer)
    loader = DataLoader(TensorDataset(x[subset], y[subset]), batch_size=recipe.training.batch_size, shuffle=True)
    checkpoints = []

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            for inputs, labels in ((xt, yt), (x[subset], y[subset])):
                nn.functional.cross_entropy(torch.cat([model(inputs[i : i + 4096]) for i in range(0, len(inputs), 4096)]), labels)

    evaluate()
    checkpoints.append(torch.cat([q.detach().flatten() for q in model.parameters()]))
    for epoch in range(1, recipe.training.epochs + 1):
        plain_epoch(model, loader, opt)
        evaluate()
        if epoch in recipe.record.weights:
            checkpoints.append(torch.cat([q.detach().flatten() for q in model.parameters()]))
    model.eval()
    with torch.no_grad():
        for inputs in (x, xt):
            torch.cat([model(inputs[i : i + 4096]) for i in range(0, len(inputs), 4096)])
    return time.perf_counter() - t0


def bench_baseline(networks: int, data_dir: str) -> dict:
    """The first ``networks`` of the recipe's zoo through :func:`baseline_network`, and their floor."""
    recipe = Recipe.load(REPO / "examples" / "small-cnn-zoo-mnist-cpu.toml").with_overrides({"population.runs": networks})
    dataset = load_dataset(recipe.data.dataset, data_dir)
    rate = gemm_rate(torch.float32)
    seconds, flops = [], []
    for plan in plan_runs(recipe):
        resolved = run_recipe(recipe, plan)
        seconds.append(baseline_network(resolved, plan.subset, dataset, plan.index))
        flops.append(network_flops(resolved, plan.subset, dataset))
    return {
        "networks": networks,
        "seconds_per_network": float(np.mean(seconds)),
        "seconds": seconds,
        "gemm_rate_float32": rate,
        "floor_seconds_per_network": float(np.mean(flops)) / rate,
        "gflop_per_network": float(np.mean(flops)) / 1e9,
        "torch_threads": torch.get_num_threads(),
    }


def write_synthetic_zoo(folder: Path, networks: int, seed: int = 0) -> int:
    """Random weights in the published layout; returns the number of rows."""
    rng = np.random.default_rng(seed)
    params = our_layout(Architecture(1, 16, 3, 10))
    tensors = zoo_tensors_for(params)
    folder.mkdir(parents=True)
    rows = networks * len(CHECKPOINTS)
    weights = np.lib.format.open_memmap(folder / "weights.npy", mode="w+", dtype=np.float32, shape=(rows, tensors[-1].end))
    for start in range(0, rows, 4096):
        stop = min(rows, start + 4096)
        weights[start:stop] = rng.normal(0, 0.1, size=(stop - start, weights.shape[1])).astype(np.float32)
    weights.flush()
    del weights
    n = np.repeat(np.arange(networks), len(CHECKPOINTS))
    pick = lambda options: np.asarray(options, dtype=object)[rng.integers(len(options), size=networks)][n]  # noqa: E731
    frame = pd.DataFrame(
        {
            "config.activation": pick(["relu", "tanh"]),
            "config.b_init": "zeros",
            "config.dataset": "mnist",
            "config.dnn_architecture": "cnn",
            "config.dropout": rng.uniform(0, 0.7, networks)[n],
            "config.epochs": 86,
            "config.epochs_between_checkpoints": 20,
            "config.init_std": np.exp(rng.uniform(np.log(1e-3), np.log(0.5), networks))[n],
            "config.l2reg": np.exp(rng.uniform(np.log(1e-8), np.log(1e-2), networks))[n],
            "config.learning_rate": np.exp(rng.uniform(np.log(5e-4), np.log(5e-2), networks))[n],
            "config.num_layers": 3,
            "config.num_units": 16,
            "config.optimizer": pick(["sgd", "adam", "rmsprop"]),
            "config.random_seed": 42,
            "config.train_fraction": pick([0.1, 0.25, 0.5, 1.0]),
            "config.w_init": pick(["he_normal", "orthogonal", "glorot_normal", "RandomNormal", "TruncatedNormal"]),
            "modeldir": [f"zoo/{i:06d}" for i in n],
            "step": np.tile(CHECKPOINTS, networks),
            "test_accuracy": rng.uniform(0.1, 1, rows),
            "test_loss": rng.uniform(0, 2.3, rows),
            "train_accuracy": rng.uniform(0.1, 1, rows),
            "train_loss": rng.uniform(0, 2.3, rows),
        }
    )
    frame.to_csv(folder / "metrics.csv.gz", index=False)
    write_layout(tensors, folder / "layout.csv")
    return rows


def bench_files(networks: int, root: Path) -> dict:
    source = root / "synthetic"
    rows = write_synthetic_zoo(source, networks)
    t0 = time.perf_counter()
    pop = import_smallcnnzoo(source, root / "imported")
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = zoo_samples(pop, "stats", "all")
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    export_smallcnnzoo(pop, root / "exported")
    t_export = time.perf_counter() - t0
    same = np.array_equal(np.load(source / "weights.npy", mmap_mode="r")[:1000], np.load(root / "exported" / "weights.npy", mmap_mode="r")[:1000])
    return {
        "networks": networks,
        "rows": rows,
        "weights_mb": round((source / "weights.npy").stat().st_size / 2**20, 1),
        "import_seconds": t_import,
        "import_rows_per_second": rows / t_import,
        "stats_features_seconds": t_stats,
        "stats_rows_per_second": samples.X.shape[0] / t_stats,
        "export_seconds": t_export,
        "export_rows_per_second": rows / t_export,
        "round_trip_identical_first_1000_rows": bool(same),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=24, help="networks to train (0: skip training)")
    parser.add_argument("--baseline-networks", type=int, default=8, help="of the same networks, trained by the plain loop (0: skip)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--synthetic-networks", type=int, default=2000, help="networks in the synthetic zoo (0: skip)")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "zoo.json")
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    root = Path(tempfile.mkdtemp(prefix="bench-zoo-"))
    try:
        if args.runs and args.data_dir:
            results["training"] = bench_training(args.runs, args.workers, args.data_dir, root)
            print(json.dumps(results["training"], indent=2))
            if args.baseline_networks:
                base = bench_baseline(args.baseline_networks, args.data_dir)
                engine = results["training"]
                # the engine's networks are the recipe's first --runs, so its first ones are the baseline's
                base["engine_worker_seconds_same_networks"] = engine["worker_seconds_first"][: args.baseline_networks]
                base["engine_wall_seconds_per_network"] = engine["seconds_per_network"]
                base["speedup_wall"] = base["seconds_per_network"] / engine["seconds_per_network"]
                base["floor_fraction_of_engine_rate"] = base["floor_seconds_per_network"] / engine["seconds_per_network"]
                results["baseline"] = base
                print(json.dumps(base, indent=2))
        elif args.runs:
            print("no MNIST (--data-dir or $MANYRUNS_DATA): training skipped")
        if args.synthetic_networks:
            results["files"] = bench_files(args.synthetic_networks, root)
            print(json.dumps(results["files"], indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
