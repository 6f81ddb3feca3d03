"""Held-out statistics commands: memorization, influence, cscore; import/export of the
held-out release layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app, export_app, fail, handle_errors, import_app, print_json

VALUE_HELP = "Per-run value: correct (0/1), trueprob (probability of the label) or margin (label logit minus the largest other)."


def _num(x: float | None, fmt: str = ".4f") -> str:
    """``x`` formatted, or 'n/a' where the summary has no value (too few runs)."""
    return "n/a" if x is None else format(x, fmt)


def _stability_line(stability: dict) -> str:
    rho = stability["split_half_spearman"]
    if rho is None:
        return "  split-half stability: not enough runs to tell"
    line = f"  split-half Spearman {rho:.3f} ({stability['half_runs'][0]} vs {stability['half_runs'][1]} runs)"
    if stability["reliability_all_runs"] is not None:
        line += f"; predicted for all runs {stability['reliability_all_runs']:.3f}"
    need = stability.get("runs_for_reliability_0.9")
    total = sum(stability["half_runs"])
    if need is not None and need > total:
        line += f"; about {int(need):,} runs for 0.9"
    return line


def _grid_path(grid: Optional[Path], out: Optional[Path], no_grid: bool, suffix: str) -> Optional[Path]:
    if no_grid:
        return None
    if grid is not None:
        return grid
    if out is not None:
        return out.with_name(f"{out.stem}-{suffix}.png")
    return None


def _images(pop, data_dir: Optional[Path]):
    """The population's dataset, or None (with a note) when its files are not at hand."""
    from ..data import DatasetMismatchError, DatasetNotFoundError

    try:
        return pop.dataset(None if data_dir is None else str(data_dir))
    except (DatasetNotFoundError, DatasetMismatchError) as exc:
        typer.echo(f"note: no grid ({exc})", err=True)
        return None


@app.command()
@handle_errors
def memorization(
    store: Path = typer.Argument(..., help="Population store."),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV: index,label,mem,se,n_in,n_out,mean_in,mean_out,dataset_label."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    value: str = typer.Option("correct", help=VALUE_HELP),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of the highest and lowest memorization per class (default: next to --out)."),
    no_grid: bool = typer.Option(False, "--no-grid", help="Draw no grid."),
    per_class: int = typer.Option(6, "--per-class", help="Images per class and side in the grid."),
    block_size: int = typer.Option(128, "--block-size", help="Runs read at a time."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root for the grid images."),
):
    """Memorization of each training example: accuracy when trained on it minus when held out."""
    import manyruns
    from ..analysis.heldout import memorization as estimate
    from ..report.heldout import extremes_grid

    pop = manyruns.open(store)
    result = estimate(pop, value=value, block_size=block_size)
    result.save(pop)
    summary = result.summary()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.table().to_csv(out, index=False)
        summary["out"] = str(out)
    path = _grid_path(grid, out, no_grid, "grid")
    if path is not None:
        data = _images(pop, data_dir)
        if data is not None:
            labels = result.label if (result.label >= 0).all() else result.dataset_label
            extremes_grid(result.estimate, labels, data.x_train, list(data.classes), path, "mem", per_class)
            summary["grid"] = str(path)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"memorization ({value}) of {summary['examples']:,} training examples from {summary['runs']} runs")
    q = summary["quantiles"]
    typer.echo(f"  mean {_num(summary['mean'])}; median {_num(q['50%'])}; 90% {_num(q['90%'])}; 99% {_num(q['99%'])}")
    typer.echo(f"  >= 0.25: {summary['at_least_0.25']:,}; >= 0.5: {summary['at_least_0.5']:,}; median standard error {_num(summary['median_se'])}")
    _report_missing(summary)
    typer.echo(_stability_line(summary["stability"]))
    for key in ("out", "grid"):
        if key in summary:
            typer.echo(f"  wrote {summary[key]}")


def _report_missing(summary: dict) -> None:
    if summary["never_held_out"] or summary["never_included"]:
        typer.echo(
            f"  NaN for {summary['never_held_out']:,} examples no run held out (n_out = 0) and "
            f"{summary['never_included']:,} no run trained on (n_in = 0): train more runs"
        )


