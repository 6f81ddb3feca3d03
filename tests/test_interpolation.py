"""Min-norm RBF interpolation: packed storage, blockwise products, exact and CG solvers, checked
against dense numpy/scipy computations; bad input refused before any heavy work."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import lapack
from scipy.spatial.distance import cdist
from typer.testing import CliRunner

from manyruns.analysis.interpolation import (
    InterpolationOptions,
    BlockCholesky,
    BlockJacobi,
    PackedKernel,
    check_request,
    cluster_blocks,
    interpolate,
    interpolate_dataset,
    kernel_matmul,
    kernel_matrix,
    memory_plan,
    on_the_fly_warning,
    packed_bytes,
    pixels,
    solve_cg,
    solve_exact,
)
from manyruns.cli import app
from manyruns.cli.common import flag_of
from manyruns.data import load_dataset


def flags(error) -> str:
    """An option error as the command line words it (flags for parameters)."""
    return error.worded(names=lambda p: flag_of(p, {}))


def dense_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """The kernel the straightforward way: scipy's pairwise squared distances."""
    return np.exp(-bandwidth * cdist(a, b, "sqeuclidean"))


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return pixels(data.x_train), data.y_train, pixels(data.x_test), data.y_test


def random_points(n: int, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, d))


@pytest.mark.parametrize("n, block", [(1, 4), (7, 3), (12, 4), (41, 5), (64, 64), (50, 100)])
def test_block_cholesky_equals_numpys_factor_and_solve(n, block):
    x = random_points(n, seed=n)
    dense = dense_kernel(x, x, 2.0)
    factor = BlockCholesky.kernel(x, 2.0, block=block)
    assert [c.shape for c in factor.columns] == [(n - s, min(block, n - s)) for s in range(0, n, block)]
    np.testing.assert_allclose(factor.to_dense(), np.tril(dense), rtol=0, atol=1e-14)
    factor.factor()
    np.testing.assert_allclose(factor.to_dense(), np.linalg.cholesky(dense), rtol=0, atol=1e-9)
    y = np.random.default_rng(1).standard_normal((n, 3))
    np.testing.assert_allclose(factor.solve(y), np.linalg.solve(dense, y), rtol=1e-6, atol=1e-8)
    assert BlockCholesky.storage(n, block) == sum(c.nbytes for c in factor.columns)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 40, 41])
def test_packed_kernel_is_lapacks_rectangular_full_packed_form(n):
    x = random_points(n)
    dense = dense_kernel(x, x, 0.7)
    expected, info = lapack.dtrttf(np.asfortranarray(dense), transr="N", uplo="L")
    assert info == 0
    packed = PackedKernel.build(x, 0.7, block_bytes=5 * 8 * n)  # a few rows per block
    np.testing.assert_allclose(packed.data, expected, rtol=0, atol=1e-14)
    np.testing.assert_allclose(packed.to_dense(), dense, rtol=0, atol=1e-14)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 37),
    rows_per_block=st.integers(1, 40),
    leaf=st.integers(1, 40),
    columns=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_blockwise_products_equal_the_dense_product(n, rows_per_block, leaf, columns, seed):
    """Block and leaf sizes change nothing: packed, on-the-fly and full-matrix products."""
    x = random_points(n, seed=seed)
    other = random_points(5, seed=seed + 1)
    v = np.random.default_rng(seed).standard_normal((n, columns))
    dense = dense_kernel(x, x, 0.3)
    expected = dense @ v
    bytes_ = rows_per_block * n * 8
    np.testing.assert_allclose(PackedKernel.build(x, 0.3, block_bytes=bytes_).matmul(v, leaf=leaf), expected, atol=1e-12)
    np.testing.assert_allclose(kernel_matmul(x, None, v, 0.3, block_bytes=bytes_), expected, atol=1e-12)
    np.testing.assert_allclose(kernel_matmul(other, x, v, 0.3, block_bytes=bytes_), dense_kernel(other, x, 0.3) @ v, atol=1e-12)
    full = kernel_matrix(x, 0.3, np.float64, block_bytes=bytes_)
    np.testing.assert_array_equal(full, full.T)
    np.testing.assert_allclose(full, dense, atol=1e-14)


def test_exact_solver_matches_a_dense_solve_and_interpolates(digits):
    x, y, xt, yt = digits
    x, y = x[:400], y[:400]
    targets = np.eye(10)[y]
    alpha, _ = solve_exact(x, targets, 0.05)
    reference = scipy.linalg.solve(dense_kernel(x, x, 0.05), targets, assume_a="pos")
    np.testing.assert_allclose(alpha, reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max())
    # training points are interpolated: predictions equal the targets, hence the labels
    fitted = dense_kernel(x, x, 0.05) @ alpha
    np.testing.assert_allclose(fitted, targets, atol=1e-7)
    np.testing.assert_array_equal(fitted.argmax(1), y)


