"""The ensemble kernel, k-NN prediction, ensemble curves and pairs, each against a direct
implementation of its definition on small real stores."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp, softmax

import manyruns
from manyruns.analysis.ensemble import ensemble_accuracy, ensemble_curve
from manyruns.analysis.kernel import (
    ArrayLogits,
    ColumnMoments,
    KernelOptions,
    Workspace,
    column_moments,
    PopulationLogits,
    kernel_matrix,
    kernel_topk,
    plan_memory,
)
from manyruns.analysis.knn import knn_accuracy, knn_evaluate, knn_predict
from manyruns.analysis.neighbours import Neighbours, load_neighbours, neighbours, stored_or_computed
from manyruns.analysis.pairs import drop_mirrored, feature_neighbours, parse_ranks, rank_pairs, select_ranks
from manyruns.report.pairs import kernel_vs_features_grid, neighbour_grid
from manyruns.streaming import doubling_sizes
from manyruns.data import load_dataset
from manyruns.formats.multirun import import_multirun_logits
from manyruns.errors import OptionError
from manyruns.store import StoreError

from .conftest import tiny_recipe
from .logfiles import write_log

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "kernel" / "run_kernel_experiment.py"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False: no CUDA device to compare against the CPU")


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=env, timeout=300)


# --------------------------------------------------------------------- direct implementations


def standardized(x: np.ndarray) -> np.ndarray:
    """``(R, N)`` -> z-scores across runs (Bessel), 0 for columns equal in every run."""
    mean = x.mean(0)
    std = x.std(0, ddof=1)
    constant = np.ptp(x, axis=0) == 0
    z = (x - mean) / np.where(constant, 1.0, std)
    z[:, constant] = 0.0
    return z


def reference_kernel(query: np.ndarray, train: np.ndarray, log_softmax: bool = True, classes=None) -> np.ndarray:
    """The published definition in float64, one class at a time."""
    q, t = query.astype(np.float64), train.astype(np.float64)
    if log_softmax:
        q = q - logsumexp(q, axis=2, keepdims=True)
        t = t - logsumexp(t, axis=2, keepdims=True)
    R = q.shape[0]
    classes = list(range(q.shape[2])) if classes is None else list(classes)
    K = np.zeros((q.shape[1], t.shape[1]))
    for c in classes:
        K += standardized(q[:, :, c]).T @ standardized(t[:, :, c]) / R
    return K / len(classes)


def pearson_kernel(query: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``(R - 1) / R`` times the mean over classes of Pearson correlations (np.corrcoef)."""
    q = query.astype(np.float64) - logsumexp(query.astype(np.float64), axis=2, keepdims=True)
    t = train.astype(np.float64) - logsumexp(train.astype(np.float64), axis=2, keepdims=True)
    R, nq, C = q.shape
    K = np.zeros((nq, t.shape[1]))
    for c in range(C):
        K += np.corrcoef(q[:, :, c].T, t[:, :, c].T)[:nq, nq:]
    return (R - 1) / R * K / C


def brute_force_knn(indices, values, train_labels, num_classes, k, power):
    """One query at a time: tally the votes, then walk the neighbours from the nearest."""
    out = []
    for idx, val in zip(indices, values):
        votes = [0.0] * num_classes
        for j in range(k):
            votes[train_labels[idx[j]]] += 1.0 if power == 0 else max(float(val[j]), 0.0) ** power
        best = max(votes)
        out.append(next(train_labels[idx[j]] for j in range(k) if votes[train_labels[idx[j]]] == best))
    return np.array(out)


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def imported(tmp_path_factory, digits):
    """Synthetic logits of 9 runs over the digits examples, imported from two log files."""
    root = tmp_path_factory.mktemp("imported")
    write_log(root / "a.pt", 5, digits.y_train, digits.y_test, seed=1)
    write_log(root / "b.pt", 4, digits.y_train, digits.y_test, seed=2)
    import_multirun_logits([root / "a.pt", root / "b.pt"], root / "store", "digits")
    return manyruns.open(root / "store")


