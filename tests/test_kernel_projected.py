"""Projected kernel neighbours: the nearest neighbour and its value equal the exact kernel's
for every query, and the top-k wherever it is certified."""

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
@pytest.mark.parametrize("dims", [4, 64])
def test_nearest_neighbour_is_exact_and_certified_rows_are_exact(queries, dims):
    train, test = _logits(1)
    source = ArrayLogits(train, test)
    options = KernelOptions()
    Zt = standardized(source, "train", options)
    Zq = None if queries == "train" else standardized(source, "test", options)
    got = projected_topk(Zt, Zq, k=5, dims=dims, candidates=16, tile=256)
    ref = kernel_topk(source, 5, queries, options)
    np.testing.assert_allclose(got.values[:, 0], ref.values[:, 0], atol=1e-4)
    # the nearest index is the reference's, or a tie within rounding
    same = got.indices[:, 0] == ref.indices[:, 0]
    assert same.mean() > 0.99
    ok = got.certified_k
    np.testing.assert_allclose(got.values[ok], ref.values[ok], atol=1e-4)
    if dims == 64:  # a good projection certifies most queries without the fallback
        assert ok.mean() > 0.9 and got.exact_rows < 0.1 * len(ok)
    # planted near-duplicates are found
    if queries == "train":
        assert (got.indices[0:200:2, 0] == np.arange(1, 200, 2)).mean() > 0.95
    else:
        assert (got.indices[:50, 0] == np.arange(500, 550)).mean() > 0.95
