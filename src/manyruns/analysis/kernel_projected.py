"""Nearest kernel neighbours through a low-rank projection, with a certificate per query.

The kernel of :mod:`.kernel` is an inner product: with every (run, class) column of the
standardized values gathered per example into ``Z (N, R C')`` and scaled by ``1 / sqrt(R C')``,
``K(a, b) = Z_a . Z_b``. Projected onto the top ``d`` right singular vectors ``V (R C', d)`` of
the training examples' ``Z`` (a randomized SVD), ``Z_a = P_a V^T + E_a`` with ``P_a = Z_a V``
and ``E_a`` orthogonal to ``V``, so for every pair::

    K(a, b) = P_a . P_b + E_a . E_b  <=  P_a . P_b + |E_a| |E_b|  =: U(a, b)

For each query, the ``m`` training examples with the largest bound ``U`` are the candidates;
their exact kernel values are computed from ``Z``. No other example can beat the ``m``-th
bound ``U_m``: the nearest neighbour is **certified** when the best exact value among the
candidates is at least ``U_m`` (the ``k`` nearest when the ``k``-th is), and a flag "nearest
value >= t" is certified when ``U_m < t`` or the best candidate reaches ``t``. Queries whose
nearest neighbour is not certified are computed exactly against every training example, so
the nearest neighbour and its value are exact for every query; the 2nd to ``k``-th neighbours
are exact where ``certified_k`` says so, otherwise the best among the candidates.

Cost: ``Z`` for the training (and query) examples in float32, ``4 N R C'`` bytes each (the
caller checks it against its memory budget); the randomized SVD, ``O(N R C' d)``; the bounds,
one ``(Nq, d) x (d, N)`` product in tiles of queries, ``2 Nq N d`` FLOPs instead of the exact
kernel's ``2 Nq N R C'``; the candidates, ``2 Nq m R C'``; and the exact fallback for the
uncertified queries. Values are float32 like the exact kernel's and agree with it to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .kernel import ColumnMoments, KernelOptions, LogitSource, transform

SLACK = 1e-5  # rounding room in the certificate comparisons (values are float32 sums)


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
class ProjectedNeighbours:
    """``indices (Nq, k)``, ``values (Nq, k) float32``: the nearest training examples, most
    similar first; ``certified_k (Nq,) bool``: all ``k`` are exact (the first always is);
    ``exact_rows``: queries that fell back to the exact computation; ``bound (Nq,)``: the
    ``m``-th candidate bound ``U_m`` (no non-candidate exceeds it)."""

    indices: np.ndarray
    values: np.ndarray
    certified_k: np.ndarray
    bound: np.ndarray
    exact_rows: int
    dims: int
    candidates: int


def _ordered(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest ``values (q, m)`` per row with their ``index``, ties by lower index."""
    order = torch.from_numpy(np.lexsort((index.numpy(), -values.double().numpy()), axis=-1)[:, :k])
    return values.gather(1, order), index.gather(1, order)


def _with_residual(Z: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``(N, d + 1)``: the projection ``Z V`` and the norm of what it leaves out."""
    P = Z @ V
    residual = (Z.square().sum(1) - P.square().sum(1)).clamp_min(0).sqrt()
    return torch.cat([P, residual[:, None]], 1).contiguous()


def projected_topk(
    Zt: torch.Tensor,
    Zq: torch.Tensor | None,
    k: int,
    dims: int = 64,
    candidates: int = 32,
    tile: int = 1024,
    seed: int = 0,
) -> ProjectedNeighbours:
    """Top-``k`` kernel neighbours among the rows of ``Zt (N, D)`` for every row of ``Zq (Nq, D)``
    (None: the training examples themselves, each never its own neighbour). See the module."""
    same = Zq is None
    Zq = Zt if same else Zq
    N, D = Zt.shape
    Nq = Zq.shape[0]
    d = max(1, min(dims, D, N))
    m = max(k, min(candidates, N - (1 if same else 0)))
    torch.manual_seed(seed)
    _, _, V = torch.svd_lowrank(Zt, q=d, niter=2)  # (D, d)
    # [P_a, |E_a|] . [P_b, |E_b|] is the bound U(a, b): one product per tile
    At = _with_residual(Zt, V)
    Aq = At if same else _with_residual(Zq, V)
    indices = torch.empty(Nq, k, dtype=torch.int64)
    values = torch.empty(Nq, k)
    bound = torch.empty(Nq)
    for q0 in range(0, Nq, tile):
        q1 = min(Nq, q0 + tile)
        ub = Aq[q0:q1] @ At.T  # (q, N) upper bounds
        if same:
            ub[torch.arange(q1 - q0), torch.arange(q0, q1)] = -math.inf
        ubm, cand = torch.topk(ub, m, dim=1)  # (q, m)
        bound[q0:q1] = ubm[:, -1]
        exact = torch.einsum("qd,qmd->qm", Zq[q0:q1], Zt[cand])  # (q, m)
        v, i = _ordered(exact, cand, k)
        values[q0:q1], indices[q0:q1] = v, i
    certified_1 = values[:, 0] >= bound - SLACK
    certified_k = values[:, -1] >= bound - SLACK
    rows = torch.nonzero(~certified_1).flatten()
    for r0 in range(0, rows.numel(), tile):  # the exact kernel for the queries left uncertified
        r = rows[r0 : r0 + tile]
        full = Zq[r] @ Zt.T
        if same:
            full[torch.arange(r.numel()), r] = -math.inf
        v, i = torch.topk(full, m, dim=1)
        v, i = _ordered(v, i, k)
        values[r], indices[r] = v, i
        certified_k[r] = True
    return ProjectedNeighbours(
        indices=indices.numpy(), values=values.numpy(), certified_k=certified_k.numpy(), bound=bound.numpy(),
        exact_rows=int(rows.numel()), dims=d, candidates=m,
    )
