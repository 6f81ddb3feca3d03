"""Speed of ``manyruns lds`` against dattri's ``dattri.metric.lds`` on the same inputs.

Inputs in the settings of dattri's MNIST benchmark: 5,000 training and 500 test examples,
100 evaluation subsets of half the training set; random scores and outputs (the speed does not
depend on the values). The baseline is dattri's metric (two Spearman correlations per test
example through scipy, one of them for the p-value); manyruns ranks all test examples at once.
Both are checked equal within 1e-6 first. The floor: reading the (m, T) sums and ranking them,
measured as one ``scores @ masks`` product plus one ``argsort`` of the same size.

    python benchmarks/bench_lds.py [--n-train 5000] [--n-test 500] [--subsets 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from manyruns.analysis.attribution import LdsOptions, lds_from_arrays  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--subsets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch
    from dattri.metric import lds as dattri_lds

    N, T, m = args.n_train, args.n_test, args.subsets
    rng = np.random.default_rng(0)
    indices = np.stack([rng.choice(N, size=N // 2, replace=False) for _ in range(m)])
    masks = np.zeros((m, N), dtype=bool)
    masks[np.arange(m)[:, None], indices] = True
    scores = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(m, T))
    ours = lds_from_arrays(scores, masks, values, LdsOptions(bootstrap=0))
    theirs, _ = dattri_lds(torch.tensor(scores.T), (torch.tensor(values), torch.tensor(indices)))
    diff = float(np.max(np.abs(ours.per_test - theirs.numpy())))
    t_dattri = best(lambda: dattri_lds(torch.tensor(scores.T), (torch.tensor(values), torch.tensor(indices))), args.repeat)
    t_ours = best(lambda: lds_from_arrays(scores, masks, values, LdsOptions(bootstrap=0)), args.repeat)
    t_ours_ci = best(lambda: lds_from_arrays(scores, masks, values, LdsOptions(bootstrap=1000)), args.repeat)
    t_floor = best(lambda: (masks.astype(np.float64) @ scores.astype(np.float64).T).argsort(0), args.repeat)
    print(f"machine: {machine()}")
    print(f"N={N} T={T} subsets={m}: max |manyruns - dattri| = {diff:.2e}")
    print(f"dattri.metric.lds       {t_dattri:8.3f} s")
    print(f"manyruns lds            {t_ours:8.3f} s   ({t_dattri / t_ours:.0f}x faster)")
    print(f"manyruns lds, 95% CI    {t_ours_ci:8.3f} s   (1,000 bootstrap resamples)")
    print(f"floor (sums + one sort) {t_floor:8.3f} s")


if __name__ == "__main__":
    main()
