"""Attribution commands: datamodels fitted on a population, and the linear datamodeling score."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from . import app
from .common import check_outputs, fail, handle_errors, int_list, json_option, open_population, print_json

OUTPUT_HELP = "Model output on a test example: margin (logit of the label minus logsumexp of the others), neg_loss or prob."


@app.command()
@handle_errors(flags={"runs": "--fit-runs"})
def datamodels(
    store: str = typer.Argument(..., help="Population store: a folder or a URL."),
    fit_runs: str = typer.Option("ok", "--fit-runs", help="The runs the datamodels are fitted on (a run selection: ok, N, 0-1999, ...)."),
    output: str = typer.Option("margin", "--output", help=OUTPUT_HELP),
    estimator: str = typer.Option("ridge", "--estimator", help="ridge (penalty chosen on held-out fit runs), lasso (L1 penalty chosen so) or diffmeans (difference of means)."),
    neighbours: Optional[str] = typer.Option(
        None, "--neighbours", help="With ridge: fit each test example on its K nearest training examples by the kernel of the fit runs only, K out of these (e.g. 25,50,100,200,400) chosen per test example on held-out fit runs; with lasso: on the largest K given."),
    top: Optional[int] = typer.Option(None, "--top", help="Keep only the K largest scores per test example (indices and values)."),
    out: Optional[Path] = typer.Option(None, "--out", help=".npz with scores (N_test, N_train) float32, or with --top indices and values; and fit_runs, output, estimator (and neighbours chosen)."),
    as_json: bool = json_option(),
):
    """Fit a linear model of every test example's output on the runs' training subsets."""
    from ..analysis.attribution import DatamodelOptions, datamodels as fit

    options = DatamodelOptions(runs=fit_runs, output=output, estimator=estimator, neighbours=int_list(neighbours, "--neighbours") or ())
    if top is not None and top < 1:
        fail(f"--top must be at least 1, got {top}", 2)
    check_outputs({"--out": out})
    result = fit(open_population(store), options)
    if out is not None:
        extra = {"fit_runs": np.asarray(result.runs, dtype=np.int64), "output": np.array(output), "estimator": np.array(estimator)}
        if result.neighbours is not None:
            extra["neighbours"] = result.neighbours  # (N_test,) the size chosen per test example
        if top is not None:
            indices, values = result.top(top)
            np.savez(out, indices=indices, values=values.astype(np.float32), **extra)
        else:
            np.savez(out, scores=result.scores, **extra)
    s = result.summary()
    if as_json:
        print_json({**s, "out": None if out is None else str(out)})
        return
    line = f"datamodels ({estimator}, {output}) of {s['shape'][0]:,} test examples on {s['shape'][1]:,} training examples from {result.run_count:,} runs"
    if result.alpha is not None:
        line += f"; relative penalty {result.alpha:g}" + (" (median)" if result.neighbours is not None else "")
    if result.neighbours is not None:
        line += f"; kernel neighbours per test example: median {s['neighbours']['median']:g}"
    typer.echo(line + ("" if out is None else f"; wrote {out}"))


def _load_scores(spec: str, pop, eval_runs: np.ndarray, fit_runs: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores ``(T, N)`` and the runs they were fitted on (None: unknown)."""
    T, N = int(pop.layout["n_test"]), int(pop.layout["n_train"])
    if spec == "kernel":
        from ..analysis.kernel import KernelOptions, PopulationLogits, kernel_matrix

        chosen = np.setdiff1d(pop.select(fit_runs), eval_runs)  # sorted, without the evaluation runs
        if len(chosen) < 2:
            fail("--scores kernel: needs at least 2 ok runs outside the evaluation runs (--fit-runs)", 2)
        source = PopulationLogits(pop, chosen, ("train", "test"))
        return kernel_matrix(source, "test", KernelOptions()), chosen
    path = Path(spec)
    if not path.is_file():
        fail(f"--scores {spec}: no such file (give a .npy or .npz of scores, or 'kernel')", 2)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        fail(f"--scores {spec}: not a readable .npy or .npz file ({exc})", 2)
    fitted = None
    if isinstance(data, np.ndarray):
        scores = data
    elif "scores" in data:
        scores, fitted = data["scores"], data["fit_runs"] if "fit_runs" in data else None
    elif "indices" in data and "values" in data:
        idx, val = data["indices"], data["values"]
        if idx.ndim != 2 or idx.shape != val.shape or idx.shape[0] != T:
            fail(f"--scores {spec}: indices and values must both be (n_test, k) = ({T}, k), got {idx.shape} and {val.shape}", 2)
        scores = np.zeros((T, N), dtype=np.float32)
        np.put_along_axis(scores, idx.astype(np.int64), val, 1)
        fitted = data["fit_runs"] if "fit_runs" in data else None
    else:
        fail(f"--scores {spec}: an .npz needs 'scores', or 'indices' and 'values'", 2)
    if scores.shape != (T, N):
        fail(f"--scores {spec}: expected shape (n_test, n_train) = ({T}, {N}), got {tuple(scores.shape)}", 2)
    return scores, fitted


