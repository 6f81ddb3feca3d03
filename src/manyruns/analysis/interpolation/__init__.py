"""Minimum-norm interpolation with an RBF kernel: fit the training set exactly, predict by argmax.

With ``K(x, y) = exp(-bandwidth * ||x - y||^2)`` on pixels scaled to [0, 1] and one-hot targets
``Y (N, C)``, the minimum-norm function through every training point is ``f(x) = K(x, X) A``
with ``K(X, X) A = Y``. A test image gets the class of its largest score.

Two solvers (:mod:`.solvers`), both sized so that the full MNIST problem (60,000 training
images) fits in 24 GB: ``exact``, a float64 Cholesky factorization that keeps one triangle of
``K(X, X)`` in block columns, and ``cg``, preconditioned conjugate gradients in float64 with the
kernel matrix kept packed (:mod:`.packed`) when it fits and recomputed block by block
(:mod:`.kernel_blocks`) at every product otherwise (:func:`interpolate` then warns, before any
kernel is computed, with what that costs). What each holds in memory is estimated in
:mod:`.memory`.

Both report the relative residual ``||Y - K A||_F / ||Y||_F`` from a fresh float64 product
(not from the solver's own recursion), and the training error of ``argmax K A`` (zero for an interpolant).
Everything is checked before any heavy work: a bandwidth that is not positive, a subset larger
than the training set, a problem whose memory exceeds what the machine has available.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ...errors import OptionError, check_choice, check_number, word
from ...streaming import json_safe
from ..contract import CheckedOptions, options_of

from .kernel_blocks import BLOCK_BYTES, kernel_block, kernel_flops, kernel_matmul, kernel_matrix, pixels
from .memory import (
    PROCESS_BYTES,
    MemoryPlan,
    available_memory,
    describe_plan,
    format_bytes,
    memory_plan,
    on_the_fly_warning,
    packed_bytes,
    peak_memory,
)
from .packed import PackedKernel, rfp_shape
from .solvers import (
    EXACT_BLOCK,
    PRECISIONS,
    BlockCholesky,
    BlockJacobi,
    NotPositiveDefiniteError,
    SolveInfo,
    cluster_blocks,
    conjugate_gradients,
    solve_cg,
    solve_exact,
)

__all__ = [
    # the whole run (this module)
    "SOLVERS",
    "PRECISIONS",
    "MATRIX_MODES",
    "InterpolationOptions",
    "InterpolationResult",
    "check_request",
    "interpolate",
    "interpolate_dataset",
    # kernel_blocks
    "BLOCK_BYTES",
    "pixels",
    "kernel_block",
    "kernel_matmul",
    "kernel_matrix",
    "kernel_flops",
    # packed
    "rfp_shape",
    "PackedKernel",
    # solvers
    "EXACT_BLOCK",
    "SolveInfo",
    "NotPositiveDefiniteError",
    "BlockCholesky",
    "solve_exact",
    "cluster_blocks",
    "BlockJacobi",
    "conjugate_gradients",
    "solve_cg",
    # memory
    "PROCESS_BYTES",
    "available_memory",
    "peak_memory",
    "format_bytes",
    "MemoryPlan",
    "packed_bytes",
    "memory_plan",
    "describe_plan",
    "on_the_fly_warning",
]

SOLVERS = ("exact", "cg")
MATRIX_MODES = ("auto", "packed", "on-the-fly")
PRECONDITIONERS = ("block-jacobi", "none")
KERNELS = ("rbf",)


@dataclass(frozen=True, kw_only=True)
class InterpolationOptions(CheckedOptions):
    """How to interpolate. ``kernel``: rbf, ``exp(-bandwidth * ||x - y||^2)`` on pixels in
    [0, 1]; ``solver``: exact or cg; ``subset``: the first N training examples (all test
    examples); ``precision``: exact's float64, or float32 (half the memory; fails on
    ill-conditioned matrices); ``tol``, ``max_iter``, ``preconditioner`` (block-jacobi or none),
    ``preconditioner_block`` (points per preconditioner block) and ``matrix`` (packed, on-the-fly or
    auto): cg's; ``memory_gib``: the budget (default: what is available now)."""

    bandwidth: float = 0.02
    kernel: str = "rbf"
    solver: str = "exact"
    subset: int | None = None
    precision: str = "float64"
    tol: float = 1e-4
    max_iter: int = 500
    preconditioner: str = "block-jacobi"
    preconditioner_block: int = 4000
    matrix: str = "auto"
    memory_gib: float | None = None

    def validate(self) -> None:
        b = self.bandwidth
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b <= 0:
            raise OptionError("bandwidth", f"must be a positive number, got {b!r}")
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("solver", self.solver, SOLVERS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("matrix", self.matrix, MATRIX_MODES)
        check_choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        check_number("tol", self.tol, 0, low_open=True)
        check_number("max_iter", self.max_iter, 1, integer=True)
        check_number("preconditioner_block", self.preconditioner_block, 1, integer=True)
        if self.memory_gib is not None:
            check_number("memory_gib", self.memory_gib, 0, low_open=True)
        if self.subset is not None:
            check_number("subset", self.subset, 1, integer=True)

    @property
    def memory_limit(self) -> int | None:
        """The budget in bytes (None: what is available when the solve is planned)."""
        return None if self.memory_gib is None else int(self.memory_gib * 2**30)


@dataclass
class InterpolationResult:
    """Outcome of one min-norm interpolation. Errors are fractions; memory in bytes."""

    dataset: str
    n_train: int
    n_test: int
    bandwidth: float
    solver: str
    precision: str
    test_error: float
    train_error: float
    """Error of ``argmax K A`` on the training set: 0 for an interpolant."""
    residual: float
    """``||Y - K A||_F / ||Y||_F``, from a fresh float64 product with the kernel matrix."""
    seconds: float
    peak_memory_bytes: int
    """Peak resident memory of the process (data loading included)."""
    memory_needed_bytes: int
    matrix_mode: str
    iterations: int | None = None
    converged: bool | None = None
    recursive_residual: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        """A JSON-ready dict of the outcome (a dataset's interpolation uses no runs)."""
        out = asdict(self)
        out["test_error_percent"] = 100 * self.test_error
        out["peak_memory_gb"] = self.peak_memory_bytes / 1e9
        return json_safe(out)

    def table(self) -> pd.DataFrame:
        """One row: the outcome's scalar fields."""
        return pd.DataFrame([{k: v for k, v in self.summary().items() if not isinstance(v, dict)}])


def _refusal_hint(plan: MemoryPlan, solver: str, precision: str) -> str:
    if solver == "exact":
        return "use {param:subset} N" + (", {param:precision} float32" if precision == "float64" else "") + " or {param:solver} cg"
    options = ["{param:subset} N"]
    if plan.matrix_mode == "packed":
        options.append("{param:matrix} on-the-fly (every product then recomputes the kernel)")
    if plan.preconditioner:
        options += ["a smaller {param:preconditioner_block}", "{param:preconditioner} none"]
    return "use " + (", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[0])


def check_request(n_train: int, n_test: int, dim: int, classes: int, options: InterpolationOptions) -> MemoryPlan:
    """Refuse a problem that does not fit before any heavy work (OptionError on
    ``memory_gib``); returns what the solve will hold in memory."""
    if n_train < 1:
        raise OptionError("subset", "leaves no training example")
    o = options
    plan = memory_plan(n_train, n_test, dim, classes, o.solver, o.precision, o.matrix, o.preconditioner_block, o.memory_limit, o.preconditioner)
    if plan.total > plan.available:
        raise OptionError(
            "memory_gib",
            f"{{param}}: the {o.solver} solve on {n_train:,} training examples needs about {format_bytes(plan.total)} "
            f"({describe_plan(plan, o.precision)}) but {format_bytes(plan.available)} is available; {_refusal_hint(plan, o.solver, o.precision)}",
        )
    return plan


def _to_stderr(line: str) -> None:
    print(word(line), file=sys.stderr, flush=True)


def interpolate(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    options: InterpolationOptions | None = None,
    classes: int | None = None,
    dataset: str = "",
    warn: Callable[[str], None] = _to_stderr,
    **fields,
) -> InterpolationResult:
    """Min-norm RBF interpolation of one-hot ``y_train``, and its errors.

    ``x_train (N, D)``, ``x_test (T, D)``: pixels in [0, 1] (see :func:`pixels`); ``y_train (N,)``,
    ``y_test (T,)``: class indices; ``options`` (or its fields as keywords): see
    :class:`InterpolationOptions` (``subset`` does not apply: the rows given are used).
    ``warn`` gets one line, before any kernel is computed, when ``cg`` with ``matrix = 'auto'``
    has to recompute the kernel at every product (see :func:`on_the_fly_warning`; options in it
    are placeholders for :func:`manyruns.errors.word`); by default it goes to stderr.
    """
    o = options_of(InterpolationOptions, options, fields)
    t_start = time.perf_counter()
    n, dim = x_train.shape
    if classes is None:
        classes = int(max(np.max(y_train), np.max(y_test) if len(y_test) else 0)) + 1
    plan = check_request(n, len(x_test), dim, classes, o)
    if o.solver == "cg" and o.matrix == "auto" and plan.matrix_mode == "on-the-fly":
        warn(on_the_fly_warning(plan, n, dim, classes, o.max_iter))
    x_train = np.ascontiguousarray(x_train, dtype=np.float64)
    y_train = np.asarray(y_train, dtype=np.int64)
    targets = np.eye(classes)[y_train]
    if o.solver == "exact":
        alpha, info = solve_exact(x_train, targets, o.bandwidth, o.precision)
    else:
        alpha, info = solve_cg(x_train, targets, o.bandwidth, o.tol, o.max_iter, o.preconditioner, o.preconditioner_block, plan.matrix_mode)
    t0 = time.perf_counter()
    train_scores = kernel_matmul(x_train, None, alpha, o.bandwidth)
    info.timings["residual"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    test_scores = kernel_matmul(np.asarray(x_test, dtype=np.float64), x_train, alpha, o.bandwidth)
    info.timings["predict"] = time.perf_counter() - t0
    return InterpolationResult(
        dataset=dataset,
        n_train=n,
        n_test=len(x_test),
        bandwidth=float(o.bandwidth),
        solver=o.solver,
        precision=o.precision if o.solver == "exact" else "float64",
        test_error=float(np.mean(test_scores.argmax(1) != np.asarray(y_test))) if len(y_test) else float("nan"),
        train_error=float(np.mean(train_scores.argmax(1) != y_train)),
        residual=float(np.linalg.norm(targets - train_scores) / np.linalg.norm(targets)),
        seconds=time.perf_counter() - t_start,
        peak_memory_bytes=peak_memory(),
        memory_needed_bytes=plan.total,
        matrix_mode=info.matrix_mode,
        iterations=info.iterations,
        converged=info.converged,
        recursive_residual=info.recursive_residual,
        timings={k: round(v, 3) for k, v in info.timings.items()},
    )


def interpolate_dataset(
    name: str, options: InterpolationOptions | None = None, data_dir: str | os.PathLike | None = None, warn: Callable[[str], None] = _to_stderr, **fields
) -> InterpolationResult:
    """:func:`interpolate` on a named dataset (``digits``, ``mnist``, ...): the first
    ``subset`` training images (default: all) and every test image. The options are checked
    before the dataset is loaded, the memory needed before the pixels are converted or any
    kernel computed."""
    from ...data import load_dataset
    o = options_of(InterpolationOptions, options, fields)
    data = load_dataset(name, data_dir)
    if o.subset is not None and o.subset > data.n_train:
        raise OptionError("subset", f"{{param}} {o.subset:,} exceeds the {data.n_train:,} training examples of {name}")
    n = data.n_train if o.subset is None else o.subset
    check_request(n, data.n_test, int(np.prod(data.input_shape)), data.num_classes, o)
    return interpolate(pixels(data.x_train[:n]), data.y_train[:n], pixels(data.x_test), data.y_test, o, classes=data.num_classes, dataset=name, warn=warn)
