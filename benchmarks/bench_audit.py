"""Speed of the audit on a trained population: each stage, the kernel neighbours against the
exact streaming kernel (the baseline, measured in the same run) and the floor.

Stages, each timed on its own: the out-of-sample probabilities (reading every run's train
logits and masks), confident learning, memorization and C-scores, and the kernel neighbours
(train queries with the top ``outlier_k``, test queries with the nearest). The baselines are
the exact kernel (``neighbours="exact"``) and the scan of every pair (``class_gap=None``),
with how often each agrees with the default search within class groups on the nearest value
and on the flags; the floor is the scan's FLOPs (and the sketch's) over the float32 GEMM rate
measured in the same run.
Also cleanlab's ``find_label_issues`` on the same probabilities, when cleanlab is installed.

    python benchmarks/bench_audit.py STORE [--runs 8,50,200] [--json benchmarks/results/audit.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, gemm_rate, machine, peak_rss_gb  # noqa: E402

import manyruns  # noqa: E402
from manyruns.analysis.audit import AuditOptions, audit, confident_learning, out_of_sample  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def same_nearest(a, b) -> tuple[float, float]:
    """The shares of training and of test examples whose nearest kernel value is the same in two audits."""
    return (float(np.mean(np.isclose(a.kernel, b.kernel, atol=1e-5))), float(np.mean(np.isclose(a.test_kernel, b.test_kernel, atol=1e-5))))


def pair_share(pop, runs, options: AuditOptions) -> float:
    """The share of (query, training example) pairs the class groups compare."""
    import torch

    from manyruns.analysis.kernel import PopulationLogits
    from manyruns.analysis.kernel_projected import standardized

    source = PopulationLogits(pop, runs, ("train", "test"))
    _, ct = standardized(source, "train", options, class_gap=options.class_gap)
    _, cq = standardized(source, "test", options, class_gap=options.class_gap)
    sizes = torch.bincount(ct[:, 0], minlength=int(pop.layout["num_classes"])).double()
    queries = torch.cat([ct, cq])
    compared = sum(float(sizes[queries[:, j][queries[:, j] >= 0]].sum()) for j in range(queries.shape[1]))
    return compared / (queries.shape[0] * ct.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--runs", default="8,50,200")
    parser.add_argument("--skip-exact", action="store_true", help="skip the exact-kernel baseline")
    parser.add_argument("--exact-max-runs", type=int, default=50, help="the exact baseline only up to this many runs (it grows with the runs)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "audit.json")
    args = parser.parse_args()
    import torch

    pop = manyruns.open(args.store)
    rate = gemm_rate(torch.float32)
    info = machine()
    print(f"machine: {info}; float32 GEMM {rate / 1e9:.0f} GFLOP/s")
    N, T, C = (int(pop.layout[k]) for k in ("n_train", "n_test", "num_classes"))
    results = {"machine": info, "gemm_float32": rate, "store": str(args.store), "n_train": N, "n_test": T, "cases": {}}
    for n in (int(x) for x in args.runs.split(",")):
        runs = pop.select("ok")[:n]
        case: dict = {"runs": int(runs.size)}
        oos, case["out_of_sample_s"] = timed(lambda: out_of_sample(pop, runs))
        scored = oos.n_out > 0
        _, case["confident_learning_s"] = timed(lambda: confident_learning(oos.probs[scored].astype(np.float64), oos.labels[scored]))
        try:
            from cleanlab.filter import find_label_issues

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, case["cleanlab_filter_s"] = timed(lambda: find_label_issues(oos.labels[scored], oos.probs[scored].astype(np.float64), n_jobs=1))
        except ImportError:
            case["cleanlab_filter_s"] = None
        base = AuditOptions(runs=runs)
        full, case["audit_s"] = timed(lambda: audit(pop, base))
        _, case["audit_no_kernel_s"] = timed(lambda: audit(pop, base.replace(kernel=False)))
        _, case["audit_no_kernel_no_heldout_stats_s"] = timed(lambda: audit(pop, base.replace(kernel=False, heldout_stats=False)))
        case["kernel_s"] = case["audit_s"] - case["audit_no_kernel_s"]
        case["notes"] = full.notes
        D = runs.size * C
        exact_scan = D <= 2 * base.dims
        d = D if exact_scan else base.dims
        case["neighbours"] = "exact scan" if exact_scan else f"sketch of {d} dims, {base.candidates} re-ranked"
        flops = 2 * (N + T) * N * d + (0 if exact_scan else 2 * N * D * d * 3 + 2 * (N + T) * base.candidates * D)
        case["floor_kernel_s"] = flops / rate  # the scan's product (and the sketch's SVD and re-ranking) at the GEMM rate
        if not args.skip_exact and n <= args.exact_max_runs:
            exact, t_exact = timed(lambda: audit(pop, base.replace(neighbours="exact")))
            case["kernel_exact_s"] = t_exact - case["audit_no_kernel_s"]
            case["speedup_vs_exact"] = case["kernel_exact_s"] / case["kernel_s"]
            case["nearest_value_equal"], case["test_nearest_value_equal"] = same_nearest(exact, full)
            case["near_duplicates_exact_found"] = [int(full.is_near_duplicate.sum()), int(exact.is_near_duplicate.sum())]
            case["leaks_exact_found"] = [int(full.is_leak.sum()), int(exact.is_leak.sum())]
            case["outlier_score_max_abs_diff"] = float(np.max(np.abs(exact.outlier_score - full.outlier_score)))
        # the search within class groups (default) against every pair (class_gap=None)
        whole, t_whole = timed(lambda: audit(pop, base.replace(class_gap=None)))
        case["kernel_all_pairs_s"] = t_whole - case["audit_no_kernel_s"]
        case["speedup_vs_all_pairs"] = case["kernel_all_pairs_s"] / case["kernel_s"]
        case["all_pairs_nearest_value_equal"], case["all_pairs_test_nearest_value_equal"] = same_nearest(whole, full)
        case["all_pairs_near_duplicates_leaks"] = [int(whole.is_near_duplicate.sum()), int(whole.is_leak.sum())]
        case["grouped_near_duplicates_leaks"] = [int(full.is_near_duplicate.sum()), int(full.is_leak.sum())]
        case["grouped_pair_share"] = pair_share(pop, runs, base)
        case["floor_kernel_grouped_s"] = case["floor_kernel_s"] * case["grouped_pair_share"]
        case["peak_rss_gb"] = peak_rss_gb()
        results["cases"][str(n)] = case
        print(json.dumps(case, indent=1, default=float), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