@pytest.fixture(scope="module")
def logits(imported):
    return np.asarray(imported.array("logits/train")[:]), np.asarray(imported.array("logits/test")[:])


@pytest.fixture(scope="module")
def dense(logits):
    """The reference kernel of the imported store's test examples against its train examples."""
    train, test = logits
    return reference_kernel(test, train)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real population: 6 small MLPs on digits; the first 2 keep penultimate features."""
    root = tmp_path_factory.mktemp("trained")
    recipe = root / "r.toml"
    recipe.write_text(
        tiny_recipe(runs=6, subset="1.0").replace("weights = [0, 3]", "features = 2").replace("widths = [32]", "widths = [16]").replace("epochs = 3", "epochs = 2")
    )
    manyruns.plan(recipe, root / "store")
    manyruns.train(root / "store", executor="serial", progress=False)
    return manyruns.open(root / "store")


# ------------------------------------------------------------------------------------ kernel


def test_kernel_equals_the_published_definition(imported, logits, dense):
    train, test = logits
    source = PopulationLogits(imported)
    K = kernel_matrix(source)
    assert K.shape == (359, 1438) and K.dtype == np.float32
    assert np.abs(K - dense).max() < 2e-5
    assert np.abs(K - pearson_kernel(test, train)).max() < 2e-5
    # without the log-softmax, per class, and with the first runs only
    raw = kernel_matrix(source, options=KernelOptions(log_softmax=False))
    assert np.abs(raw - reference_kernel(test, train, log_softmax=False)).max() < 2e-5
    one = kernel_matrix(source, options=KernelOptions(classes=(3,)))
    assert np.abs(one - reference_kernel(test, train, classes=[3])).max() < 5e-5
    first = kernel_matrix(PopulationLogits(imported, runs=4))
    assert np.abs(first - reference_kernel(test[:4], train[:4])).max() < 2e-5
    # train examples as queries: the kernel of the training set with itself (symmetric)
    self_k = kernel_matrix(source, "train", KernelOptions(tile=500))
    assert np.abs(self_k - reference_kernel(train, train)).max() < 2e-5
    assert np.abs(self_k - self_k.T).max() < 2e-5


def test_constant_columns_contribute_nothing(digits):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(5, 30, 4)).astype(np.float16)
    test = rng.normal(size=(5, 7, 4)).astype(np.float16)
    test[:, 2] = test[0, 2]  # one query the same in every run: all its columns are constant
    train[:, 5, 1] = 3.0  # one raw column constant (its log-softmax still varies)
    K = kernel_matrix(ArrayLogits(train, test))
    assert np.all(K[2] == 0)
    assert np.abs(K - reference_kernel(test, train)).max() < 2e-5
    raw = kernel_matrix(ArrayLogits(train, test), options=KernelOptions(log_softmax=False))
    assert np.abs(raw - reference_kernel(test, train, log_softmax=False)).max() < 2e-5
    assert np.isfinite(raw).all()


@settings(max_examples=10, deadline=None)
@given(block_runs=st.integers(1, 9), tile=st.integers(50, 1438), seed=st.integers(0, 2**16))
def test_streaming_ignores_block_size_tiles_and_run_order(imported, dense, block_runs, tile, seed):
    order = np.random.default_rng(seed).permutation(imported.num_runs)
    K = kernel_matrix(PopulationLogits(imported, runs=order), options=KernelOptions(block_runs=block_runs, tile=tile))
    assert np.abs(K - dense).max() < 2e-5


@SETTINGS
@given(split=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_moment_accumulators_merge(split, seed):
    import torch

    x = torch.from_numpy(np.random.default_rng(seed).normal(3, 2, size=(9, 4, 11)).astype(np.float32))
    whole, a, b = ColumnMoments(), ColumnMoments(), ColumnMoments()
    whole.update(x)
    a.update(x[:split])
    b.update(x[split:])
    mean, std = a.merge(b).mean_std()
    assert np.allclose(mean.numpy(), x.double().mean(0).numpy(), atol=1e-6)
    assert np.allclose(std.numpy(), x.double().std(0).numpy(), atol=1e-6)
    assert np.allclose(whole.mean_std()[1].numpy(), std.numpy(), atol=1e-6)


def test_topk_is_the_argsort_of_the_dense_kernel(imported, logits, dense):
    train, _ = logits
    nb = kernel_topk(PopulationLogits(imported), 7, "test", KernelOptions(tile=300, block_runs=4))
    assert nb.indices.shape == (359, 7) and nb.indices.dtype == np.int64 and nb.values.dtype == np.float32
    assert np.array_equal(nb.indices, np.argsort(-dense, axis=1, kind="stable")[:, :7])
    assert np.abs(nb.values - -np.sort(-dense, axis=1)[:, :7]).max() < 2e-5
    # train queries: never the example itself
    nb = kernel_topk(PopulationLogits(imported), 5, "train", KernelOptions(tile=400))
    self_dense = reference_kernel(train, train)
    np.fill_diagonal(self_dense, -np.inf)
    assert np.array_equal(nb.indices, np.argsort(-self_dense, axis=1, kind="stable")[:, :5])
    assert not (nb.indices == np.arange(1438)[:, None]).any()


def test_memory_budget_bounds_the_accumulator_not_the_runs():
    for runs in (10, 1000, 100000):
        plan = plan_memory(runs, 10000, 50000, 10, 10, KernelOptions(memory_gib=1.0), False)
        assert 10000 * plan.tile * 4 <= 2**30 / 2 + 1
        assert plan.block_runs * 2 * 10 * 60000 <= 2**30
    small = ArrayLogits(*[np.random.default_rng(1).normal(size=(4, n, 10)).astype(np.float16) for n in (200, 50)])
    tiny = kernel_topk(small, 3, "test", KernelOptions(memory_gib=2e-5))  # forces tiles of train examples
    assert plan_memory(4, 50, 200, 10, 10, KernelOptions(memory_gib=2e-5), False).tile < 200
    whole = kernel_topk(small, 3, "test")
    assert np.array_equal(tiny.indices, whole.indices) and np.allclose(tiny.values, whole.values, atol=1e-6)


def test_bfloat16_products_stay_close(imported):
    exact = kernel_topk(PopulationLogits(imported), 5, "test")
    fast = kernel_topk(PopulationLogits(imported), 5, "test", KernelOptions(precision="bfloat16"))
    assert np.abs(fast.values - exact.values).max() < 0.01
    assert np.mean(fast.indices[:, 0] == exact.indices[:, 0]) > 0.9


def test_clear_errors(tmp_path, imported, write_recipe):
    with pytest.raises(ValueError, match="at least 2 runs"):
        kernel_topk(PopulationLogits(imported, runs=[0]), 3)
    with pytest.raises(ValueError, match="k must lie in 1..1438"):
        kernel_topk(PopulationLogits(imported), 2000)
    with pytest.raises(ValueError, match="outside 0..9"):
        kernel_matrix(PopulationLogits(imported), options=KernelOptions(classes=(12,)))
    store = tmp_path / "nologits"
    manyruns.plan(write_recipe(tiny_recipe(runs=2).replace('logits = ["train", "test"]', "logits = []")), store)
    with pytest.raises(StoreError, match="needs logits/train and logits/test"):
        neighbours(manyruns.open(store), k=3)
    # planned but not trained: no committed runs
    store = tmp_path / "untrained"
    manyruns.plan(write_recipe(tiny_recipe(runs=2), "u.toml"), store)
    result = cli("knn", str(store))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "selects no runs" in lines[0]


def test_neighbours_are_kept_in_the_store_and_reused(imported):
    nb = neighbours(imported, k=6, runs=5)
    where = nb.save(imported)
    assert where == "analysis/kernel-test"
    back = load_neighbours(imported)
    assert np.array_equal(back.indices, nb.indices) and np.array_equal(back.runs, np.arange(5))
    assert back.options.k == 6 and back.options.log_softmax is True
    reused = stored_or_computed(imported, k=4, runs=5)
    assert np.array_equal(reused.indices, nb.indices[:, :4])
    other = stored_or_computed(imported, k=4, runs=6)  # other runs: computed afresh
    assert not np.array_equal(other.runs, back.runs)


# ------------------------------------------------------------------------------------- k-NN


@SETTINGS
@given(k=st.integers(1, 6), power=st.sampled_from([0.0, 1.0, 4.0]), seed=st.integers(0, 2**16))
def test_knn_matches_a_brute_force_loop(k, power, seed):
    rng = np.random.default_rng(seed)
    train_labels = rng.integers(0, 3, size=20)  # few classes: many ties
    indices = np.stack([rng.permutation(20)[:6] for _ in range(40)])
    values = -np.sort(-rng.choice([-0.2, 0.1, 0.3, 0.5], size=(40, 6)), axis=1).astype(np.float32)
    nb = Neighbours(indices=indices, values=values)
    predicted = knn_predict(nb, train_labels, 3, k, power)
    assert np.array_equal(predicted, brute_force_knn(indices, values, train_labels, 3, k, power))


def test_knn_ties_go_to_the_nearest_neighbour():
    nb = Neighbours(indices=np.array([[0, 1, 2, 3]]), values=np.array([[0.9, 0.8, 0.7, 0.6]], dtype=np.float32))
    labels = np.array([2, 1, 1, 2])
    assert knn_predict(nb, labels, 3, k=4)[0] == 2  # 2 votes each: the nearest is class 2
    assert knn_predict(nb, labels, 3, k=3)[0] == 1
    assert knn_predict(nb, labels, 3, k=4, power=4)[0] == 2  # 0.9^4 + 0.6^4 > 0.8^4 + 0.7^4


def test_knn_evaluate_against_direct_computation(imported, logits, dense):
    train, test = logits
    y_train, y_test = imported.targets("train"), imported.targets("test")
    result = knn_evaluate(imported, k=3, sizes=[2, 4, 9])
    top = np.argsort(-dense, axis=1, kind="stable")[:, :3]
    expected = brute_force_knn(top, -np.sort(-dense, axis=1)[:, :3], y_train, 10, 3, 0)
    assert result.accuracy == pytest.approx(np.mean(expected == y_test))
    assert result.ensemble_accuracy == pytest.approx(np.mean(test.astype(np.float64).mean(0).argmax(1) == y_test))
    assert [row["runs"] for row in result.by_runs] == [2, 4, 9]
    assert result.by_runs[-1]["accuracy"] == result.accuracy
    dense4 = reference_kernel(test[:4], train[:4])
    top4 = np.argsort(-dense4, axis=1, kind="stable")[:, :3]
    expected4 = brute_force_knn(top4, -np.sort(-dense4, axis=1)[:, :3], y_train, 10, 3, 0)
    assert result.by_runs[1]["accuracy"] == pytest.approx(np.mean(expected4 == y_test))


# --------------------------------------------------------------------------------- ensemble


@SETTINGS
@given(block=st.integers(1, 10))
def test_ensemble_curve_matches_direct_averaging(imported, logits, block):
    _, test = logits
    y = imported.targets("test")
    curve = ensemble_curve(imported, block_size=block)
    assert curve.sizes == [1, 2, 4, 8, 9] == doubling_sizes(9)
    x = test.astype(np.float64)
    for n, logit_acc, prob_acc in zip(curve.sizes, curve.logit_accuracy, curve.prob_accuracy):
        assert logit_acc == pytest.approx(np.mean(x[:n].mean(0).argmax(1) == y))
        assert prob_acc == pytest.approx(np.mean(softmax(x[:n], axis=2).mean(0).argmax(1) == y))
    single = (x.argmax(2) == y).mean(1)
    assert curve.mean_accuracy == pytest.approx(single.mean()) and curve.std_accuracy == pytest.approx(single.std(ddof=1))
    assert ensemble_accuracy(imported)["logit_accuracy"] == pytest.approx(curve.logit_accuracy[-1])


# -------------------------------------------------------------------------------------- pairs


def test_rank_pairs_and_failure_filter():
    nb = Neighbours(indices=np.array([[4, 1], [2, 0], [3, 3], [0, 1]]), values=np.array([[0.5, 0.1], [0.9, 0.2], [0.7, 0.6], [0.2, 0.1]], dtype=np.float32))
    y_query, y_train = np.array([0, 1, 2, 1]), np.array([3, 1, 1, 2, 0])
    table = rank_pairs(nb, y_query, y_train)
    assert list(table.columns) == ["rank", "test_index", "train_index", "kernel", "test_label", "train_label"]
    assert table.test_index.tolist() == [1, 2, 0, 3] and table.train_index.tolist() == [2, 3, 4, 0]
    assert table["rank"].tolist() == [1, 2, 3, 4]
    failures = rank_pairs(nb, y_query, y_train, different_labels=True)
    assert failures.test_index.tolist() == [3] and failures["rank"].tolist() == [1]
    assert parse_ranks("601-648") == (601, 648) and select_ranks(table, 2, 3).test_index.tolist() == [2, 0]
    mirrored = pd.DataFrame({"rank": [1, 2, 3, 4], "query_index": [5, 7, 6, 1], "train_index": [7, 5, 1, 6], "kernel": [0.9, 0.9, 0.8, 0.8], "query_label": 0, "train_label": 0})
    kept = drop_mirrored(mirrored)
    assert kept.query_index.tolist() == [5, 6] and kept["rank"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="FIRST-LAST"):
        parse_ranks("a-b")


def test_feature_neighbours_match_numpy_distances():
    rng = np.random.default_rng(3)
    train, queries = rng.normal(size=(60, 5)), rng.normal(size=(7, 5))
    found = feature_neighbours(train, queries, 3, chunk=3)
    distances = ((queries[:, None, :] - train[None]) ** 2).sum(-1)
    assert np.array_equal(found, np.argsort(distances, axis=1)[:, :3])
    excluded = feature_neighbours(train, train[:7], 2, exclude=np.arange(7))
    assert not (excluded == np.arange(7)[:, None]).any()


def test_grids_on_a_trained_population(tmp_path, trained):
    data = trained.dataset()
    nb = neighbours(trained, k=9)
    table = rank_pairs(nb, trained.targets("test"), trained.targets("train"))
    path = neighbour_grid(select_ranks(table, 1, 16), nb, data.x_test, data.x_train, data.y_train, data.classes, tmp_path / "pairs.png", 1)
    assert path.stat().st_size > 1000
    path = neighbour_grid(select_ranks(table, 1, 3), nb, data.x_test, data.x_train, data.y_train, data.classes, tmp_path / "nine.png", 9)
    assert path.stat().st_size > 1000
    path, chosen = kernel_vs_features_grid(trained, data, nb, tmp_path / "random.png", count=5, seed=1)
    assert path.stat().st_size > 1000 and chosen["feature_run"] == 0 and len(chosen["queries"]) == 5
    features = trained.array("features/train")[0].astype(np.float32)
    q = trained.array("features/test")[0].astype(np.float32)[chosen["queries"]]
    assert np.array_equal(np.asarray(chosen["features"]), feature_neighbours(features, q, 2))
    with pytest.raises(OptionError, match="no recorded features"):
        kernel_vs_features_grid(trained, data, nb, tmp_path / "x.png", run=4)


def invoke(*args: str):
    """Run a command in this process (the subprocess tests above cover exit codes and stderr)."""
    from typer.testing import CliRunner

    from manyruns.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_commands(tmp_path, trained):
    store = str(trained.path)
    result = invoke("kernel", store, "--k", "5", "--out", str(tmp_path / "nb.npz"), "--json")
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "nb.npz")
    assert saved["indices"].dtype == np.int64 and saved["values"].dtype == np.float32 and saved["indices"].shape == (359, 5)
    nb = neighbours(manyruns.open(store), k=5)
    assert np.array_equal(saved["indices"], nb.indices)
    assert json.loads(result.stdout)["stored"] == "analysis/kernel-test"

    result = invoke("knn", store, "--k", "3", "--sizes", "2,6", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {"accuracy", "ensemble_accuracy", "by_runs"} <= set(info)
    assert [row["runs"] for row in info["by_runs"]] == [2, 6] and {"runs", "accuracy", "ensemble_accuracy"} == set(info["by_runs"][0])
    assert 0.5 < info["accuracy"] <= 1

    result = invoke("ensemble", store, "--json", "--plot", str(tmp_path / "ens.png"))
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {"mean_accuracy", "std_accuracy", "ensemble_accuracy"} <= set(info) and (tmp_path / "ens.png").is_file()

    result = invoke("pairs", store, "--ranks", "3-10", "--grid", str(tmp_path / "p.png"), "--csv", str(tmp_path / "p.csv"), "--features-grid", str(tmp_path / "r.png"))
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns) == ["rank", "test_index", "train_index", "kernel", "test_label", "train_label"] and len(table) == 359
    assert (tmp_path / "p.png").is_file() and (tmp_path / "r.png").is_file()
    result = invoke("pairs", store, "--different-labels", "--neighbours", "9", "--grid", str(tmp_path / "f.png"), "--csv", str(tmp_path / "f.csv"))
    assert result.exit_code == 0, result.output
    failures = pd.read_csv(tmp_path / "f.csv")
    assert (failures.test_label != failures.train_label).all() and (tmp_path / "f.png").is_file()


# ------------------------------------------------------------------------- CLI options


@pytest.fixture
def own_store(tmp_path, trained):
    """A copy of the trained store: the commands below overwrite its analysis groups."""
    path = tmp_path / "store"
    shutil.copytree(trained.path, path)
    return path


@pytest.mark.parametrize(
    "args, api, stored",
    [
        (["--queries", "train"], {"queries": "train"}, "analysis/kernel-train"),
        (["--no-log-softmax"], {"log_softmax": False}, "analysis/kernel-test-raw"),
        (["--runs", "4"], {"runs": 4}, "analysis/kernel-test"),
        (["--classes", "3"], {"classes": [3]}, "analysis/kernel-test-class-3"),
        (["--classes", "0,2", "--no-log-softmax", "--runs", "3", "--queries", "train"], {"classes": [0, 2], "log_softmax": False, "runs": 3, "queries": "train"}, "analysis/kernel-train-raw-class-0-2"),
    ],
)
def test_cli_kernel_options_match_the_api(tmp_path, own_store, args, api, stored):
    out = tmp_path / "nb.npz"
    result = invoke("kernel", str(own_store), "--k", "5", *args, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    pop = manyruns.open(own_store)
    expected = neighbours(pop, k=5, **api)
    saved = np.load(out)
    assert saved["indices"].dtype == np.int64 and saved["values"].dtype == np.float32
    assert np.array_equal(saved["indices"], expected.indices) and np.array_equal(saved["values"], expected.values)
    queries = api.get("queries", "test")
    runs = api.get("runs", pop.num_runs)
    assert saved["indices"].shape == (pop.targets(queries).size, 5)
    assert info["stored"] == stored and info["run_count"] == runs and info["queries"] == queries and info["queries_count"] == pop.targets(queries).size
    assert info["runs"] == list(range(runs))
    assert info["options"]["log_softmax"] is api.get("log_softmax", True) and info["options"]["classes"] == api.get("classes")
    kept = load_neighbours(pop, stored.split("/", 1)[1])
    assert np.array_equal(kept.indices, expected.indices) and np.array_equal(kept.runs, np.arange(runs))
    if queries == "train":
        assert not (saved["indices"] == np.arange(pop.targets("train").size)[:, None]).any()
    default = neighbours(pop, k=5)
    assert not np.array_equal(saved["values"], default.values)  # the option reached the kernel


def test_cli_knn_power_matches_the_api(own_store):
    pop = manyruns.open(own_store)
    y_train, y_test = pop.targets("train"), pop.targets("test")
    for power in ("0", "4"):
        result = invoke("knn", str(own_store), "--k", "5", "--power", power, "--sizes", "3,6", "--json")
        assert result.exit_code == 0, result.output
        info = json.loads(result.stdout)
        expected = knn_evaluate(pop, k=5, power=float(power), sizes=[3, 6])
        assert info["power"] == float(power) and info["k"] == 5
        assert info["accuracy"] == expected.accuracy and info["ensemble_accuracy"] == expected.ensemble_accuracy
        assert info["by_runs"] == expected.by_runs
        assert info["accuracy"] == knn_accuracy(neighbours(pop, k=5), y_train, y_test, pop.classes, 5, float(power))
        assert info["by_runs"][0]["accuracy"] == knn_accuracy(neighbours(pop, k=5, runs=3), y_train, y_test, pop.classes, 5, float(power))
        assert dict(pop.store.group["analysis/knn"].attrs["params"])["power"] == float(power)


# ------------------------------------------------------------------- the experiment script


def test_experiment_counts_training_pairs_over_queries_and_distinct_pairs(trained):
    spec = importlib.util.spec_from_file_location("run_kernel_experiment", EXPERIMENT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # 0 <-> 1 and 2 <-> 3 are each other's nearest; 4's nearest is 0
    nb = Neighbours(indices=np.array([[1], [0], [3], [2], [0]]), values=np.array([[0.9], [0.9], [0.8], [0.8], [0.5]], dtype=np.float32))
    table, counts = script.train_pair_counts(nb, np.array([0, 1, 0, 0, 1]))
    assert counts["queries"] == 5 and counts["distinct_pairs"] == 3 == len(table)
    assert counts["nearest_label_differs"] == {"queries": 3, "distinct_pairs": 2}
    assert counts["top1_kernel"]["mean_over_queries"] == pytest.approx(0.78)
    assert counts["top1_kernel"]["mean_over_distinct_pairs"] == pytest.approx((0.9 + 0.8 + 0.5) / 3)
    assert counts["top1_kernel"]["max"] == pytest.approx(0.9)
    # on a real population: the count over queries is that of every train example's nearest
    y = trained.targets("train")
    nb = neighbours(trained, k=1, queries="train")
    table, counts = script.train_pair_counts(nb, y)
    assert counts["queries"] == y.size and counts["nearest_label_differs"]["queries"] == int((y[nb.indices[:, 0]] != y).sum())
    assert counts["distinct_pairs"] == len(table) == len(drop_mirrored(rank_pairs(nb, y, y, query_name="query"))) < y.size
    assert counts["nearest_label_differs"]["distinct_pairs"] == int((table.query_label != table.train_label).sum())


# ----------------------------------------------------------------------------------- CUDA


CUDA_OPTIONS = [
    KernelOptions(),
    KernelOptions(log_softmax=False),
    KernelOptions(classes=(3,)),
    KernelOptions(classes=(0, 2), log_softmax=False),
    KernelOptions(block_runs=2, tile=300),
    KernelOptions(memory_gib=2e-4),
]


@needs_cuda
@pytest.mark.parametrize("queries", ["test", "train"])
@pytest.mark.parametrize("options", CUDA_OPTIONS, ids=lambda o: f"ls{int(o.log_softmax)}-c{o.classes}-b{o.block_runs}-t{o.tile}-m{o.memory_gib}")
def test_cuda_kernel_matches_cpu(imported, queries, options):
    source = PopulationLogits(imported)
    cpu = kernel_matrix(source, queries, options)
    gpu = kernel_matrix(source, queries, dataclasses.replace(options, device="cuda"))
    assert gpu.shape == cpu.shape and gpu.dtype == np.float32
    assert np.abs(gpu - cpu).max() < 2e-5
    top_cpu = kernel_topk(source, 7, queries, options)
    top_gpu = kernel_topk(source, 7, queries, dataclasses.replace(options, device="cuda"))
    assert top_gpu.indices.dtype == np.int64 and top_gpu.values.dtype == np.float32
    assert np.abs(top_gpu.values - top_cpu.values).max() < 2e-5
    assert np.abs(np.take_along_axis(cpu, top_gpu.indices, 1) - top_cpu.values).max() < 2e-5  # ties may swap places
    if queries == "train":
        assert not (top_gpu.indices == np.arange(cpu.shape[0])[:, None]).any()


@needs_cuda
def test_cuda_moments_bfloat16_and_workspace_match_cpu(imported):
    source = PopulationLogits(imported)
    cpu_mean, cpu_std = column_moments(source, "train", block_runs=4).mean_std()
    gpu_mean, gpu_std = column_moments(source, "train", KernelOptions(device="cuda"), block_runs=4).mean_std()
    assert gpu_mean.device.type == "cuda"
    assert np.allclose(gpu_mean.cpu().numpy(), cpu_mean.numpy(), atol=1e-6) and np.allclose(gpu_std.cpu().numpy(), cpu_std.numpy(), atol=1e-6)
    exact = kernel_topk(source, 5, "test")
    fast = kernel_topk(source, 5, "test", KernelOptions(precision="bfloat16", device="cuda"))
    assert np.abs(fast.values - exact.values).max() < 0.01 and np.mean(fast.indices[:, 0] == exact.indices[:, 0]) > 0.9
    ws = Workspace("cuda")
    first = neighbours(imported, k=5, device="cuda", workspace=ws)
    again = neighbours(imported, k=5, runs=4, device="cuda", workspace=ws)
    for nb, runs in ((first, "ok"), (again, 4)):
        cpu = neighbours(imported, k=5, runs=runs)
        assert np.abs(nb.values - cpu.values).max() < 2e-5 and np.array_equal(nb.runs, cpu.runs)


@needs_cuda
def test_cuda_knn_and_cli_match_cpu(tmp_path, imported):
    n_test = imported.targets("test").size
    cpu = knn_evaluate(imported, k=3, power=4.0, sizes=[2, 4])
    gpu = knn_evaluate(imported, k=3, power=4.0, sizes=[2, 4], device="cuda")
    for a, b in zip([cpu.accuracy] + [r["accuracy"] for r in cpu.by_runs], [gpu.accuracy] + [r["accuracy"] for r in gpu.by_runs]):
        assert abs(a - b) <= 1 / n_test + 1e-12
    store = tmp_path / "store"
    shutil.copytree(imported.path, store)
    result = invoke("kernel", str(store), "--k", "5", "--device", "cuda", "--queries", "train", "--out", str(tmp_path / "nb.npz"))
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "nb.npz")
    expected = neighbours(imported, k=5, queries="train")
    assert np.abs(saved["values"] - expected.values).max() < 2e-5
    assert not (saved["indices"] == np.arange(imported.targets("train").size)[:, None]).any()
    result = invoke("knn", str(store), "--k", "3", "--power", "4", "--device", "cuda", "--json")
    assert result.exit_code == 0, result.output
    assert abs(json.loads(result.stdout)["accuracy"] - cpu.accuracy) <= 1 / n_test + 1e-12
