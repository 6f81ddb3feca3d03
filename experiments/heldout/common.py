"""Shared steps of the held-out experiments: train a store up to a number of runs, plots,
split-half stability against the number of runs, JSON output."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

import manyruns
from manyruns.analysis.heldout import memorization
from manyruns.streaming import doubling_sizes

REPO = Path(__file__).resolve().parents[2]


def default_data_dir() -> str | None:
    shared = REPO.parent / "shared" / "data"
    return os.environ.get("MANYRUNS_DATA") or (str(shared) if shared.is_dir() else None)


def train_to(recipe: Path, store: Path, runs: int, data_dir: str | None, workers: int | None) -> dict:
    """Plan ``store`` from ``recipe`` (if needed) and train until ``runs`` runs are committed
    (the recipe's ``population.runs`` must be at least ``runs``). Returns timing."""
    t0 = time.perf_counter()
    if not (store / "zarr.json").is_file():
        manyruns.plan(recipe, store, data_dir)
    pop = manyruns.open(store)
    if pop.num_runs < runs:
        raise SystemExit(f"{store} plans {pop.num_runs} runs; raise population.runs in {recipe} to at least {runs}")
    done = int(pop.committed.sum())
    report = None
    if done < runs:
        report = manyruns.train(store, workers=workers, device="cpu", max_runs=runs - done, data_dir=data_dir)
    return {
        "seconds": time.perf_counter() - t0,
        "trained_now": 0 if report is None else report.trained + report.diverged,
        "seconds_per_run": None if report is None or not (report.trained + report.diverged) else report.seconds / (report.trained + report.diverged),
    }


def first_runs(pop, n: int) -> np.ndarray:
    """The ``n`` lowest-numbered ok runs (the population as it was when it had ``n`` runs)."""
    return pop.select("ok")[:n]


def run_counts(total: int, start: int = 25) -> list[int]:
    """Doubling run counts up to ``total`` (which is always included)."""
    return doubling_sizes(total, start)


def memorization_stability_curve(pop, total: int, value: str = "correct") -> list[dict]:
    """Split-half stability of memorization computed from the first n runs, for doubling n."""
    rows = []
    for n in run_counts(total):
        result = memorization(pop, value=value, runs=first_runs(pop, n))
        s = result.stability
        rows.append({"runs": n, "split_half_spearman": s.spearman, "predicted_reliability": s.reliability, "never_held_out": result.never_held_out})
    return rows


def plot_stability(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    n = [r["runs"] for r in rows]
    ax.plot(n, [r["split_half_spearman"] for r in rows], "o-", label="split halves (n/2 runs each)")
    ax.plot(n, [r["predicted_reliability"] for r in rows], "s--", label="predicted for n runs (Spearman-Brown)")
    ax.set_xscale("log")
    ax.set_xlabel("runs n")
    ax.set_ylabel("Spearman correlation")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def histogram(values: np.ndarray, path: Path, xlabel: str, title: str, groups: dict[str, np.ndarray] | None = None, log: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    finite = values[np.isfinite(values)]
    bins = np.linspace(finite.min(), finite.max(), 51) if finite.size else 10
    if groups:
        for name, sel in groups.items():
            v = values[sel & np.isfinite(values)]
            ax.hist(v, bins=bins, alpha=0.6, label=f"{name} ({v.size:,})", density=True)
        ax.legend(fontsize=8)
        ax.set_ylabel("density")
    else:
        ax.hist(finite, bins=bins)
        ax.set_ylabel("examples")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_json(obj: dict, path: Path) -> None:
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (np.floating, float)):
            return None if not math.isfinite(float(x)) else float(x)
        if isinstance(x, np.integer):
            return int(x)
        if isinstance(x, np.bool_):
            return bool(x)
        return x

    path.write_text(json.dumps(clean(obj), indent=2))


def plot_speed(speed: np.ndarray, score: np.ndarray, rho: float, path: Path, ylabel: str = "C-score", jitter: float = 0.0, sample: int = 5000, seed: int = 0) -> None:
    """The learning-speed proxy against a score, for a sample of examples; ``jitter`` spreads
    scores that take few values (few held-out runs) for the eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = np.flatnonzero(np.isfinite(score) & np.isfinite(speed))
    pick = np.random.default_rng(seed).choice(ok, size=min(sample, ok.size), replace=False)
    shown = score[pick] + (np.random.default_rng(seed + 1).uniform(-jitter, jitter, pick.size) if jitter else 0.0)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(speed[pick], shown, s=2, alpha=0.4)
    ax.set_xlabel("learning-speed proxy")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Spearman {rho:.3f} ({ok.size:,} examples; {pick.size:,} shown)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