def test_interpolation_on_digits_matches_the_published_computation(digits):
    """The whole bundled digits split: a dense float64 solve of K alpha = Y as in the published
    MNIST snippet, against the packed solver end to end."""
    x, y, xt, yt = digits
    bandwidth = 0.02
    targets = np.eye(10)[y]
    coefficients = scipy.linalg.solve(dense_kernel(x, x, bandwidth), targets)
    predictions = (dense_kernel(xt, x, bandwidth) @ coefficients).argmax(1)
    result = interpolate_dataset("digits", bandwidth=bandwidth, solver="exact")
    assert result.n_train == len(x) and result.n_test == len(xt)
    assert result.test_error == pytest.approx(np.mean(predictions != yt), abs=0.5 / len(yt))
    assert result.train_error == 0.0
    assert result.residual < 1e-8
    assert result.seconds > 0 and result.peak_memory_bytes > 0


@pytest.mark.parametrize(
    "options",
    [
        {"preconditioner": "none", "matrix": "packed"},
        {"preconditioner": "block-jacobi", "block_size": 90, "matrix": "packed"},
        {"preconditioner": "block-jacobi", "block_size": 90, "matrix": "on-the-fly"},
    ],
)
def test_cg_agrees_with_the_exact_solver(digits, options):
    """A well-conditioned problem (larger bandwidth, 300 points): CG reaches the exact solution."""
    x, y, xt, yt = digits
    x, y = x[:300], y[:300]
    targets = np.eye(10)[y]
    exact, _ = solve_exact(x, targets, 0.3)
    alpha, info = solve_cg(x, targets, 0.3, tol=1e-10, max_iter=1000, **options)
    assert info.converged and info.matrix_mode == options["matrix"]
    assert np.linalg.norm(alpha - exact) / np.linalg.norm(exact) < 1e-6
    np.testing.assert_array_equal(kernel_matmul(xt, x, alpha, 0.3).argmax(1), kernel_matmul(xt, x, exact, 0.3).argmax(1))
    # the residual the recursion reports is the true one
    true_residual = np.linalg.norm(targets - dense_kernel(x, x, 0.3) @ alpha) / np.linalg.norm(targets)
    assert true_residual == pytest.approx(info.recursive_residual, rel=1e-3, abs=1e-11)


def test_block_jacobi_inverts_each_block_and_blocks_partition_the_points():
    x = random_points(230, d=4)
    blocks = cluster_blocks(x, 50)
    assert all(b.size <= 50 for b in blocks)
    np.testing.assert_array_equal(np.sort(np.concatenate(blocks)), np.arange(230))
    precondition = BlockJacobi(x, 2.0, blocks)
    r = np.random.default_rng(1).standard_normal((230, 3))
    z = precondition(r)
    for idx in blocks:
        np.testing.assert_allclose(dense_kernel(x[idx], x[idx], 2.0) @ z[idx], r[idx], atol=1e-8)


def test_cg_reports_the_true_residual_when_stopped_early(digits):
    x, y, _, _ = digits
    x, y = x[:300], y[:300]
    targets = np.eye(10)[y]
    alpha, info = solve_cg(x, targets, 0.02, tol=1e-12, max_iter=3, preconditioner="none")
    assert info.iterations == 3 and not info.converged
    true_residual = np.linalg.norm(targets - dense_kernel(x, x, 0.02) @ alpha) / np.linalg.norm(targets)
    assert true_residual == pytest.approx(info.recursive_residual, rel=1e-6)
    assert true_residual > 1e-6


def test_float32_packed_solve_is_close_on_a_well_conditioned_problem(digits):
    x, y, xt, yt = digits
    x = x[:200]
    targets = np.eye(10)[y[:200]]
    a64, _ = solve_exact(x, targets, 0.5)
    a32, _ = solve_exact(x, targets, 0.5, precision="float32")
    assert np.linalg.norm(a32 - a64) / np.linalg.norm(a64) < 1e-3


def test_interpolate_takes_subsets_in_order(digits):
    x, y, xt, yt = digits
    result = interpolate_dataset("digits", bandwidth=0.1, solver="exact", subset=150)
    direct = interpolate(x[:150], y[:150], xt, yt, bandwidth=0.1, solver="exact", classes=10)
    assert result.n_train == 150 and result.test_error == direct.test_error


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bandwidth", [0.0, -0.02, float("nan"), float("inf")])
def test_bandwidth_must_be_positive(bandwidth):
    with pytest.raises(ValueError, match="bandwidth must be a positive number"):
        interpolate_dataset("digits", bandwidth=bandwidth)


