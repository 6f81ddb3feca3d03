"""Memory and time of datamodels at MNIST's full size: 60,000 training and 10,000 test examples.

A synthetic store (random subset masks at 50%, random test logits; the cost does not depend on
the values) of up to ``--runs`` runs is written once; then each measurement runs in a fresh
process, which reports its peak resident memory (``VmHWM``) and its wall time:

* ``diffmeans`` over 128 and over all runs: one streaming pass, so the peak should be the same
  for both (the ``(N, T)`` float32 sums, 2.4 GB, plus one block of runs);
* ``ridge`` over a smaller number of runs: its masks are held in memory (``4 R N`` bytes) by
  design, the dual form's price; its peak grows with the runs, and the figure says by how much.

The floor of ``diffmeans`` is its products: ``R / block`` products of ``(N, block) x (block, T)``
in float32, measured here as one such product timed and multiplied.

    python benchmarks/bench_datamodels.py [--runs 1024] [--ridge-runs 512] [--out /tmp/dm-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

N, T, C = 60_000, 10_000, 10


def write_store(path: Path, runs: int) -> None:
    import manyruns.store as store_mod

    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, C, N), rng.integers(0, C, T)
    arrays = {"mask/train": ((N,), "bool", False), "labels/train": ((N,), "int16", -1), "logits/test": ((T, C), "float16", np.nan)}
    fingerprint = {"name": "synthetic", "train_shape": [N, 1, 28, 28], "test_shape": [T, 1, 28, 28], "num_classes": C}
    spec = store_mod.ImportSpec("mnist", fingerprint, (y_train, y_test), C, (1, 28, 28), arrays, {"format": "benchmark arrays"})
    store = store_mod.create_imported(path, spec)
    store_mod.append_runs(store, {"subset": [0.5] * runs})
    for start in range(0, runs, 64):
        R = min(64, runs - start)
        rows = {
            "mask/train": rng.random((R, N)) < 0.5,
            "labels/train": np.broadcast_to(y_train, (R, N)).astype(np.int16),
            "logits/test": rng.standard_normal((R, T, C)).astype(np.float16),
        }
        store.write_runs(start, rows, np.ones(R, dtype=np.int8))


def child(path: str, estimator: str, runs: int) -> None:
    """Run one fit and print its wall time and this process's peak memory as JSON."""
    import manyruns
    from manyruns.analysis.attribution import datamodels

    pop = manyruns.open(path)
    t0 = time.perf_counter()
    result = datamodels(pop, runs=f"0-{runs - 1}", estimator=estimator, output="margin")
    seconds = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"estimator": estimator, "runs": runs, "seconds": seconds, "peak_gb": hwm / 2**20, "shape": list(result.scores.shape)}))


def measure(path: Path, estimator: str, runs: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path), estimator, str(runs)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def floor_seconds(runs: int, block: int = 64) -> float:
    a = np.random.default_rng(1).random((N, block), dtype=np.float32)
    b = np.random.default_rng(2).random((block, T), dtype=np.float32)
    out = np.empty((N, T), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm
    t0 = time.perf_counter()
    np.matmul(a, b, out=out)
    return (time.perf_counter() - t0) * -(-runs // block)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1024)
    parser.add_argument("--ridge-runs", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dm-bench"))
    a = parser.parse_args()
    path = a.out / f"store-{a.runs}"
    if not (path / "zarr.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        write_store(path, a.runs)
        print(f"wrote a synthetic store of {a.runs} runs in {time.perf_counter() - t0:.0f} s")
    print(machine())
    rows = [measure(path, "diffmeans", 128), measure(path, "diffmeans", a.runs)]
    rows += [measure(path, "ridge", a.ridge_runs // 4), measure(path, "ridge", a.ridge_runs)]
    for r in rows:
        floor = f"; floor {floor_seconds(r['runs']):.1f} s" if r["estimator"] == "diffmeans" else ""
        print(f"{r['estimator']:>9} over {r['runs']:>5} runs: {r['seconds']:6.1f} s, peak {r['peak_gb']:.2f} GB{floor}")


if __name__ == "__main__":
    main()
