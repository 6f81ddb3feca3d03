"""Kernel neighbours of the audit: the exact scan equals the streaming kernel's top-k; the sketch
returns exact kernel values, finds the exact nearest neighbour for nearly every query and every
planted copy."""

from __future__ import annotations

import numpy as np
import pytest

from manyruns.analysis.kernel import ArrayLogits, KernelOptions, kernel_topk
from manyruns.analysis.kernel_projected import Sketch, projected_topk, standardized


def _logits(seed: int, R: int = 24, N: int = 1500, T: int = 400, C: int = 10):
    """Logits with class structure, near-duplicate train pairs and test copies of train rows."""
    rng = np.random.default_rng(seed)
    proto = rng.normal(size=(C, 32))
    labels = rng.integers(0, C, N + T)
    feats = proto[labels] + rng.normal(scale=1.0, size=(N + T, 32))
    feats[1:200:2] = feats[0:200:2] + rng.normal(scale=0.05, size=(100, 32))  # train pairs
    feats[N : N + 50] = feats[500:550] + rng.normal(scale=0.05, size=(50, 32))  # test copies
    W = rng.normal(size=(R, 32, C)) / 4
    logits = np.einsum("nf,rfc->rnc", feats, W) + rng.normal(scale=0.3, size=(R, N + T, C))
    return logits[:, :N].astype(np.float16), logits[:, N:].astype(np.float16)


@pytest.mark.parametrize("queries", ["train", "test"])
def test_exact_scan_equals_the_streaming_kernel(queries):
    train, test = _logits(1, R=6)
    source = ArrayLogits(train, test)
    options = KernelOptions()
    Zt = standardized(source, "train", options)
    Zq = None if queries == "train" else standardized(source, "test", options)
    got = projected_topk(Zt, Zq, k=5, dims=32, tile=256)  # D = 60 <= 2 x 32: the exact scan
    ref = kernel_topk(source, 5, queries, options)
    assert got.exact and got.dims == 60
    np.testing.assert_allclose(got.values, ref.values, atol=1e-5)
    assert (got.indices == ref.indices).mean() > 0.99  # the rest: ties within rounding


@pytest.mark.parametrize("queries", ["train", "test"])
@pytest.mark.parametrize("dims, fit_rows", [(32, None), (64, None), (64, 300)])
def test_sketch_returns_exact_values_and_finds_the_nearest(queries, dims, fit_rows):
    """``fit_rows``: a sketch whose directions come from 300 of the 1,500 training rows,
    fitted once and passed in (as the audit does for both splits)."""
    train, test = _logits(1)
    source = ArrayLogits(train, test)
    options = KernelOptions()
    Zt = standardized(source, "train", options)
    Zq = None if queries == "train" else standardized(source, "test", options)
    sketch = None if fit_rows is None else Sketch(Zt, dims, fit_rows=fit_rows)
    got = projected_topk(Zt, Zq, k=5, dims=dims, candidates=16, tile=256, sketch=sketch)
    ref = kernel_topk(source, 5, queries, options)
    assert not got.exact and got.dims == dims
    # every value returned is the exact kernel value of the pair it names
    Zq_ = Zt if Zq is None else Zq
    pair = np.einsum("qd,qkd->qk", Zq_.numpy(), Zt.numpy()[got.indices])
    np.testing.assert_allclose(got.values, pair, atol=1e-5)
    assert np.all(got.values <= ref.values[:, :1] + 1e-5)  # never above the true nearest
    if queries == "train":
        assert (got.indices == np.arange(len(got.indices))[:, None]).sum() == 0  # never itself
    if dims == 64:  # the default sketch finds the exact nearest neighbour of nearly every query
        found = np.isclose(got.values[:, 0], ref.values[:, 0], atol=1e-5).mean()
        assert found > 0.99, found
    # planted near-duplicates stand out: found by a smaller sketch too
    if queries == "train":
        assert (got.indices[0:200:2, 0] == np.arange(1, 200, 2)).mean() > 0.95
    else:
        assert (got.indices[:50, 0] == np.arange(500, 550)).mean() > 0.95


