"""Held-out statistics: memorization, influence and C-scores against dense loop-based
implementations, invariance to block size and run order, edge cases, a real trained population
and the commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import manyruns
from manyruns.analysis.heldout import cscore, learning_speed_proxy
from manyruns.analysis.heldout import MembershipSums, NoHeldoutRunsError, memorization, spearman, values_from_logits
from manyruns.streaming import split_halves
from manyruns.analysis.heldout import MaskedProduct, influence
from manyruns.analysis.heldout.influence_products import exact_binary_precision
from manyruns.streaming import topk as topk_by_value_then_index
from manyruns.report.heldout import extremes_grid, extremes_per_class, influence_grid, influence_rows

from .conftest import cli_here, tiny_recipe
from .heldout_helpers import (
    array_store,
    check_topk,
    dense_cscore,
    dense_influence,
    dense_influence_matrix,
    dense_learning_speed,
    dense_memorization,
    dense_pair_stability,
    random_heldout,
    values_dense,
)



cli = cli_here  # the analysis commands, in this process


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A store of 40 runs with random masks (ratios 0.3 and 0.7) and random correctness, 37
    training and 23 test examples; example 0 is never held out, example 1 never trained on."""
    rng = np.random.default_rng(5)
    ratio, mask, ctr, cte, ytr, yte = random_heldout(rng, 40, 37, 23, ratios=(0.3, 0.7))
    pop = array_store(tmp_path_factory.mktemp("syn") / "s", mask, ytr, yte, ratio, ctr, cte)
    return pop, dict(ratio=ratio, mask=mask, ctr=ctr, cte=cte, ytr=ytr, yte=yte)


# ----------------------------------------------------------------------------- memorization


def test_memorization_matches_dense_with_edge_cases(synthetic):
    pop, a = synthetic
    result = memorization(pop, block_size=7)
    est, se = dense_memorization(a["mask"], a["ctr"])
    np.testing.assert_allclose(result.estimate, est, atol=1e-12)
    np.testing.assert_allclose(result.se, se, atol=1e-12)
    assert np.array_equal(result.n_in, a["mask"].sum(0)) and np.array_equal(result.n_out, (~a["mask"]).sum(0))
    # never held out / never trained on: NaN, counted
    assert np.isnan(result.estimate[0]) and result.n_out[0] == 0
    assert np.isnan(result.estimate[1]) and result.n_in[1] == 0
    assert result.never_held_out == 1 and result.never_included == 1
    summary = result.summary()
    assert summary["never_held_out"] == 1 and summary["estimated"] == 35
    table = result.table()
    assert list(table.columns[:6]) == ["index", "label", "mem", "se", "n_in", "n_out"]
    assert np.array_equal(table["label"], a["ytr"])


@pytest.mark.parametrize("kind", ["correct", "trueprob", "margin"])
def test_values_from_logits_and_memorization_variants(tmp_path, kind):
    rng = np.random.default_rng(1)
    R, N, T, C = 12, 15, 9, 4
    mask = rng.random((R, N)) < 0.5
    logits_train = rng.normal(size=(R, N, C)).astype(np.float16)
    logits_test = rng.normal(size=(R, T, C)).astype(np.float16)
    ytr, yte = rng.integers(0, C, N), rng.integers(0, C, T)
    seen = np.where(rng.random((R, N)) < 0.2, rng.integers(0, C, (R, N)), ytr)  # run-scope noisy labels
    pop = array_store(tmp_path / "s", mask, ytr, yte, np.full(R, 0.5), logits_train=logits_train, logits_test=logits_test, labels_train=seen)
    values = values_dense(logits_train, seen, kind)
    np.testing.assert_allclose(values_from_logits(logits_train, seen, kind), values, rtol=1e-5, atol=1e-5)
    result = memorization(pop, value=kind, block_size=5)
    est, se = dense_memorization(mask, values)
    np.testing.assert_allclose(result.estimate, est, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.se, se, rtol=1e-4, atol=1e-5)
    # runs disagree on some labels: reported as -1, the dataset's labels kept beside
    disagree = (seen != seen[0]).any(0)
    assert np.array_equal(result.label == -1, disagree) and np.array_equal(result.dataset_label, ytr)


