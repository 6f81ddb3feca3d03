"""The engine: population forms agree, runs are independent of their group, divergence is recorded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manyruns.data import load_dataset
from manyruns.models.architectures import create_model
from manyruns.models.population import LoopPopulation, StackedMLP, VmapPopulation
from manyruns.plan import plan_runs, realize_labels, realize_mask, run_seeds
from manyruns.recipe import Recipe
from manyruns.training.data import prepare
from manyruns.training.engine import RunJob, train_group

BASE = {
    "data": {"dataset": "digits", "normalize": "unit"},
    "model": {"kind": "mlp", "widths": [32, 16]},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    "training": {"epochs": 2, "batch_size": 50},
    "population": {"runs": 4, "seed": 3, "subset": 0.5},
    "record": {"weights": [0, 2], "true_prob": True},
}


def recipe_with(**sections) -> Recipe:
    data = {k: dict(v) for k, v in BASE.items()}
    for key, value in sections.items():
        replace = key == "model" and "kind" in value  # another architecture: start afresh
        data[key] = dict(value) if replace else {**data.get(key, {}), **value}
    return Recipe.from_dict(data)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def jobs_for(recipe: Recipe, dataset, runs) -> list[RunJob]:
    plans = plan_runs(recipe)
    return [
        RunJob(
            p.index,
            realize_mask(recipe, p, dataset.n_train),
            realize_labels(recipe, p, dataset.y_train, dataset.num_classes),
            run_seeds(recipe, p.index),
        )
        for p in (plans[r] for r in runs)
    ]


def train(recipe, dataset, runs, strategy="auto", **kw):
    data = prepare(dataset, recipe, "none", torch.device("cpu"))
    return train_group(recipe, jobs_for(recipe, dataset, runs), data, "cpu", strategy, **kw)


def test_stacked_and_loop_forms_agree(digits):
    recipe = recipe_with()
    stacked = train(recipe, digits, [0, 1, 2], "stacked")
    loop = train(recipe, digits, [0, 1, 2], "loop")
    for a, b in zip(stacked, loop):
        assert a.index == b.index
        np.testing.assert_allclose(a.weights[0], b.weights[0], rtol=0, atol=0)  # same initialization
        np.testing.assert_allclose(a.weights[2], b.weights[2], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.logits_test.astype(np.float32), b.logits_test.astype(np.float32), rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(a.metrics, b.metrics, rtol=1e-4, atol=1e-5)


def test_population_forms_compute_the_same_function():
    """Forward passes of the three forms on the same networks match the networks themselves."""
    recipe = recipe_with(model={"kind": "small-cnn", "channels": 4})
    models = [create_model(recipe.model, (1, 16, 16), 10, seed) for seed in range(3)]
    x = torch.randn(3, 5, 1, 16, 16)
    expected = torch.stack([m(x[g]) for g, m in enumerate(models)])
    torch.testing.assert_close(LoopPopulation(models)(x), expected)
    torch.testing.assert_close(VmapPopulation(models)(x), expected, rtol=1e-5, atol=1e-6)
    mlps = [create_model(recipe_with().model, (1, 8, 8), 10, seed) for seed in range(3)]
    x = torch.randn(3, 5, 1, 8, 8)
    expected = torch.stack([m(x[g]) for g, m in enumerate(mlps)])
    torch.testing.assert_close(StackedMLP(mlps)(x), expected, rtol=1e-5, atol=1e-6)
    for form in (LoopPopulation(mlps), StackedMLP(mlps)):
        flat = form.flat_weights()
        assert flat.shape == (3, sum(p.numel() for p in mlps[0].parameters()))
        torch.testing.assert_close(flat[1], torch.cat([p.detach().reshape(-1) for p in mlps[1].parameters()]))


@pytest.mark.parametrize(
    "strategy,extra",
    [
        ("stacked", {}),
        ("loop", {}),
        ("stacked", {"optimizer": {"name": "adam", "lr": 1e-3}}),
        ("stacked", {"training": {"precision": "bfloat16"}}),
    ],
)
def test_run_results_do_not_depend_on_the_group(digits, strategy, extra):
    # 719 training examples in batches of 50 end on a batch of 19, and the 359 test images are
    # odd too: with 10 classes, runs at odd and even positions of a group then sit on different
    # alignments unless the engine evens them out.
    recipe = recipe_with(**extra)
    grouped = train(recipe, digits, [0, 1, 2, 3], strategy)
    for position, rec in enumerate(grouped):
        alone = train(recipe, digits, [rec.index], strategy)[0]
        assert np.array_equal(alone.logits_test, rec.logits_test), position
        assert np.array_equal(alone.logits_train, rec.logits_train), position
        assert np.array_equal(alone.weights[2], rec.weights[2]), position
        assert np.array_equal(alone.metrics, rec.metrics, equal_nan=True), position


def test_auto_form_keeps_runs_independent_of_the_group(digits):
    from manyruns.training.engine import resolve_strategy

    cpu = torch.device("cpu")
    assert resolve_strategy(recipe_with(), cpu, "auto", (1, 8, 8), 10) == "stacked"
    misaligned = recipe_with(model={"kind": "mlp", "widths": [25]})  # 25 x 10 weights per run
    assert resolve_strategy(misaligned, cpu, "auto", (1, 8, 8), 10) == "loop"
    assert resolve_strategy(misaligned, cpu, "stacked", (1, 8, 8), 10) == "stacked"
    grouped = train(misaligned, digits, [0, 1, 2])
    for rec in grouped:
        assert np.array_equal(train(misaligned, digits, [rec.index])[0].logits_test, rec.logits_test)


def test_bfloat16_products_train_like_float32(digits):
    recipe = recipe_with(training={"epochs": 10})
    full = train(recipe, digits, [0, 1])
    low = train(recipe_with(training={"epochs": 10, "precision": "bfloat16"}), digits, [0, 1])
    for a, b in zip(full, low):
        np.testing.assert_array_equal(a.weights[0], b.weights[0])  # same start, float32 master weights
        assert b.status == "ok" and b.weights[2].dtype == np.float32
        assert abs(a.summary[2] - b.summary[2]) < 0.05  # test accuracy close
        assert not np.array_equal(a.logits_test, b.logits_test)  # but not the same numbers


def test_dropout_masks_belong_to_the_run(digits):
    recipe = recipe_with(model={"dropout": 0.3})
    alone = train(recipe, digits, [1], "stacked")[0]
    grouped = train(recipe, digits, [0, 1], "stacked")[1]
    assert np.array_equal(alone.weights[2], grouped.weights[2])
    loop = train(recipe, digits, [1], "loop")[0]
    np.testing.assert_allclose(alone.weights[2], loop.weights[2], rtol=1e-4, atol=1e-5)
    no_dropout = train(recipe_with(), digits, [1], "stacked")[0]
    assert not np.allclose(alone.weights[2], no_dropout.weights[2])


def test_runs_differ_and_records_are_consistent(digits):
    recipe = recipe_with()
    recs = train(recipe, digits, [0, 1])
    a, b = recs
    assert not np.array_equal(a.weights[0], b.weights[0])  # own initialization
    assert not np.array_equal(a.mask, b.mask)  # own subset
    assert a.mask.sum() == round(0.5 * digits.n_train)
    for rec in recs:
        assert rec.status == "ok"
        assert rec.logits_train.shape == (digits.n_train, 10) and rec.logits_test.shape == (digits.n_test, 10)
        # summary test accuracy equals the accuracy of the stored test logits
        acc = (rec.logits_test.astype(np.float32).argmax(1) == digits.y_test).mean()
        assert rec.summary[2] == pytest.approx(acc, abs=1e-6)
        heldout = ~rec.mask
        assert rec.summary[1] == pytest.approx((rec.logits_train[heldout].astype(np.float32).argmax(1) == rec.labels[heldout]).mean(), abs=1e-6)
        # true-class probabilities exist exactly where the run trained
        tp = rec.true_prob
        assert tp.shape == (2, digits.n_train)
        assert np.isfinite(tp[:, rec.mask]).all() and np.isnan(tp[:, ~rec.mask]).all()
        assert ((tp[:, rec.mask] >= 0) & (tp[:, rec.mask] <= 1)).all()
        assert rec.metrics.shape == (3, 4) and np.isfinite(rec.metrics).all()  # row 0: at initialization


def test_training_learns(digits):
    recipe = recipe_with(training={"epochs": 15}, record={"weights": []})
    rec = train(recipe, digits, [0])[0]
    assert rec.summary[0] > 0.9 and rec.summary[2] > 0.8
    assert np.isnan(rec.metrics[0]).all()  # nothing asked for at initialization
    assert rec.metrics[-1, 0] < rec.metrics[1, 0]  # train loss went down


def test_divergence_is_recorded_not_raised(digits):
    recipe = recipe_with(optimizer={"lr": 1e6, "momentum": 0.0})
    recs = train(recipe, digits, [0, 1])
    assert [r.status for r in recs] == ["diverged", "diverged"]
    assert all(r.weights[2].shape == recs[0].weights[0].shape for r in recs)


def test_eval_train_metrics_match_final_logits(digits):
    recipe = recipe_with(record={"train_metrics": "eval"})
    rec = train(recipe, digits, [0])[0]
    # the last epoch's evaluated train accuracy is the accuracy of the final logits on the subset
    assert rec.metrics[-1, 1] == pytest.approx(rec.summary[0], abs=1e-6)
    assert rec.metrics[-1, 3] == pytest.approx(rec.summary[2], abs=1e-6)


def test_augmentation_and_cnn_train(digits):
    recipe = recipe_with(
        model={"kind": "small-cnn", "channels": 8, "layers": 2},
        data={"augment": {"flip": True, "crop": 1}},
        record={"weights": [], "true_prob": False},
    )
    alone = train(recipe, digits, [1], "loop")[0]
    grouped = train(recipe, digits, [0, 1], "loop")[1]
    assert alone.status == "ok"
    assert np.array_equal(alone.logits_test, grouped.logits_test)


def test_initial_metrics_and_features_match_an_independent_forward_pass(digits):
    recipe = recipe_with(record={"features": 1, "initial_metrics": True, "weights": [2]})
    data = prepare(digits, recipe, "none", torch.device("cpu"))
    first, second = train_group(recipe, jobs_for(recipe, digits, [0, 1]), data, "cpu", "stacked")
    # row 0: the untrained network of run 0, evaluated here with plain PyTorch
    net = create_model(recipe.model, data.input_shape, 10, run_seeds(recipe, 0).init).eval()
    with torch.no_grad():
        logits = net(data.x_test)
    acc = (logits.argmax(1) == data.y_test).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, data.y_test).item()
    assert first.metrics[0, 3] == pytest.approx(acc, abs=1e-6) and first.metrics[0, 2] == pytest.approx(loss, rel=1e-4)
    # penultimate features of the trained run 0, from its stored final weights
    flat = torch.from_numpy(first.weights[2])
    start = 0
    for p in net.parameters():
        p.data.copy_(flat[start : start + p.numel()].view_as(p))
        start += p.numel()
    with torch.no_grad():
        expected = net.features(data.x_test).numpy()
        expected_logits = net(data.x_test).numpy()
    assert first.features_test.shape == (digits.n_test, 16) and first.features_train.shape == (digits.n_train, 16)
    np.testing.assert_allclose(first.features_test.astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(first.logits_test.astype(np.float32), expected_logits, rtol=1e-2, atol=1e-2)
    assert second.features_train is None  # only the first `features` runs keep them


def test_dataset_batches_follow_their_definition(digits):
    """``training.batches = "dataset"``: each epoch one shuffle of the whole training set is cut
    into batches of batch_size / subset examples, and a run steps on its members of each batch,
    their summed loss over batch_size. Checked against that loop written out in plain PyTorch,
    so nothing of the examples a run leaves out reaches it; runs sharing a seed take the same
    batches, and on one subset they train alike."""
    from manyruns.recipe import RecipeError
    from manyruns.seeding import generator

    recipe = recipe_with(training={"batches": "dataset", "batch_size": 40}, population={"shared_seed": True, "subset": 0.5})
    data = prepare(digits, recipe, "none", torch.device("cpu"))
    jobs = jobs_for(recipe, digits, [0, 1])
    records = train_group(recipe, jobs, data, "cpu", "stacked")
    n_train = digits.n_train
    step_size = round(40 * n_train / int(jobs[0].mask.sum()))
    for job, rec in zip(jobs, records):
        net = create_model(recipe.model, data.input_shape, 10, job.seeds.init)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        order_rng = generator(job.seeds.order)
        y = torch.from_numpy(job.labels)
        for _ in range(2):
            perm = order_rng.permutation(n_train)
            for start in range(0, n_train, step_size):
                chunk = perm[start : start + step_size]
                members = torch.from_numpy(chunk[job.mask[chunk]])
                loss = torch.nn.functional.cross_entropy(net(data.x_train[members]), y[members], reduction="sum") / 40
                opt.zero_grad()
                loss.backward()
                opt.step()
        flat = torch.cat([p.detach().flatten() for p in net.parameters()]).numpy()
        np.testing.assert_allclose(rec.weights[2], flat, rtol=1e-4, atol=1e-5)
    assert not np.array_equal(jobs[0].mask, jobs[1].mask) and np.array_equal(records[0].weights[0], records[1].weights[0])
    # members only in the training metrics and the true-class probabilities
    assert np.isnan(records[0].true_prob[:, ~jobs[0].mask]).all() and np.isfinite(records[0].true_prob[:, jobs[0].mask]).all()
    with pytest.raises(RecipeError, match="training.batches"):
        recipe_with(model={"kind": "resnet"}, training={"batches": "dataset"})