def test_a_matrix_that_does_not_fit_is_refused_with_the_memory_it_needs():
    # 60,000 MNIST-sized points: one triangle of the float64 matrix in block columns of 1,024
    # is 14.6 GB; refused at 8 GB without touching any data.
    with pytest.raises(ValueError) as err:
        check_request(60_000, 10_000, 784, 10, InterpolationOptions(bandwidth=0.02, solver="exact", memory_gib=8 * 10**9 / 2**30))
    message = flags(err.value)
    assert "needs about 16.3 GB" in message and "8.0 GB is available" in message
    assert "the float64 kernel matrix (one triangle, in block columns) 14.6 GB" in message
    assert "use --subset N, --precision float32 or --solver cg" in message
    assert "\n" not in message
    plan = memory_plan(60_000, 10_000, 784, 10, "exact")
    triangle = 60_000 * 60_001 // 2 * 8
    column_tops = sum(w * (w - 1) // 2 for w in [1024] * 58 + [60_000 - 58 * 1024]) * 8  # above-diagonal parts of the diagonal blocks
    assert plan.matrix == triangle + column_tops
    assert memory_plan(60_000, 10_000, 784, 10, "exact", precision="float32").matrix == plan.matrix // 2
    # CG falls back to products computed on the fly when the matrix does not fit
    assert memory_plan(60_000, 10_000, 784, 10, "cg", available=8 * 10**9).matrix_mode == "on-the-fly"
    assert memory_plan(60_000, 10_000, 784, 10, "cg", available=64 * 10**9).matrix_mode == "packed"


@pytest.mark.parametrize("matrix", ["auto", "on-the-fly"])
def test_a_cg_refusal_names_what_it_holds_and_suggests_only_what_helps(matrix):
    with pytest.raises(ValueError) as err:
        check_request(60_000, 10_000, 784, 10, InterpolationOptions(bandwidth=0.02, solver="cg", matrix=matrix, memory_gib=2 * 10**9 / 2**30))
    message = flags(err.value)
    assert "needs about 3.4 GB (no kernel matrix (recomputed at every product), preconditioner blocks 1.9 GB," in message
    assert "pixels and targets 477.4 MB, a fixed 314.6 MB for the interpreter and its libraries) but 2.0 GB is available" in message
    assert "0 bytes" not in message and "--matrix on-the-fly" not in message
    assert message.endswith("use --subset N, a smaller --preconditioner-block or --preconditioner none")
    with pytest.raises(ValueError) as err:
        check_request(60_000, 10_000, 784, 10, InterpolationOptions(bandwidth=0.02, solver="cg", matrix=matrix, preconditioner="none", memory_gib=10**9 / 2**30))
    assert "preconditioner" not in flags(err.value) and flags(err.value).endswith("is available; use --subset N")
    with pytest.raises(ValueError) as err:
        check_request(60_000, 10_000, 784, 10, InterpolationOptions(bandwidth=0.02, solver="cg", matrix="packed", memory_gib=8 * 10**9 / 2**30))
    assert "the packed float64 kernel matrix 14.4 GB" in flags(err.value) and "--matrix on-the-fly" in flags(err.value)


def test_the_estimate_for_a_small_problem_is_its_fixed_allowance_and_a_bound():
    """The bundled digits: everything but the interpreter's fixed allowance is under 100 MB, and
    the whole estimate is above what the process really uses (measured in its own process)."""
    plan = memory_plan(1438, 359, 64, 10, "exact")
    assert plan.total - plan.process < 100 * 10**6
    out = subprocess.run(
        [sys.executable, "-m", "manyruns.cli", "interpolate", "--dataset", "digits", "--json"], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result["memory_needed_bytes"] == plan.total
    assert result["peak_memory_bytes"] <= plan.total


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bandwidth": 0.0}, "bandwidth must be a positive number, got 0.0"),
        ({"subset": 0}, "subset must be at least 1"),
        ({"solver": "lu"}, "solver must be one of exact, cg"),
        ({"precision": "float16"}, "precision must be one of"),
        ({"matrix": "dense"}, "matrix must be one of"),
        ({"preconditioner": "ilu"}, "preconditioner must be"),
        ({"tol": 0.0}, "tol must be positive"),
        ({"max_iter": 0}, "max_iter must be at least 1"),
        ({"preconditioner_block": 0}, "preconditioner_block must be at least 1"),
        ({"memory_gib": -1}, "memory_gib must be positive"),
    ],
)
def test_options_are_checked_before_the_dataset_is_loaded(tmp_path, kwargs, message):
    """No MNIST files under ``tmp_path``: the option is refused, not the missing data."""
    options = {"bandwidth": 0.02, **kwargs}
    with pytest.raises(ValueError, match=message):
        interpolate_dataset("mnist", data_dir=tmp_path, **options)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"subset": 0}, "subset must be at least 1"),
        ({"subset": 5000}, "exceeds the 1,438 training examples"),
        ({"solver": "lu"}, "solver must be one of exact, cg"),
        ({"precision": "float16"}, "precision must be one of"),
        ({"tol": 0.0}, "tol must be positive"),
        ({"matrix": "dense"}, "matrix must be one of"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        interpolate_dataset("digits", bandwidth=0.02, **kwargs)


# -------------------------------------------------------------------------------------- CLI


def test_cli_interpolate_json_and_errors():
    runner = CliRunner()
    out = runner.invoke(app, ["interpolate", "--dataset", "digits", "--subset", "200", "--bandwidth", "0.05", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    for key in ("test_error", "n_train", "seconds", "residual", "peak_memory_bytes", "train_error"):
        assert key in result
    assert result["n_train"] == 200 and 0 <= result["test_error"] <= 1 and result["train_error"] == 0.0

    out = runner.invoke(app, ["interpolate", "--dataset", "digits", "--subset", "200", "--solver", "cg", "--bandwidth", "0.3"])
    assert out.exit_code == 0, out.output
    assert "CG:" in out.stdout and "iterations" in out.stdout and "relative residual" in out.stdout

    out = runner.invoke(app, ["interpolate", "--dataset", "digits", "--bandwidth", "0"])
    assert out.exit_code == 2 and out.stderr.strip() == "error: --bandwidth must be a positive number, got 0.0"

    out = runner.invoke(app, ["interpolate", "--dataset", "digits", "--memory-gib", repr(0.001e9 / 2**30)])
    assert out.exit_code == 2
    assert "needs about" in out.stderr and "1.0 MB is available" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    # the old option, in decimal GB, still works for a release, with a note
    out = runner.invoke(app, ["interpolate", "--dataset", "digits", "--memory-limit", "0.001"])
    note, error = out.stderr.strip().splitlines()
    assert out.exit_code == 2 and "--memory-limit is deprecated" in note and "1.0 MB is available" in error

    out = runner.invoke(app, ["interpolate", "--dataset", "digits", "--kernel", "laplace"])
    assert out.exit_code == 2 and "--kernel must be one of rbf" in out.stderr


def test_cli_interpolate_checks_the_bandwidth_before_loading_the_data(tmp_path):
    out = CliRunner().invoke(app, ["interpolate", "--dataset", "mnist", "--data-dir", str(tmp_path), "--bandwidth", "0"])
    assert out.exit_code == 2 and out.stderr.strip() == "error: --bandwidth must be a positive number, got 0.0"


def test_cli_cg_warns_on_stderr_when_the_matrix_does_not_fit():
    """Between what CG needs with and without its matrix, ``auto`` recomputes the kernel at
    every product: one warning line on stderr, the JSON on stdout names the mode."""
    n = 300
    without = memory_plan(n, 359, 64, 10, "cg", matrix="on-the-fly", available=1)
    limit = without.total + packed_bytes(n) // 2
    args = ["interpolate", "--dataset", "digits", "--subset", str(n), "--solver", "cg", "--bandwidth", "0.3", "--json"]
    out = CliRunner().invoke(app, [*args, "--memory-gib", repr(limit / 2**30)])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["matrix_mode"] == "on-the-fly"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith(f"warning: the packed float64 kernel matrix of 300 training examples ({packed_bytes(n) / 1e3:.1f} kB)")
    assert "does not fit in the memory limit" in line and "every CG product recomputes kernel blocks" in line
    flops = 300 * 300 * 64 + 2 * 300 * 300 * 10
    assert f"up to 500 products x {flops:.1e} FLOPs = {500 * flops:.1e} FLOPs" in line
    assert "use --subset N or run with more memory" in line
    out = CliRunner().invoke(app, [*args, "--memory-gib", repr((without.total + packed_bytes(n)) / 2**30)])
    assert out.exit_code == 0 and out.stderr == ""
    assert json.loads(out.stdout)["matrix_mode"] == "packed"


def test_interpolate_warns_before_solving_only_when_auto_falls_back(digits):
    x, y, xt, yt = digits
    x, y = x[:200], y[:200]
    limit = memory_plan(200, len(xt), 64, 10, "cg", matrix="on-the-fly", available=1).total
    without = memory_plan(200, len(xt), 64, 10, "cg", available=limit)
    lines = []
    result = interpolate(x, y, xt, yt, bandwidth=0.3, solver="cg", classes=10, memory_gib=limit / 2**30, warn=lines.append)
    assert result.matrix_mode == "on-the-fly" and lines == [on_the_fly_warning(without, 200, 64, 10, 500)]
    for matrix in ("on-the-fly", "packed"):
        result = interpolate(x, y, xt, yt, bandwidth=0.3, solver="cg", classes=10, matrix=matrix, warn=lines.append)
        assert result.matrix_mode == matrix
    assert len(lines) == 1
