"""Memory estimates and probing: what a solve will hold (:class:`MemoryPlan`), what the machine
has available now, and the peak this process reached.

* ``exact`` holds one triangle of the kernel matrix in block columns: about
  ``N (N + 1024) / 2`` numbers, 14.6 GB in float64 for N = 60,000, where the full float64
  matrix would take 28.8 GB.
* ``cg`` keeps the packed float64 matrix (one triangle) when everything fits in the memory
  available, and recomputes kernel blocks at every product otherwise (then
  :func:`on_the_fly_warning` says, before any kernel is computed, what that costs).

Temporary kernel blocks take at most :data:`BLOCK_BYTES` each, and a fixed
:data:`PROCESS_BYTES` is allowed for the interpreter and its libraries. A problem whose memory
exceeds what the machine has available is refused before any heavy work.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from dataclasses import dataclass

import numpy as np

from .kernel_blocks import BLOCK_BYTES, kernel_flops
from .solvers import EXACT_BLOCK, BlockCholesky

PROCESS_BYTES = 300 * 2**20
"""Allowance for the interpreter and its libraries in memory estimates."""


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``MemAvailable``; physical memory
    where the kernel does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 2**62


def peak_memory() -> int:
    """Peak resident memory of this process so far, in bytes (``VmHWM``; where the kernel does
    not say, ``ru_maxrss``, which Linux carries over from the parent across ``exec``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


@dataclass(frozen=True)
class MemoryPlan:
    """What a solve will hold in memory, in bytes, and where the CG products come from."""

    matrix: int
    """The kernel matrix: one triangle in block columns (``exact``) or packed (``cg`` when kept);
    0 when CG recomputes it at every product."""
    preconditioner: int
    """The inverses of the preconditioner blocks (``cg``)."""
    data: int
    """Pixels (train and test, float64), targets, solutions and CG's vectors."""
    blocks: int
    """Temporary kernel blocks, plus the update of one block column (``exact``) or the forming of
    one preconditioner block's inverse (``cg``)."""
    matrix_mode: str
    """block-columns (``exact``), packed (the matrix is kept) or on-the-fly (recomputed block by
    block at every product)."""
    available: int
    """The memory limit the plan was made for."""
    process: int = PROCESS_BYTES
    """The fixed allowance for the interpreter and its libraries."""

    @property
    def total(self) -> int:
        return self.matrix + self.preconditioner + self.data + self.blocks + self.process


def packed_bytes(n: int) -> int:
    """Bytes of one float64 triangle of an ``n x n`` matrix, ``n (n + 1) / 2`` numbers."""
    return n * (n + 1) // 2 * 8


def memory_plan(
    n_train: int,
    n_test: int,
    dim: int,
    classes: int,
    solver: str,
    precision: str = "float64",
    matrix: str = "auto",
    block_size: int = 4000,
    available: int | None = None,
    preconditioner: str = "block-jacobi",
) -> MemoryPlan:
    """Bytes a solve needs. For ``cg`` with ``matrix = 'auto'``: the packed float64 matrix is
    kept when everything fits in ``available`` (default: what the machine has now), and
    recomputed at every product otherwise. Temporary kernel blocks take at most
    :data:`BLOCK_BYTES` each, less when the whole ``n_train x max(n_train, n_test)`` product is smaller."""
    room = available_memory() if available is None else int(available)
    data = (n_train + n_test) * dim * 8 + 8 * n_train * classes * 8
    blocks = 3 * min(BLOCK_BYTES, 8 * n_train * max(n_train, n_test))
    if solver == "exact":
        itemsize = np.dtype(precision).itemsize
        update = n_train * min(EXACT_BLOCK, n_train) * itemsize  # the product subtracted from one block column
        return MemoryPlan(BlockCholesky.storage(n_train, EXACT_BLOCK, itemsize), 0, data, blocks + update, "block-columns", room)
    precond = 0
    if preconditioner == "block-jacobi":
        size = min(block_size, n_train)
        precond = math.ceil(n_train / size) * size * size * 8
        blocks += 2 * size * size * 8  # forming one block's inverse
    packed = packed_bytes(n_train)
    if matrix == "auto":
        matrix = "packed" if packed + precond + data + blocks + PROCESS_BYTES <= room else "on-the-fly"
    return MemoryPlan(packed if matrix == "packed" else 0, precond, data, blocks, matrix, room)


def describe_plan(plan: MemoryPlan, precision: str = "float64") -> str:
    """The parts of ``plan.total``, named, on one line."""
    if plan.matrix_mode == "block-columns":
        parts = [f"the {precision} kernel matrix (one triangle, in block columns) {format_bytes(plan.matrix)}"]
    elif plan.matrix_mode == "packed":
        parts = [f"the packed float64 kernel matrix {format_bytes(plan.matrix)}"]
    else:
        parts = ["no kernel matrix (recomputed at every product)"]
    if plan.preconditioner:
        parts.append(f"preconditioner blocks {format_bytes(plan.preconditioner)}")
    parts.append(f"temporary blocks {format_bytes(plan.blocks)}")
    parts.append(f"pixels and targets {format_bytes(plan.data)}")
    parts.append(f"a fixed {format_bytes(plan.process)} for the interpreter and its libraries")
    return ", ".join(parts)


def on_the_fly_warning(plan: MemoryPlan, n_train: int, dim: int, classes: int, max_iter: int) -> str:
    """One line for a CG solve whose matrix does not fit: every product recomputes the kernel
    blocks (the work of building the matrix, ``n^2 dim``, plus ``2 n^2 classes`` for the product).
    The option it suggests is a placeholder (``{param:subset}``, see :func:`manyruns.errors.word`)."""
    build = kernel_flops(n_train, dim)
    product = build + 2 * n_train * n_train * classes
    return (
        f"warning: the packed float64 kernel matrix of {n_train:,} training examples ({format_bytes(packed_bytes(n_train))}) "
        f"does not fit in the memory limit ({format_bytes(plan.available)}) beside the {format_bytes(plan.total)} the rest "
        f"of the solve holds, so every CG product recomputes kernel blocks, each about as costly as building the matrix "
        f"({build:.1e} FLOPs): up to {max_iter:,} products x {product:.1e} FLOPs = {max_iter * product:.1e} FLOPs; "
        "to keep the matrix, use {param:subset} N or run with more memory"
    )
