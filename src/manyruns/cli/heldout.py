"""Held-out statistics commands: memorization, influence, cscore; import/export of the
held-out release layout."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app, export_app, import_app
from .common import check_outputs, csv_option, data_dir_option, deprecated, deprecated_option, emit, handle_errors, json_option, memory_option, number
from .common import open_population, print_json, runs_line, runs_option, write_csv

VALUE_HELP = "Per-run value: correct (0/1), trueprob (probability of the label) or margin (label logit minus the largest other)."
BLOCK_HELP = "Runs read at a time."
GRID_HELP = "PNG of the highest and lowest {} per class (default: next to --csv)."


def _grid_path(grid: Optional[Path], csv: Optional[Path], no_grid: bool) -> Optional[Path]:
    if no_grid:
        return None
    if grid is not None:
        return grid
    if csv is not None:
        return csv.with_name(f"{csv.stem}-grid.png")
    return None


def _extremes(pop, scores, result, path: Optional[Path], data_dir: Optional[Path], name: str, per_class: int, **colors) -> dict:
    """The grid of the highest and lowest ``scores`` per class, where asked for and the images
    are at hand: ``{"grid": path}`` or ``{}``."""
    from ..report.heldout import extremes_grid

    if path is None or (data := _images(pop, data_dir)) is None:
        return {}
    return {"grid": str(extremes_grid(scores, _training_labels(result), data.x_train, list(data.classes), path, name, per_class, **colors))}


def _images(pop, data_dir: Optional[Path]):
    """The population's dataset, or None (with a note) when its files are not at hand."""
    from ..data import DatasetMismatchError, DatasetNotFoundError

    try:
        return pop.dataset(data_dir)
    except (DatasetNotFoundError, DatasetMismatchError) as exc:
        typer.echo(f"note: no grid ({exc})", err=True)
        return None


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


def _missing_line(summary: dict) -> list[str]:
    if summary["never_held_out"] or summary["never_included"]:
        return [
            f"  NaN for {summary['never_held_out']:,} examples no run held out (n_out = 0) and "
            f"{summary['never_included']:,} no run trained on (n_in = 0): train more runs"
        ]
    return []


def _training_labels(result):
    labels = result.label
    return labels if (labels >= 0).all() else result.dataset_label


@app.command()
@handle_errors
def memorization(
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    runs: str = runs_option(),
    value: str = typer.Option("correct", help=VALUE_HELP),
    block_size: int = typer.Option(128, "--block-size", help=BLOCK_HELP),
    csv: Optional[Path] = csv_option("CSV: index,label,mem,se,n_in,n_out,mean_in,mean_out,dataset_label."),
    grid: Optional[Path] = typer.Option(None, "--grid", help=GRID_HELP.format("memorization")),
    no_grid: bool = typer.Option(False, "--no-grid", help="Draw no grid."),
    per_class: int = typer.Option(6, "--per-class", help="Images per class and side in the grid."),
    data_dir: Optional[Path] = data_dir_option(),
    as_json: bool = json_option(),
    out: Optional[Path] = deprecated_option("--out", "--csv"),
):
    """Memorization of each training example: accuracy when trained on it minus when held out."""
    from ..analysis.heldout import MemorizationOptions, memorization as compute

    csv = deprecated("--out", "--csv", out, csv)
    options = MemorizationOptions(runs=runs, value=value, block_size=block_size)
    check_outputs({"--csv": csv, "--grid": grid})
    pop = open_population(store)
    result = compute(pop, options)
    files = _extremes(pop, result.estimate, result, _grid_path(grid, csv, no_grid), data_dir, "mem", per_class)

    def text(s: dict) -> list[str]:
        q = s["quantiles"]
        return [
            f"memorization ({s['value']}) of {s['examples']:,} training examples {runs_line(s)}",
            f"  mean {number(s['mean'])}; median {number(q['50%'])}; 90% {number(q['90%'])}; 99% {number(q['99%'])}",
            f"  >= 0.25: {s['at_least_0.25']:,}; >= 0.5: {s['at_least_0.5']:,}; median standard error {number(s['median_se'])}",
            *_missing_line(s),
            _stability_line(s["stability"]),
        ]

    emit(result, pop, as_json=as_json, csv=csv, text=text, files=files)