@app.command()
@handle_errors(flags={"runs": "--eval-runs"})
def lds(
    store: str = typer.Argument(..., help="Population store: a folder or a URL."),
    scores: Optional[str] = typer.Option(None, "--scores", help="Attribution scores: a .npy (N_test, N_train), an .npz from `manyruns datamodels`, or 'kernel' (the ensemble kernel of the fit runs)."),
    eval_runs: Optional[str] = typer.Option(None, "--eval-runs", help="The evaluation runs (subsets with one or more seeds each); never runs the scores were fitted on."),
    ground_truth: Optional[Path] = typer.Option(None, "--ground-truth", help="Evaluate on this ground truth instead of --eval-runs: an .npz in dattri's layout (values, indices) or TRAK's (masks, margins)."),
    write_ground_truth: Optional[Path] = typer.Option(None, "--write-ground-truth", help="Write the evaluation runs' ground truth (.npz: masks, values, margins, indices, seeds) for dattri or TRAK."),
    fit_runs: str = typer.Option("ok", "--fit-runs", help="With --scores kernel: the runs of the kernel (the evaluation runs are left out)."),
    output: str = typer.Option("margin", "--output", help=OUTPUT_HELP),
    ceiling: bool = typer.Option(False, "--ceiling", help="Require the noise ceiling (two seeds or more per evaluation subset)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Resamples of the test examples for the 95% interval."),
    as_json: bool = json_option(),
):
    """Linear datamodeling score of attribution scores on evaluation runs of the population."""
    from ..analysis.attribution import GroundTruth, LdsOptions, ground_truth as make_truth, lds as score, lds_from_arrays

    if (eval_runs is None) == (ground_truth is None):
        fail("give --eval-runs (evaluation runs of the store) or --ground-truth (a file), one of them", 2)
    if scores is None and write_ground_truth is None:
        fail("--scores: give the scores to evaluate (or only --write-ground-truth)", 2)
    check_outputs({"--write-ground-truth": write_ground_truth})
    pop = open_population(store)
    options = LdsOptions(runs=eval_runs or "ok", output=output, bootstrap=bootstrap)
    evaluation = pop.select(eval_runs) if eval_runs is not None else np.zeros(0, dtype=np.int64)
    if write_ground_truth is not None:
        if eval_runs is None:
            fail("--write-ground-truth: needs --eval-runs", 2)
        make_truth(pop, evaluation, output).save(write_ground_truth)
        if scores is None:
            typer.echo(f"wrote {write_ground_truth}")
            return
    tau, fitted = _load_scores(scores, pop, evaluation, fit_runs)
    if fitted is not None and evaluation.size:
        overlap = np.intersect1d(np.asarray(fitted, dtype=np.int64), evaluation)
        if overlap.size:
            shown = ", ".join(str(int(r)) for r in overlap[:5]) + (", ..." if overlap.size > 5 else "")
            fail(f"--eval-runs: {overlap.size} evaluation runs are runs the scores were fitted on ({shown}); the two must be disjoint", 2)
    if ground_truth is not None:
        truth = GroundTruth.load(ground_truth, int(pop.layout["n_train"]))
        result = lds_from_arrays(tau, truth.masks, truth.values, options)
    else:
        result = score(pop, tau, options)
    if ceiling and result.ceiling is None:
        fail("--ceiling: every evaluation subset was trained with one seed; the noise ceiling needs two or more (population.seeds_per_subset)", 2)
    for note in result.notes:
        typer.echo(f"warning: {note}", err=True)
    s = result.summary()
    if as_json:
        print_json(s)
        return
    line = f"LDS {s['lds']:.4f} (95% interval {s['ci'][0]:.4f} to {s['ci'][1]:.4f}) over {s['n_test']:,} test examples and {s['n_subsets']:,} subsets"
    if s["ceiling"] is not None:
        line += f"; noise ceiling {s['ceiling']:.4f} ({s['seeds_per_subset']} seeds per subset)"
    typer.echo(line)
