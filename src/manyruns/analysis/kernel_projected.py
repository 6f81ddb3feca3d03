"""Nearest kernel neighbours of every example: an exact scan, or a sketch with exact re-ranking.

The kernel of :mod:`.kernel` is an inner product: with every (run, class) column of the
standardized values gathered per example into ``Z (N, D)``, ``D = R C'``, and scaled by
``1 / sqrt(D)``, ``K(a, b) = Z_a . Z_b``.

* **Exact scan** (``D <= 2 dims``): ``K`` itself in tiles of queries, ``(q, D) x (D, N)``, and
  its top ``k`` per query. Exact.
* **Sketch** (``D > 2 dims``): ``Z`` is split along the top ``d1 = dims / 2`` right singular
  vectors ``V (D, d1)`` of the training rows (a randomized SVD), ``Z_a = P_a V^T + E_a``, and
  the residual is sketched by a Gaussian matrix ``G (D, d2)``, ``d2 = dims - d1``, entries
  ``N(0, 1 / d2)``::

      S(a, b) = P_a . P_b + (E_a G) . (E_b G),      E[S(a, b)] = K(a, b)

  the class structure (the top directions) exactly, what each run does idiosyncratically to an
  example (the residual, where near-duplicates agree and mere look-alikes do not) unbiased
  with a standard deviation of about ``|E_a| |E_b| / sqrt(d2)``. The ``candidates`` examples
  with the largest ``S`` per query are re-ranked by their exact ``K``: the values returned are
  exact kernel values; a neighbour outside the candidates is missed. Recall of the exact nearest
  neighbour is measured in ``benchmarks/bench_audit.py`` (docs/benchmarks.md).

Cost: ``Z`` for the training (and query) examples in float32, ``4 N D`` bytes each (the caller
checks it against its memory budget); the scan, one ``(q, d) x (d, N)`` product per tile of
``q`` queries and its top-``m`` (``d = D``, ``m = k`` for the exact scan); the sketch adds the
SVD, ``O(N D d1)``, and the re-ranking, ``2 Nq m D`` FLOPs over ``Z`` rows gathered per query.
On 2 cores the product and its top-``m`` take about 0.15 + 0.19 s per 4,096 queries against
60,000 training examples at ``d = 32`` (0.29 + 0.19 s for the exact scan at ``D = 80``): the
scan over all pairs is the audit's floor (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .kernel import ColumnMoments, KernelOptions, LogitSource, transform


def standardized(source: LogitSource, split: str, options: KernelOptions, block_runs: int = 32) -> torch.Tensor:
    """``Z (N, R C')`` float32: the standardized columns of every example, scaled so that
    ``Z_a . Z_b`` is the kernel (the standardization of :mod:`.kernel`, constant columns 0)."""
    blocks = [transform(b, options) for b in source.blocks(split, block_runs)]  # (b, C', N) each, fresh buffers
    moments = ColumnMoments()
    for x in blocks:
        moments.update(x)
    mean, inv = moments.standardizer()  # (C', N)
    R = sum(x.shape[0] for x in blocks)
    Cp, N = mean.shape
    Z = torch.empty(N, R, Cp)
    r0 = 0
    for x in blocks:
        b = x.shape[0]
        Z[:, r0 : r0 + b] = ((x - mean) * inv).permute(2, 0, 1)
        r0 += b
    blocks.clear()
    Z = Z.view(N, R * Cp)
    Z.mul_(1.0 / math.sqrt(R * Cp))
    return Z


@dataclass
class KernelNeighbours:
    """``indices (Nq, k)``, ``values (Nq, k) float32``: the nearest training examples, most
    similar first, with their exact kernel values; ``exact``: found by the exact scan (else by
    the sketch, see the module); ``dims``: the scan's dimension; ``candidates``: re-ranked per query."""

    indices: np.ndarray
    values: np.ndarray
    exact: bool
    dims: int
    candidates: int


def _ordered(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest ``values (q, m)`` per row with their ``index``, ties by lower index."""
    order = torch.from_numpy(np.lexsort((index.numpy(), -values.double().numpy()), axis=-1)[:, :k])
    return values.gather(1, order), index.gather(1, order)


class Sketch:
    """The map ``Z -> [Z V, (Z - Z V V^T) G]`` of the module, fitted on the training rows."""

    def __init__(self, Zt: torch.Tensor, dims: int, seed: int = 0):
        D = Zt.shape[1]
        d1 = max(1, min(dims // 2, D))
        d2 = max(1, dims - d1)
        torch.manual_seed(seed)
        _, _, self.V = torch.svd_lowrank(Zt, q=d1, niter=2)  # (D, d1)
        gen = torch.Generator().manual_seed(seed)
        self.G = torch.randn(D, d2, generator=gen) / math.sqrt(d2)
        self.VtG = self.V.T @ self.G  # (d1, d2)

    def __call__(self, Z: torch.Tensor, tile: int = 8192) -> torch.Tensor:
        out = torch.empty(Z.shape[0], self.V.shape[1] + self.G.shape[1])
        for i in range(0, Z.shape[0], tile):
            z = Z[i : i + tile]
            P = z @ self.V
            out[i : i + tile] = torch.cat([P, z @ self.G - P @ self.VtG], 1)
        return out


def projected_topk(
    Zt: torch.Tensor,
    Zq: torch.Tensor | None,
    k: int,
    dims: int = 128,
    candidates: int = 32,
    tile: int = 512,
    seed: int = 0,
) -> KernelNeighbours:
    """Top-``k`` kernel neighbours among the rows of ``Zt (N, D)`` for every row of ``Zq (Nq, D)``
    (None: the training examples themselves, each never its own neighbour). See the module."""
    same = Zq is None
    Zq = Zt if same else Zq
    N, D = Zt.shape
    Nq = Zq.shape[0]
    exact = D <= 2 * dims
    m = k if exact else max(k, min(candidates, N - (1 if same else 0)))
    if exact:
        At, Aq = Zt, Zq
    else:
        sketch = Sketch(Zt, dims, seed)
        At = sketch(Zt)
        Aq = At if same else sketch(Zq)
    AtT = At.T.contiguous()
    buffer = torch.empty(min(tile, Nq), N)  # reused: a fresh (tile, N) output costs as much as the product
    indices = torch.empty(Nq, k, dtype=torch.int64)
    values = torch.empty(Nq, k)
    for q0 in range(0, Nq, tile):
        q1 = min(Nq, q0 + tile)
        scores = buffer[: q1 - q0]
        torch.mm(Aq[q0:q1], AtT, out=scores)  # (q, N): the kernel, or its sketch
        if same:
            scores[torch.arange(q1 - q0), torch.arange(q0, q1)] = -math.inf
        best, cand = torch.topk(scores, m, dim=1)  # (q, m)
        if not exact:  # re-rank the candidates by their exact kernel values
            best = torch.einsum("qd,qmd->qm", Zq[q0:q1], Zt[cand])
        values[q0:q1], indices[q0:q1] = _ordered(best, cand, k)
    return KernelNeighbours(indices=indices.numpy(), values=values.numpy(), exact=exact, dims=At.shape[1], candidates=m)