def test_store_with_only_full_set_runs_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    R, N, T = 6, 10, 5
    mask = np.ones((R, N), dtype=bool)
    ctr, cte = rng.random((R, N)) < 0.8, rng.random((R, T)) < 0.8
    pop = array_store(tmp_path / "s", mask, rng.integers(0, 3, N), rng.integers(0, 3, T), np.ones(R), ctr, cte)
    for fn in (memorization, influence, cscore):
        with pytest.raises(NoHeldoutRunsError, match="full training set"):
            fn(pop)
    res = cli("memorization", str(tmp_path / "s"))
    assert res.returncode == 2
    assert "full training set" in res.stderr and "nan" not in res.stdout.lower()


def test_diverged_runs_are_left_out(tmp_path):
    rng = np.random.default_rng(2)
    ratio, mask, ctr, cte, ytr, yte = random_heldout(rng, 20, 12, 6)
    status = np.ones(20, dtype=np.int8)
    status[[3, 11]] = 2
    pop = array_store(tmp_path / "s", mask, ytr, yte, ratio, ctr, cte, status=status)
    ok = status == 1
    est, _ = dense_memorization(mask[ok], ctr[ok])
    result = memorization(pop)
    assert result.run_count == 18
    np.testing.assert_allclose(result.estimate, est, atol=1e-12)


# ----------------------------------------------------------------------------- influence


def test_influence_matches_dense(synthetic, tmp_path):
    pop, a = synthetic
    k = 5
    # a tiny memory budget forces several column blocks (passes over the runs)
    result = influence(pop, top=k, infl_threshold=0.1, mem_threshold=0.05, block_size=9, memory_gib=(4 * 23 * 10) / 2**30, dense=tmp_path / "m.npy")
    assert result.details["column_width"] < 37
    est, se = dense_influence(a["mask"], a["cte"])
    check_topk(result.top_index, result.top_value, est, k)
    valid = result.top_index >= 0
    rows = np.nonzero(valid)[0]
    np.testing.assert_allclose(result.top_se[valid], se[rows, result.top_index[valid]], atol=1e-6)
    assert np.array_equal(result.top_n_in[valid], a["mask"].sum(0)[result.top_index[valid]])
    # pairs: exactly the entries above both thresholds with equal labels
    mem, _ = dense_memorization(a["mask"], a["ctr"])
    j, i = np.nonzero((est >= 0.1 - 1e-6) & (mem[None, :] >= 0.05) & (a["yte"][:, None] == a["ytr"][None, :]))
    expected = set(zip(i.tolist(), j.tolist()))
    got = set(zip(result.pairs.train_index.tolist(), result.pairs.test_index.tolist()))
    assert got == expected and len(expected) > 10
    p = result.pairs
    np.testing.assert_allclose(p.infl, est[p.test_index, p.train_index], atol=1e-6)
    np.testing.assert_allclose(p.se, se[p.test_index, p.train_index], atol=1e-6)
    np.testing.assert_allclose(p["mem"], mem[p.train_index], atol=1e-12)
    # the dense matrix, NaN for the never-held-out and never-trained examples
    matrix = np.load(tmp_path / "m.npy")
    np.testing.assert_allclose(matrix, est, atol=1e-6)
    assert np.isnan(matrix[:, :2]).all()


def test_small_tiles_and_the_dense_matrix_in_the_store(synthetic, tmp_path, monkeypatch):
    import manyruns.analysis.heldout.influence_finish as module

    pop, a = synthetic
    base = influence(pop, top=4, mem_threshold=0.0, dense=tmp_path / "m.npy")
    monkeypatch.setattr(module, "FINISH_TILE_ELEMENTS", 30)  # 2-3 rows per tile
    monkeypatch.setattr(module, "DENSE_ROWS", 7)  # several row groups
    tiled = influence(pop, top=4, mem_threshold=0.0, dense="store", memory_gib=(20 * (4 * 23 + 4 * 23)) / 2**30)
    assert tiled.details["passes"] == 2
    assert np.array_equal(tiled.top_index, base.top_index) and np.array_equal(tiled.top_value, base.top_value, equal_nan=True)
    pd.testing.assert_frame_equal(tiled.pairs, base.pairs)
    tiled.save(pop)
    stored = manyruns.open(pop.path).store.group["analysis/influence"]
    assert np.array_equal(stored["matrix"][:], np.load(tmp_path / "m.npy"), equal_nan=True)
    assert np.array_equal(stored["top_index"][:], base.top_index)
    assert stored.attrs["params"]["top"] == 4


