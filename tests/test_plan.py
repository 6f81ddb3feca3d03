"""Per-run plans and randomness: independent streams per run and purpose, balanced conditions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from manyruns.data import load_dataset
from manyruns.plan import cells, group_key, plan_runs, plans_from_columns, plans_to_columns, realize_inputs, realize_labels, realize_mask, run_seeds
from manyruns.recipe import Recipe

from .conftest import tiny_recipe


def recipe(extra_population: str = "", runs: int = 12, subset: str = "0.5", sweep: str = "") -> Recipe:
    text = tiny_recipe(runs=runs, subset=subset).replace("[record]", extra_population + "\n[record]")
    return Recipe.from_toml(text + sweep)


def test_plans_are_deterministic_and_round_trip():
    r = recipe(sweep='[population.sweep]\n"optimizer.lr" = {log_uniform = [1e-3, 1e-1]}\n')
    a, b = plan_runs(r), plan_runs(r)
    assert a == b
    assert plans_from_columns(plans_to_columns(a)) == a
    assert len({p.seed for p in a}) == len(a)


def test_conditions_are_round_robin_and_balanced():
    r = recipe('label_noise = [0.0, 0.5]\ninputs = ["none", "shuffled-pixels"]', runs=17, subset="[0.25, 0.75]")
    grid = cells(r)
    assert len(grid) == 8
    plans = plan_runs(r)
    assert [p.cell for p in plans] == [i % 8 for i in range(17)]
    for p in plans:
        assert (p.subset, p.label_noise, p.inputs) == grid[p.cell]
    # a grown population keeps the first runs' plans
    assert plan_runs(r, 0, 10) == plans[:10]


def test_subsets_are_independent_across_ratios_not_nested():
    """The same run index at two ratios draws two independent subsets (not a prefix of one list)."""
    n = 2000
    small = recipe(subset="0.1")
    large = recipe(subset="0.2")
    overlaps = []
    for p_small, p_large in zip(plan_runs(small), plan_runs(large)):
        m1 = realize_mask(small, p_small, n)
        m2 = realize_mask(large, p_large, n)
        assert m1.sum() == 200 and m2.sum() == 400
        overlaps.append((m1 & m2).sum() / m1.sum())
    # nested subsets would give overlap 1.0; independent ones about 0.2
    assert 0.1 < np.mean(overlaps) < 0.3


def test_masks_differ_between_runs_and_purposes_are_separate():
    r = recipe()
    plans = plan_runs(r)
    masks = [realize_mask(r, p, 1000) for p in plans]
    assert len({m.tobytes() for m in masks}) == len(masks)
    seeds = run_seeds(r, 0)
    assert seeds.init != seeds.dropout
    assert not np.array_equal(np.random.default_rng(seeds.order).random(5), np.random.default_rng(seeds.augment).random(5))


def test_label_noise_scopes():
    digits = load_dataset("digits")
    y, c = digits.y_train, digits.num_classes
    shared = recipe("label_noise = {p = [0.0, 0.4], scope = \"dataset\"}", runs=6)
    plans = plan_runs(shared)
    noisy = [realize_labels(shared, p, y, c) for p in plans if p.label_noise == 0.4]
    clean = [realize_labels(shared, p, y, c) for p in plans if p.label_noise == 0.0]
    assert all(np.array_equal(noisy[0], other) for other in noisy[1:])
    assert all(np.array_equal(lab, y) for lab in clean)
    changed = (noisy[0] != y).mean()
    assert abs(changed - 0.4 * 0.9) < 0.06  # p * (C-1)/C of the labels actually change
    per_run = recipe("label_noise = {p = 0.4, scope = \"run\", exclude_true = true}", runs=3)
    labels = [realize_labels(per_run, p, y, c) for p in plan_runs(per_run)]
    assert not np.array_equal(labels[0], labels[1])
    assert abs((labels[0] != y).mean() - 0.4) < 0.06


def test_shuffled_pixels_use_one_permutation_for_train_and_test():
    digits = load_dataset("digits")
    r = recipe('inputs = "shuffled-pixels"')
    xtr, xte = realize_inputs(r, "shuffled-pixels", digits)
    assert xtr.shape == digits.x_train.shape and xte.shape == digits.x_test.shape
    # recover the permutation from a probe: pixel j of the output comes from pixel perm[j]
    flat_in = digits.x_train.reshape(len(xtr), -1).astype(np.int64)
    flat_out = xtr.reshape(len(xtr), -1).astype(np.int64)
    perm = [int(np.flatnonzero((flat_in == flat_out[:, [j]]).all(0))[0]) for j in range(flat_out.shape[1]) if flat_out[:, j].std() > 0]
    assert len(set(perm)) == len(perm)
    test_in = digits.x_test.reshape(len(xte), -1)
    test_out = xte.reshape(len(xte), -1)
    varying = [j for j in range(flat_out.shape[1]) if flat_out[:, j].std() > 0]
    assert all(np.array_equal(test_out[:, j], test_in[:, p]) for j, p in zip(varying, perm))


def test_group_keys_separate_what_cannot_batch():
    r = recipe("label_noise = [0.0, 0.5]", runs=4, sweep='[population.sweep]\n"optimizer.lr" = {choice = [0.1, 0.01]}\n')
    plans = plan_runs(r)
    keys = [group_key(r, p) for p in plans]
    for p, k in zip(plans, keys):
        for q, k2 in zip(plans, keys):
            assert (k == k2) == (p.sweep == q.sweep)  # noise level may differ within a group


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), runs=st.integers(1, 40))
def test_sweep_draws_lie_in_range_and_keys_are_independent(seed, runs):
    base = tiny_recipe(runs=runs).replace("seed = 7", f"seed = {seed}")
    one = Recipe.from_toml(base + '[population.sweep]\n"optimizer.lr" = {log_uniform = [1e-4, 1e-1]}\n')
    two = Recipe.from_toml(base + '[population.sweep]\n"optimizer.lr" = {log_uniform = [1e-4, 1e-1]}\n"model.dropout" = {uniform = [0.0, 0.5]}\n')
    for a, b in zip(plan_runs(one), plan_runs(two)):
        assert 1e-4 <= a.sweep["optimizer.lr"] <= 1e-1
        assert 0.0 <= b.sweep["model.dropout"] <= 0.5
        assert a.sweep["optimizer.lr"] == b.sweep["optimizer.lr"]  # adding a key changes no other key


def test_log_uniform_is_uniform_in_log_space():
    r = recipe(runs=4000, sweep='[population.sweep]\n"optimizer.lr" = {log_uniform = [1e-4, 1e-0]}\n')
    logs = np.log10([p.sweep["optimizer.lr"] for p in plan_runs(r)])
    assert abs(logs.mean() - (-2.0)) < 0.1
    assert abs((logs < -3).mean() - 0.25) < 0.03


def test_folds_hold_every_example_out_exactly_once_per_block():
    r = recipe("folds = 5", runs=10, subset="1.0")
    plans = plan_runs(r)
    assert {p.subset for p in plans} == {0.8}
    masks = np.array([realize_mask(r, p, 1003) for p in plans])  # 1003: folds of 200 and 201
    for block in (masks[:5], masks[5:]):
        assert ((~block).sum(0) == 1).all()  # held out by exactly one run of the block
        assert set((~block).sum(1)) <= {200, 201}
    assert not np.array_equal(masks[0], masks[5])  # a fresh partition for the next block
    # runs of one fold (same size) may share a group; runs of different folds never do
    keys = [group_key(r, p) for p in plans]
    assert keys[0] == keys[5] and len(set(keys[:5])) == 5


def test_folds_and_subset_are_exclusive():
    import pytest

    from manyruns.recipe import RecipeError

    with pytest.raises(RecipeError, match="folds or population.subset"):
        recipe("folds = 5", subset="0.5")
    with pytest.raises(RecipeError, match="folds"):
        recipe("folds = 1", subset="1.0")


def test_class_conditional_noise_follows_its_matrix():
    import pytest

    from manyruns.data.transforms import corrupt_labels_by_matrix
    from manyruns.recipe import RecipeError

    m = np.array([[0.7, 0.3, 0.0], [0.0, 1.0, 0.0], [0.1, 0.1, 0.8]])
    y = np.repeat(np.arange(3), 40000)
    noisy = corrupt_labels_by_matrix(y, 1.0, m, np.random.default_rng(0))
    observed = np.array([[np.mean(noisy[y == i] == j) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(observed, m, atol=0.01)
    half = corrupt_labels_by_matrix(y, 0.5, m, np.random.default_rng(1))
    assert abs(np.mean(half[y == 0] != 0) - 0.15) < 0.01
    digits = load_dataset("digits")
    ten = np.eye(10) * 0.8 + np.roll(np.eye(10), 1, axis=1) * 0.2  # each class to the next with 20%
    rows = ", ".join("[" + ", ".join(f"{x:g}" for x in row) + "]" for row in ten)
    r = recipe(f"label_noise = {{p = 1.0, matrix = [{rows}]}}")
    labels = realize_labels(r, plan_runs(r)[0], digits.y_train, 10)
    changed = labels != digits.y_train
    assert abs(changed.mean() - 0.2) < 0.04 and np.array_equal(labels[changed], (digits.y_train[changed] + 1) % 10)
    with pytest.raises(RecipeError, match="row 1 must hold probabilities summing to 1"):
        recipe("label_noise = {p = 1.0, matrix = [[1.0, 0.0], [0.5, 0.4]]}")
    with pytest.raises(RecipeError, match="must be square"):
        recipe("label_noise = {p = 1.0, matrix = [[1.0, 0.0]]}")


def test_plan_refuses_a_noise_matrix_of_the_wrong_size(tmp_path):
    import pytest

    import manyruns
    from manyruns.recipe import RecipeError

    path = tmp_path / "r.toml"
    path.write_text(tiny_recipe(runs=2).replace("[record]", "label_noise = {p = 1.0, matrix = [[1.0, 0.0], [0.0, 1.0]]}\n[record]"))
    with pytest.raises(RecipeError, match="label_noise.matrix': has 2 rows, and digits has 10 classes"):
        manyruns.plan(path, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_seeds_per_subset_share_subset_and_condition_not_seed():
    r = recipe("seeds_per_subset = 3", runs=12, subset="[0.25, 0.75]")
    plans = plan_runs(r)
    masks = np.array([realize_mask(r, p, 500) for p in plans])
    for b in range(4):
        block = slice(3 * b, 3 * b + 3)
        assert (masks[block] == masks[3 * b]).all()  # one subset per block
        assert len({p.cell for p in plans[block]}) == 1 and len({p.seed for p in plans[block]}) == 3
    assert len({masks[3 * b].tobytes() for b in range(4)}) == 4  # blocks differ
    assert [p.cell for p in plans] == [(i // 3) % 2 for i in range(12)]
    # one seed per subset keeps the plans and masks it always had
    one = recipe("seeds_per_subset = 1", runs=12, subset="[0.25, 0.75]")
    base = recipe(runs=12, subset="[0.25, 0.75]")
    assert plan_runs(one) == plan_runs(base)
    assert all(np.array_equal(realize_mask(one, p, 500), realize_mask(base, p, 500)) for p in plan_runs(base))


def test_shared_seed_varies_only_the_subset(tmp_path):
    """Runs of a shared seed draw init, order, dropout and augmentation from run 0's streams:
    on one subset they train to the same network; on random subsets their masks are the ones
    a recipe without the option draws."""
    import pytest

    import manyruns
    from manyruns.recipe import RecipeError

    shared, base = recipe("shared_seed = true", runs=6), recipe(runs=6)
    assert len({p.seed for p in plan_runs(shared)}) == 1 and len({p.seed for p in plan_runs(base)}) == 6

    def drawn(s):  # what the engine draws from a run's seeds
        return s.init, s.dropout, tuple(s.order.generate_state(2)), tuple(s.augment.generate_state(2))

    assert {drawn(run_seeds(shared, i)) for i in range(6)} == {drawn(run_seeds(base, 0))}
    assert all(np.array_equal(realize_mask(shared, p, 500), realize_mask(base, p, 500)) for p in plan_runs(base))
    with pytest.raises(RecipeError, match="shared_seed or population.seeds_per_subset"):
        recipe("shared_seed = true\nseeds_per_subset = 2")

    logits = {}
    for name, extra in (("shared", "shared_seed = true"), ("own", "")):
        path = tmp_path / f"{name}.toml"
        path.write_text(tiny_recipe(runs=2, subset="1.0").replace("[record]", extra + "\n[record]"))
        manyruns.plan(path, tmp_path / name)
        manyruns.train(tmp_path / name, executor="serial", progress=False)
        logits[name] = manyruns.open(tmp_path / name).read("logits/test", np.arange(2))
    assert np.array_equal(logits["shared"][0], logits["shared"][1])  # one seed, one subset: one network
    assert not np.allclose(logits["own"][0], logits["own"][1])
