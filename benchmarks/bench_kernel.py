"""Speed and memory of the streaming ensemble kernel at CIFAR-10 scale.

Synthetic logits (10,000 test x 50,000 train examples x 10 classes, float16, a per-example
pattern shared by the runs plus run noise) are written once into a population store. For each
number of runs ``n`` and each precision this measures, each in a fresh process (so that peak
memory is its own):

* the streaming kernel: ``kernel_topk`` over the first ``n`` runs of the store (two passes over
  blocks of runs, top-50 neighbours per test example), wall clock including reading the store;
* the straightforward in-memory implementation of the formula: every run's logits in memory
  as float32, log-softmax, standardize across runs, one ``(Nq, n) x (n, Nt)`` product per
  class, top-50 (the form in which the kernel was published);
* the floor: ``2 x Nq x Nt x C x n`` FLOPs over the GEMM rate of the same precision measured
  in the same run (a 4096 x 4096 matrix product with all threads).

Also reported: agreement of the two implementations (largest difference of the top-50 kernel
values, share of equal nearest neighbours) and peak resident memory of each process.

    python benchmarks/bench_kernel.py                         # n = 100 and 500, float32 and bfloat16
    python benchmarks/bench_kernel.py --runs 20 50 --test 1000 --train 5000   # a quick check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, gemm_rate, machine, peak_rss_gb  # noqa: E402

K_NEIGHBOURS = 50


def make_store(path: Path, runs: int, n_test: int, n_train: int, classes: int, seed: int = 0, block: int = 25) -> None:
    """A store of ``runs`` runs of synthetic float16 logits (the multirun-logits layout)."""
    from manyruns import store as store_mod

    rng = np.random.default_rng(seed)
    y_train = rng.integers(0, classes, n_train)
    y_test = rng.integers(0, classes, n_test)
    fingerprint = {"name": "synthetic", "train_shape": [n_train, 3, 32, 32], "test_shape": [n_test, 3, 32, 32], "num_classes": classes}
    arrays = {
        "logits/test": ((n_test, classes), "float16", np.nan),
        "logits/train": ((n_train, classes), "float16", np.nan),
    }
    spec = store_mod.ImportSpec("cifar10", fingerprint, (y_train, y_test), classes, (3, 32, 32), arrays, {"format": "synthetic"})
    store = store_mod.create_imported(path, spec)
    store_mod.append_runs(store, {"seed": [0] * runs})
    patterns = {
        "test": 2.0 * np.eye(classes, dtype=np.float32)[y_test] + rng.normal(size=(n_test, classes)).astype(np.float32),
        "train": 2.0 * np.eye(classes, dtype=np.float32)[y_train] + rng.normal(size=(n_train, classes)).astype(np.float32),
    }
    for r0 in range(0, runs, block):
        r1 = min(runs, r0 + block)
        rows = {}
        for split, pattern in patterns.items():
            noise = rng.standard_normal(size=(r1 - r0, *pattern.shape), dtype=np.float32)
            rows[f"logits/{split}"] = (pattern + noise).astype(np.float16)
        store.write_runs(r0, rows, np.ones(r1 - r0, dtype=np.int8))  # arrays, then status and commit markers


def streaming(store: str, n: int, precision: str, memory_gib: float, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    import manyruns
    from manyruns.analysis.kernel import KernelOptions, PopulationLogits, kernel_topk

    pop = manyruns.open(store)
    t0 = time.perf_counter()
    nb = kernel_topk(PopulationLogits(pop, runs=n), K_NEIGHBOURS, "test", KernelOptions(precision=precision, memory_gib=memory_gib))
    seconds = time.perf_counter() - t0
    queue.put({"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "indices": nb.indices, "values": nb.values})


def in_memory(store: str, n: int, threads: int, queue) -> None:
    """The formula written directly: all runs in memory, one product per class."""
    torch.set_num_threads(threads)
    import manyruns

    pop = manyruns.open(store)
    t0 = time.perf_counter()

    def normalized(split: str) -> torch.Tensor:
        x = torch.from_numpy(pop.load(f"logits/{split}", np.arange(n))).float().log_softmax(-1)
        return (x - x.mean(0, keepdim=True)) / x.std(0, keepdim=True)

    test, train = normalized("test"), normalized("train")
    C = test.shape[2]
    kernel = torch.zeros(test.shape[1], train.shape[1])
    for c in range(C):
        kernel += test[..., c].T @ train[..., c] / n / C
    values, indices = kernel.topk(K_NEIGHBOURS, dim=1)
    seconds = time.perf_counter() - t0
    queue.put({"seconds": seconds, "peak_rss_gb": peak_rss_gb(), "indices": indices.numpy(), "values": values.numpy()})


def in_process(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__} failed with exit code {proc.exitcode}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--train", type=int, default=50000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--precision", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--memory-gib", type=float, default=4.0, help="budget of the streaming kernel, in GiB")
    parser.add_argument("--baseline-max-runs", type=int, default=500, help="skip the in-memory implementation above this n")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--store", type=Path, default=None, help="where to write the synthetic store (default: a temporary directory, removed)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "kernel.json")
    args = parser.parse_args()

    info = {"machine": machine(), "threads": args.threads, "shape": {"test": args.test, "train": args.train, "classes": args.classes}}
    rates = {p: gemm_rate(getattr(torch, p), threads=args.threads) for p in dict.fromkeys(["float32", *args.precision])}
    info["gemm_rate"] = rates
    print(f"GEMM rate with {args.threads} threads: " + ", ".join(f"{p} {r / 1e9:.0f} GFLOP/s" for p, r in rates.items()), flush=True)

    tmp = None
    store = args.store
    if store is None:
        tmp = tempfile.mkdtemp(prefix="bench-kernel-")
        store = Path(tmp) / "store"
    try:
        if not (store / "zarr.json").is_file():
            t0 = time.perf_counter()
            make_store(store, max(args.runs), args.test, args.train, args.classes)
            print(f"wrote {max(args.runs)} runs of synthetic logits to {store} in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for n in args.runs:
            flops = 2.0 * args.test * args.train * args.classes * n
            baseline = None
            if n <= args.baseline_max_runs:
                baseline = in_process(in_memory, str(store), n, args.threads)
                print(f"n={n}: in-memory implementation {baseline['seconds']:.1f} s, peak {baseline['peak_rss_gb']:.2f} GB", flush=True)
            for precision in args.precision:
                result = in_process(streaming, str(store), n, precision, args.memory_gib, args.threads)
                floor = flops / rates[precision]
                row = {
                    "runs": n,
                    "precision": precision,
                    "seconds": result["seconds"],
                    "floor_seconds": floor,
                    "floor_float32_seconds": flops / rates["float32"],
                    "x_floor": result["seconds"] / floor,
                    "peak_rss_gb": result["peak_rss_gb"],
                }
                if baseline is not None:
                    row.update(
                        baseline_seconds=baseline["seconds"],
                        baseline_peak_rss_gb=baseline["peak_rss_gb"],
                        speedup_vs_baseline=baseline["seconds"] / result["seconds"],
                        max_abs_diff_top50=float(np.abs(result["values"] - baseline["values"]).max()),
                        same_nearest=float(np.mean(result["indices"][:, 0] == baseline["indices"][:, 0])),
                    )
                rows.append(row)
                print(
                    f"n={n} {precision}: {row['seconds']:.1f} s = {row['x_floor']:.2f} x floor ({floor:.1f} s), peak {row['peak_rss_gb']:.2f} GB"
                    + (f"; {row['speedup_vs_baseline']:.2f}x the in-memory implementation, top-50 values within {row['max_abs_diff_top50']:.1e}, "
                       f"same nearest neighbour {100 * row['same_nearest']:.1f}%" if baseline is not None else ""),
                    flush=True,
                )
        info["results"] = rows
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
