"""Shared fixtures: tiny recipes and stores on disk, trained for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Single-threaded kernels: results then do not depend on how runs are grouped.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_RECIPE = """
name = "tiny"
[data]
dataset = "digits"
normalize = "unit"
[model]
kind = "mlp"
widths = [32]
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
[training]
epochs = 3
batch_size = 64
[population]
runs = {runs}
seed = 7
subset = {subset}
[record]
logits = ["train", "test"]
metrics = true
weights = [0, 3]
"""


def tiny_recipe(runs: int = 6, subset: str = "0.5", extra: str = "") -> str:
    return TINY_RECIPE.format(runs=runs, subset=subset) + extra


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str, name: str = "recipe.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


from .s3server import s3  # noqa: E402,F401 - the S3 server fixture, shared by the store, cluster and damage tests


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """`manyruns demo --json`, run once for the session: the store's path and the summary."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "manyruns.cli", "demo", "--out", str(out), "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """A command run in this process, as fast as its work (no interpreter and torch to start):
    for the analysis commands, whose output and exit code are what a test checks. An exception
    other than the exit raises here, so a traceback fails the test. Commands whose process
    matters (signals, workers, the environment) run as real processes in their tests."""
    from typer.testing import CliRunner

    from manyruns.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def as_in_a_terminal() -> None:
    """``preexec_fn`` of a command that a test interrupts: Ctrl-C's default action, as in a
    terminal's foreground job. A test run started in the background by a shell without job
    control inherits SIGINT ignored, and so would every command it starts."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