def _restricted_topk(Zq: np.ndarray, Zt: np.ndarray, k: int, train_class: np.ndarray, query_classes: np.ndarray, same: bool):
    """Brute force: every pair's kernel, pairs outside the query's classes and the query itself removed."""
    K = Zq @ Zt.T
    allowed = (train_class[None, :, None] == query_classes[:, None, :]).any(-1) & (query_classes[:, None, :1] >= 0).any(-1)
    K[~allowed] = -np.inf
    if same:
        np.fill_diagonal(K, -np.inf)
    order = np.argsort(-K, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(K, order, 1)


def test_class_groups_are_the_predicted_classes():
    from scipy.special import log_softmax

    train, test = _logits(2, R=8)
    Z, classes = standardized(ArrayLogits(train, test), "train", KernelOptions(), class_gap=1.0)
    mean = log_softmax(train.astype(np.float64), axis=-1).mean(0)  # (N, C)
    order = np.argsort(-mean, axis=1)
    gap = mean[np.arange(len(mean)), order[:, 0]] - mean[np.arange(len(mean)), order[:, 1]]
    assert (classes[:, 0].numpy() == order[:, 0]).all()
    np.testing.assert_array_equal(classes[:, 1].numpy(), np.where(gap < 1.0, order[:, 1], -1))
    assert 0 < (classes[:, 1] >= 0).float().mean() < 1  # some queries search a second class, not all
    assert Z.shape == standardized(ArrayLogits(train, test), "train", KernelOptions()).shape


@pytest.mark.parametrize("queries", ["train", "test"])
@pytest.mark.parametrize("dims", [64, 128])  # the sketch (D = 240 > 128) and the exact scan
def test_grouped_search_equals_a_brute_force_search_within_the_groups(queries, dims):
    train, test = _logits(3)
    source = ArrayLogits(train, test)
    Zt, ct = standardized(source, "train", KernelOptions(), class_gap=1.0)
    Zq, cq = (Zt, ct) if queries == "train" else standardized(source, "test", KernelOptions(), class_gap=1.0)
    got = projected_topk(Zt, None if queries == "train" else Zq, k=5, dims=dims, candidates=16, tile=128, groups=(ct[:, 0], cq))
    idx, val = _restricted_topk(Zq.numpy(), Zt.numpy(), 5, ct[:, 0].numpy(), cq.numpy(), queries == "train")
    assert got.grouped
    if got.exact:
        np.testing.assert_allclose(got.values, val, atol=1e-5)
        assert (got.indices == idx).mean() > 0.99
    else:  # exact values of the pairs named, never above the restricted nearest, nearly always it
        pair = np.einsum("qd,qkd->qk", Zq.numpy(), Zt.numpy()[got.indices])
        np.testing.assert_allclose(got.values, pair, atol=1e-5)
        assert np.all(got.values[:, 0] <= val[:, 0] + 1e-5)
        assert np.isclose(got.values[:, 0], val[:, 0], atol=1e-5).mean() > 0.97
    # every neighbour lies in one of the query's groups
    member = (ct[:, 0].numpy()[got.indices][..., None] == cq.numpy()[:, None, :]).any(-1)
    assert member.all()
    # the planted near-copies are found within the groups as by the whole scan (a copy whose
    # noisy logits put it in another class is missed: a few in this data, none on MNIST's)
    whole = projected_topk(Zt, None if queries == "train" else Zq, k=1, dims=dims, candidates=16)
    planted = np.arange(0, 200, 2) if queries == "train" else np.arange(50)
    assert (got.indices[planted, 0] == whole.indices[planted, 0]).mean() > 0.9


def test_grouping_falls_back_to_every_example_when_a_group_is_small():
    train, test = _logits(4, N=600, R=6)
    Zt, ct = standardized(ArrayLogits(train, test), "train", KernelOptions(), class_gap=1.0)
    assert np.bincount(ct[:, 0].numpy()).min() < 101
    got = projected_topk(Zt, None, k=100, dims=32, groups=(ct[:, 0], ct))  # a class with fewer than k + 1 examples
    ref = projected_topk(Zt, None, k=100, dims=32)
    assert not got.grouped
    np.testing.assert_array_equal(got.indices, ref.indices)
