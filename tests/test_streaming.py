"""The shared streaming primitives: block size, run order and tiling must not change results.

Each primitive is checked against a straightforward computation on the whole array."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyruns.streaming import (
    HalfSums,
    Moments,
    TopK,
    column_counts,
    doubling_sizes,
    json_float,
    json_safe,
    mean_and_variance,
    run_blocks,
    split_halves,
    topk,
)

SETTINGS = settings(max_examples=40, deadline=None)


def splits(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """A random order of ``0..n-1`` cut into random consecutive blocks."""
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 5))), replace=False)) if n > 1 else []
    return np.split(order, cuts)


# ------------------------------------------------------------------------------ moments


@SETTINGS
@given(R=st.integers(1, 25), N=st.integers(1, 9), seed=st.integers(0, 2**16), nan=st.booleans())
def test_moments_of_any_blocks_in_any_order_equal_the_whole(R, N, seed, nan):
    rng = np.random.default_rng(seed)
    x = rng.normal(5, 3, size=(R, N))
    if nan:
        x[rng.random((R, N)) < 0.2] = np.nan
    whole = Moments.zeros(N)
    whole.add(x)
    parts = Moments.zeros(N)
    for block in splits(rng, R):
        part = Moments.zeros(N)
        part.add(x[block])
        parts = parts + part
    np.testing.assert_array_equal(parts.count, whole.count)
    np.testing.assert_allclose(parts.total, whole.total, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(parts.total_sq, whole.total_sq, rtol=1e-12, atol=1e-9)
    finite = np.isfinite(x)
    n = finite.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(x, 0) / n, np.nan)
        var = np.array([np.var(x[finite[:, j], j], ddof=1) if n[j] > 1 else np.nan for j in range(N)])
    np.testing.assert_allclose(whole.mean(), mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(whole.variance(), var, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose((whole - parts).total, 0, atol=1e-9)


@SETTINGS
@given(R=st.integers(1, 20), N=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_boolean_blocks_count_exactly_with_and_without_a_mask(R, N, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((R, N)) < 0.6
    where = rng.random((R, N)) < 0.5
    counted, summed = Moments.zeros(N), Moments.zeros(N)
    counted.add(x, where=where)
    summed.add(x.astype(np.float64), where=where)
    np.testing.assert_array_equal(counted.count, summed.count)
    np.testing.assert_array_equal(counted.total, summed.total)
    np.testing.assert_array_equal(counted.total_sq, summed.total_sq)
    np.testing.assert_array_equal(column_counts(x), x.sum(0))


def test_moments_about_a_shift_keep_their_digits():
    x = 1e8 + np.random.default_rng(0).normal(size=(1000, 3))
    shifted = Moments(np.zeros(3, dtype=np.int64), np.zeros(3), np.zeros(3), x[:10].mean(0))
    shifted.add(x)
    np.testing.assert_allclose(shifted.variance(), x.var(0, ddof=1), rtol=1e-9)
    other = Moments(np.zeros(3, dtype=np.int64), np.zeros(3), np.zeros(3), 0.0)
    other.add(x[:500])
    rest = Moments(np.zeros(3, dtype=np.int64), np.zeros(3), np.zeros(3), x[500:510].mean(0))
    rest.add(x[500:])
    np.testing.assert_allclose((rest + other).mean(), x.mean(0), rtol=1e-13)
    with pytest.raises(ValueError, match="different shifts"):
        rest - other


def test_torch_moments_merge_like_numpy():
    x = torch.from_numpy(np.random.default_rng(1).normal(3, 2, size=(9, 4)))
    a = Moments(4, (x[:4] - 1).sum(0), ((x[:4] - 1) ** 2).sum(0), torch.ones(4))
    b = Moments(5, x[4:].sum(0), (x[4:] ** 2).sum(0), 0.0)
    mean, std = (a + b).mean_std()
    assert np.allclose(mean.numpy(), x.mean(0).numpy()) and np.allclose(std.numpy(), x.std(0).numpy())
    with pytest.raises(ValueError, match="at least 2 runs"):
        mean_and_variance(x[0], x[0] ** 2, 1)


# -------------------------------------------------------------------------- split halves


@SETTINGS
@given(R=st.integers(2, 30), cells=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_half_sums_do_not_depend_on_blocks_or_order(R, cells, seed):
    rng = np.random.default_rng(seed)
    runs = np.sort(rng.choice(100, size=R, replace=False))
    cell = runs % cells
    x = rng.normal(size=(100, 5))
    reference = HalfSums(runs, cell, lambda: Moments.zeros(5))
    reference.add(runs, x[runs])
    shuffled = HalfSums(runs, cell, lambda: Moments.zeros(5))
    for block in splits(rng, R):
        shuffled.add(runs[block], x[runs[block]])
    half = split_halves(cell, runs)
    np.testing.assert_allclose(shuffled.first.total, x[runs[half == 0]].sum(0), atol=1e-12)
    np.testing.assert_allclose(shuffled.second.total, x[runs[half == 1]].sum(0), atol=1e-12)
    np.testing.assert_allclose(shuffled.total.total, reference.total.total, atol=1e-12)
    assert abs(shuffled.sizes[0] - shuffled.sizes[1]) <= cells  # each cell splits evenly, up to one run


# --------------------------------------------------------------------------------- top-k


def reference_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Larger first, equal values by lower column: a stable sort of the negated values."""
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, order, 1), order


