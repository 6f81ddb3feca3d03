"""The ``audit`` command: label issues, near-duplicates, leaks and outliers of a population."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import check_outputs, csv_option, data_dir_option, emit, handle_errors, json_option, memory_option, number, open_population, runs_line, runs_option


def _labels(path: Optional[Path]):
    if path is None:
        return None
    import numpy as np

    from ..errors import InputError

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--labels {path}: not a readable .npy array of labels ({exc})") from None


def _weight(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # "auto", or refused by the options naming in_sample


@app.command()
@handle_errors
def audit(
    store: str = typer.Argument(..., help="Population store: a folder or a URL (s3://, gs://, az://, file://)."),
    runs: str = runs_option(),
    score: str = typer.Option("self_confidence", help="Label-quality score: self_confidence or normalized_margin."),
    in_sample: str = typer.Option("auto", "--in-sample", help="Weight of the training runs' predictions in the label-quality scores: a number in [0, 1] (0: held-out runs only) or auto (1 - 2 x the runs' measured memorization of doubtful labels, at least 0)."),
    min_out: int = typer.Option(1, "--min-out", help="Held-out runs an example needs to be scored."),
    near_duplicate: float = typer.Option(0.98, "--near-duplicate", help="Correlation (kernel over its largest value (R-1)/R) at or above which two training examples are near-duplicates."),
    leak: float = typer.Option(0.98, "--leak", help="Correlation at or above which a test example and its nearest training example are a leak."),
    outlier_k: int = typer.Option(10, "--outlier-k", help="Kernel neighbours averaged by the outlier score."),
    outlier_fraction: float = typer.Option(0.01, "--outlier-fraction", help="Share of training examples flagged as outliers."),
    no_kernel: bool = typer.Option(False, "--no-kernel", help="Skip the kernel checks (near-duplicates, leaks, outliers)."),
    neighbours: str = typer.Option("projected", "--neighbours", help="Kernel neighbours: projected (exact scan for few runs, else a sketch re-ranked by exact values) or exact (the streaming kernel)."),
    dims: int = typer.Option(128, "--dims", help="projected: the kernel is scanned exactly up to 2 x dims columns (runs x classes), sketched in dims dimensions above."),
    candidates: int = typer.Option(32, "--candidates", help="projected: the sketch's best candidates re-ranked by their exact kernel values, per example."),
    class_gap: float = typer.Option(2.0, "--class-gap", help="projected: compare each example with the training examples of its predicted class, and of its second where the two mean log-probabilities are within this many nats."),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="projected: compare each example with every training example (no class groups)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="A .npy array of the labels to audit (default: the labels the runs trained with)."),
    csv: Optional[Path] = csv_option("CSV, one row per training example: index,label,suggested_label,label_quality,is_label_issue,n_out,nearest_train,kernel,is_near_duplicate,..."),
    test_csv: Optional[Path] = typer.Option(None, "--test-csv", help="CSV, one row per test example: index,label,nearest_train,train_label,kernel,is_leak."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of the top examples of each issue type."),
    data_dir: Optional[Path] = data_dir_option(),
    memory_gib: float = memory_option(4.0, "Memory budget of the kernel in GiB."),
    precision: str = typer.Option("float32", help="Operands of the kernel's products: float32 or bfloat16."),
    as_json: bool = json_option(),
):
    """Audit the training set: label issues (confident learning on held-out probabilities),
    near-duplicates, train/test leaks and outliers (the ensemble kernel)."""
    from ..analysis.audit import AuditOptions, audit as compute

    options = AuditOptions(
        runs=runs, score=score, in_sample=_weight(in_sample), min_out=min_out, near_duplicate=near_duplicate, leak=leak, outlier_k=outlier_k,
        outlier_fraction=outlier_fraction, kernel=not no_kernel, memory_gib=memory_gib, precision=precision, neighbours=neighbours,
        dims=dims, candidates=candidates, class_gap=None if all_pairs else class_gap,
    )
    check_outputs({"--csv": csv, "--test-csv": test_csv, "--grid": grid})
    given = _labels(labels)
    pop = open_population(store)
    result = compute(pop, options, labels=given)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    files = {}
    if test_csv is not None:
        test_csv.parent.mkdir(parents=True, exist_ok=True)
        result.test_table().to_csv(test_csv, index=False)
        files["test_csv"] = str(test_csv)
    if grid is not None:
        from ..report.audit import audit_grid
        from .heldout import _images

        data = _images(pop, data_dir)
        if data is not None:
            files["grid"] = str(audit_grid(result, data.x_train, data.x_test, list(data.classes), grid))

    def text(s: dict) -> list[str]:
        lines = [f"audit of {s['examples']:,} training examples {runs_line(s)}"]
        if s["noise_rate"] is None:
            lines.append("  label issues: not scored (no run held any example out)")
        else:
            lines += [
                f"  label issues: {s['n_label_issues']:,} flagged of {s['scored']:,} scored; estimated noise rate {100 * s['noise_rate']:.2f}%",
                "  noise rate by class: " + ", ".join(f"{c}: {100 * r:.1f}%" for c, r in enumerate(s["noise_rate_by_class"])),
            ]
        if "near_duplicates" in s:
            d, o = s["near_duplicates"], s["outliers"]
            lines.append(f"  near-duplicates (correlation >= {d['threshold']}): {d['pairs']:,} pairs ({d['pairs_with_different_labels']:,} with different labels)")
            lines.append(f"  outliers: {o['count']:,} flagged (outlier score 99%: {number(o['score']['quantiles']['99%'])})")
        if "leaks" in s:
            lk = s["leaks"]
            lines.append(f"  train/test leaks (correlation >= {lk['threshold']}): {lk['count']:,} test examples ({lk['with_different_labels']:,} with a different label)")
        return lines

    emit(result, pop, as_json=as_json, csv=csv, text=text, files=files)
