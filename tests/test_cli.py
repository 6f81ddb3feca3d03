"""The command line: exit codes, one-line errors, JSON output, the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

import manyruns

from .conftest import cli_here, tiny_recipe

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=full_env, timeout=600)


def test_invalid_recipe_exits_2_naming_the_field(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(tiny_recipe().replace('name = "sgd"', 'name = "sdg"'))
    result = run("plan", str(recipe), str(tmp_path / "s"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer.name" in lines[0] and "'adam'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_recipes_the_dataset_or_sweep_cannot_serve_exit_2_at_plan(tmp_path):
    too_small = tmp_path / "cnn.toml"
    too_small.write_text(tiny_recipe().replace('kind = "mlp"\nwidths = [32]', 'kind = "small-cnn"'))
    result = run("plan", str(too_small), str(tmp_path / "a"))
    assert result.returncode == 2 and "model.layers" in result.stderr and "8x8" in result.stderr
    widths = tmp_path / "widths.toml"
    widths.write_text(tiny_recipe(runs=16).replace("weights = [0, 3]", "weights = []\nfeatures = 2") + '[population.sweep]\n"model.widths" = {choice = [[16], [32]]}\n')
    result = run("plan", str(widths), str(tmp_path / "b"))
    assert result.returncode == 2 and "record.features" in result.stderr and "[16, 32]" in result.stderr
    for store in ("a", "b"):
        assert not (tmp_path / store).exists()


def test_missing_dataset_names_files_and_env(tmp_path):
    recipe = tmp_path / "mnist.toml"
    recipe.write_text(tiny_recipe().replace('dataset = "digits"', 'dataset = "mnist"'))
    env = {k: v for k, v in os.environ.items() if k != "MANYRUNS_DATA"}
    result = subprocess.run([sys.executable, "-m", "manyruns.cli", "plan", str(recipe), str(tmp_path / "s")], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "MANYRUNS_DATA" in result.stderr and "train-images-idx3-ubyte.gz" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("plan", str(recipe), str(tmp_path / "s"), "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and str(tmp_path / "nowhere" / "mnist") in result.stderr


def test_unknown_store_is_a_clear_message(tmp_path):
    for command in (["status"], ["train"]):
        result = run(*command, str(tmp_path / "missing"))
        assert result.returncode == 2
        assert "no population store" in result.stderr and "manyruns plan" in result.stderr
        assert "Traceback" not in result.stderr


def test_plan_train_status_json_and_log_epochs(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(runs=3))
    store = tmp_path / "s"
    assert "planned 3 runs" in cli_here("plan", str(recipe), str(store)).stdout
    assert "nothing changed" in cli_here("plan", str(recipe), str(store)).stdout
    result = run("train", str(store), "--workers", "1", "--log-epochs", "--quiet")
    assert result.returncode == 0, result.stderr
    lines = [l for l in result.stdout.splitlines() if l.startswith("run ")]
    assert len(lines) == 3 * (3 + 1)  # one line per epoch per run, and epoch 000 (weights at 0 are kept)
    pattern = re.compile(r"run +\d+ (\d{3}): Acc-tr: +[\d.]+, Acc-val: +[\d.]+, L-tr: [\d.]+, L-val: [\d.]+")
    assert all(pattern.fullmatch(l) for l in lines), lines[:2]
    assert "trained 3 runs" in result.stdout
    info = json.loads(cli_here("status", str(store), "--json").stdout)
    assert (info["planned"], info["committed"], info["failed"]) == (3, 3, 0)
    pop = manyruns.open(store)
    assert info["mean_test_acc"] == np.mean(pop.runs.test_acc.to_numpy(dtype=float)).item() or abs(info["mean_test_acc"] - pop.runs.test_acc.mean()) < 1e-9
    human = cli_here("status", str(store)).stdout
    assert "3 planned, 3 committed" in human and "test accuracy" in human


def test_demo_and_its_recipe_make_the_same_population(tmp_path, demo):
    out, summary = demo
    assert summary["runs"] >= 64
    assert 0.85 < summary["mean_accuracy"] < 1.0 and summary["ensemble_accuracy"] >= summary["mean_accuracy"] - 0.01
    assert summary["seconds"] < 240
    assert summary["report"] == str(out / "report" / "index.html") and Path(summary["report"]).is_file()
    assert 0.85 < summary["knn_accuracy"] <= 1.0
    mem = summary["memorization"]
    assert mem["run_count"] == summary["runs"] and mem["examples"] == 1438
    stored = manyruns.open(out).store.group["analysis/memorization/estimate"][:]
    assert [t["index"] for t in mem["top"]][0] == int(np.nanargmax(stored))
    assert mem["top"][0]["mem"] == float(np.nanmax(stored))
    assert json.loads(run("status", str(out), "--json").stdout)["committed"] == summary["runs"]
    # `plan` + `train` of examples/demo.toml reproduces the demo's population exactly
    again = tmp_path / "again"
    assert run("plan", str(EXAMPLES / "demo.toml"), str(again)).returncode == 0
    assert run("train", str(again), "--quiet", "--max-runs", "16").returncode == 0  # the first 16 suffice
    a, b = manyruns.open(out), manyruns.open(again)
    for name in ("logits/test", "logits/train", "mask/train", "metrics"):
        assert np.array_equal(a.load(name, "0-15"), b.load(name, "0-15"), equal_nan=True), name
