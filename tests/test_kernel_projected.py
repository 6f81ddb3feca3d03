"""Kernel neighbours of the audit: the exact scan equals the streaming kernel's top-k; the sketch
returns exact kernel values, finds the exact nearest neighbour for nearly every query and every
planted copy."""

from __future__ import annotations

import numpy as np
import pytest

from manyruns.analysis.kernel import ArrayLogits, KernelOptions, kernel_topk
from manyruns.analysis.kernel_projected import projected_topk, standardized


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
@pytest.mark.parametrize("dims", [32, 64])
def test_sketch_returns_exact_values_and_finds_the_nearest(queries, dims):
    train, test = _logits(1)
    source = ArrayLogits(train, test)
    options = KernelOptions()
    Zt = standardized(source, "train", options)
    Zq = None if queries == "train" else standardized(source, "test", options)
    got = projected_topk(Zt, Zq, k=5, dims=dims, candidates=16, tile=256)
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
