"""Recipe validation: every error names the field (and the allowed values where there is a set)."""

from __future__ import annotations

import pytest

from manyruns.recipe import Recipe, RecipeError

from .conftest import tiny_recipe


def error_for(text: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        Recipe.from_toml(text, source="r.toml")
    return info.value


def test_examples_are_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
    assert {p.name for p in examples} >= {"demo.toml", "mnist-memorization.toml"}
    for path in examples:
        Recipe.load(path)


def test_memorization_example_is_the_published_setting():
    from pathlib import Path

    r = Recipe.load(Path(__file__).parent.parent / "examples" / "mnist-memorization.toml")
    assert (r.data.dataset, r.model.kind, r.model.widths) == ("mnist", "mlp", [512, 256])
    assert (r.optimizer.name, r.optimizer.lr, r.optimizer.momentum) == ("sgd", 0.1, 0.9)
    assert (r.training.batch_size, r.training.epochs, r.population.subset, r.population.runs) == (128, 10, 0.7, 2000)


def test_defaults_fill_every_section():
    r = Recipe.from_toml(tiny_recipe())
    assert r.schedule.kind == "constant" and r.training.label_smoothing == 0.0
    assert r.population.label_noise is None and r.population.input_levels == ["none"]
    assert r.num_cells == 1


@pytest.mark.parametrize(
    "patch,field,words",
    [
        (('name = "sgd"', 'name = "sdg"'), "optimizer.name", ["'sgd'", "'adam'", "'rmsprop'"]),
        (('dataset = "digits"', 'dataset = "imagenet"'), "data.dataset", ["'mnist'", "'cifar10'"]),
        (('kind = "mlp"', 'kind = "transformer"'), "model", ["'mlp'", "'small-cnn'", "'wrn'"]),
        (("lr = 0.1", "lr = -1"), "optimizer.lr", ["greater than 0"]),
        (("epochs = 3", "epochs = 0"), "training.epochs", ["greater than or equal to 1"]),
        (("subset = 0.5", "subset = 1.5"), "population.subset", ["(0, 1]"]),
        (("widths = [32]", "widths = [32]\nwidht = 3"), "model.widht", ["unknown field", "widths"]),
        (("batch_size = 64", 'batch_size = "big"'), "training.batch_size", ["integer"]),
        (("weights = [0, 3]", "weights = [0, 30]"), "record.weights", ["epoch 30", "training.epochs is 3"]),
        (("[training]", '[schedule]\nkind = "step"\nmilestones = [9]\n[training]'), "schedule.milestones", ["epoch 9"]),
        (("subset = 0.5", 'subset = 0.5\ninputs = "noise"'), "population.inputs", ["'shuffled-pixels'", "'gaussian'", "'noise'"]),
        (("subset = 0.5", 'subset = 0.5\ninputs = ["none", "noise"]'), "population.inputs", ["'random-pixels'"]),
        (('normalize = "unit"', 'normalize = "unit"\naugment = {flip = "yes"}'), "data.augment.flip", ["boolean"]),
    ],
)
def test_invalid_fields_are_named(patch, field, words):
    err = error_for(tiny_recipe().replace(*patch))
    message = str(err)
    assert message.startswith("r.toml: ")
    assert "\n" not in message
    if field:
        assert err.field == field and f"'{field}'" in message
    for w in words:
        assert w in message, message


def test_label_noise_forms_and_bounds():
    r = Recipe.from_toml(tiny_recipe(extra="").replace("subset = 0.5", "subset = 0.5\nlabel_noise = 0.2"))
    assert r.population.noise_levels == [0.2] and r.population.label_noise.scope == "dataset"
    r = Recipe.from_toml(tiny_recipe().replace("subset = 0.5", 'subset = 0.5\nlabel_noise = {p = [0, 0.5, 1.0], scope = "run"}'))
    assert r.population.noise_levels == [0.0, 0.5, 1.0] and r.num_cells == 3
    err = error_for(tiny_recipe().replace("subset = 0.5", "subset = 0.5\nlabel_noise = 1.2"))
    assert err.field == "population.label_noise.p" and "[0, 1]" in str(err)
    err = error_for(tiny_recipe().replace("subset = 0.5", "subset = 0.5\nlabel_noise = {p = true}"))
    assert err.field == "population.label_noise.p" and "number" in str(err)
    err = error_for(tiny_recipe().replace("subset = 0.5", 'subset = 0.5\nlabel_noise = {p = 0.1, scope = "global"}'))
    assert err.field == "population.label_noise.scope" and "'dataset'" in str(err) and "'run'" in str(err)


def test_sweep_validation():
    base = tiny_recipe()
    ok = Recipe.from_toml(base + '[population.sweep]\n"optimizer.lr" = {log_uniform = [1e-3, 1e-1]}\n"model.activation" = {choice = ["relu", "tanh"]}\n')
    assert set(ok.population.sweep) == {"optimizer.lr", "model.activation"}
    err = error_for(base + '[population.sweep]\n"optimizer.learning_rate" = {uniform = [0.1, 0.2]}\n')
    assert err.field == "population.sweep.optimizer.learning_rate" and "lr" in str(err)
    err = error_for(base + '[population.sweep]\n"model.activation" = {choice = ["relu", "swish"]}\n')
    assert "swish" in str(err) and "model.activation" in str(err)
    err = error_for(base + '[population.sweep]\n"optimizer.lr" = {log_uniform = [0, 0.1]}\n')
    assert err.field.startswith("population.sweep")
    err = error_for(base + '[population.sweep]\n"record.weights" = {choice = [[1]]}\n')
    assert "section" in str(err)
    err = error_for(base + '[population.sweep]\n"optimizer.lr" = {normal = [0.1, 0.2]}\n')
    assert err.field == "population.sweep.optimizer.lr" and "log_uniform" in str(err) and "required" not in str(err)


@pytest.mark.parametrize("key,value,words", [
    ("training.epochs", "{choice = [1, 2]}", ["metrics", "one value"]),
    ("data.dataset", '{choice = ["digits", "mnist"]}', ["fingerprint"]),
])
def test_fields_that_fix_the_store_layout_cannot_be_swept(key, value, words):
    err = error_for(tiny_recipe() + f'[population.sweep]\n"{key}" = {value}\n')
    assert err.field == f"population.sweep.{key}"
    for w in words:
        assert w in str(err)


def test_fields_a_run_resolves_for_itself_can_be_swept():
    r = Recipe.from_toml(tiny_recipe() + '[population.sweep]\n"data.normalize" = {choice = ["unit", "standard"]}\n"training.batch_size" = {choice = [32, 64]}\n')
    assert set(r.population.sweep) == {"data.normalize", "training.batch_size"}


def test_model_kind_defaults_to_mlp():
    r = Recipe.from_toml(tiny_recipe().replace('kind = "mlp"\n', ""))
    assert r.model.kind == "mlp" and r.model.widths == [32]


def test_other_checks():
    err = error_for(tiny_recipe().replace('kind = "mlp"\nwidths = [32]', 'kind = "wrn"\ndepth = 27'))
    assert err.field == "model.depth" and "6n+4" in str(err)
    err = error_for(tiny_recipe().replace("momentum = 0.9", "momentum = 0.0\nnesterov = true"))
    assert "nesterov" in str(err)
    err = error_for("not toml = = 1")
    assert "not valid TOML" in str(err)
