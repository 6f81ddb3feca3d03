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
from .report.site import write_report

DEMO_RECIPE = Path(__file__).parent / "examples" / "demo.toml"


def run_demo(out: str | os.PathLike = "manyruns-demo", workers: int | None = None, progress: bool = True) -> dict:
    """Plan (or reuse) and train ``examples/demo.toml`` into ``out``, then analyse it; return a
    summary dict: runs, mean_accuracy and std_accuracy (single-run test accuracy),
    ensemble_accuracy (mean logits), ensemble_prob_accuracy (mean probabilities),
    knn_accuracy (3-NN over the training set with the ensemble correlation kernel),
    memorization (its summary: quantiles and the most memorized training examples), report (the
    path of the report's page: the analyses are saved in the store and shown there), seconds."""
    t0 = time.perf_counter()
    api.plan(DEMO_RECIPE, out)
    api.train(out, workers=workers, device="cpu", progress=progress)
    info = api.status(out)
    pop = open_population(out)
    ens = ensemble_accuracy(pop, "test")
    knn = knn_evaluate(pop, k=3, sizes=_sizes(info["ok"]))
    mem = memorization(pop)
    for result in (knn, mem, *_more_analyses(pop)):
        result.save(pop)
    site = write_report(pop, Path(out) / "report")
    return {
        "store": str(out),
        "runs": info["ok"],
        "mean_accuracy": info["mean_test_acc"],
        "std_accuracy": info["std_test_acc"],
        "ensemble_accuracy": ens["logit_accuracy"],
        "ensemble_prob_accuracy": ens["prob_accuracy"],
        "knn_accuracy": knn.accuracy,
        "memorization": mem.summary(top=5),
        "report": str(site.path / "index.html"),
        "seconds": time.perf_counter() - t0,
    }


def _sizes(runs: int) -> list[int]:
    """Run counts for the k-NN curve: 2, 4, 8, ... and all runs."""
    sizes = [2 ** k for k in range(1, 16) if 2 ** k < runs]
    return sizes + [runs] if runs >= 2 else []


def _more_analyses(pop):
    """What the report shows besides memorization and k-NN: kernel neighbours of both splits,
    near-duplicate pairs, C-scores, influence, the audit."""
    from .analysis.audit import audit
    from .analysis.heldout import cscore, influence
    from .analysis.neighbours import neighbours
    from .analysis.pairs import pairs

    return [
        neighbours(pop, k=5, queries="train"),
        neighbours(pop, k=5, queries="test"),
        pairs(pop),
        cscore(pop),
        influence(pop),
        audit(pop),
    ]
