"""Randomization tests: fit curves per corruption level, checked against a direct computation
on a small trained population and on stores whose metrics are written by hand; the example
recipes; refusal of label-noise probabilities outside [0, 1]."""

from __future__ import annotations

import json
import math
import statistics
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import manyruns
from manyruns.analysis.randomization import LevelSums, corruption_label, epochs_to_fit, fit_curves
from manyruns.cli import app
from manyruns.data import load_dataset
from manyruns.plan import realize_inputs
from manyruns.recipe import Recipe, RecipeError
from manyruns.report.fit_curves import plot_fit_levels
from manyruns.store import RunRecord
from manyruns.training.data import prepare

EXAMPLES = Path(manyruns.__file__).parent / "examples"

TRAINED = """
name = "noise-tiny"
[data]
dataset = "digits"
normalize = "unit"
[model]
kind = "mlp"
widths = [48]
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[training]
epochs = 5
batch_size = 32
[population]
runs = 6
seed = 5
subset = 0.5
label_noise = { p = [0.0, 1.0] }
[record]
logits = []
metrics = true
train_metrics = "eval"
initial_metrics = true
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six runs on digits (three at p = 0, three at p = 1), five epochs, trained for real."""
    root = tmp_path_factory.mktemp("noise")
    (root / "recipe.toml").write_text(TRAINED)
    manyruns.plan(root / "recipe.toml", root / "store")
    manyruns.train(root / "store", executor="serial", progress=False)
    return manyruns.open(root / "store")


def direct_fit_curves(pop) -> dict[float, dict]:
    """The same numbers, the straightforward way: every run's arrays in memory, plain loops."""
    table = pop.runs
    metrics = np.asarray(pop.array("metrics")[:]).astype(np.float64)
    summary = pop.store.summary().astype(np.float64)
    raw_train_acc = np.asarray(pop.array("metrics")[:])[:, :, 1]
    out = {}
    for p in sorted(set(table["label_noise"])):
        runs = [r for r in range(len(table)) if table["label_noise"].iat[r] == p and table["status"].iat[r] == "ok"]
        level = {"runs": len(runs), "train_mean": [], "train_std": [], "test_loss_mean": []}
        for e in range(metrics.shape[1]):
            values = [metrics[r, e, 1] for r in runs if math.isfinite(metrics[r, e, 1])]
            level["train_mean"].append(sum(values) / len(values) if values else None)
            level["train_std"].append(statistics.stdev(values) if len(values) > 1 else None)
            losses = [metrics[r, e, 2] for r in runs if math.isfinite(metrics[r, e, 2])]
            level["test_loss_mean"].append(sum(losses) / len(losses) if losses else None)
        level["train_accuracy"] = statistics.mean(summary[r, 0] for r in runs)
        level["test_accuracy"] = statistics.mean(summary[r, 2] for r in runs)
        level["test_accuracy_std"] = statistics.stdev(summary[r, 2] for r in runs)
        for name, threshold in (("fit99", 0.99), ("fit100", 1.0)):
            firsts = []
            for r in runs:
                first = None
                for e in range(metrics.shape[1]):
                    if raw_train_acc[r, e] >= np.float32(threshold):
                        first = e
                        break
                firsts.append(first)
            reached = [f for f in firsts if f is not None]
            level[name] = statistics.mean(reached) if reached and len(reached) == len(runs) else None
            level[name + "_runs"] = len(reached)
        out[p] = level
    return out