@app.command()
@handle_errors(flags={"same_label": "--any-label", "top": "--top"})
def influence(
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    runs: str = runs_option(),
    value: str = typer.Option("correct", help=VALUE_HELP),
    top: int = typer.Option(10, "--top", help="Most influential training examples kept per test example."),
    infl_threshold: float = typer.Option(0.15, "--infl-threshold", help="Pairs: influence at least this."),
    mem_threshold: float = typer.Option(0.25, "--mem-threshold", help="Pairs: memorization of the training example at least this."),
    any_label: bool = typer.Option(False, "--any-label", help="Pairs need not share the label."),
    max_pairs: int = typer.Option(5_000_000, "--max-pairs", help="Pairs kept at most (the strongest; at least 1); the summary says how many passed."),
    split_half: bool = typer.Option(True, "--split-half/--no-split-half", help="Split-half agreement of the pairs and top influencers (twice the accumulator memory, a slower finishing step)."),
    dense: Optional[str] = typer.Option(None, "--dense", help="Also write the full influence matrix: 'store' or a path ending in .npy."),
    memory_gib: float = memory_option(1.0, "Memory in GiB for the accumulators of one block of training examples."),
    precision: str = typer.Option("auto", help="Matrix products: auto (for 0/1 values the faster of int8 and float32 on this CPU, both exact; else float32), int8, bfloat16 or float32."),
    block_size: int = typer.Option(2048, "--block-size", help="Runs per matrix product (read at a time; more is faster and takes more memory)."),
    csv: Optional[Path] = csv_option("CSV of the top influencers: test_index,rank,train_index,infl,se,n_in,n_out."),
    pairs_csv: Optional[Path] = typer.Option(
        None, "--pairs-csv", help="CSV of high-influence pairs: train_index,test_index,infl,mem,label,se,n_in,n_out (with --any-label also train_label,test_label)."
    ),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of test examples with their top influencers (default: next to --pairs-csv or --csv)."),
    no_grid: bool = typer.Option(False, "--no-grid", help="Draw no grid."),
    data_dir: Optional[Path] = data_dir_option(),
    as_json: bool = json_option(),
    out: Optional[Path] = deprecated_option("--out", "--csv"),
    pairs_out: Optional[Path] = deprecated_option("--pairs-out", "--pairs-csv"),
    max_memory_gb: Optional[float] = deprecated_option("--max-memory-gb", "--memory-gib"),
):
    """Influence of training examples on test examples: top influencers and high-influence pairs."""
    from ..analysis.heldout import InfluenceOptions, influence as compute
    from ..report.heldout import influence_grid

    csv = deprecated("--out", "--csv", out, csv)
    pairs_csv = deprecated("--pairs-out", "--pairs-csv", pairs_out, pairs_csv)
    memory_gib = deprecated("--max-memory-gb", "--memory-gib", max_memory_gb, memory_gib, default=1.0)
    options = InfluenceOptions(
        runs=runs, value=value, top=top, infl_threshold=infl_threshold, mem_threshold=mem_threshold, same_label=not any_label,
        max_pairs=max_pairs, split_half=split_half, dense=dense, memory_gib=memory_gib, precision=precision, block_size=block_size,
    )
    check_outputs({"--csv": csv, "--pairs-csv": pairs_csv, "--grid": grid, "--dense": None if dense in (None, "store") else Path(dense)})
    pop = open_population(store)
    result = compute(pop, options)
    files = {}
    if pairs_csv is not None:
        files["pairs_csv"] = write_csv(result.pairs, pairs_csv)
    path = _grid_path(grid, pairs_csv or csv, no_grid)
    if path is not None and (data := _images(pop, data_dir)) is not None:
        labels = _training_labels(result.memorization)
        files["grid"] = str(influence_grid(result.top_index, result.top_value, data.x_test, data.y_test, data.x_train, labels, list(data.classes), path))
    if dense is not None:
        files["dense"] = dense if dense != "store" else f"{pop.path}/analysis/influence/matrix"

    def text(s: dict) -> list[str]:
        lines = [f"influence ({s['value']}) of {s['train_examples']:,} training on {s['test_examples']:,} test examples {runs_line(s)}"]
        varying = s["varying_test_examples"]
        if varying < s["test_examples"]:
            lines.append(f"  {s['test_examples'] - varying:,} test examples get the same value from every run (influence 0 throughout)")
        if s["max_influence_median"] is not None:
            lines.append(f"  median over the other test examples of their largest influence: {s['max_influence_median']:.4f}")
        t = s["thresholds"]
        lines.append(f"  {s['pairs']:,} high-influence pairs (infl >= {t['infl_threshold']}, mem >= {t['mem_threshold']}{', same label' if t['same_label'] else ''})")
        if s["pairs_truncated"]:
            lines.append(
                f"  truncated: {s['pairs_found']:,} pairs passed the thresholds; only the {s['pairs']:,} strongest are kept "
                f"(--max-pairs {s['max_pairs']:,}; with few runs many pass by chance)"
            )
        lines += _missing_line(s)
        if s["pair_stability"] is not None:
            lines.append(_pair_stability_line(s["pair_stability"]))
            lines.append(
                _stability_line(s["stability"]).replace("split-half", "influence split-half (sampled test rows)")
                + f"; top-1 agreement {number(s['stability']['top1_agreement'], '.2f')}"
            )
        else:
            lines.append("  influence split-half stability: not computed (--no-split-half)")
        lines.append(_stability_line(s["memorization_stability"]).replace("split-half", "memorization split-half"))
        return lines

    emit(result, pop, as_json=as_json, csv=csv, text=text, files=files)


