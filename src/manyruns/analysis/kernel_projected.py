"""Nearest kernel neighbours of every example: an exact scan, or a sketch with exact re-ranking.

The kernel of :mod:`.kernel` is an inner product: with every (run, class) column of the
standardized values gathered per example into ``Z (N, D)``, ``D = R C'``, and scaled by
``1 / sqrt(D)``, ``K(a, b) = Z_a . Z_b``.

* **Exact scan** (``D <= 2 dims``): ``K`` itself in tiles of queries, ``(q, D) x (D, N)``, and
  its top ``k`` per query. Exact.
* **Sketch** (``D > 2 dims``): ``Z`` is split along the top ``d1 = dims / 2`` right singular
  vectors ``V (D, d1)`` of the training rows (a randomized SVD of at most 16,384 of them drawn
  at random; the sketch is fitted once and serves every query split), ``Z_a = P_a V^T + E_a``, and
  the residual is sketched by a Gaussian matrix ``G (D, d2)``, ``d2 = dims - d1``, entries
  ``N(0, 1 / d2)``::

      S(a, b) = P_a . P_b + (E_a G) . (E_b G),      E[S(a, b)] = K(a, b)

  the class structure (the top directions) exactly, what each run does idiosyncratically to an
  example (the residual, where near-duplicates agree and mere look-alikes do not) unbiased
  with a standard deviation of about ``|E_a| |E_b| / sqrt(d2)``. The ``candidates`` examples
  with the largest ``S`` per query are re-ranked by their exact ``K``: the values returned are
  exact kernel values; a neighbour outside the candidates is missed. Recall of the exact nearest
  neighbour is measured in ``benchmarks/bench_audit.py`` (docs/benchmarks.md).
* **Class groups** (either scan): examples the runs treat alike are predicted alike, so each
  query is compared only with the training examples whose predicted class (the largest mean
  transformed value over the runs) is its own, or its second where the query's two largest
  means are within ``class_gap`` (ambiguous queries). On MNIST with a gap of 2 nats, 18% of
  queries search two classes, the scan covers about 12% of the pairs, and the nearest
  neighbour is the exact one for 99.5% of examples and for every pair at a correlation of
  0.98 or more.

Cost: ``Z`` for the training (and query) examples in float32, ``4 N D`` bytes each (the caller
checks it against its memory budget); the scan, one ``(q, d) x (d, N)`` product per tile of
``q`` queries and its top-``m`` (``d = D``, ``m = k`` for the exact scan); the sketch adds the
SVD, ``O(min(N, 16384) D d1)``, and the re-ranking, ``2 Nq m D`` FLOPs over ``Z`` rows gathered per query
into one buffer of ``q m D`` floats reused across tiles.
On 2 cores the product and its top-``m`` take about 0.15 + 0.19 s per 4,096 queries against
60,000 training examples at ``d = 32`` (0.29 + 0.19 s for the exact scan at ``D = 80``): the
scan over all pairs is the audit's floor without class groups (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .kernel import ColumnMoments, KernelOptions, LogitSource, transform


def standardized(source: LogitSource, split: str, options: KernelOptions, block_runs: int = 32, class_gap: float | None = None):
    """``Z (N, R C')`` float32: the standardized columns of every example, scaled so that
    ``Z_a . Z_b`` is the kernel (the standardization of :mod:`.kernel`, constant columns 0).
    With ``class_gap``: ``(Z, classes (N, 2) int64)`` for :func:`projected_topk`'s ``groups``:
    each example's class of largest mean transformed value over the runs (its predicted class),
    and its second where the two means are within ``class_gap`` (-1 elsewhere)."""
    blocks = [transform(b, options) for b in source.blocks(split, block_runs)]  # (b, C', N) each, fresh buffers
    moments = ColumnMoments()
    for x in blocks:
        moments.update(x)
    mean, inv = moments.standardizer()  # (C', N)
    R = sum(x.shape[0] for x in blocks)
    Cp, N = mean.shape
    classes = None
    if class_gap is not None:
        best = torch.topk(sum(x.sum(0) for x in blocks) / R, min(2, Cp), dim=0)  # (2, N)
        classes = best.indices.T.contiguous()
        if Cp > 1:
            classes[best.values[0] - best.values[1] >= class_gap, 1] = -1
    Z = torch.empty(N, R, Cp)
    r0 = 0
    for x in blocks:
        b = x.shape[0]
        Z[:, r0 : r0 + b] = x.sub_(mean).mul_(inv).permute(2, 0, 1)  # in place: fresh temporaries cost their pages
        r0 += b
    blocks.clear()
    Z = Z.view(N, R * Cp)
    Z.mul_(1.0 / math.sqrt(R * Cp))
    return Z if classes is None else (Z, classes)


@dataclass
class KernelNeighbours:
    """``indices (Nq, k)``, ``values (Nq, k) float32``: the nearest training examples, most
    similar first, with their exact kernel values; ``exact``: found by the exact scan (else by
    the sketch, see the module); ``dims``: the scan's dimension; ``candidates``: re-ranked per
    query; ``grouped``: searched within class groups only."""

    indices: np.ndarray
    values: np.ndarray
    exact: bool
    dims: int
    candidates: int
    grouped: bool = False


def _ordered(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest ``values (q, m)`` per row with their ``index``, ties by lower index."""
    order = torch.from_numpy(np.lexsort((index.numpy(), -values.double().numpy()), axis=-1)[:, :k])
    return values.gather(1, order), index.gather(1, order)


class Sketch:
    """The map ``Z -> [Z V, (Z - Z V V^T) G]`` of the module, fitted on the training rows
    ``Zt (N, D)``: ``V`` from at most ``fit_rows`` of them drawn at random (the top directions
    are the classes', which a sample holds as well as all rows; the randomized SVD's cost
    is ``O(fit_rows D d1)``). ``train (N, dims)``: the training rows mapped, kept for every
    search against them."""

    def __init__(self, Zt: torch.Tensor, dims: int, seed: int = 0, fit_rows: int = 16384):
        N, D = Zt.shape
        d1 = max(1, min(dims // 2, D))
        d2 = max(1, dims - d1)
        gen = torch.Generator().manual_seed(seed)
        sample = Zt if N <= fit_rows else Zt[torch.randperm(N, generator=gen)[:fit_rows].sort().values]
        torch.manual_seed(seed)
        _, _, self.V = torch.svd_lowrank(sample, q=d1, niter=2)  # (D, d1)
        self.G = torch.randn(D, d2, generator=gen) / math.sqrt(d2)
        self.VtG = self.V.T @ self.G  # (d1, d2)
        self.train = self(Zt)

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
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
    sketch: Sketch | None = None,
) -> KernelNeighbours:
    """Top-``k`` kernel neighbours among the rows of ``Zt (N, D)`` for every row of ``Zq (Nq, D)``
    (None: the training examples themselves, each never its own neighbour). See the module.
    ``groups``: ``(train (N,), queries (Nq, g))`` class groups (:func:`standardized`; -1: none):
    each query is compared with the training examples of its groups only (about ``1 / C`` of the
    pairs per group for balanced classes); without them, or where a group holds too few
    examples, with all. The sketch's candidates of all a query's groups compete for the
    ``candidates`` re-ranked. ``sketch``: one fitted on ``Zt`` (:class:`Sketch`) to reuse
    across calls (the training and the test queries); None fits it here when it is needed."""
    same = Zq is None
    Zq = Zt if same else Zq
    N, D = Zt.shape
    Nq = Zq.shape[0]
    exact = D <= 2 * dims
    m = k if exact else max(k, min(candidates, N - (1 if same else 0)))
    if exact:
        At, Aq = Zt, Zq
    else:
        sketch = sketch or Sketch(Zt, dims, seed)
        At = sketch.train
        Aq = At if same else sketch(Zq)
    everyone = [(torch.arange(N), torch.arange(Nq), 0)]
    blocks = everyone if groups is None else _blocks(groups, m + 1) or everyone
    slots = 1 if blocks is everyone else groups[1].shape[1]
    values = torch.full((Nq, slots * m), -math.inf)
    indices = torch.full((Nq, slots * m), -1, dtype=torch.int64)
    buffer = torch.empty(min(tile, Nq) * max(len(t) for t, _, _ in blocks))  # reused: a fresh output costs as much as the product
    for t_rows, q_rows, slot in blocks:
        AtT = At[t_rows].T.contiguous()
        position = torch.full((N,), -1, dtype=torch.int64)  # a query's own row in this block
        position[t_rows] = torch.arange(len(t_rows))
        for q0 in range(0, len(q_rows), tile):
            q = q_rows[q0 : q0 + tile]
            scores = buffer[: len(q) * len(t_rows)].view(len(q), len(t_rows))
            torch.mm(Aq[q], AtT, out=scores)  # (q, n): the kernel, or its sketch
            if same:
                own = position[q]
                hit = own >= 0
                scores[torch.arange(len(q))[hit], own[hit]] = -math.inf
            best, cand = torch.topk(scores, m, dim=1)  # (q, m)
            values[q, slot * m : (slot + 1) * m], indices[q, slot * m : (slot + 1) * m] = best, t_rows[cand]
    if not exact:  # re-rank the best m candidates of all slots by their exact kernel values
        if slots > 1:
            values, pick = torch.topk(values, m, dim=1)
            indices = indices.gather(1, pick)
        rows = torch.empty(min(tile, Nq) * m, D)  # reused: a fresh gather pays for its pages every tile (4x slower)
        for q0 in range(0, Nq, tile):
            idx = indices[q0 : q0 + tile]
            n = idx.shape[0]
            torch.index_select(Zt, 0, idx.reshape(-1).clamp(min=0), out=rows[: n * m])
            exact_values = torch.einsum("qd,qmd->qm", Zq[q0 : q0 + tile], rows[: n * m].view(n, m, D))
            values[q0 : q0 + tile] = exact_values.masked_fill(idx < 0, -math.inf)
    values, indices = _ordered(values, indices, k)
    return KernelNeighbours(indices=indices.numpy(), values=values.numpy(), exact=exact, dims=At.shape[1], candidates=m, grouped=blocks is not everyone)


def _blocks(groups: tuple[torch.Tensor, torch.Tensor], smallest: int) -> list[tuple[torch.Tensor, torch.Tensor, int]] | None:
    """``(training rows, query rows, slot)`` per group and slot of the queries' groups; None when
    a group holds fewer than ``smallest`` training examples (then no grouping)."""
    train, queries = groups
    out = []
    for c in [c for c in torch.unique(queries).tolist() if c >= 0]:
        t_rows = torch.nonzero(train == c).flatten()
        if len(t_rows) < smallest:
            return None
        for slot in range(queries.shape[1]):
            q_rows = torch.nonzero(queries[:, slot] == c).flatten()
            if len(q_rows):
                out.append((t_rows, q_rows, slot))
    return out