def test_constant_test_rows_and_the_pair_limit(synthetic):
    pop, a = synthetic
    result = influence(pop, top=3, memory_gib=(10 * (4 * 23 + 4 * 23)) / 2**30)
    # test examples 0 and 1 do not vary: influence 0 on the lowest estimable training examples
    assert result.details["varying_test_rows"] == 21 and result.details["passes"] > 1
    assert np.array_equal(result.top_index[:2], [[2, 3, 4], [2, 3, 4]]) and (result.top_value[:2] == 0).all()
    assert (result.top_se[:2] == 0).all()
    # a threshold of 0 lets the constant rows' zeros through
    result = influence(pop, top=3, infl_threshold=0.0, mem_threshold=None, same_label=False)
    assert result.details["varying_test_rows"] == 23
    est, _ = dense_influence(a["mask"], a["cte"])
    assert result.details["pairs_found"] == len(result.pairs) == int((est >= 0).sum())
    capped = influence(pop, top=3, infl_threshold=0.0, mem_threshold=None, same_label=False, max_pairs=50)
    assert capped.details["pairs_found"] == len(result.pairs) and capped.details["pairs_truncated"] and len(capped.pairs) == 50
    assert np.sort(capped.pairs.infl.to_numpy())[::-1] == pytest.approx(np.sort(result.pairs.infl.to_numpy())[::-1][:50])


def test_influence_precisions_agree_exactly(synthetic):
    pop, _ = synthetic
    a = influence(pop, precision="int8", top=4, stability_rows=8)
    assert a.details["precision"] == "int8"
    # auto: for 0/1 values the faster exact product on this CPU, measured once
    assert influence(pop, top=1).details["precision"] == exact_binary_precision() in ("int8", "float32")
    for precision in ("bfloat16", "float32"):
        b = influence(pop, precision=precision, top=4, stability_rows=8)
        assert np.array_equal(a.top_index, b.top_index)
        assert np.array_equal(a.top_value, b.top_value, equal_nan=True)
        pd.testing.assert_frame_equal(a.pairs, b.pairs)


def test_influence_of_margin_values(tmp_path):
    rng = np.random.default_rng(3)
    R, N, T, C = 16, 11, 7, 3
    mask = rng.random((R, N)) < 0.5
    lt, lte = rng.normal(size=(R, N, C)).astype(np.float16), rng.normal(size=(R, T, C)).astype(np.float16)
    ytr, yte = rng.integers(0, C, N), rng.integers(0, C, T)
    pop = array_store(tmp_path / "s", mask, ytr, yte, np.full(R, 0.5), logits_train=lt, logits_test=lte)
    result = influence(pop, value="margin", top=3, infl_threshold=0.3, mem_threshold=-10)
    assert result.details["precision"] == "float32"
    est, se = dense_influence(mask, values_dense(lte, yte, "margin"))
    check_topk(result.top_index, result.top_value, est, 3)
    valid = result.top_index >= 0
    np.testing.assert_allclose(result.top_se[valid], se[np.nonzero(valid)[0], result.top_index[valid]], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="float32"):
        influence(pop, value="margin", precision="bfloat16")


@pytest.mark.parametrize("precision", ["int8", "bfloat16", "float32"])
def test_masked_products_are_exact_beyond_256_runs(precision):
    rng = np.random.default_rng(4)
    values = rng.random((700, 50)) < 0.9
    mask = rng.random((700, 300)) < 0.8
    product = MaskedProduct(50, 300, precision, row_tile=16, col_tile=64)
    product.add(values[:600], mask[:600])
    product.add(values[600:], mask[600:])
    exact = values.T.astype(np.int64) @ mask.astype(np.int64)
    assert product.sums.dtype == torch.float32
    assert np.array_equal(product.sums.numpy().astype(np.int64), exact)
    assert exact.max() > 256  # one bfloat16 product over all runs would round these
    with pytest.raises(RuntimeError):
        product.add(values, mask)