def _pair_stability_line(stability: dict) -> str:
    a, b = stability["pairs_a"], stability["pairs_b"]
    runs = stability["half_runs"]
    line = f"  pairs split-half ({runs[0]} vs {runs[1]} runs): {a:,} and {b:,} pairs, {stability['pairs_both']:,} in both"
    if stability["pair_agreement"] is not None:
        line += f"; {stability['pair_agreement']:.0%} of the pairs found with one half are found with the other"
    if stability["pairs_truncated"]:
        line += " (a half's pairs truncated at --max-pairs)"
    line += f"\n  top-{stability['k']} split-half: Spearman {number(stability['topk_spearman'], '.3f')} over the union of the halves' top entries ({stability['topk_entries']:,} entries of {stability['topk_test_examples']:,} varying test examples; negative when they are noise)"
    return line


@app.command()
@handle_errors
def cscore(
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    runs: str = runs_option(),
    value: str = typer.Option("correct", help=VALUE_HELP),
    learning_speed: Optional[bool] = typer.Option(None, "--learning-speed/--no-learning-speed", help="Learning-speed proxy (default: when the store records trueprob/train)."),
    block_size: int = typer.Option(128, "--block-size", help=BLOCK_HELP),
    csv: Optional[Path] = csv_option(
        "CSV: index,label,cscore,se,<one column per ratio>[,learning_speed], then n_out_<ratio>...[,learning_speed_se,learning_speed_count,learning_speed_runs],dataset_label."
    ),
    grid: Optional[Path] = typer.Option(None, "--grid", help=GRID_HELP.format("C-scores")),
    no_grid: bool = typer.Option(False, "--no-grid", help="Draw no grid."),
    per_class: int = typer.Option(6, "--per-class", help="Images per class and side in the grid."),
    data_dir: Optional[Path] = data_dir_option(),
    as_json: bool = json_option(),
    out: Optional[Path] = deprecated_option("--out", "--csv"),
):
    """Consistency scores: held-out accuracy at each subset ratio, averaged over the ratios."""
    from ..analysis.heldout import CScoreOptions, cscore as compute

    csv = deprecated("--out", "--csv", out, csv)
    options = CScoreOptions(runs=runs, value=value, block_size=block_size, learning_speed=learning_speed)
    check_outputs({"--csv": csv, "--grid": grid})
    pop = open_population(store)
    result = compute(pop, options)
    files = _extremes(pop, result.cscore, result, _grid_path(grid, csv, no_grid), data_dir, "C", per_class, high_color="tab:green", low_color="tab:red")

    def text(s: dict) -> list[str]:
        ratios = ", ".join(f"{k} ({v} runs)" for k, v in (s["runs_per_ratio"] or {}).items())
        lines = [f"C-scores ({s['value']}) of {s['examples']:,} training examples {runs_line(s)} at ratios {ratios}"]
        if s["runs_at_full_set_left_out"]:
            lines.append(f"  left out {s['runs_at_full_set_left_out']} runs trained on the full set (they hold nothing out)")
        lines.append(f"  mean {number(s['mean'])}; median standard error {number(s['median_se'])}")
        if s["missing_a_ratio"]:
            lines.append(f"  NaN for {s['missing_a_ratio']:,} examples held out by no run at some ratio (n_out = 0): train more runs")
        speed = s["learning_speed"]
        if speed is not None:
            lines.append(
                f"  learning-speed proxy: Spearman {number(s['learning_speed_spearman'], '.3f')} with the C-score; "
                f"mean {number(speed['mean'])}, median standard error {number(speed['median_se'])} over runs "
                f"(median {number(speed['median_count'], '.0f')} (run, epoch) values and {number(speed['median_runs'], '.0f')} runs per example)"
            )
        lines.append(_stability_line(s["stability"]))
        return lines

    emit(result, pop, as_json=as_json, csv=csv, text=text, files=files)


@import_app.command("heldout")
@handle_errors
def import_heldout(
    release_dir: Path = typer.Argument(..., help="One experiment's directory: <subset_ratio>/<run>/aux_arrays.npz."),
    store: str = typer.Argument(..., help="Store to create (or grow with runs it does not hold yet)."),
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
    store: str = typer.Argument(..., help="Population store (with masks, and correctness or logits)."),
    out_dir: Path = typer.Argument(..., help="Directory to write <subset_ratio>/<run>/aux_arrays.npz into."),
    runs: str = runs_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files that exist."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
):
    """Export a store in the held-out training release layout."""
    from ..formats.heldout import export_release

    info = export_release(open_population(store), out_dir, runs=runs, overwrite=overwrite)
    if as_json:
        print_json(info)
        return
    typer.echo(f"wrote {len(info['runs'])} runs to {info['out_dir']} (" + ", ".join(f"{k}: {v}" for k, v in info["ratios"].items()) + ")")
