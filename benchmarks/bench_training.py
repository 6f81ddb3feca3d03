"""Training throughput of the engine against a plain sequential PyTorch loop and the FLOP floor.

For each case (the MNIST memorization MLP recipe, the small CNN on MNIST, the MLP recipe with
bfloat16 products, and the CPU CIFAR-10 recipe of the fast convnet) this measures, in one run on
one machine:

* the baseline: one model at a time, a ``DataLoader`` over a ``TensorDataset`` of the run's
  subset, ``torch.optim`` with the recipe's hyperparameters, a test evaluation per epoch and
  the final logits on train and test (what the recipe records), torch's default threads; with
  the recipe's flips and translations done per batch, label smoothing, Nesterov momentum and
  one-cycle schedule where it has them;
* the engine: the whole ``manyruns plan`` + ``manyruns train --workers <cores>`` commands on a
  fresh store, wall clock, as a user runs them;
* the floor: the recipe's FLOPs per run over the GEMM rate of the recipe's precision measured
  in the same run (float32 on CPU; on CUDA the recipe's precision, bfloat16 for cifar10-fast).

On CUDA (``--device cuda``) the baseline keeps the data on the GPU and gathers batches by index
(no DataLoader), under the recipe's bfloat16 autocast; the engine is measured in several forms
(``--forms``: per-model loop with 1, 2, 4 worker processes per GPU, and the grouped convnet with
groups of 4, 8, 16), each on a fresh store, and every line prints the mean test accuracy of
its runs next to its runs per hour.

FLOPs per run count every matrix product the recipe needs: per training example the forward
pass, the weight gradients and the input gradients of every layer but the first (which
needs none); the per-epoch test evaluation; the final logits on every train and test example.
The conventional count (3x the forward pass per training example, i.e. 6 x parameters for an
MLP) is reported beside it.

    python benchmarks/bench_training.py [--cases mlp,cnn,mlp-bf16,cifar10-cpu] [--runs 32] [--baseline-runs 2]
    python benchmarks/bench_training.py --device cuda --case cifar10-fast [--runs 32] [--forms loop:1,grouped:8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, default_data_dir, gemm_rate, machine, plain_epoch  # noqa: E402

from manyruns.data import load_dataset  # noqa: E402
from manyruns.models.architectures import build_model  # noqa: E402
from manyruns.recipe import Recipe  # noqa: E402
from manyruns.training.data import scale  # noqa: E402

CASES = {
    # name: (recipe file, overrides, engine runs, baseline runs)
    "mlp": ("mnist-memorization.toml", {}, 32, 2),
    "mlp-bf16": ("mnist-memorization.toml", {"training.precision": "bfloat16"}, 32, 0),
    "cnn": ("small-cnn-mnist.toml", {}, 16, 2),
    "cifar10-cpu": ("cifar10-cpu.toml", {}, 4, 1),
    "cifar10-fast": ("cifar10-fast.toml", {}, 32, 2),
}
# engine forms measured on CUDA: strategy:workers per GPU (loop) or strategy:group size (grouped)
CUDA_FORMS = "loop:1,loop:2,loop:4,grouped:4,grouped:8,grouped:16"


def layer_flops(model: nn.Module, input_shape) -> list[int]:
    """Forward FLOPs (2 per multiply-add) of each conv/linear layer, in execution order."""
    flops: list[int] = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Linear):
            flops.append(2 * module.in_features * module.out_features)
        else:
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            flops.append(2 * int(np.prod(output.shape[1:])) * k)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return flops


def flops_per_run(recipe: Recipe, dataset) -> tuple[float, float]:
    """(exact, conventional) FLOPs of one run of ``recipe``."""
    layers = layer_flops(build_model(recipe.model, dataset.input_shape, dataset.num_classes), dataset.input_shape)
    fwd = sum(layers)
    n_sub = round(recipe.population.subset_levels[0] * dataset.n_train)
    E = recipe.training.epochs
    evals = E * dataset.n_test * fwd + (dataset.n_train + dataset.n_test) * fwd
    exact = E * n_sub * (3 * fwd - layers[0]) + evals
    conventional = E * n_sub * 3 * fwd + evals
    return float(exact), float(conventional)


def baseline_run(recipe: Recipe, dataset, seed: int, device: str = "cpu") -> float:
    """Seconds for one run as a plain PyTorch script would train it (data on ``device``)."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    stats = None
    if recipe.data.normalize == "standard":
        xf = dataset.x_train.astype(np.float64)
        stats = (xf.mean(axis=(0, 2, 3)), xf.std(axis=(0, 2, 3)))
    x = torch.from_numpy(scale(dataset.x_train, recipe.data.normalize, stats)).to(dev)
    xt = torch.from_numpy(scale(dataset.x_test, recipe.data.normalize, stats)).to(dev)
    y, yt = torch.from_numpy(dataset.y_train).to(dev), torch.from_numpy(dataset.y_test).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    n_sub = round(recipe.population.subset_levels[0] * dataset.n_train)
    subset = torch.randperm(dataset.n_train, device=dev)[:n_sub]
    model = build_model(recipe.model, dataset.input_shape, dataset.num_classes).to(dev)
    o = recipe.optimizer
    if o.name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    B = recipe.training.batch_size
    if dev.type == "cpu":
        loader = DataLoader(TensorDataset(x[subset], y[subset]), batch_size=B, shuffle=True)
        batches = len(loader)
    else:  # the data stays on the GPU: batches gathered by index from a fresh permutation
        batches = -(-n_sub // B)

        def loader_on_device():
            order = subset[torch.randperm(n_sub, device=dev)]
            for i in range(0, n_sub, B):
                yield x[order[i : i + B]], y[order[i : i + B]]

    low = recipe.training.precision == "bfloat16" and dev.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if low else None
    aug = recipe.data.augment
    steps = recipe.training.epochs * batches
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=o.lr, total_steps=steps, pct_start=recipe.schedule.peak_fraction, anneal_strategy="linear",
        div_factor=1 / max(recipe.schedule.final_fraction, 1e-6), final_div_factor=1.0, cycle_momentum=False,
    ) if recipe.schedule.kind == "one-cycle" else None
    for _ in range(recipe.training.epochs):
        batches_of_epoch = loader if dev.type == "cpu" else loader_on_device()
        plain_epoch(model, batches_of_epoch, opt, flip=aug.flip, pad=aug.crop, label_smoothing=recipe.training.label_smoothing,
                    schedule=schedule, autocast=autocast)
        model.eval()
        with torch.no_grad(), (autocast or torch.autocast("cpu", enabled=False)):
            nn.functional.cross_entropy(model(xt).float(), yt)
    with torch.no_grad(), (autocast or torch.autocast("cpu", enabled=False)):
        for i in range(0, len(x), 2000):
            model(x[i : i + 2000])
        model(xt)
    sync()
    return time.perf_counter() - t0


