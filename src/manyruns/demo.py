"""The demo: a held-out population of small MLPs on the bundled digits data."""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import api
from .analysis.ensemble import ensemble_accuracy
from .analysis.heldout import memorization
from .analysis.knn import knn_evaluate
from .population import open as open_population

DEMO_RECIPE = Path(__file__).parent / "examples" / "demo.toml"


def run_demo(out: str | os.PathLike = "manyruns-demo", workers: int | None = None, progress: bool = True) -> dict:
    """Plan (or reuse) and train ``examples/demo.toml`` into ``out``, then analyse it; return a
    summary dict: runs, mean_accuracy and std_accuracy (single-run test accuracy),
    ensemble_accuracy (mean logits), ensemble_prob_accuracy (mean probabilities),
    knn_accuracy (3-NN over the training set with the ensemble correlation kernel),
    memorization (its summary: quantiles and the most memorized training examples), seconds."""
    t0 = time.perf_counter()
    api.plan(DEMO_RECIPE, out)
    api.train(out, workers=workers, device="cpu", progress=progress)
    info = api.status(out)
    pop = open_population(out)
    ens = ensemble_accuracy(pop, "test")
    knn = knn_evaluate(pop, k=3)
    mem = memorization(pop)
    mem.save(pop)
    return {
        "store": str(out),
        "runs": info["ok"],
        "mean_accuracy": info["mean_test_acc"],
        "std_accuracy": info["std_test_acc"],
        "ensemble_accuracy": ens["logit_accuracy"],
        "ensemble_prob_accuracy": ens["prob_accuracy"],
        "knn_accuracy": knn.accuracy,
        "memorization": mem.summary(top=5),
        "seconds": time.perf_counter() - t0,
    }