def test_topk_ties_go_to_the_lower_index():
    x = torch.tensor([[0.5, 0.2, 0.5, 0.5, -float("inf")], [1.0, 1.0, 1.0, 1.0, 1.0]])
    value, where = topk_by_value_then_index(x, 2)
    assert sorted(where[0].tolist()) == [0, 2] and sorted(where[1].tolist()) == [0, 1]


def planted_population(R: int = 40, N: int = 30, T: int = 20):
    """Runs at ratio 0.5 (exactly half of the training set each) where train example ``p`` and
    test example ``p`` form a pair of their own class for ``p < 8``: the train example is right
    exactly when trained on (memorization 1) and the test example exactly when the train
    example is in the subset, except for ``p = 5, 6, 7`` in the odd runs (the second half),
    where the test example is always right. Every other example is always right (class 8)."""
    rng = np.random.default_rng(11)
    mask = np.zeros((R, N), dtype=bool)
    for r in range(R):
        mask[r, rng.choice(N, N // 2, replace=False)] = True
    ctr, cte = np.ones((R, N), dtype=bool), np.ones((R, T), dtype=bool)
    ytr, yte = np.full(N, 8), np.full(T, 8)
    for p in range(8):
        ctr[:, p] = mask[:, p]
        cte[:, p] = mask[:, p]
        ytr[p] = yte[p] = p
    cte[1::2, 5:8] = True
    return mask, ctr, cte, ytr, yte


def test_pair_split_half_on_planted_pairs(tmp_path):
    mask, ctr, cte, ytr, yte = planted_population()
    pop = array_store(tmp_path / "s", mask, ytr, yte, np.full(40, 0.5), ctr, cte)
    result = influence(pop, top=3, memory_gib=(4 * 20 * 2 * 7) / 2**30)  # several column blocks
    assert result.details["passes"] > 1
    assert set(zip(result.pairs.train_index, result.pairs.test_index)) == {(p, p) for p in range(8)}
    s = result.pair_stability
    # the first half (even runs) finds all 8, the second only the 5 that hold in every run
    assert s.runs == (20, 20) and s.pairs == (8, 5) and s.both == 5 and not s.truncated
    assert s.agreement == pytest.approx(2 * 5 / 13)
    d = result.summary()["pair_stability"]
    assert d["a_found_by_b"] == pytest.approx(5 / 8) and d["b_found_by_a"] == 1.0 and d["pair_agreement"] == pytest.approx(10 / 13)
    # all planted test rows' top-1 is their train example in the halves that see the pair
    assert np.array_equal(result.top_index[:8, 0], np.arange(8))


def test_pair_split_half_matches_the_halves_computed_apart(synthetic):
    pop, a = synthetic
    half = split_halves(np.array(pop.runs.cell), np.arange(40))
    for same_label, width in ((True, 37), (False, 6)):
        result = influence(pop, top=4, infl_threshold=0.1, mem_threshold=0.05, same_label=same_label, memory_gib=(4 * 23 * 2 * width) / 2**30)
        ref = dense_pair_stability(a["mask"], a["ctr"], a["cte"], half, a["ytr"], a["yte"], 4, 0.1, 0.05, same_label)
        s = result.pair_stability
        both = len(ref["pairs"][0] & ref["pairs"][1])
        assert s.pairs == (len(ref["pairs"][0]), len(ref["pairs"][1])) and s.both == both >= 1
        assert s.topk_entries == ref["topk_entries"] > 20
        assert s.topk_spearman == pytest.approx(ref["topk_spearman"], abs=1e-12)
        assert s.topk_rows.size == result.details["topk_stability_rows"] == int(np.sum((a["cte"].sum(0) > 0) & (a["cte"].sum(0) < 40)))


def test_pair_split_half_compares_the_top_influencers_of_a_sample_of_test_examples(synthetic):
    pop, a = synthetic
    half = split_halves(np.array(pop.runs.cell), np.arange(40))
    full = influence(pop, top=4, infl_threshold=0.1, mem_threshold=0.05)
    varying = np.flatnonzero((a["cte"].sum(0) > 0) & (a["cte"].sum(0) < 40))
    sampled = {}
    for seed in (0, 1):
        result = influence(pop, top=4, infl_threshold=0.1, mem_threshold=0.05, memory_gib=(4 * 23 * 2 * 9) / 2**30, topk_stability_rows=7, seed=seed)
        s = result.pair_stability
        rows = s.topk_rows
        assert rows.size == 7 and np.all(np.isin(rows, varying)) and np.all(np.diff(rows) > 0)
        ref = dense_pair_stability(a["mask"], a["ctr"], a["cte"], half, a["ytr"], a["yte"], 4, 0.1, 0.05, rows=rows)
        assert s.topk_entries == ref["topk_entries"] and s.topk_spearman == pytest.approx(ref["topk_spearman"], abs=1e-12)
        # the pairs (and everything outside the halves' top-k) do not depend on the sample
        assert s.pairs == full.pair_stability.pairs and s.both == full.pair_stability.both
        assert np.array_equal(result.top_index, full.top_index)
        sampled[seed] = tuple(rows)
    assert sampled[0] != sampled[1]
    with pytest.raises(ValueError, match="topk_stability_rows"):
        influence(pop, topk_stability_rows=0)


def test_influence_without_split_halves(synthetic):
    pop, _ = synthetic
    split = influence(pop, top=3, mem_threshold=0.0)
    alone = influence(pop, top=3, mem_threshold=0.0, split_half=False)
    assert np.array_equal(alone.top_index, split.top_index) and np.array_equal(alone.top_value, split.top_value, equal_nan=True)
    pd.testing.assert_frame_equal(alone.pairs, split.pairs)
    assert alone.stability is None and alone.pair_stability is None and alone.summary()["pair_stability"] is None
    # the halves' products take twice the accumulator memory: half the columns per pass
    budget = 4 * 23 * 2 * 5
    assert influence(pop, top=3, memory_gib=(budget) / 2**30).details["column_width"] == 5
    assert influence(pop, top=3, memory_gib=(budget) / 2**30, split_half=False).details["column_width"] == 10


def test_max_pairs_any_label_and_their_report(synthetic, tmp_path):
    pop, a = synthetic
    args = ("influence", str(pop.path), "--infl-threshold", "0.05", "--mem-threshold", "-1", "--any-label", "--no-grid")
    res = cli(*args, "--max-pairs", "0")
    assert res.returncode == 2 and "--max-pairs must be at least 1" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(ValueError, match="max_pairs"):
        influence(pop, max_pairs=-3)
    res = cli(*args, "--max-pairs", "5", "--pairs-out", str(tmp_path / "pairs.csv"))
    assert res.returncode == 0, res.stderr
    assert "truncated:" in res.stdout and "--max-pairs 5" in res.stdout and "pairs split-half" in res.stdout
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert len(pairs) == 5 and list(pairs.columns) == ["train_index", "test_index", "infl", "mem", "label", "se", "n_in", "n_out", "train_label", "test_label"]
    assert np.array_equal(pairs.train_label, a["ytr"][pairs.train_index]) and np.array_equal(pairs.test_label, a["yte"][pairs.test_index])
    assert (pairs.train_label != pairs.test_label).any()
    summary = json.loads(cli(*args, "--max-pairs", "5", "--json").stdout)
    assert summary["pairs"] == 5 and summary["pairs_truncated"] and summary["pairs_found"] > 5 and summary["max_pairs"] == 5
    assert summary["pair_stability"]["pairs_truncated"]
    assert {"train_label", "test_label"} <= set(summary["top_pairs"][0])
    # with the label condition the pairs table keeps its published columns
    assert list(influence(pop, top=2, mem_threshold=0.0).pairs.columns) == ["train_index", "test_index", "infl", "mem", "label", "se", "n_in", "n_out"]


def test_influence_grid_random_examples_exclude_the_influencers():
    top_index = np.array([[0, 1, 2, 3], [4, -1, -1, -1]])
    top_value = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, np.nan, np.nan, np.nan]])
    train_labels = np.zeros(6, dtype=int)  # one class of six: four are the first row's influencers
    rows = influence_rows(top_index, top_value, np.array([0, 0]), train_labels, influencers=4, random_same_class=4)
    (j0, shown0, values0, random0), (j1, shown1, _, random1) = rows
    assert (j0, j1) == (0, 1) and shown0.tolist() == [0, 1, 2, 3] and values0.tolist() == [0.9, 0.8, 0.7, 0.6]
    assert sorted(random0.tolist()) == [4, 5]
    assert shown1.tolist() == [4] and random1.size == 4 and 4 not in random1.tolist()


