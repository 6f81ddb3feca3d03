"""The memory check made before any run is claimed: its estimate against a measured peak, and
the refusal of a recipe that cannot fit (exit 2, nothing claimed)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import manyruns
from manyruns.cli import app
from manyruns.models.architectures import count_parameters, create_model
from manyruns.recipe import Recipe
from manyruns.analysis.interpolation.memory import available_memory
from manyruns.training.footprint import activation_bytes, check_fits, estimate_bytes

CNN_RECIPE = """
name = "cnn"
[data]
dataset = "cifar10"
[model]
kind = "fast-cnn"
stem = 16
widths = [32, 64, 128]
[training]
epochs = 1
batch_size = {batch}
[population]
runs = 1
"""


def _saved_bytes_on_real_tensors(recipe: Recipe, batch: int) -> tuple[int, int]:
    """The bytes autograd keeps for the backward pass of one real training step on ``batch``
    random images: distinct storages of the saved tensors (parameters excluded), and the
    largest of them, counted on real CPU tensors."""
    import torch

    model = create_model(recipe.model, (3, 32, 32), 10, 0).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(batch, 3, 32, 32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (batch,)))
    loss.backward()
    return sum(storages.values()), max(storages.values())


def test_activation_estimate_matches_the_tensors_a_real_step_saves():
    recipe = Recipe.from_toml(CNN_RECIPE.format(batch=64))
    A, M, P = activation_bytes(recipe, (3, 32, 32), 10)
    assert 0 < M < A and P == count_parameters(create_model(recipe.model, (3, 32, 32), 10, 0))
    saved, largest = _saved_bytes_on_real_tensors(recipe, 64)
    # the shape-only count agrees with the storages a real step keeps (up to the few
    # per-batch statistics that do not grow with the batch)
    assert abs(64 * A - saved) < 0.05 * saved, (64 * A, saved)
    assert abs(64 * M - largest) < 0.05 * largest, (64 * M, largest)


def test_bfloat16_saves_smaller_activations():
    f32 = Recipe.from_toml(CNN_RECIPE.format(batch=256))
    bf16 = Recipe.from_toml(CNN_RECIPE.format(batch=256).replace("epochs = 1", 'epochs = 1\nprecision = "bfloat16"'))
    assert activation_bytes(bf16, (3, 32, 32), 10)[0] < 0.75 * activation_bytes(f32, (3, 32, 32), 10)[0]


def test_estimate_grows_with_the_group_and_the_share_shrinks_with_workers():
    recipe = Recipe.from_toml(CNN_RECIPE.format(batch=256))
    layout = {"n_train": 50000, "n_test": 10000, "num_classes": 10, "input_shape": [3, 32, 32]}
    one, four = (estimate_bytes(recipe, layout, g, "loop") for g in (1, 4))
    assert four > one > (50000 + 10000) * 3072 * 4
    check_fits(recipe, layout, "cpu", 1, 1, "loop")  # fits on any machine that runs the suite
    free = available_memory()
    workers = int(2 * free // one) + 1
    with pytest.raises(ValueError, match=r"training\.batch_size.*GiB per worker on cpu.*for \d+ workers"):
        check_fits(recipe, layout, "cpu", workers, 1, "loop")


def test_train_refuses_a_batch_that_cannot_fit_before_claiming_anything(tmp_path, write_recipe):
    free = available_memory()
    # an MLP on digits wide enough that its full-batch activations need twice the free memory
    recipe = Recipe.from_toml(
        'name = "wide"\n[data]\ndataset = "digits"\n[model]\nkind = "mlp"\nwidths = [1000]\n'
        "[training]\nepochs = 1\nbatch_size = 100000\n[population]\nruns = 2\n"
    )
    per_unit = activation_bytes(recipe, (1, 8, 8), 10)[0] / 1000
    width = int(2 * free / (1438 * per_unit)) + 1
    path = write_recipe(
        'name = "wide"\n[data]\ndataset = "digits"\n[model]\nkind = "mlp"\n'
        f"widths = [{width}]\n[training]\nepochs = 1\nbatch_size = 100000\n[population]\nruns = 2\n"
    )
    store = tmp_path / "s"
    manyruns.plan(path, store)
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(store), "--workers", "1"])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "training.batch_size" in line and "GiB per worker on cpu" in line and "lower training.batch_size" in line
    status = json.loads(runner.invoke(app, ["status", str(store), "--json"]).stdout)
    assert status["committed"] == 0 and status["failed"] == 0 and status["running"] == 0
    assert not (store / "claims").exists() or not any((store / "claims").iterdir())


def test_dataset_batches_are_estimated_at_their_size():
    """With ``training.batches = "dataset"`` a step passes batch_size / subset examples: the
    estimate is that of a recipe whose batches have that size."""
    base = {"data": {"dataset": "mnist"}, "model": {"kind": "mlp", "widths": [256]}, "training": {"batch_size": 1024}, "population": {"subset": 0.25}}
    layout = {"n_train": 60000, "n_test": 10000, "num_classes": 10, "input_shape": [1, 28, 28]}

    def estimate(training):
        data = {**base, "training": {**base["training"], **training}}
        return estimate_bytes(Recipe.from_dict(data), layout, 8, "loop")

    assert estimate({"batches": "dataset"}) == estimate({"batch_size": 4096}) > estimate({})
