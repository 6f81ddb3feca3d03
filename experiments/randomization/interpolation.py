"""Min-norm RBF interpolation on MNIST (or another dataset): test error, time and peak memory
per solver and training-set size. Each configuration runs `manyruns interpolate --json` in its
own process, so that the peak memory it reports is its own.

The published figure (60,000 MNIST training images, bandwidth 0.02): 1.22% test error.

Full run (exact solver on all 60,000 images; needs about 15.3 GB free and a quiet machine):

    python experiments/randomization/interpolation.py --data-dir ../shared/data --subsets 60000

Reduced scale, to check the pipeline:

    python experiments/randomization/interpolation.py --data-dir ../shared/data --subsets 2000,5000 \
        --solvers exact,cg --out /tmp/interp-check

Writes ``<out>/interpolation-<dataset>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_one(dataset: str, n: int | None, solver: str, bandwidth: float, data_dir: Path | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "manyruns.cli", "interpolate", "--dataset", dataset, "--bandwidth", str(bandwidth), "--solver", solver, "--json", *extra]
    if n is not None:
        cmd += ["--subset", str(n)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"solver": solver, "n_train": n, "error": done.stderr.strip()}
    return json.loads(done.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--bandwidth", type=float, default=0.02)
    parser.add_argument("--subsets", default="60000", help="Training-set sizes, comma-separated ('all' for the whole set).")
    parser.add_argument("--solvers", default="exact", help="Comma-separated: exact, cg.")
    parser.add_argument("--cg-max-iter", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "randomization")
    args = parser.parse_args(argv)

    sizes = [None if s.strip() == "all" else int(s) for s in args.subsets.split(",") if s.strip()]
    results = []
    for n in sizes:
        for solver in [s.strip() for s in args.solvers.split(",") if s.strip()]:
            extra = ["--max-iter", str(args.cg_max_iter)] if solver == "cg" else []
            result = run_one(args.dataset, n, solver, args.bandwidth, args.data_dir, extra)
            results.append(result)
            print(json.dumps({k: result.get(k) for k in ("solver", "n_train", "test_error", "residual", "iterations", "seconds", "peak_memory_gb", "error")}), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"interpolation-{args.dataset}.json"
    # Earlier results for other configurations are kept; a configuration run again replaces its own.
    key = lambda r: (r.get("solver"), r.get("n_train"), r.get("bandwidth", args.bandwidth))  # noqa: E731
    earlier = json.loads(path.read_text()) if path.is_file() else []
    fresh = {key(r) for r in results}
    results = [r for r in earlier if key(r) not in fresh] + results
    path.write_text(json.dumps(results, indent=1))
    print("\n| solver | training images | test error % | relative residual | CG iterations | seconds | peak memory GB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['solver']} | {r['n_train']} | refused or failed: {r['error']} | | | | |")
            continue
        iters = "-" if r["iterations"] is None else str(r["iterations"])
        print(f"| {r['solver']} | {r['n_train']:,} | {100 * r['test_error']:.2f} | {r['residual']:.1e} | {iters} | {r['seconds']:.0f} | {r['peak_memory_gb']:.1f} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