# ----------------------------------------------------------------------------- C-scores


def test_cscore_matches_dense_and_leaves_out_full_set_runs(tmp_path):
    rng = np.random.default_rng(6)
    ratio, mask, ctr, cte, ytr, yte = random_heldout(rng, 45, 30, 4, ratios=(0.2, 0.5, 0.8))
    ratio[-5:] = 1.0
    mask[-5:] = True
    mask[:, 1] = False
    mask[-5:, 1] = True  # example 1: trained on only by the full-set runs
    R, N, E = 45, 30, 3
    trueprob = np.where(mask[:, None, :], rng.random((R, E, N)), np.nan)
    trueprob[3, 1] = np.nan  # an epoch without values: the pooled mean is not the mean of run means
    pop = array_store(tmp_path / "s", mask, ytr, yte, ratio, ctr, cte, trueprob=trueprob)
    result = cscore(pop, block_size=8)
    levels, per, score, se = dense_cscore(mask, ctr, ratio)
    assert np.allclose(result.ratios, levels) and result.excluded_full_runs == 5 and result.ratio_runs.size == 40 and result.run_count == 45
    np.testing.assert_allclose(result.per_ratio, per, atol=1e-12)
    np.testing.assert_allclose(result.cscore, score, atol=1e-12)
    np.testing.assert_allclose(result.se, se, atol=1e-12)
    assert np.isnan(result.cscore[0]) and (result.n_out[:, 0] == 0).all() and result.incomplete >= 1
    # learning speed: the mean of the stored (float16) probabilities while trained on
    stored = trueprob.astype(np.float16).astype(np.float64)
    with np.errstate(invalid="ignore"):
        expected = np.nanmean(stored.transpose(1, 0, 2).reshape(-1, N), 0)
    np.testing.assert_allclose(result.learning_speed, expected, rtol=1e-6)
    mean, se, count, runs = dense_learning_speed(stored)
    speed = learning_speed_proxy(pop)
    np.testing.assert_allclose(speed.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(speed.se, se, rtol=1e-9)
    assert np.array_equal(speed.count, count) and np.array_equal(speed.runs, runs)
    assert np.array_equal(count, np.isfinite(stored).sum((0, 1))) and np.isnan(speed.se[runs < 2]).all()
    table = result.table()
    assert list(table.columns) == [
        "index", "label", "cscore", "se", "0.2", "0.5", "0.8", "learning_speed",
        "n_out_0.2", "n_out_0.5", "n_out_0.8", "learning_speed_se", "learning_speed_count", "learning_speed_runs", "dataset_label",
    ]
    np.testing.assert_allclose(table.learning_speed_se, se, rtol=1e-9)
    assert np.array_equal(table.learning_speed_count, count)
    summary = result.summary()["learning_speed"]
    assert summary["median_se"] == pytest.approx(np.nanmedian(se)) and summary["median_count"] == np.median(count)
    assert summary["never_trained_on"] == int((count == 0).sum())
    without = cscore(pop, learning_speed=False).table()
    assert list(without.columns) == ["index", "label", "cscore", "se", "0.2", "0.5", "0.8", "n_out_0.2", "n_out_0.5", "n_out_0.8", "dataset_label"]


# ----------------------------------------------------------------------------- invariance


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.integers(1, 45), order_seed=st.integers(0, 2**16), width=st.sampled_from([5, 12, 40]))
def test_block_size_run_order_and_column_blocks_do_not_change_results(synthetic, block, order_seed, width):
    pop, a = synthetic
    runs = np.random.default_rng(order_seed).permutation(40)
    base_mem = memorization(pop)
    mem = memorization(pop, runs=runs, block_size=block)
    assert np.array_equal(mem.estimate, base_mem.estimate, equal_nan=True)
    assert np.array_equal(mem.se, base_mem.se, equal_nan=True)
    assert mem.stability.spearman == base_mem.stability.spearman or np.isnan(base_mem.stability.spearman)
    base = influence(pop, top=3, mem_threshold=0.0, stability_rows=5)
    other = influence(pop, runs=runs, top=3, mem_threshold=0.0, block_size=block, memory_gib=(width * (4 * 23 + 4 * 5)) / 2**30, stability_rows=5)
    assert np.array_equal(other.top_index, base.top_index)
    assert np.array_equal(other.top_value, base.top_value, equal_nan=True)
    pd.testing.assert_frame_equal(other.pairs, base.pairs)
    assert other.pair_stability.to_dict() == base.pair_stability.to_dict()
    cs_base, cs = cscore(pop), cscore(pop, runs=runs, block_size=block)
    assert np.array_equal(cs.cscore, cs_base.cscore, equal_nan=True)