def engine_runs(recipe_path: Path, overrides: dict, runs: int, train_args: list[str], data_dir: str, workdir: Path) -> tuple[float, float]:
    """Wall seconds of `manyruns plan` + `manyruns train TRAIN_ARGS` for ``runs`` runs, and their mean test accuracy."""
    text = recipe_path.read_text()
    for planned in ("runs = 20000", "runs = 2000", "runs = 64"):
        text = text.replace(planned, f"runs = {runs}")
    for key, value in overrides.items():
        section, field = key.split(".")
        text = text.replace(f"[{section}]\n", f"[{section}]\n{field} = {json.dumps(value)}\n", 1)
    recipe = workdir / "recipe.toml"
    recipe.write_text(text)
    store = workdir / "store"
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "MANYRUNS_DATA": data_dir}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "manyruns.cli", "plan", str(recipe), str(store)], check=True, env=env, capture_output=True)
    out = subprocess.run(
        [sys.executable, "-m", "manyruns.cli", "train", str(store), *train_args, "--quiet"],
        check=True, env=env, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - t0
    print("   ", out.stdout.strip())
    status = subprocess.run([sys.executable, "-m", "manyruns.cli", "status", str(store), "--json"], check=True, env=env, capture_output=True, text=True)
    return seconds, json.loads(status.stdout)["mean_test_acc"]


def engine_forms(device: str, forms: str | None) -> list[tuple[str, list[str]]]:
    """(label, train arguments) of each engine form to measure."""
    if device == "cpu":
        return [(f"local, {len(os.sched_getaffinity(0))} workers", ["--workers", str(len(os.sched_getaffinity(0))), "--device", "cpu"])]
    gpus = torch.cuda.device_count()
    out = []
    for form in (forms or CUDA_FORMS).split(","):
        strategy, _, n = form.partition(":")
        n = int(n or 1)
        if strategy == "loop":
            out.append((f"loop, {n} worker(s) per GPU", ["--device", "cuda", "--strategy", "loop", "--workers", str(n * gpus), "--group-size", "1"]))
        else:
            out.append((f"{strategy}, groups of {n}", ["--device", "cuda", "--strategy", strategy, "--workers", str(gpus), "--group-size", str(n)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", "--case", dest="cases", default=None, help="comma-separated (default mlp,cnn,mlp-bf16 on cpu, cifar10-fast on cuda)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--forms", default=None, help=f"engine forms on cuda (default {CUDA_FORMS})")
    parser.add_argument("--runs", type=int, default=None, help="engine runs per case and form (default per case)")
    parser.add_argument("--baseline-runs", type=int, default=None)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--json", type=Path, default=None, help="default benchmarks/results/training.json (training-cuda.json on cuda)")
    args = parser.parse_args()
    if not args.data_dir:
        sys.exit("the datasets are needed (MNIST, CIFAR-10): pass --data-dir or set MANYRUNS_DATA")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")
    cuda = args.device == "cuda"
    cases = (args.cases or ("cifar10-fast" if cuda else "mlp,cnn,mlp-bf16")).split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"--case: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    json_path = args.json or REPO / "benchmarks" / "results" / ("training-cuda.json" if cuda else "training.json")
    info = machine()
    gemm_device = "cuda" if cuda else "cpu"
    rate32 = gemm_rate(torch.float32, device=gemm_device)
    # bfloat16 products crawl on CPUs without bfloat16 units: measured only for a bfloat16 case
    rate16 = gemm_rate(torch.bfloat16, device=gemm_device, n=8192 if cuda else 4096) if cuda or any(CASES[c][1].get("training.precision") == "bfloat16" for c in cases) else None
    print(f"machine: {info}")
    print(f"GEMM rate on {gemm_device}: float32 {rate32 / 1e9:.0f} GFLOP/s" + (f", bfloat16 {rate16 / 1e9:.0f} GFLOP/s" if rate16 else ""))
    datasets: dict = {}
    results = {"machine": info, "device": args.device, "gemm_float32": rate32, "gemm_bfloat16": rate16, "cases": {}}
    for name in cases:
        file, overrides, runs, base_runs = CASES[name]
        runs = args.runs or runs
        base_runs = base_runs if args.baseline_runs is None else args.baseline_runs
        recipe = Recipe.load(REPO / "examples" / file).with_overrides(overrides)
        name_of_data = recipe.data.dataset
        if name_of_data not in datasets:
            datasets[name_of_data] = load_dataset(name_of_data, args.data_dir)
        dataset = datasets[name_of_data]
        exact, conventional = flops_per_run(recipe, dataset)
        # the floor: float32 products on CPU; on a GPU the products of the recipe's precision
        rate = rate16 if cuda and recipe.training.precision == "bfloat16" else rate32
        print(f"\n== {name}: {file} {overrides or ''} ({exact / 1e9:.0f} GFLOP per run; conventional {conventional / 1e9:.0f})")
        base = [baseline_run(recipe, dataset, seed, args.device) for seed in range(base_runs)]
        if base:
            print(f"   baseline loop: {np.mean(base):.2f} s/run ({', '.join(f'{b:.2f}' for b in base)})")
        case = {
            "runs": runs,
            "baseline_s_per_run": float(np.mean(base)) if base else None,
            "flops_per_run": exact,
            "flops_per_run_conventional": conventional,
            "floor_s_per_run": exact / rate,
            "floor_conventional_s_per_run": conventional / rate,
            "forms": {},
        }
        for label, train_args in engine_forms(args.device, args.forms):
            with tempfile.TemporaryDirectory() as tmp:
                wall, accuracy = engine_runs(REPO / "examples" / file, overrides, runs, train_args, args.data_dir, Path(tmp))
            engine = wall / runs
            form = {
                "train_args": train_args,
                "mean_test_accuracy": accuracy,
                "engine_s_per_run": engine,
                "engine_runs_per_hour": 3600 / engine,
                "speedup_vs_baseline": case["baseline_s_per_run"] / engine if base else None,
                "fraction_of_floor_rate": case["floor_s_per_run"] / engine,
                "fraction_of_conventional_floor_rate": case["floor_conventional_s_per_run"] / engine,
            }
            case["forms"][label] = form
            print(
                f"   engine ({label}): {engine:.2f} s/run ({3600 / engine:,.0f} runs/h, {runs} runs, whole commands), "
                f"mean test accuracy {100 * accuracy:.2f}%"
                + (f", {form['speedup_vs_baseline']:.2f}x the loop" if base else "")
                + f"; floor {case['floor_s_per_run']:.2f} s/run -> {100 * form['fraction_of_floor_rate']:.0f}% of the floor's rate"
                + f" (conventional count: {100 * form['fraction_of_conventional_floor_rate']:.0f}%)"
            )
        best = min(case["forms"].values(), key=lambda f: f["engine_s_per_run"])
        case.update({k: best[k] for k in ("mean_test_accuracy", "engine_s_per_run", "engine_runs_per_hour", "speedup_vs_baseline", "fraction_of_floor_rate", "fraction_of_conventional_floor_rate")})
        results["cases"][name] = case
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {json_path}")


if __name__ == "__main__":
    main()