@app.command()
@handle_errors
def influence(
    store: Path = typer.Argument(..., help="Population store."),
    top: int = typer.Option(10, "--top", help="Most influential training examples kept per test example."),
    pairs_out: Optional[Path] = typer.Option(
        None, "--pairs-out", help="CSV of high-influence pairs: train_index,test_index,infl,mem,label,se,n_in,n_out (with --any-label also train_label,test_label)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV of the top influencers: test_index,rank,train_index,infl,se,n_in,n_out."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    value: str = typer.Option("correct", help=VALUE_HELP),
    infl_threshold: float = typer.Option(0.15, "--infl-threshold", help="Pairs: influence at least this."),
    mem_threshold: float = typer.Option(0.25, "--mem-threshold", help="Pairs: memorization of the training example at least this."),
    any_label: bool = typer.Option(False, "--any-label", help="Pairs need not share the label."),
    max_pairs: int = typer.Option(5_000_000, "--max-pairs", help="Pairs kept at most (the strongest; at least 1); the summary says how many passed."),
    split_half: bool = typer.Option(True, "--split-half/--no-split-half", help="Split-half agreement of the pairs and top influencers (twice the accumulator memory, a slower finishing step)."),
    dense: Optional[str] = typer.Option(None, "--dense", help="Also write the full influence matrix: 'store' or a path ending in .npy."),
    max_memory_gb: float = typer.Option(1.0, "--max-memory-gb", help="Memory for the accumulators of one block of training examples."),
    precision: str = typer.Option("auto", help="Matrix products: auto (int8 for 0/1 values, else float32), int8, bfloat16 or float32."),
    block_size: int = typer.Option(2048, "--block-size", help="Runs per matrix product (read at a time; more is faster and takes more memory)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of test examples with their top influencers (default: next to --pairs-out or --out)."),
    no_grid: bool = typer.Option(False, "--no-grid", help="Draw no grid."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root for the grid images."),
):
    """Influence of training examples on test examples: top influencers and high-influence pairs."""
    import manyruns
    from ..analysis.influence import influence as estimate
    from ..report.heldout import influence_grid

    if max_pairs < 1:
        fail(f"--max-pairs must be at least 1 (the most pairs kept), got {max_pairs}", 2)
    pop = manyruns.open(store)
    result = estimate(
        pop, value=value, top=top, infl_threshold=infl_threshold, mem_threshold=mem_threshold, same_label=not any_label,
        block_size=block_size, max_block_bytes=int(max_memory_gb * 2**30), precision=precision, dense=dense, max_pairs=max_pairs,
        split_half=split_half,
    )
    result.save(pop)
    summary = result.summary()
    if pairs_out is not None:
        pairs_out.parent.mkdir(parents=True, exist_ok=True)
        result.pairs.to_csv(pairs_out, index=False)
        summary["pairs_out"] = str(pairs_out)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.top_table().to_csv(out, index=False)
        summary["out"] = str(out)
    path = _grid_path(grid, pairs_out or out, no_grid, "grid")
    if path is not None:
        data = _images(pop, data_dir)
        if data is not None:
            labels = result.memorization.label
            labels = labels if (labels >= 0).all() else result.memorization.dataset_label
            influence_grid(result.top_index, result.top_value, data.x_test, data.y_test, data.x_train, labels, list(data.classes), path)
            summary["grid"] = str(path)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"influence ({value}) of {summary['train_examples']:,} training on {summary['test_examples']:,} test examples from {summary['runs']} runs")
    varying = summary["varying_test_examples"]
    if varying is not None and varying < summary["test_examples"]:
        typer.echo(f"  {summary['test_examples'] - varying:,} test examples get the same value from every run (influence 0 throughout)")
    if summary["max_influence_median"] is not None:
        typer.echo(f"  median over the other test examples of their largest influence: {summary['max_influence_median']:.4f}")
    t = summary["thresholds"]
    typer.echo(f"  {summary['pairs']:,} high-influence pairs (infl >= {t['infl_threshold']}, mem >= {t['mem_threshold']}{', same label' if t['same_label'] else ''})")
    if summary["pairs_truncated"]:
        typer.echo(
            f"  truncated: {summary['pairs_found']:,} pairs passed the thresholds; only the {summary['pairs']:,} strongest are kept "
            f"(--max-pairs {summary['max_pairs']:,}; with few runs many pass by chance)"
        )
    _report_missing(summary)
    if summary["pair_stability"] is not None:
        typer.echo(_pair_stability_line(summary["pair_stability"]))
        typer.echo(
            _stability_line(summary["stability"]).replace("split-half", "influence split-half (sampled test rows)")
            + f"; top-1 agreement {_num(summary['stability']['top1_agreement'], '.2f')}"
        )
    else:
        typer.echo("  influence split-half stability: not computed (--no-split-half)")
    typer.echo(_stability_line(summary["memorization_stability"]).replace("split-half", "memorization split-half"))
    for key in ("pairs_out", "out", "grid", "dense"):
        if summary.get(key):
            typer.echo(f"  wrote {summary[key]}")


def _pair_stability_line(stability: dict) -> str:
    a, b = stability["pairs_a"], stability["pairs_b"]
    runs = stability["half_runs"]
    line = f"  pairs split-half ({runs[0]} vs {runs[1]} runs): {a:,} and {b:,} pairs, {stability['pairs_both']:,} in both"
    if stability["pair_agreement"] is not None:
        line += f"; {stability['pair_agreement']:.0%} of the pairs found with one half are found with the other"
    if stability["pairs_truncated"]:
        line += " (a half's pairs truncated at --max-pairs)"
    line += f"\n  top-{stability['k']} split-half: Spearman {_num(stability['topk_spearman'], '.3f')} over the union of the halves' top entries ({stability['topk_entries']:,} entries of {stability['topk_test_examples']:,} varying test examples; negative when they are noise)"
    return line


@app.command()
@handle_errors
def cscore(
    store: Path = typer.Argument(..., help="Population store."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="CSV: index,label,cscore,se,<one column per ratio>[,learning_speed], then n_out_<ratio>...[,learning_speed_se,learning_speed_count,learning_speed_runs],dataset_label."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    value: str = typer.Option("correct", help=VALUE_HELP),
    learning_speed: Optional[bool] = typer.Option(None, "--learning-speed/--no-learning-speed", help="Learning-speed proxy (default: when the store records trueprob/train)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of the highest and lowest C-scores per class (default: next to --out)."),
    no_grid: bool = typer.Option(False, "--no-grid", help="Draw no grid."),
    per_class: int = typer.Option(6, "--per-class", help="Images per class and side in the grid."),
    block_size: int = typer.Option(128, "--block-size", help="Runs read at a time."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root for the grid images."),
):
    """Consistency scores: held-out accuracy at each subset ratio, averaged over the ratios."""
    import manyruns
    from ..analysis.cscore import cscore as estimate
    from ..report.heldout import extremes_grid

    pop = manyruns.open(store)
    result = estimate(pop, value=value, block_size=block_size, learning_speed=learning_speed)
    result.save(pop)
    summary = result.summary()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.table().to_csv(out, index=False)
        summary["out"] = str(out)
    path = _grid_path(grid, out, no_grid, "grid")
    if path is not None:
        data = _images(pop, data_dir)
        if data is not None:
            labels = result.label if (result.label >= 0).all() else result.dataset_label
            extremes_grid(result.cscore, labels, data.x_train, list(data.classes), path, "C", per_class, high_color="tab:green", low_color="tab:red")
            summary["grid"] = str(path)
    if as_json:
        print_json(summary)
        return
    ratios = ", ".join(f"{k} ({v} runs)" for k, v in (summary["runs_per_ratio"] or {}).items())
    typer.echo(f"C-scores ({value}) of {summary['examples']:,} training examples from {summary['runs']} runs at ratios {ratios}")
    if summary["runs_at_full_set_left_out"]:
        typer.echo(f"  left out {summary['runs_at_full_set_left_out']} runs trained on the full set (they hold nothing out)")
    typer.echo(f"  mean {_num(summary['mean'])}; median standard error {_num(summary['median_se'])}")
    if summary["missing_a_ratio"]:
        typer.echo(f"  NaN for {summary['missing_a_ratio']:,} examples held out by no run at some ratio (n_out = 0): train more runs")
    speed = summary["learning_speed"]
    if speed is not None:
        typer.echo(
            f"  learning-speed proxy: Spearman {_num(summary['learning_speed_spearman'], '.3f')} with the C-score; "
            f"mean {_num(speed['mean'])}, median standard error {_num(speed['median_se'])} over runs "
            f"(median {_num(speed['median_count'], '.0f')} (run, epoch) values and {_num(speed['median_runs'], '.0f')} runs per example)"
        )
    typer.echo(_stability_line(summary["stability"]))
    for key in ("out", "grid"):
        if key in summary:
            typer.echo(f"  wrote {summary[key]}")


@import_app.command("heldout")
@handle_errors
def import_heldout(
    release_dir: Path = typer.Argument(..., help="One experiment's directory: <subset_ratio>/<run>/aux_arrays.npz."),
    store: Path = typer.Argument(..., help="Store to create (or grow with runs it does not hold yet)."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset the runs were trained on (e.g. cifar10)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data root (default: $MANYRUNS_DATA)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Import a held-out training release (per-run correctness and subsets)."""
    from ..formats.heldout import import_release

    info = import_release(release_dir, store, dataset, data_dir)
    if as_json:
        print_json(info)
        return
    line = f"imported {info['runs_added']} runs into {info['store']} ({info['runs']} in all)"
    if info.get("ratios"):
        line += "; runs per ratio: " + ", ".join(f"{k}: {v}" for k, v in info["ratios"].items())
    if info.get("skipped"):
        line += f"; {info['skipped']} already there"
    typer.echo(line)


@export_app.command("heldout")
@handle_errors
def export_heldout(
    store: Path = typer.Argument(..., help="Population store (with masks, and correctness or logits)."),
    out_dir: Path = typer.Argument(..., help="Directory to write <subset_ratio>/<run>/aux_arrays.npz into."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files that exist."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Export a store in the held-out training release layout."""
    import manyruns
    from ..formats.heldout import export_release

    info = export_release(manyruns.open(store), out_dir, overwrite=overwrite)
    if as_json:
        print_json(info)
        return
    typer.echo(f"wrote {info['runs']} runs to {info['out_dir']} (" + ", ".join(f"{k}: {v}" for k, v in info["ratios"].items()) + ")")