@settings(max_examples=30, deadline=None)
@given(R=st.integers(1, 30), N=st.integers(1, 12), split=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_membership_sums_add_up_over_any_split(R, N, split, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((R, N)) < 0.5
    values = rng.normal(size=(R, N)).astype(np.float32)
    whole = MembershipSums.zeros(N)
    whole.add(mask, values)
    parts = MembershipSums.zeros(N), MembershipSums.zeros(N)
    k = min(split, R)
    parts[0].add(mask[:k], values[:k])
    parts[1].add(mask[k:], values[k:])
    joined = parts[0] + parts[1]
    for name in ("n_in", "s_in", "q_in", "n_all", "s_all", "q_all"):
        np.testing.assert_allclose(getattr(joined, name), getattr(whole, name), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(whole.s_in, (values * mask).sum(0), rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 40), levels=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_spearman_matches_scipy_with_ties_and_nans(n, levels, seed):
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    a = rng.integers(0, levels, n).astype(float)
    b = a + rng.integers(0, levels, n)
    a[rng.random(n) < 0.1] = np.nan
    rho, count = spearman(a, b)
    ok = np.isfinite(a) & np.isfinite(b)
    assert count == ok.sum()
    if count >= 3 and np.ptp(a[ok]) > 0 and np.ptp(b[ok]) > 0:
        assert rho == pytest.approx(spearmanr(a[ok], b[ok]).statistic, abs=1e-12)
    else:
        assert np.isnan(rho)


def test_split_halves_balance_cells_and_ignore_order():
    cells = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2])
    runs = np.arange(9)
    half = split_halves(cells, runs)
    for c in (0, 1):
        assert half[cells == c].sum() == 2
    order = np.random.default_rng(0).permutation(9)
    assert np.array_equal(split_halves(cells[order], runs[order]), half[order])


# ----------------------------------------------------------------------------- a trained population


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """24 MLPs on digits, half at 30% and half at 70% subsets, with per-epoch probabilities."""
    root = tmp_path_factory.mktemp("trained")
    recipe = root / "recipe.toml"
    text = tiny_recipe(runs=24, subset="[0.3, 0.7]").replace("epochs = 3", "epochs = 6").replace("weights = [0, 3]", "true_prob = true")
    recipe.write_text(text)
    store = root / "store"
    manyruns.plan(recipe, store)
    manyruns.train(store, executor="serial", progress=False)
    return store


def test_trained_population_matches_dense_estimates(trained):
    pop = manyruns.open(trained)
    mask = pop.load("mask/train")
    labels = pop.load("labels/train").astype(np.int64)
    correct_train = values_dense(pop.load("logits/train"), labels, "correct")
    correct_test = values_dense(pop.load("logits/test"), pop.targets("test"), "correct")
    ratios = pop.runs.subset.to_numpy()

    mem = memorization(pop, block_size=5)
    est, se = dense_memorization(mask, correct_train)
    np.testing.assert_allclose(mem.estimate, est, atol=1e-12)
    np.testing.assert_allclose(mem.se, se, atol=1e-12)
    # held-out runs get fewer examples right than runs that trained on them
    assert np.nanmean(mem.estimate) > 0.02 and np.nanmean(mem.mean_in) > np.nanmean(mem.mean_out)

    infl = influence(pop, top=4, mem_threshold=0.25, infl_threshold=0.15, block_size=7, memory_gib=(4 * 359 * 300) / 2**30)
    dense_infl = dense_influence_matrix(mask, correct_test)
    check_topk(infl.top_index, infl.top_value, dense_infl, 4)
    j, i = np.nonzero((dense_infl >= 0.15 - 1e-6) & (est[None, :] >= 0.25) & (pop.targets("test")[:, None] == labels[0][None, :]))
    assert set(zip(infl.pairs.train_index, infl.pairs.test_index)) == set(zip(i.tolist(), j.tolist()))

    cs = cscore(pop, block_size=6)
    _, per, score, _ = dense_cscore(mask, correct_train, ratios)
    np.testing.assert_allclose(cs.per_ratio, per, atol=1e-12)
    np.testing.assert_allclose(cs.cscore, score, atol=1e-12)
    # examples learned quickly are the ones held-out runs get right
    assert cs.learning_speed_spearman > 0.3
    assert np.nanmean(cs.per_ratio[1]) > np.nanmean(cs.per_ratio[0])  # more data, better held-out accuracy


def test_commands_write_tables_summaries_and_grids(trained, tmp_path):
    res = cli("memorization", str(trained), "--out", str(tmp_path / "mem.csv"), "--json", "--per-class", "3")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    table = pd.read_csv(tmp_path / "mem.csv")
    assert list(table.columns[:6]) == ["index", "label", "mem", "se", "n_in", "n_out"] and len(table) == 1438
    assert summary["run_count"] == 24 and summary["stability"]["half_runs"] == [12, 12]
    assert (tmp_path / "mem-grid.png").stat().st_size > 1000
    stored = manyruns.open(trained).store.group["analysis/memorization/estimate"][:]
    np.testing.assert_array_equal(stored, table["mem"].to_numpy())

    res = cli("influence", str(trained), "--top", "3", "--pairs-out", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "top.csv"), "--dense", str(tmp_path / "m.npy"), "--json", "--no-grid")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert list(pairs.columns[:5]) == ["train_index", "test_index", "infl", "mem", "label"]
    assert len(pairs) == summary["pairs"] and (pairs.infl >= 0.15).all() and (pairs["mem"] >= 0.25).all()
    top = pd.read_csv(tmp_path / "top.csv")
    matrix = np.load(tmp_path / "m.npy")
    np.testing.assert_allclose(top.infl, matrix[top.test_index, top.train_index], atol=1e-6)
    assert not (tmp_path / "pairs-grid.png").exists()

    res = cli("cscore", str(trained), "--out", str(tmp_path / "cs.csv"), "--no-grid")
    assert res.returncode == 0, res.stderr
    assert "learning-speed proxy: Spearman" in res.stdout and "split-half Spearman" in res.stdout
    table = pd.read_csv(tmp_path / "cs.csv")
    assert list(table.columns[:7]) == ["index", "label", "cscore", "se", "0.3", "0.7", "learning_speed"]
    assert {"learning_speed_se", "learning_speed_count"} <= set(table.columns) and "median standard error" in res.stdout

    # the other grids, drawn from the saved results
    pop = manyruns.open(trained)
    data = pop.dataset()
    infl = influence(pop, top=4)
    path = influence_grid(infl.top_index, infl.top_value, data.x_test, data.y_test, data.x_train, data.y_train, list(data.classes), tmp_path / "infl.png", rows=3)
    cs = cscore(pop)
    path2 = extremes_grid(cs.cscore, cs.label, data.x_train, list(data.classes), tmp_path / "cs.png", "C", per_class=2)
    assert path.stat().st_size > 1000 and path2.stat().st_size > 1000


def test_extremes_per_class_picks_highest_and_lowest():
    scores = np.array([0.1, 0.9, np.nan, 0.5, -0.2, 0.7])
    labels = np.array([0, 0, 0, 1, 1, 0])
    (high0, low0), (high1, low1) = extremes_per_class(scores, labels, 2, 2)
    assert high0.tolist() == [1, 5] and low0.tolist() == [0, 5]
    assert high1.tolist() == [3, 4] and low1.tolist() == [4, 3]


def test_value_needing_logits_on_a_correctness_store_is_a_clear_error(synthetic):
    pop, _ = synthetic
    res = cli("memorization", str(pop.path), "--value", "margin")
    assert res.returncode == 2 and "correctness only" in res.stderr and "use value 'correct'" in res.stderr
