"""Held-out statistics at scale: memorization and influence (top-k and pairs) on synthetic masks
and correctness, against the floor and against a straightforward dense implementation.

Synthetic population: ``--runs`` runs (default 2,000), each trained on a random 70% of
``--train`` examples (default 60,000) and scored on ``--test`` examples (default 10,000).
Example difficulty ``d ~ Beta(0.3, 3)``; a run gets a held-out example right with probability
``1 - d``, an example it trained on with ``1 - d / 10``, a test example with ``1 - d``. Planted
pairs (``--planted``, default 1,000): a training example of difficulty 1 (right with probability
0.9 when trained on, never when held out: memorization 0.9) and a test example of its class that
a run gets right with probability 0.95 when the training example is in its subset and 0.05
otherwise (influence 0.9), so that the pairs above the published thresholds are collected.
Blocks of runs are generated on the fly (each run from its own seeds), so nothing holds all
runs; generating them plays the part of reading a store and is timed separately ('read').

Measured, each in a fresh process (so that its peak resident memory is its own):

* ``memorization``: the streaming estimator (membership sums, split halves, labels);
* ``influence``: the streaming estimator with the top ``--top`` influencers per test example
  and the pairs above the published thresholds (with the split halves unless
  ``--no-split-half``), for each ``--precisions`` entry; it reports how many planted pairs it
  found and how many other pairs;
* ``dense``: the straightforward implementation, with every run's float32 masks and
  correctness in memory, memorization as masked means, influence as two float32 matrix
  products (in and out), top-k by ``argpartition``, pairs by comparison; its results are
  checked against the streaming ones;
* ``memory``: the influence estimator's peak memory at ``--memory-runs`` runs with a fixed block
  size, to show it does not grow with the number of runs.

Floors, from rates measured in the same run with all cores: influence, the main product's
``2 R T N`` operations over the GEMM rate of the precision used (4096^3 products); memorization,
which is no matrix product, the bytes of masks and correctness (1 byte per run and example
each) over the measured memory-read bandwidth.

    python benchmarks/bench_heldout.py [--runs 2000 --train 60000 --test 10000 --planted 1000]
        [--precisions int8,bfloat16,float32] [--skip-dense] [--memory-runs 1000,2000] [--no-split-half]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, gemm_rate, machine  # noqa: E402

from manyruns.analysis.heldout import (  # noqa: E402
    HeldoutBlock,
    InfluenceOptions,
    MemorizationOptions,
    NoHeldoutRunsError,
    influence_from_source,
    memorization_from_source,
)
from manyruns.analysis.heldout import influence_finish  # noqa: E402

RATIO = 0.7
CLASSES = 10


class SyntheticSource:
    """A source of held-out blocks generated from seeds (see the module docstring); it has
    what the streaming estimators ask of a store-backed source."""

    value = "correct"
    binary = True

    def __init__(self, runs: int, n_train: int, n_test: int, planted: int = 0, seed: int = 0):
        self.runs = np.arange(runs)
        self.n_train, self.n_test = n_train, n_test
        self.where = f"synthetic({runs} x {n_train} x {n_test})"
        rng = np.random.default_rng(seed)
        self.difficulty_train = torch.from_numpy(rng.beta(0.3, 3.0, n_train).astype(np.float32))
        self.difficulty_test = torch.from_numpy(rng.beta(0.3, 3.0, n_test).astype(np.float32))
        self.y_train = rng.integers(0, CLASSES, n_train)
        self.y_test = rng.integers(0, CLASSES, n_test)
        planted = min(planted, n_train, n_test)
        self.planted_train = np.sort(rng.choice(n_train, planted, replace=False))
        self.planted_test = rng.choice(n_test, planted, replace=False)
        self.difficulty_train[torch.from_numpy(self.planted_train)] = 1.0
        self.y_test[self.planted_test] = self.y_train[self.planted_train]
        self._planted = (torch.from_numpy(self.planted_train), torch.from_numpy(self.planted_test))
        self.seed = seed

    def planted_pairs(self) -> set[tuple[int, int]]:
        """The planted ``(train, test)`` pairs."""
        return set(zip(self.planted_train.tolist(), self.planted_test.tolist()))

    def cells(self) -> np.ndarray:
        return np.zeros(self.runs.size, dtype=np.int64)

    def subset_ratios(self) -> np.ndarray:
        return np.full(self.runs.size, RATIO)

    def check_held_out(self) -> None:
        if self.runs.size == 0:
            raise NoHeldoutRunsError("no runs")

    def require(self, split: str) -> None:
        pass

    def dataset_labels(self) -> np.ndarray:
        return self.y_train

    def blocks(self, block_size: int = 128, train: bool = True, test: bool = False, runs=None):
        idx = self.runs if runs is None else np.asarray(runs)
        for start in range(0, idx.size, block_size):
            block = idx[start : start + block_size]
            yield self._block(block, train, test)

    def _block(self, runs: np.ndarray, train: bool, test: bool) -> HeldoutBlock:
        """Run ``r``'s arrays depend on ``r`` only (one generator per run and array), so blocks
        of any size and passes that skip the training values see the same data."""
        b = runs.size
        mask = np.empty((b, self.n_train), dtype=bool)
        train_values = np.empty((b, self.n_train), dtype=bool) if train else None
        test_values = np.empty((b, self.n_test), dtype=bool) if test else None
        for k, r in enumerate(runs):
            base = (self.seed * 1_000_003 + int(r)) * 3
            m = torch.rand(self.n_train, generator=torch.Generator().manual_seed(base)) < RATIO
            mask[k] = m.numpy()
            if train:
                p = torch.where(m, 1 - self.difficulty_train / 10, 1 - self.difficulty_train)
                train_values[k] = (torch.rand(self.n_train, generator=torch.Generator().manual_seed(base + 1)) < p).numpy()
            if test:
                u = torch.rand(self.n_test, generator=torch.Generator().manual_seed(base + 2))
                p = 1 - self.difficulty_test
                p[self._planted[1]] = torch.where(m[self._planted[0]], 0.95, 0.05)
                test_values[k] = (u < p).numpy()
        labels = np.broadcast_to(self.y_train.astype(np.int16), (b, self.n_train)) if train else None
        return HeldoutBlock(runs, mask, labels, train_values, test_values)


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss, not inherited from the
    parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def int8_rate(n: int = 4096, seconds: float = 2.0) -> float:
    a = torch.randint(0, 2, (n, n), dtype=torch.int8)
    b = torch.randint(0, 2, (n, n), dtype=torch.int8)
    out = torch.empty(n, n, dtype=torch.int32)
    for _ in range(2):
        torch._int_mm(a, b, out=out)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch._int_mm(a, b, out=out)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def read_bandwidth(gb: float = 1.0) -> float:
    """Bytes per second of one read-only pass (a sum) over a large array, all cores."""
    x = np.ones(int(gb * 2**30) // 8, dtype=np.float64)
    x.sum()
    t0 = time.perf_counter()
    x.sum()
    return x.nbytes / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- workers


class ReplaySource:
    """``source`` with its blocks generated once, up front, and replayed from memory, so that
    timing the estimator leaves out generating them (masks and values: 2 bytes per run and
    training example, 0.24 GB at 2,000 x 60,000)."""

    def __init__(self, source: SyntheticSource, block_size: int, train: bool, test: bool):
        self._source = source
        self._key = (block_size, train, test)
        self._blocks = list(source.blocks(block_size, train=train, test=test))

    def __getattr__(self, name):
        return getattr(self._source, name)

    def blocks(self, block_size: int = 128, train: bool = True, test: bool = False, runs=None):
        if (block_size, train, test) != self._key or runs is not None:
            raise ValueError(f"this replay holds blocks of {self._key}, not {(block_size, train, test)}")
        yield from self._blocks


def work_memorization(args) -> dict:
    source = SyntheticSource(args.runs, args.train, args.test, args.planted)
    t0 = time.perf_counter()
    replay = ReplaySource(source, args.block_size, train=True, test=False)
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = memorization_from_source(replay, MemorizationOptions(block_size=args.block_size))
    seconds = time.perf_counter() - t0
    return {"seconds_total": seconds + read, "seconds_read": read, "seconds": seconds, "peak_rss_gb": peak_rss_gb(), "mean_mem": float(np.nanmean(result.estimate))}


def work_influence(args) -> dict:
    source = SyntheticSource(args.runs, args.train, args.test, args.planted)
    profile: dict = {}
    t0 = time.perf_counter()
    options = InfluenceOptions(
        top=args.top, block_size=args.block_size, memory_gib=args.memory_gib, precision=args.precision, split_half=not args.no_split_half,
    )
    result = influence_from_source(source, options, profile=profile)
    total = time.perf_counter() - t0
    found = set(zip(result.pairs.train_index.tolist(), result.pairs.test_index.tolist()))
    planted = source.planted_pairs()
    out = {
        "precision": args.precision,
        "seconds_total": total,
        "seconds_read": profile.get("read", 0.0),
        "seconds": total - profile.get("read", 0.0),
        "profile": profile,
        "passes": result.details["passes"],
        "block_size": args.block_size,
        "pairs": int(len(result.pairs)),
        "pairs_found": result.details["pairs_found"],
        "planted": len(planted),
        "planted_found": len(found & planted),
        "other_pairs": len(found - planted),
        "split_half": not args.no_split_half,
        "pair_stability": result.pair_stability.to_dict() if result.pair_stability is not None else None,
        "varying_test_rows": result.details["varying_test_rows"],
        "column_width": result.details["column_width"],
        "peak_rss_gb": peak_rss_gb(),
    }
    if args.save:
        np.savez(args.save, top_index=result.top_index, top_value=result.top_value, mem=result.memorization.estimate, pairs_train=result.pairs.train_index.to_numpy(), pairs_test=result.pairs.test_index.to_numpy())
    return out


def work_dense(args) -> dict:
    """The straightforward implementation: everything in memory, two float32 products."""
    source = SyntheticSource(args.runs, args.train, args.test, args.planted)
    blocks = list(source.blocks(args.block_size, train=True, test=True))
    mask = np.concatenate([b.mask for b in blocks]).astype(np.float32)
    correct_train = np.concatenate([b.train for b in blocks]).astype(np.float32)
    correct_test = np.concatenate([b.test for b in blocks]).astype(np.float32)
    del blocks
    t0 = time.perf_counter()
    n_in = mask.sum(0)
    n_out = mask.shape[0] - n_in
    mem = (correct_train * mask).sum(0) / n_in - (correct_train * (1 - mask)).sum(0) / n_out
    t_mem = time.perf_counter() - t0
    infl = (correct_test.T @ mask) / n_in - (correct_test.T @ (1 - mask)) / n_out  # (T, N)
    top = np.argpartition(-infl, args.top, axis=1)[:, : args.top]
    top_value = np.take_along_axis(infl, top, 1)
    hit = (infl >= 0.15) & (mem >= 0.25)[None, :] & (source.y_test[:, None] == source.y_train[None, :])
    pairs_test, pairs_train = np.nonzero(hit)
    total = time.perf_counter() - t0
    out = {"seconds": total, "seconds_memorization": t_mem, "seconds_influence": total - t_mem, "pairs": int(pairs_test.size), "peak_rss_gb": peak_rss_gb()}
    if args.compare:
        ref = np.load(args.compare)
        out["pairs_agree"] = bool(set(zip(pairs_train.tolist(), pairs_test.tolist())) == set(zip(ref["pairs_train"].tolist(), ref["pairs_test"].tolist())))
        best = np.sort(top_value, 1)[:, ::-1]
        out["top_values_max_abs_diff"] = float(np.nanmax(np.abs(best - ref["top_value"])))
        out["mem_max_abs_diff"] = float(np.nanmax(np.abs(mem - ref["mem"])))
    return out


def _pair_agreement(stability: dict | None) -> str:
    if stability is None:
        return ""
    agreement = stability["pair_agreement"]
    return f"split-half pair agreement {agreement:.2f}; " if agreement is not None else "split-half pair agreement n/a; "


def _print_influence(label: str, res: dict) -> None:
    prof = ", ".join(f"{k} {v:.2f}" for k, v in res["profile"].items())
    rows = f"; {res['floor_seconds_rows_multiplied']:.2f} s for the {res['varying_test_rows']:,} varying test rows after the first pass" if "floor_seconds_rows_multiplied" in res else ""
    print(f"influence [{label}]: {res['seconds']:.2f} s (+{res['seconds_read']:.2f} s generating); floor {res['floor_seconds']:.2f} s "
          f"({res['vs_floor']:.2f}x{rows}); "
          f"{res['passes']} passes; {res['pairs']} pairs ({res['planted_found']} of {res['planted']} planted, {res['other_pairs']} others); "
          f"{_pair_agreement(res['pair_stability'])}peak {res['peak_rss_gb']:.2f} GB; [{prof}]", flush=True)


WORKERS = {"memorization": work_memorization, "influence": work_influence, "dense": work_dense}


def run_worker(kind: str, args, **extra) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--runs", str(extra.get("runs", args.runs)), "--train", str(args.train), "--test", str(args.test),
           "--top", str(args.top), "--block-size", str(extra.get("block_size", args.block_size)), "--memory-gib", str(args.memory_gib),
           "--precision", extra.get("precision", "auto"), "--threads", str(args.threads), "--planted", str(args.planted)]
    if extra.get("no_split_half", args.no_split_half):
        cmd.append("--no-split-half")
    if args.finish_tile_elements:
        cmd += ["--finish-tile-elements", str(args.finish_tile_elements)]
    for key in ("save", "compare"):
        if extra.get(key):
            cmd += [f"--{key}", str(extra[key])]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--planted", type=int, default=1000, help="planted high-influence pairs (see the module docstring)")
    parser.add_argument("--no-split-half", action="store_true", help="influence without the split halves (one accumulator, one finish)")
    parser.add_argument("--also-without-split-half", action="store_true", help="measure each precision a second time without the split halves")
    parser.add_argument("--block-size", type=int, default=2048, help="runs per block (the products' inner dimension)")
    parser.add_argument("--memory-gib", type=float, default=1.0, help="accumulator memory per column block of train examples, in GiB")
    parser.add_argument("--precisions", default="int8,bfloat16,float32")
    parser.add_argument("--skip-dense", action="store_true")
    parser.add_argument("--memory-runs", default="1000,2000", help="run counts for the memory check (block size: the smallest)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--finish-tile-elements", type=int, default=None, help="entries turned into influence at a time (default: the module's)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "heldout.json")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compare", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        args.threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    if args.finish_tile_elements:
        influence_finish.FINISH_TILE_ELEMENTS = args.finish_tile_elements
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    R, N, T = args.runs, args.train, args.test
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}", flush=True)
    # the rates of the precisions measured only (bfloat16 products crawl on CPUs without bfloat16 units)
    measure = {"int8": int8_rate, "bfloat16": lambda: gemm_rate(torch.bfloat16), "float32": lambda: gemm_rate(torch.float32)}
    rates = {p: measure[p]() for p in dict.fromkeys(p for p in args.precisions.split(",") if p)}
    bandwidth = read_bandwidth()
    print("GEMM rates (GFLOP/s): " + ", ".join(f"{k} {v / 1e9:,.0f}" for k, v in rates.items()) + f"; read bandwidth {bandwidth / 1e9:.1f} GB/s", flush=True)
    results: dict = {"machine": info, "threads": args.threads, "finish_tile_elements": influence_finish.FINISH_TILE_ELEMENTS, "runs": R, "train": N, "test": T, "top": args.top, "block_size": args.block_size,
                     "memory_gib": args.memory_gib, "planted": args.planted, "split_half": not args.no_split_half, "gemm_rate": rates, "read_bandwidth": bandwidth}

    mem = run_worker("memorization", args)
    mem["floor_seconds"] = 2 * R * N / bandwidth
    results["memorization"] = mem
    print(f"memorization: {mem['seconds']:.2f} s (+{mem['seconds_read']:.2f} s generating blocks); floor {mem['floor_seconds']:.2f} s; peak {mem['peak_rss_gb']:.2f} GB", flush=True)

    product_ops = 2 * R * T * N
    results["influence"] = {}
    saved = None
    with_tmp = Path(args.json).with_suffix(".influence.npz")
    for precision in [p for p in args.precisions.split(",") if p]:
        save = with_tmp if saved is None else None
        res = run_worker("influence", args, precision=precision, save=save)
        saved = saved or save
        res["floor_seconds"] = product_ops / rates[precision]
        res["vs_floor"] = res["seconds"] / res["floor_seconds"]
        # the products actually needed: every test row in the first pass, then only the rows
        # whose value varies between runs (the others have influence 0 everywhere)
        first = min(res["column_width"], N)
        needed = 2 * R * (T * first + res["varying_test_rows"] * (N - first))
        res["floor_seconds_rows_multiplied"] = needed / rates[precision]
        results["influence"][precision] = res
        _print_influence(precision, res)
        if args.also_without_split_half and not args.no_split_half:
            plain = run_worker("influence", args, precision=precision, no_split_half=True)
            plain["floor_seconds"] = res["floor_seconds"]
            plain["vs_floor"] = plain["seconds"] / plain["floor_seconds"]
            results["influence"][f"{precision}-no-split-half"] = plain
            _print_influence(f"{precision}, no split halves", plain)

    if not args.skip_dense:
        dense = run_worker("dense", args, compare=saved)
        results["dense"] = dense
        print(f"dense: {dense['seconds']:.2f} s (memorization {dense['seconds_memorization']:.2f}, influence {dense['seconds_influence']:.2f}); "
              f"peak {dense['peak_rss_gb']:.2f} GB; pairs agree: {dense.get('pairs_agree')}; top values max diff {dense.get('top_values_max_abs_diff')}", flush=True)

    counts = sorted(int(x) for x in args.memory_runs.split(",") if x)
    if counts:
        block = counts[0]
        results["memory"] = {"block_size": block, "peak_rss_gb": {}}
        for runs in counts:
            res = run_worker("influence", args, runs=runs, block_size=block)
            results["memory"]["peak_rss_gb"][str(runs)] = res["peak_rss_gb"]
            print(f"memory: influence with {runs} runs in blocks of {block}: peak {res['peak_rss_gb']:.2f} GB ({res['seconds']:.1f} s)", flush=True)

    if saved is not None:
        Path(saved).unlink(missing_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