def close(a, b, tol=1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol * max(1.0, abs(b))


def test_fit_curves_match_a_direct_computation(trained):
    levels = fit_curves(trained)
    expected = direct_fit_curves(trained)
    assert [level.corruption for level in levels] == ["labels:0.0", "labels:1.0"]
    for level in levels:
        d = level.to_dict()
        want = expected[d["label_noise"]]
        assert d["runs"] == want["runs"] == 3
        assert close(d["train_accuracy"], want["train_accuracy"]) and close(d["test_accuracy"], want["test_accuracy"])
        assert close(d["test_accuracy_std"], want["test_accuracy_std"])
        assert close(d["test_error"], 1 - want["test_accuracy"])
        assert close(d["epochs_to_fit"], want["fit99"]) and d["runs_fit"] == want["fit99_runs"]
        assert close(d["epochs_to_fit_100"], want["fit100"]) and d["runs_fit_100"] == want["fit100_runs"]
        curves = d["curves"]
        assert curves["epoch"] == list(range(6))
        assert all(close(a, b) for a, b in zip(curves["train_accuracy_mean"], want["train_mean"]))
        assert all(close(a, b, 1e-6) for a, b in zip(curves["train_accuracy_std"], want["train_std"]))
        assert all(close(a, b) for a, b in zip(curves["test_loss_mean"], want["test_loss_mean"]))
    clean, noisy = (level.to_dict() for level in levels)
    # what a randomization test looks like even after five epochs: test accuracy near chance at
    # p = 1, far above it at p = 0, and the clean runs ahead on the labels they saw
    assert clean["test_accuracy"] > 0.8 and noisy["test_accuracy"] < 0.25
    assert clean["train_accuracy"] > noisy["train_accuracy"]


@settings(max_examples=12, deadline=None)
@given(block_size=st.integers(1, 7), seed=st.integers(0, 10_000))
def test_block_size_and_run_order_do_not_change_the_results(trained, block_size, seed):
    reference = [level.to_dict() for level in fit_curves(trained)]
    order = np.random.default_rng(seed).permutation(trained.select("ok"))
    shuffled = [level.to_dict() for level in fit_curves(trained, runs=order, block_size=block_size)]
    assert len(shuffled) == len(reference)
    for a, b in zip(shuffled, reference):
        assert a.keys() == b.keys()
        for key in a:
            if key == "curves":
                for name in a[key]:
                    assert all(close(x, y, 1e-9) for x, y in zip(a[key][name], b[key][name])), name
            elif isinstance(a[key], float):
                assert close(a[key], b[key], 1e-9), key
            else:
                assert a[key] == b[key], key


def test_level_sums_of_two_halves_merge_into_the_whole():
    rng = np.random.default_rng(0)
    metrics = rng.random((9, 4, 4)).astype(np.float32)
    metrics[2, 0] = np.nan
    metrics[:, 3, 1] = [1.0, 0.2, 0.995, 1.0, 0.3, 0.99, 0.5, 1.0, 0.1]
    summary = rng.random((9, 6)).astype(np.float32)
    whole, first, second = LevelSums(3), LevelSums(3), LevelSums(3)
    whole.add(metrics, summary)
    first.add(metrics[:4], summary[:4])
    second.add(metrics[4:], summary[4:])
    merged = first.merge(second)
    for name in ("runs", "count", "total", "total_sq", "final", "final_sq", "final_count", "fit_runs", "fit_total", "fit_max"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12, err_msg=name)


def test_epochs_to_fit_counts_rows_and_never_is_nan():
    acc = np.array(
        [
            [np.nan, 0.5, 0.99, 1.0],
            [np.nan, 0.98999, 0.9899, 0.5],
            [1.0, 1.0, 1.0, 1.0],
            [np.nan, np.nan, np.nan, np.nan],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(epochs_to_fit(acc, 0.99), [2, np.nan, 0, np.nan])
    np.testing.assert_array_equal(epochs_to_fit(acc, 1.0), [3, np.nan, 0, np.nan])


# ---------------------------------------------------------------------- stores written by hand


def planned_store(tmp_path: Path, population: str, epochs: int = 5):
    text = f"""
name = "by-hand"
[data]
dataset = "digits"
[model]
kind = "mlp"
widths = [8]
[training]
epochs = {epochs}
[population]
{population}
[record]
logits = []
metrics = true
train_metrics = "eval"
"""
    (tmp_path / "recipe.toml").write_text(text)
    return manyruns.plan(tmp_path / "recipe.toml", tmp_path / "store")


def write_run(pop, r: int, train_acc: list[float], test_acc: float = 0.5, status: str = "ok", final_train: float | None = None) -> None:
    n = pop.layout["n_train"]
    metrics = np.full((len(train_acc), 4), np.nan, dtype=np.float32)
    metrics[:, 1] = train_acc
    metrics[1:, 0] = 1.0
    metrics[1:, 2] = 2.0
    metrics[1:, 3] = test_acc
    last = train_acc[-1] if final_train is None else final_train
    summary = np.array([last, np.nan, test_acc, 0.1, 2.0, 1.0], dtype=np.float32)
    pop.store.write_run(RunRecord(r, status, np.ones(n, bool), pop.targets("train"), summary, metrics))


def test_epochs_to_fit_edge_cases(tmp_path):
    pop = planned_store(tmp_path, "runs = 6\nlabel_noise = { p = [0.0, 0.5, 1.0] }")
    nan = float("nan")
    # p = 0 (runs 0, 3): 99% at epochs 2 and 3, 100% at 4 and 3
    write_run(pop, 0, [nan, 0.5, 0.99, 0.995, 1.0, 1.0], test_acc=0.9)
    write_run(pop, 3, [nan, 0.9, 0.98, 1.0, 1.0, 1.0], test_acc=0.8)
    # p = 0.5 (runs 1, 4): run 1 reaches 99% at epoch 5 but never 100%; run 4 never reaches 99%
    write_run(pop, 1, [nan, 0.2, 0.4, 0.6, 0.8, 0.999], test_acc=0.5)
    write_run(pop, 4, [nan, 0.2, 0.4, 0.6, 0.8, 0.9899], test_acc=0.4)
    # p = 1 (runs 2, 5): run 2 diverged (left out of 'ok'), run 5 fits at epoch 1
    write_run(pop, 2, [nan] * 6, test_acc=nan, status="diverged")
    write_run(pop, 5, [nan, 1.0, 1.0, 1.0, 1.0, 1.0], test_acc=0.1)
    levels = {level.corruption: level.to_dict() for level in fit_curves(pop)}
    assert list(levels) == ["labels:0.0", "labels:0.5", "labels:1.0"]
    clean, half, full = levels.values()
    assert clean["epochs_to_fit"] == 2.5 and clean["epochs_to_fit_100"] == 3.5 and clean["runs_fit"] == 2
    assert clean["epochs_to_fit_std"] == pytest.approx(statistics.stdev([2, 3]))
    assert clean["test_accuracy"] == pytest.approx(0.85) and clean["test_error"] == pytest.approx(0.15)
    assert half["epochs_to_fit"] is None and half["runs_fit"] == 1
    assert half["epochs_to_fit_100"] is None and half["runs_fit_100"] == 0
    assert full["runs"] == 1 and full["diverged"] == 1 and full["epochs_to_fit"] == 1.0
    assert full["train_accuracy_std"] is None  # one run: no spread
    assert clean["curves"]["train_accuracy_mean"][0] is None  # epoch 0 not recorded
    # 'committed' counts the diverged run too; its all-NaN metrics never fit
    full_committed = [d.to_dict() for d in fit_curves(pop, runs="committed")][2]
    assert full_committed["runs"] == 2 and full_committed["epochs_to_fit"] is None and full_committed["runs_fit"] == 1


def test_input_randomization_levels_are_named_by_their_pixels(tmp_path):
    pop = planned_store(tmp_path, 'runs = 4\ninputs = ["none", "shuffled-pixels", "permuted-pixels", "gaussian"]', epochs=2)
    for r in range(4):
        write_run(pop, r, [float("nan"), 0.5, 0.995])
    levels = [level.to_dict(curves=False) for level in fit_curves(pop)]
    assert [d["corruption"] for d in levels] == ["none", "pixels:shuffled", "pixels:permuted", "pixels:gaussian"]
    assert all(d["label_noise"] is None for d in levels)
    assert [d["inputs"] for d in levels] == ["none", "shuffled-pixels", "permuted-pixels", "gaussian"]
    assert all(d["epochs_to_fit"] == 2 and d["epochs_to_fit_100"] is None for d in levels)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_levels_figure_marks_levels_that_never_fit(tmp_path):
    pop = planned_store(tmp_path, "runs = 4\nlabel_noise = { p = [0.0, 1.0] }", epochs=3)
    nan = float("nan")
    write_run(pop, 0, [nan, 0.9, 1.0, 1.0], test_acc=0.9)
    write_run(pop, 2, [nan, 0.95, 0.995, 1.0], test_acc=0.85)
    write_run(pop, 1, [nan, 0.2, 0.4, 0.6], test_acc=0.1)
    write_run(pop, 3, [nan, 0.2, 0.5, 0.995], test_acc=0.12)
    path = plot_fit_levels(fit_curves(pop), tmp_path / "figures" / "levels.png")
    assert path == tmp_path / "figures" / "levels.png"
    width, height = png_size(path)
    assert 800 <= width <= 2000 and 300 <= height <= 1200 and path.stat().st_size > 10_000


def test_corruption_labels():
    assert corruption_label(0.6) == "labels:0.6"
    assert corruption_label(1) == "labels:1.0"
    assert corruption_label(None) == "none"
    assert corruption_label(None, "random-pixels") == "pixels:random"
    assert corruption_label(0.2, "shuffled-pixels", subset=0.5) == "subset:0.5+labels:0.2+pixels:shuffled"


def test_a_store_without_runs_or_metrics_is_refused(tmp_path):
    pop = planned_store(tmp_path, "runs = 2\nlabel_noise = 0.5")
    with pytest.raises(ValueError, match="selects no runs"):
        fit_curves(pop)


# ----------------------------------------------------------------------------- gaussian inputs


GAUSSIAN = """
name = "gaussian-tiny"
[data]
dataset = "digits"
normalize = "{normalize}"
[model]
kind = "mlp"
widths = [48]
[optimizer]
name = "sgd"
lr = 0.05
momentum = 0.9
[training]
epochs = 4
batch_size = 32
[population]
runs = 2
seed = 3
subset = 1.0
inputs = ["none", "gaussian"]
[record]
logits = []
metrics = true
train_metrics = "eval"
"""


def test_gaussian_inputs_have_the_training_sets_channel_mean_and_std():
    """On digits: real-valued draws whose per-channel mean and std are the training images'
    within sampling error (5 standard errors), in train and test images alike."""
    digits = load_dataset("digits")
    recipe = Recipe.from_toml(GAUSSIAN.format(normalize="standard"))
    mean, std = digits.channel_stats()
    for images in realize_inputs(recipe, "gaussian", digits):
        assert images.dtype == np.float32 and images.shape[1:] == digits.x_train.shape[1:]
        values = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1).astype(np.float64)
        m = values.shape[1]
        np.testing.assert_array_less(np.abs(values.mean(axis=1) - mean), 5 * std / np.sqrt(m))
        np.testing.assert_array_less(np.abs(values.std(axis=1) - std), 5 * std / np.sqrt(2 * m))
        assert values.min() < 0 and values.max() > 255  # not clipped to the pixel range


@pytest.mark.parametrize("normalize", ["unit", "symmetric", "standard"])
def test_gaussian_inputs_through_each_normalization(normalize):
    """'unit' and 'symmetric' rescale the draws like pixels (unclipped); 'standard' uses the
    statistics of the drawn training images: mean 0 and std 1 per channel."""
    digits = load_dataset("digits")
    recipe = Recipe.from_toml(GAUSSIAN.format(normalize=normalize))
    mean, std = digits.channel_stats()
    x = prepare(digits, recipe, "gaussian", torch.device("cpu")).x_train.double()
    got_mean, got_std = x.mean().item(), x.std().item()
    if normalize == "standard":
        assert got_mean == pytest.approx(0, abs=1e-4) and got_std == pytest.approx(1, abs=1e-4)
    else:
        factor, shift = (255.0, 0.0) if normalize == "unit" else (127.5, 1.0)
        n = x.numel()
        assert abs(got_mean - (mean[0] / factor - shift)) < 5 * std[0] / factor / np.sqrt(n)
        assert got_std == pytest.approx(std[0] / factor, rel=0.02)
        assert x.min().item() < -shift


def test_a_recipe_with_gaussian_inputs_trains_end_to_end(tmp_path):
    (tmp_path / "recipe.toml").write_text(GAUSSIAN.format(normalize="standard"))
    manyruns.plan(tmp_path / "recipe.toml", tmp_path / "store")
    manyruns.train(tmp_path / "store", executor="serial", progress=False)
    pop = manyruns.open(tmp_path / "store")
    assert list(pop.runs["status"]) == ["ok", "ok"]
    levels = {level.corruption: level.to_dict() for level in fit_curves(pop)}
    assert list(levels) == ["none", "pixels:gaussian"]
    gaussian = levels["pixels:gaussian"]
    curve = gaussian["curves"]["train_accuracy_mean"]
    assert all(v is not None and math.isfinite(v) for v in curve[1:])
    assert curve[-1] > max(0.25, curve[1])  # 1,438 random images: memorization under way after 4 epochs
    assert gaussian["test_accuracy"] < 0.25  # nothing to learn about the test set


# ------------------------------------------------------------------------------------ CLI


def test_cli_fit_curves_json_table_plot_and_store(trained, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["fit-curves", str(trained.path), "--json", "--plot", str(tmp_path / "curves.png")])
    assert out.exit_code == 0, out.output
    levels = json.loads(out.stdout)["levels"]
    assert [d["corruption"] for d in levels] == ["labels:0.0", "labels:1.0"]
    for d in levels:
        for key in ("corruption", "label_noise", "runs", "train_accuracy", "test_accuracy", "epochs_to_fit", "test_error"):
            assert key in d
        assert 0 <= d["train_accuracy"] <= 1 and 0 <= d["test_accuracy"] <= 1
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = png_size(tmp_path / "curves-levels.png")
    assert 800 <= width <= 2000 and 300 <= height <= 1200 and (tmp_path / "curves-levels.png").stat().st_size > 10_000
    saved = manyruns.open(trained.path).store.group["analysis/fit_curves"]
    assert [d["corruption"] for d in saved.attrs["levels"]] == ["labels:0.0", "labels:1.0"]
    assert saved["curve_mean"].shape == (2, 6, 4)

    out = runner.invoke(app, ["fit-curves", str(trained.path)])
    assert out.exit_code == 0, out.output
    assert "epochs to 99%" in out.stdout and "labels:1.0" in out.stdout and "reports/fit-curves.png" in out.stdout
    assert "reports/fit-curves-levels.png" in out.stdout and (trained.path / "reports" / "fit-curves-levels.png").is_file()

    out = runner.invoke(app, ["fit-curves", str(tmp_path / "missing")])
    assert out.exit_code == 2 and out.stderr.startswith("error: no population store")


# ------------------------------------------------------------------------- example recipes


RANDOMIZATION_EXAMPLES = [
    "random-labels-digits.toml",
    "random-labels-mnist-mlp.toml",
    "random-inputs-mnist-mlp.toml",
    "cifar10-wrn-28-1.toml",
    "cifar10-wrn-28-1-random-inputs.toml",
    "cifar10-mlp-random-labels.toml",
]


@pytest.mark.parametrize("name", RANDOMIZATION_EXAMPLES)
def test_example_recipes_validate_and_record_eval_metrics(name):
    recipe = Recipe.load(EXAMPLES / name)
    assert recipe.record.metrics and recipe.record.train_metrics == "eval"
    assert recipe.data.augment.flip is False and recipe.data.augment.crop == 0
    if recipe.population.label_noise is not None:
        assert recipe.population.label_noise.scope == "dataset"


def test_published_settings_in_the_cifar10_examples():
    from manyruns.models.architectures import count_parameters, create_model

    wrn = Recipe.load(EXAMPLES / "cifar10-wrn-28-1.toml")
    assert (wrn.model.kind, wrn.model.depth, wrn.model.width) == ("wrn", 28, 1)
    assert (wrn.optimizer.name, wrn.optimizer.lr, wrn.optimizer.momentum, wrn.optimizer.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert wrn.training.batch_size == 128 and wrn.training.epochs == 300
    assert (wrn.schedule.kind, wrn.schedule.milestones, wrn.schedule.gamma) == ("step", [150, 225], 0.1)
    assert count_parameters(create_model(wrn.model, (3, 32, 32), 10, 0)) == 369_498  # as in the published log
    mlp = Recipe.load(EXAMPLES / "cifar10-mlp-random-labels.toml")
    assert mlp.model.widths == [512] and mlp.optimizer.lr == 0.01 and mlp.population.noise_levels == [1.0]
    digits = Recipe.load(EXAMPLES / "random-labels-digits.toml")
    levels = digits.population.noise_levels
    assert digits.data.dataset == "digits" and {0.0, 1.0} <= set(levels)
    assert digits.population.runs >= 2 * len(levels)


@pytest.mark.parametrize("p", ["1.5", "-0.1", "[0.0, 1.2]"])
def test_label_noise_outside_the_unit_interval_is_refused(tmp_path, p):
    text = f'[data]\ndataset = "digits"\n[population]\nlabel_noise = {{ p = {p} }}\n'
    with pytest.raises(RecipeError, match=r"field 'population.label_noise.p': label noise probability must lie in \[0, 1\], got"):
        Recipe.from_toml(text)
    (tmp_path / "bad.toml").write_text(text)
    out = CliRunner().invoke(app, ["plan", str(tmp_path / "bad.toml"), str(tmp_path / "store")])
    assert out.exit_code == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "must lie in [0, 1]" in out.stderr and not (tmp_path / "store").exists()
