"""Model zoo commands: export/import of the Small CNN Zoo layout, and zoo-predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..streaming import json_safe
from . import app, export_app, import_app
from .common import check_outputs, csv_option, emit, handle_errors, json_option, number, open_population, print_json, runs_line, runs_option


@export_app.command("smallcnnzoo")
@handle_errors
def export_smallcnnzoo(
    store: str = typer.Argument(..., help="Population store of small CNNs that records weights."),
    out_dir: Path = typer.Argument(..., help="Directory to write weights.npy, metrics.csv.gz and layout.csv into."),
    runs: str = typer.Option("committed", "--runs", help="Networks to write: committed (the default: diverged networks are kept, flagged, as the format allows), ok, N (the first N ok runs) or run indices such as 0-99."),
    force: bool = typer.Option(False, "--force", help="Replace zoo files already in OUT_DIR."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Write a population in the Small CNN Zoo layout (one row per network and checkpoint)."""
    from ..formats.smallcnnzoo import export_smallcnnzoo as export

    summary = export(store, out_dir, runs=runs, overwrite=force)
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"wrote {summary['networks']} networks x {len(summary['checkpoints'])} checkpoints (epochs {summary['checkpoints']}) "
        f"= {summary['rows']} rows of {summary['num_params']} parameters to {out_dir} ({summary['diverged']} diverged networks kept)"
    )


@import_app.command("smallcnnzoo")
@handle_errors
def import_smallcnnzoo(
    zoo_dir: Path = typer.Argument(..., help="Directory holding weights.npy, metrics.csv.gz and layout.csv."),
    store: str = typer.Argument(..., help="New store to create."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root; when it holds the dataset, the store records its fingerprint and labels."),
    dataset: Optional[str] = typer.Option(None, help="Dataset name to use instead of the files' config.dataset."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Read a Small CNN Zoo directory (checkpoints included) into a new store."""
    from ..formats.smallcnnzoo import import_smallcnnzoo as do_import

    pop = do_import(zoo_dir, store, data_dir=data_dir, dataset=dataset)
    table = pop.runs
    summary = {
        "store": str(store),
        "dataset": pop.recipe.data.dataset,
        "networks": pop.num_runs,
        "checkpoints": pop.store.meta["source"]["checkpoints"],
        "ok": int((table.status == "ok").sum()),
        "diverged": int((table.status == "diverged").sum()),
    }
    if as_json:
        print_json(summary)
        return
    typer.echo(
        f"imported {summary['networks']} networks ({summary['diverged']} diverged, kept and flagged) with checkpoints at epochs "
        f"{summary['checkpoints']} on {summary['dataset']} into {store}"
    )


@app.command("zoo-predict")
@handle_errors(flags={"checkpoints": "--checkpoint"})
def zoo_predict(
    store: str = typer.Argument(..., help="Population store that records weights (a model zoo)."),
    runs: str = runs_option(),
    features: str = typer.Option("stats", help="stats (per-tensor statistics), weights (raw), hyper (hyperparameters) or stats+hyper."),
    model: str = typer.Option("gbm", help="linear (ridge), gbm (gradient boosting) or dnn (MLP)."),
    checkpoint: Optional[str] = typer.Option(None, help="Epoch whose weights are the input (default: the last recorded); 'all', or a list '1,3'."),
    target: str = typer.Option("checkpoint", help="checkpoint: test accuracy of the same checkpoint (the published task); final: test accuracy at the end of training."),
    seed: int = typer.Option(0, help="Seed of the network split and of the predictor."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of networks in the test split."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of networks in the validation split (early stopping, model choice)."),
    gbm_backend: str = typer.Option("auto", "--gbm-backend", help="auto (LightGBM when installed, else scikit-learn), lightgbm or sklearn."),
    block_size: int = typer.Option(256, "--block-size", help="Runs read at a time."),
    plot: Optional[Path] = typer.Option(None, help="PNG of predicted against true accuracy on the test networks (default: STORE/reports/zoo-predict/<features>-<model>/scatter.png)."),
    csv: Optional[Path] = csv_option("CSV: run,checkpoint,split,true_accuracy,predicted_accuracy (one row per sample)."),
    as_json: bool = json_option(),
    out: Optional[Path] = typer.Option(None, hidden=True, help="Deprecated: use --plot and --csv (a folder for scatter.png, predictions.csv and metrics.json)."),
):
    """Predict test accuracy from weights: split by network, fit, and score R^2 and Kendall's tau on the test networks."""
    from ..analysis.zoo import ZooPredictOptions, analysis_name, predict_accuracy
    from ..report.zoo import prediction_scatter

    options = ZooPredictOptions(
        runs=runs, features=features, model=model, checkpoints=checkpoint, target=target, seed=seed, test_fraction=test_fraction,
        val_fraction=val_fraction, gbm_backend=gbm_backend, block_size=block_size,
    )
    if out is not None:
        typer.echo("note: --out is deprecated and will be removed; use --plot and --csv", err=True)
        plot, csv = plot or out / "scatter.png", csv or out / "predictions.csv"
    check_outputs({"--plot": plot, "--csv": csv})
    pop = open_population(store)
    result = predict_accuracy(pop, options)
    m = result.metrics
    plot = plot or pop.report_dir / "zoo-predict" / analysis_name(features, model, target).removeprefix("zoo-predict-") / "scatter.png"
    test = result.split == 2
    prediction_scatter(
        result.y_true[test],
        result.y_pred[test],
        plot,
        title=f"{pop.recipe.data.dataset}: {features} features, {model} (test networks)",
        note=f"R$^2$ = {number(m['r2'], '.3f')}\nKendall $\\tau$ = {number(m['kendall_tau'], '.3f')}\n{m['n_test_networks']} networks",
        color=result.checkpoints[test] if len(m["checkpoints"]) > 1 else None,
        color_label="checkpoint epoch",
    )
    files = {"plot": str(plot)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(json_safe(m), indent=2, default=float))
        files["metrics"] = str(out / "metrics.json")

    def text(s: dict) -> list[str]:
        rows = [
            ("R^2 (test)", number(s["r2"])),
            ("Kendall tau (test)", number(s["kendall_tau"])),
            ("MSE / MAE (test)", f"{s['mse']:.3g} / {s['mae']:.3g}"),
            ("networks train / val / test", f"{s['n_train_networks']} / {s['n_val_networks']} / {s['n_test_networks']}"),
            ("samples train / val / test", f"{s['n_train_samples']} / {s['n_val_samples']} / {s['n_test_samples']}"),
            ("samples left out (not finite)", str(s["n_excluded_samples"])),
            ("features", str(s["num_features"])),
            ("predictor", ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s["predictor"].items())),
        ]
        width = max(len(k) for k, _ in rows)
        head = f"{store}: {features} -> {model}, checkpoint(s) {s['checkpoints']}, target: {target} test accuracy, {runs_line(s)}"
        return [head] + [f"  {k:<{width}}  {v}" for k, v in rows]

    emit(result, pop, as_json=as_json, csv=csv, text=text, files=files)