@SETTINGS
@given(k=st.integers(1, 20), width=st.integers(1, 3000), seed=st.integers(0, 2**16), levels=st.sampled_from([0, 3, 50]))
def test_topk_is_a_stable_full_sort(k, width, seed, levels):
    """Continuous values, and few distinct values (ties everywhere, at the boundary too)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, width)).astype(np.float32) if levels == 0 else rng.integers(0, levels, size=(6, width)).astype(np.float32)
    k = min(k, width)
    for chunk in (None, 8):
        value, where = topk(torch.from_numpy(x), k, chunk=chunk)
        expected_value, expected_where = reference_topk(x, k)
        assert np.array_equal(where.numpy(), expected_where)
        assert np.array_equal(value.numpy(), expected_value)


@SETTINGS
@given(k=st.integers(1, 8), width=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_topk_merged_over_tiles_in_any_order_equals_the_whole(k, width, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(5, width)).astype(np.float32)  # many ties
    aux = rng.normal(size=(5, width)).astype(np.float32)
    best = TopK(5, k, aux=1)
    tiles = splits(rng, width)
    for tile in tiles:
        cols = np.sort(tile)
        value, where = topk(torch.from_numpy(x[:, cols]), min(k, cols.size))
        index = torch.from_numpy(cols)[where]
        best.merge(slice(None), value, index, torch.from_numpy(aux)[torch.arange(5)[:, None], index].unsqueeze(-1))
    kk = min(k, width)
    expected_value, expected_index = reference_topk(x, kk)
    assert np.array_equal(best.index.numpy()[:, :kk], expected_index)
    assert np.array_equal(best.value.numpy()[:, :kk], expected_value)
    assert np.array_equal(best.aux.numpy()[:, :kk, 0], np.take_along_axis(aux, expected_index, 1))
    assert (best.index.numpy()[:, kk:] == -1).all() and np.isneginf(best.value.numpy()[:, kk:]).all()


# --------------------------------------------------------------------- small helpers


def test_run_blocks_doubling_sizes_and_json():
    assert [b.tolist() for b in run_blocks(np.array([5, 3, 9, 1, 7]), 2)] == [[5, 3], [9, 1], [7]]
    assert doubling_sizes(9) == [1, 2, 4, 8, 9] and doubling_sizes(8) == [1, 2, 4, 8] and doubling_sizes(100, 25) == [25, 50, 100]
    assert doubling_sizes(1) == [1] and doubling_sizes(0) == []
    assert json_float(float("nan")) is None and json_float(np.float32(2.5)) == 2.5 and json_float(None) is None
    safe = json_safe({"a": np.array([1.0, np.inf]), "b": (np.int64(3), np.bool_(False)), 4: math.nan})
    assert safe == {"a": [1.0, None], "b": [3, False], "4": None}
