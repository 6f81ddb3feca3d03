"""Model zoo commands: export/import of the Small CNN Zoo layout, and zoo-predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import app, export_app, handle_errors, import_app, print_json


@export_app.command("smallcnnzoo")
@handle_errors
def export_smallcnnzoo(
    store: Path = typer.Argument(..., help="Population store of small CNNs that records weights."),
    out_dir: Path = typer.Argument(..., help="Directory to write weights.npy, metrics.csv.gz and layout.csv into."),
    runs: str = typer.Option("committed", help="committed (diverged runs included) or ok."),
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
    store: Path = typer.Argument(..., help="New store to create."),
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
@handle_errors
def zoo_predict(
    store: Path = typer.Argument(..., help="Population store that records weights (a model zoo)."),
    features: str = typer.Option("stats", help="stats (per-tensor statistics), weights (raw), hyper (hyperparameters) or stats+hyper."),
    model: str = typer.Option("gbm", help="linear (ridge), gbm (gradient boosting) or dnn (MLP)."),
    checkpoint: Optional[str] = typer.Option(None, help="Epoch whose weights are the input (default: the last recorded); 'all', or a list '1,3'."),
    target: str = typer.Option("checkpoint", help="checkpoint: test accuracy of the same checkpoint (the published task); final: test accuracy at the end of training."),
    seed: int = typer.Option(0, help="Seed of the network split and of the predictor."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of networks in the test split."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of networks in the validation split (early stopping, model choice)."),
    gbm_backend: str = typer.Option("auto", "--gbm-backend", help="auto (LightGBM when installed, else scikit-learn), lightgbm or sklearn."),
    out: Optional[Path] = typer.Option(None, help="Directory for the scatter plot and tables (default: STORE/reports/zoo-predict/<features>-<model>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as a JSON object."),
):
    """Predict test accuracy from weights: split by network, fit, and score R^2 and Kendall's tau on the test networks."""
    from ..analysis.zoo import analysis_name, predict_accuracy
    from ..store import json_safe
    from ..population import open as open_population
    from ..report.zoo import prediction_scatter

    pop = open_population(store)
    result = predict_accuracy(
        pop, features, model, checkpoint, target, seed=seed, test_fraction=test_fraction, val_fraction=val_fraction, gbm_backend=gbm_backend
    )
    m = result.metrics
    folder = out or store / "reports" / "zoo-predict" / analysis_name(features, model, target).removeprefix("zoo-predict-")
    folder.mkdir(parents=True, exist_ok=True)
    result.table().to_csv(folder / "predictions.csv", index=False)
    (folder / "metrics.json").write_text(json.dumps(json_safe(m), indent=2, default=float))
    test = result.split == 2
    prediction_scatter(
        result.y_true[test],
        result.y_pred[test],
        folder / "scatter.png",
        title=f"{pop.recipe.data.dataset}: {features} features, {model} (test networks)",
        note=f"R$^2$ = {m['r2']:.3f}\nKendall $\\tau$ = {m['kendall_tau']:.3f}\n{m['n_test_networks']} networks",
        color=result.checkpoints[test] if len(m["checkpoints"]) > 1 else None,
        color_label="checkpoint epoch",
    )
    m = {**m, "scatter": str(folder / "scatter.png"), "predictions": str(folder / "predictions.csv")}
    if as_json:
        print_json(m)
        return
    typer.echo(f"{store}: {features} -> {model}, checkpoint(s) {m['checkpoints']}, target: {target} test accuracy")
    rows = [
        ("R^2 (test)", f"{m['r2']:.4f}"),
        ("Kendall tau (test)", f"{m['kendall_tau']:.4f}"),
        ("MSE / MAE (test)", f"{m['mse']:.3g} / {m['mae']:.3g}"),
        ("networks train / val / test", f"{m['n_train_networks']} / {m['n_val_networks']} / {m['n_test_networks']}"),
        ("samples train / val / test", f"{m['n_train_samples']} / {m['n_val_samples']} / {m['n_test_samples']}"),
        ("samples left out (not finite)", str(m["n_excluded_samples"])),
        ("features", str(m["num_features"])),
        ("predictor", ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in m["predictor"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"  {k:<{width}}  {v}")
    typer.echo(f"  scatter plot and predictions in {folder}")
