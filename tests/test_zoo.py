"""Model zoos: Small CNN Zoo export/import, features from weights, accuracy predictors, zoo-predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import manyruns
from manyruns.analysis.zoo import (
    encode_hyperparameters,
    hyperparameter_table,
    kendall_tau,
    predict_accuracy,
    r2_score,
    split_networks,
    tensor_statistics,
    zoo_samples,
)
from manyruns.analysis.zoo_predictors import fit_predictor, lightgbm_available, ridge_path
from manyruns.formats.smallcnnzoo import ZooFormatError, export_smallcnnzoo, import_smallcnnzoo

from .test_datasets import write_idx

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

ZOO_RECIPE = """
name = "tiny-zoo"
[data]
dataset = "mnist"
normalize = "symmetric"
[model]
kind = "small-cnn"
[optimizer]
name = "adam"
lr = 0.01
alpha = 0.9
eps = 1e-7
[training]
epochs = 2
batch_size = 128
[population]
runs = 8
seed = 3
subset = [0.5, 1.0]
[population.sweep]
"model.activation" = { choice = ["relu", "tanh"] }
"model.init" = { choice = ["he_normal", "orthogonal", "glorot_normal", "normal", "truncated_normal"] }
"model.init_std" = { log_uniform = [1e-2, 0.3] }
"model.dropout" = { uniform = [0.0, 0.3] }
"optimizer.name" = { choice = ["sgd", "adam", "rmsprop"] }
"optimizer.lr" = { log_uniform = [1e-3, 5e-2] }
"optimizer.weight_decay" = { log_uniform = [1e-6, 1e-3] }
[record]
logits = ["test"]
metrics = true
train_metrics = "eval"
weights = [0, 1, 2]
"""

# The release's layout of the 4,970-parameter network: per layer bias, then kernel.
PUBLISHED_RANGES = [(0, 16), (16, 160), (160, 176), (176, 2480), (2480, 2496), (2496, 4800), (4800, 4810), (4810, 4970)]
PUBLISHED_NAMES = [f"sequential/{layer}/{leaf}:0" for layer in ("conv2d", "conv2d_1", "conv2d_2", "dense") for leaf in ("bias", "kernel")]


def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command line in a new process (slow to start: used once)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def invoke(*args: str):
    """The command line in this process: ``.exit_code``, ``.stdout``, ``.stderr``."""
    from typer.testing import CliRunner

    from manyruns.cli import app

    return CliRunner().invoke(app, list(args))


def write_fake_mnist(root: Path) -> Path:
    """scikit-learn's digits enlarged to 16x16, in MNIST's idx files (the small CNN needs 15 pixels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.kron(np.rint(bunch.images * (255 / 16)).astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    y = bunch.target.astype(np.uint8)
    test = np.arange(len(y)) % 5 == 4
    folder = root / "mnist"
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", x[~test])
    write_idx(folder / "train-labels-idx1-ubyte.gz", y[~test])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x[test])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y[test])
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fake_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, data_root):
    """A trained zoo of 8 small CNNs with swept hyperparameters and checkpoints at epochs 0, 1, 2."""
    root = tmp_path_factory.mktemp("zoo")
    recipe = root / "zoo.toml"
    recipe.write_text(ZOO_RECIPE)
    manyruns.plan(recipe, root / "store", data_dir=data_root)
    manyruns.train(root / "store", executor="serial", progress=False, data_dir=data_root)
    return root / "store"


@pytest.fixture(scope="module")
def exported(zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "zoo"
    export_smallcnnzoo(zoo, out)
    return out


def copy_zoo(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("weights.npy", "metrics.csv.gz", "layout.csv"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def read_metrics(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv.gz")


def write_metrics(frame: pd.DataFrame, folder: Path) -> None:
    frame.to_csv(folder / "metrics.csv.gz", index=False)


# ------------------------------------------------------------------------ export / import


def test_layout_is_the_published_one(zoo, exported):
    layout = pd.read_csv(exported / "layout.csv")
    assert list(layout.columns) == ["varname", "start_idx", "end_idx", "shape"]
    assert list(zip(layout.start_idx, layout.end_idx)) == PUBLISHED_RANGES
    names = layout.varname.tolist()
    assert all(n.endswith("bias:0") for n in names[0::2]) and all(n.endswith("kernel:0") for n in names[1::2])
    assert layout["shape"].tolist()[:4] == ["(16,)", "(3, 3, 1, 16)", "(16,)", "(3, 3, 16, 16)"]
    assert layout["shape"].tolist()[-1] == "(16, 10)"
    weights = np.load(exported / "weights.npy")
    metrics = read_metrics(exported)
    assert weights.shape == (8 * 3, 4970) and weights.dtype == np.float32 and len(metrics) == len(weights)
    expected = ["config." + k for k in sorted(
        "activation b_init dataset dnn_architecture dropout epochs epochs_between_checkpoints init_std l2reg "
        "learning_rate num_layers num_units optimizer random_seed train_fraction w_init".split()
    )] + ["modeldir", "step", "test_accuracy", "test_loss", "train_accuracy", "train_loss"]
    assert list(metrics.columns) == expected
    assert metrics.step.tolist() == [0, 1, 2] * 8
    # the published names for our initializers, the halved weight decay
    pop = manyruns.open(zoo)
    runs = pop.runs
    first = metrics.groupby("modeldir", sort=False).first()
    names = {"he_normal": "he_normal", "glorot_normal": "glorot_normal", "orthogonal": "orthogonal", "normal": "RandomNormal", "truncated_normal": "TruncatedNormal"}
    assert first["config.w_init"].tolist() == [names[v] for v in runs["sweep.model.init"]]
    assert np.array_equal(first["config.l2reg"].to_numpy() * 2, runs["sweep.optimizer.weight_decay"].to_numpy())
    assert np.array_equal(first["config.train_fraction"].to_numpy(), runs["subset"].to_numpy())
    # metrics of row (network r, step e) are the store's metrics after epoch e
    stored = np.asarray(pop.array("metrics")[:])
    assert np.array_equal(metrics.test_accuracy.to_numpy().reshape(8, 3), stored[:, :3, 3].astype(np.float64))
    assert np.array_equal(metrics.train_loss.to_numpy().reshape(8, 3), stored[:, :3, 0].astype(np.float64))


def test_round_trip_gives_identical_weights_metrics_hyperparameters(zoo, exported, tmp_path):
    imported = import_smallcnnzoo(exported, tmp_path / "imported")
    original = manyruns.open(zoo)
    assert imported.num_runs == original.num_runs
    for epoch in (0, 1, 2):
        a = np.asarray(original.array(f"weights/epoch_{epoch}")[:])
        b = np.asarray(imported.array(f"weights/epoch_{epoch}")[:])
        assert a.dtype == b.dtype and np.array_equal(a, b), epoch
    a, b = np.asarray(original.array("metrics")[:]), np.asarray(imported.array("metrics")[:])
    assert np.array_equal(a[:, :3], b[:, :3])
    pd.testing.assert_frame_equal(hyperparameter_table(original), hyperparameter_table(imported), check_dtype=False)
    assert (imported.runs.status == original.runs.status).all()
    assert imported.layout["params"] == original.layout["params"]
    assert imported.recipe.model.kind == "small-cnn" and imported.recipe.data.dataset == "mnist"
    # and back out: the same files
    again = tmp_path / "again"
    export_smallcnnzoo(imported, again)
    assert (again / "weights.npy").read_bytes() == (exported / "weights.npy").read_bytes()
    assert (again / "layout.csv").read_bytes() == (exported / "layout.csv").read_bytes()
    pd.testing.assert_frame_equal(read_metrics(again), read_metrics(exported))


def published_forward(row: np.ndarray, layout: pd.DataFrame, images: np.ndarray, activation: str) -> np.ndarray:
    """Logits of a network given as one row in the release's layout, computed directly:
    channels-last images, (h, w, in, out) kernels, stride-2 'valid' convolutions, global
    average pooling, a dense (in, out) layer. ``images (N, H, W, 1)`` -> ``(N, 10)``."""
    tensors = {
        v.removeprefix("sequential/"): row[s:e].reshape(tuple(int(d) for d in sh.strip("()").split(",") if d.strip()))
        for v, s, e, sh in layout.itertuples(index=False)
    }
    act = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}[activation]
    h = images.astype(np.float64)
    for name in ("conv2d", "conv2d_1", "conv2d_2"):
        kernel, bias = tensors[f"{name}/kernel:0"], tensors[f"{name}/bias:0"]
        ho, wo = (h.shape[1] - 3) // 2 + 1, (h.shape[2] - 3) // 2 + 1
        out = np.zeros((h.shape[0], ho, wo, kernel.shape[3]))
        for i in range(3):
            for j in range(3):
                out += h[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :] @ kernel[i, j]
        h = act(out + bias)
    return h.mean(axis=(1, 2)) @ tensors["dense/kernel:0"] + tensors["dense/bias:0"]


def test_exported_rows_reproduce_the_stored_networks_outputs(zoo, exported, data_root, tmp_path):
    import torch

    from manyruns.models.architectures import SmallCNN

    pop = manyruns.open(zoo)
    data = pop.dataset(data_root)
    x = data.x_test.astype(np.float32) / 127.5 - 1.0  # normalize = "symmetric"
    stored = np.asarray(pop.array("logits/test")[:]).astype(np.float32)  # (R, T, C), final network
    weights = np.load(exported / "weights.npy")
    layout = pd.read_csv(exported / "layout.csv")
    metrics = read_metrics(exported)
    imported = import_smallcnnzoo(exported, tmp_path / "imported")
    final_rows = np.flatnonzero(metrics.step.to_numpy() == 2)
    for r, row in enumerate(final_rows):
        activation = metrics["config.activation"].iloc[row]
        direct = published_forward(weights[row].astype(np.float64), layout, x.transpose(0, 2, 3, 1), activation)
        np.testing.assert_allclose(direct, stored[r], rtol=2e-3, atol=2e-3)
        # the row converted back to our order, loaded into the network
        net = SmallCNN(1, 10, act=activation).eval()
        flat = torch.from_numpy(imported.load("weights/epoch_2", [r])[0])
        torch.nn.utils.vector_to_parameters(flat, net.parameters())
        with torch.no_grad():
            ours = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours, stored[r], rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(ours, direct, rtol=1e-4, atol=1e-4)


def test_diverged_networks_are_kept_and_flagged(tmp_path, data_root):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        ZOO_RECIPE.replace("runs = 8", "runs = 2").replace("epochs = 2", "epochs = 1").replace("weights = [0, 1, 2]", "weights = [0, 1]")
        .replace('"optimizer.lr" = { log_uniform = [1e-3, 5e-2] }', '"optimizer.lr" = { choice = [0.01, 1e30] }')
        .replace('"optimizer.name" = { choice = ["sgd", "adam", "rmsprop"] }', '"optimizer.name" = { choice = ["sgd"] }')
        .replace("seed = 3", "seed = 1")
    )
    manyruns.plan(recipe, tmp_path / "s", data_dir=data_root)
    manyruns.train(tmp_path / "s", executor="serial", progress=False, data_dir=data_root)
    pop = manyruns.open(tmp_path / "s")
    assert sorted(pop.runs.status) == ["diverged", "ok"]
    summary = export_smallcnnzoo(pop, tmp_path / "zoo")
    assert summary["networks"] == 2 and summary["diverged"] == 1
    assert not np.isfinite(np.load(tmp_path / "zoo" / "weights.npy")).all()
    imported = import_smallcnnzoo(tmp_path / "zoo", tmp_path / "imported")
    assert imported.runs.status.tolist() == pop.runs.status.tolist()
    # the predictor's samples leave the diverged network's non-finite checkpoint out, and count it
    samples = zoo_samples(imported, "stats", "all", runs="committed")
    bad = int(np.flatnonzero(pop.runs.status == "diverged")[0])
    assert 1 not in samples.checkpoints[samples.runs == bad] and samples.excluded >= 1


def test_published_names_map_to_recipe_names(exported, tmp_path):
    folder = copy_zoo(exported, tmp_path / "zoo")
    frame = read_metrics(folder)
    spelled = {"he_normal": "He_Normal", "RandomNormal": "random_normal", "TruncatedNormal": "truncatednormal", "glorot_normal": "GlorotNormal", "orthogonal": "Orthogonal"}
    frame["config.w_init"] = frame["config.w_init"].map(spelled)
    frame["config.optimizer"] = frame["config.optimizer"].str.upper()
    frame["config.b_init"] = "zero"
    write_metrics(frame, folder)
    pop = import_smallcnnzoo(folder, tmp_path / "s")
    back = {"He_Normal": "he_normal", "random_normal": "normal", "truncatednormal": "truncated_normal", "GlorotNormal": "glorot_normal", "Orthogonal": "orthogonal"}
    first = frame.groupby("modeldir", sort=False).first()
    assert pop.runs["sweep.model.init"].tolist() == [back[v] for v in first["config.w_init"]]
    assert pop.runs["sweep.optimizer.name"].tolist() == [v.lower() for v in first["config.optimizer"]]
    # the release's own values are kept for writing the files back
    assert pop.runs["config.w_init"].tolist() == first["config.w_init"].tolist()


def test_import_records_the_dataset_when_given(zoo, exported, data_root, tmp_path):
    from manyruns.data import DatasetNotFoundError

    original = manyruns.open(zoo)
    pop = import_smallcnnzoo(exported, tmp_path / "s", data_dir=data_root)
    assert pop.fingerprint == original.fingerprint
    assert np.array_equal(pop.targets("test"), original.targets("test"))
    assert pop.layout["n_train"] == original.layout["n_train"] and pop.layout["input_shape"] == [1, 16, 16]
    with pytest.raises(DatasetNotFoundError):
        import_smallcnnzoo(exported, tmp_path / "t", data_dir=tmp_path / "nowhere")
    assert not (tmp_path / "t").exists()


def test_fashion_and_grayscale_dataset_names(exported, tmp_path):
    folder = copy_zoo(exported, tmp_path / "zoo")
    frame = read_metrics(folder)
    for name, ours in (("fashion_mnist", "fashion-mnist"), ("cifar10", "cifar10-gs"), ("svhn_cropped", "svhn-gs")):
        frame["config.dataset"] = name
        write_metrics(frame, folder)
        pop = import_smallcnnzoo(folder, tmp_path / name)
        assert pop.recipe.data.dataset == ours
        assert pop.layout["input_shape"] == [1, 28, 28] if ours == "fashion-mnist" else [1, 32, 32]


def test_checkpoints_missing_for_some_networks(exported, tmp_path):
    folder = copy_zoo(exported, tmp_path / "zoo")
    frame = read_metrics(folder)
    weights = np.load(folder / "weights.npy")
    keep = ~((frame.modeldir == "run_000003") & (frame.step == 2)).to_numpy()  # a network that stopped early
    write_metrics(frame[keep], folder)
    np.save(folder / "weights.npy", weights[keep])
    pop = import_smallcnnzoo(folder, tmp_path / "s")
    assert np.isnan(pop.load("weights/epoch_2", [3])).all() and np.isfinite(pop.load("weights/epoch_1", [3])).all()
    assert pop.runs.status[3] == "ok"  # its last checkpoint (epoch 1) is finite
    assert pop.runs.test_acc[3] == pytest.approx(frame[(frame.modeldir == "run_000003") & (frame.step == 1)].test_accuracy.iloc[0], rel=1e-6)


def _break(kind: str, folder: Path) -> str:
    """Corrupt a copied zoo; return text the error message must contain."""
    frame = read_metrics(folder)
    layout = pd.read_csv(folder / "layout.csv")
    if kind == "layout_short":
        layout.iloc[:-1].to_csv(folder / "layout.csv", index=False)
        return "layout.csv, row 7 (sequential/dense/bias:0): the last range ends at end_idx 4810, so the ranges cover columns 0..4809 but the rows of weights.npy have 4970 columns"
    if kind == "layout_overrun":
        np.save(folder / "weights.npy", np.load(folder / "weights.npy")[:, :-10])
        return "layout.csv, row 8 (sequential/dense/kernel:0): end_idx 4970 runs past the 4960 columns of the rows of weights.npy"
    if kind == "layout_order":
        layout.loc[[2, 3, 4, 5], "varname"] = layout.varname[[4, 5, 2, 3]].to_numpy()  # names disagree with the columns
        layout.to_csv(folder / "layout.csv", index=False)
        return "layout.csv, row 5: layer 'sequential/conv2d_1' (from column 2480) follows layer 'sequential/conv2d_2' in the columns but not in name order"
    if kind == "layout_name":
        layout.loc[[2, 3], "varname"] = ["block1/bias:0", "block1/kernel:0"]
        layout.to_csv(folder / "layout.csv", index=False)
        return "layout.csv, row 3: layer name 'block1' is not conv2d, conv2d_<i> or dense"
    if kind == "layout_gap":
        layout.loc[3, ["start_idx", "shape"]] = [177, "(2303,)"]  # column 176 belongs to no tensor
        layout.to_csv(folder / "layout.csv", index=False)
        return "row 4 (sequential/conv2d_1/kernel:0): start_idx 177 leaves columns 176..176 unassigned"
    if kind == "layout_shape":
        layout.loc[1, "shape"] = "(3, 3, 1, 15)"
        layout.to_csv(folder / "layout.csv", index=False)
        return "row 2"
    if kind == "rows_mismatch":
        write_metrics(frame.iloc[:-1], folder)
        return f"metrics.csv.gz has 23 rows but {folder / 'weights.npy'} has 24; they must match row for row (one per network and checkpoint): {folder / 'weights.npy'}, row 24 has no row of metrics"
    if kind == "rows_extra":
        extra = frame.iloc[[-1]].assign(step=3)
        write_metrics(pd.concat([frame, extra], ignore_index=True), folder)
        return "metrics.csv.gz, row 25 (modeldir 'run_000007', step 3) has no row of weights"
    if kind == "metric_text":
        frame["test_accuracy"] = frame["test_accuracy"].astype(object)
        frame.loc[4, "test_accuracy"] = "oops"
        write_metrics(frame, folder)
        return "metrics.csv.gz, row 5 (modeldir 'run_000001', step 1): test_accuracy = 'oops' is not a number"
    if kind == "metric_percent":
        frame.loc[2, "train_accuracy"] = 93.5
        write_metrics(frame, folder)
        return "metrics.csv.gz, row 3 (modeldir 'run_000000', step 2): train_accuracy = 93.5 is not an accuracy in [0, 1] (a fraction, not a percentage)"
    if kind == "metric_negative":
        frame.loc[7, "test_accuracy"] = -0.25
        write_metrics(frame, folder)
        return "metrics.csv.gz, row 8 (modeldir 'run_000002', step 1): test_accuracy = -0.25 is not an accuracy in [0, 1]"
    if kind == "activation":
        frame.loc[4, "config.activation"] = "swish"
        frame.loc[frame.modeldir == frame.modeldir[4], "config.activation"] = "swish"
        write_metrics(frame, folder)
        return "row 4"
    if kind == "w_init":
        frame.loc[frame.modeldir == frame.modeldir[6], "config.w_init"] = "lecun_uniform"
        write_metrics(frame, folder)
        return "row 7"
    if kind == "inconsistent":
        frame.loc[5, "config.learning_rate"] = 0.5
        write_metrics(frame, folder)
        return "row 6"
    if kind == "duplicate":
        frame.loc[2, "step"] = 1
        write_metrics(frame, folder)
        return "row 3"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "layout_short",
        "layout_overrun",
        "layout_gap",
        "layout_shape",
        "layout_order",
        "layout_name",
        "rows_mismatch",
        "rows_extra",
        "metric_text",
        "metric_percent",
        "metric_negative",
        "activation",
        "w_init",
        "inconsistent",
        "duplicate",
    ],
)
def test_importer_errors_name_file_and_row_and_write_nothing(exported, tmp_path, kind):
    folder = copy_zoo(exported, tmp_path / "zoo")
    expected = _break(kind, folder)
    target = tmp_path / "store"
    with pytest.raises(ZooFormatError) as info:
        import_smallcnnzoo(folder, target)
    message = str(info.value)
    file = "layout.csv" if kind.startswith("layout") else "metrics.csv.gz"
    assert file in message and expected in message, message
    assert "\n" not in message
    assert not target.exists()


def test_messages_print_plain_values_not_numpy_reprs(exported, tmp_path):
    folder = copy_zoo(exported, tmp_path / "zoo")
    metrics = folder / "metrics.csv.gz"
    frame = read_metrics(folder)
    broken = frame.copy()
    broken.loc[broken.modeldir == "run_000000", "config.dropout"] = 1.5
    write_metrics(broken, folder)
    with pytest.raises(ZooFormatError) as info:
        import_smallcnnzoo(folder, tmp_path / "s")
    assert str(info.value) == f"{metrics}, row 1 (modeldir 'run_000000', step 0): config.dropout = 1.5 is not a number in [0, 1)"
    broken = frame.copy()
    broken["config.num_layers"] = 4
    write_metrics(broken, folder)
    with pytest.raises(ZooFormatError) as info:
        import_smallcnnzoo(folder, tmp_path / "s")
    assert str(info.value) == f"{metrics}, row 1 (modeldir 'run_000000', step 0): config.num_layers = 4 but {folder / 'layout.csv'} describes 3"
    broken = frame.copy()
    broken.loc[5, "config.learning_rate"] = 0.5
    write_metrics(broken, folder)
    with pytest.raises(ZooFormatError) as info:
        import_smallcnnzoo(folder, tmp_path / "s")
    reference = frame.loc[3, "config.learning_rate"]
    assert str(info.value) == (
        f"{metrics}, row 6 (modeldir 'run_000001', step 2): config.learning_rate = 0.5 differs from {float(reference)!r} in the network's row 4"
    )


def test_missing_and_infinite_metric_values_are_kept(exported, tmp_path):
    folder = copy_zoo(exported, tmp_path / "zoo")
    frame = read_metrics(folder)
    frame.loc[7, "test_loss"] = np.nan  # run_000002, epoch 1: written as an empty cell
    frame.loc[7, "test_accuracy"] = np.nan
    frame.loc[17, "train_loss"] = np.inf  # run_000005, its last checkpoint
    write_metrics(frame, folder)
    pop = import_smallcnnzoo(folder, tmp_path / "s")
    metrics = np.asarray(pop.array("metrics")[:])
    assert np.isnan(metrics[2, 1, 2]) and np.isnan(metrics[2, 1, 3]) and np.isinf(metrics[5, 2, 0])
    assert pop.runs.status[2] == "ok" and pop.runs.status[5] == "diverged"


def test_layer_order_comes_from_columns_not_rows(zoo, exported, tmp_path):
    original = manyruns.open(zoo)
    for name, order in (("swapped", [0, 1, 4, 5, 2, 3, 6, 7]), ("reversed", list(range(7, -1, -1)))):
        folder = copy_zoo(exported, tmp_path / name)
        layout = pd.read_csv(folder / "layout.csv")
        layout.iloc[order].to_csv(folder / "layout.csv", index=False)
        pop = import_smallcnnzoo(folder, tmp_path / f"{name}-store")
        for epoch in (0, 1, 2):
            assert np.array_equal(np.asarray(pop.array(f"weights/epoch_{epoch}")[:]), np.asarray(original.array(f"weights/epoch_{epoch}")[:])), (name, epoch)


def test_export_writes_the_published_names_and_reads_unscoped_ones(zoo, exported, tmp_path):
    layout = pd.read_csv(exported / "layout.csv")
    assert layout.varname.tolist() == PUBLISHED_NAMES
    folder = copy_zoo(exported, tmp_path / "zoo")
    layout.assign(varname=layout.varname.str.removeprefix("sequential/")).to_csv(folder / "layout.csv", index=False)
    pop = import_smallcnnzoo(folder, tmp_path / "s")
    assert np.array_equal(np.asarray(pop.array("weights/epoch_2")[:]), np.asarray(manyruns.open(zoo).array("weights/epoch_2")[:]))
    export_smallcnnzoo(pop, tmp_path / "again")
    assert (tmp_path / "again" / "layout.csv").read_bytes() == (exported / "layout.csv").read_bytes()


def test_cli_import_error_is_one_line_exit_2(exported, tmp_path):
    folder = copy_zoo(exported, tmp_path / "zoo")
    _break("w_init", folder)
    result = cli("import", "smallcnnzoo", str(folder), str(tmp_path / "s"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lecun_uniform" in lines[0] and "metrics.csv.gz, row 7" in lines[0]
    assert not (tmp_path / "s").exists()


def test_cli_export_then_import(zoo, tmp_path):
    result = invoke("export", "smallcnnzoo", str(zoo), str(tmp_path / "z"), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 24
    with pytest.raises(ZooFormatError, match="exists"):  # no silent overwrite
        export_smallcnnzoo(zoo, tmp_path / "z")
    result = invoke("import", "smallcnnzoo", str(tmp_path / "z"), str(tmp_path / "s"), "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["networks"] == 8 and info["checkpoints"] == [0, 1, 2] and info["dataset"] == "mnist"


def test_export_refuses_other_models(tmp_path, write_recipe):
    from .conftest import tiny_recipe

    manyruns.plan(write_recipe(tiny_recipe(runs=2)), tmp_path / "mlp")
    with pytest.raises(ZooFormatError, match="small CNN"):
        export_smallcnnzoo(tmp_path / "mlp", tmp_path / "out")


# ------------------------------------------------------------------------------- features


def test_stats_features_match_a_direct_computation(zoo):
    pop = manyruns.open(zoo)
    params = pop.layout["params"]
    weights = np.asarray(pop.array("weights/epoch_2")[:])
    features = tensor_statistics(weights, params)
    assert features.shape == (8, 7 * 8)
    for r in range(weights.shape[0]):
        expected = []
        for p in params:
            x = [float(v) for v in weights[r, p["start"] : p["end"]]]
            mean = sum(x) / len(x)
            expected += [mean, sum((v - mean) ** 2 for v in x) / len(x)]
            expected += list(np.percentile(np.array(x), [0, 25, 50, 75, 100]))
        np.testing.assert_allclose(features[r], expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block=st.integers(1, 9), seed=st.integers(0, 10_000), features=st.sampled_from(["stats", "weights", "stats+hyper"]))
def test_features_do_not_depend_on_block_size_or_run_order(zoo, block, seed, features):
    pop = manyruns.open(zoo)
    reference = zoo_samples(pop, features, "all", block_size=256)
    order = np.random.default_rng(seed).permutation(8)
    shuffled = zoo_samples(pop, features, "all", runs=order, block_size=block)
    key = np.lexsort((shuffled.checkpoints, shuffled.runs))
    assert np.array_equal(shuffled.runs[key], reference.runs)
    assert np.array_equal(shuffled.checkpoints[key], reference.checkpoints)
    assert np.array_equal(shuffled.X[key], reference.X) and np.array_equal(shuffled.y[key], reference.y)


def test_targets_checkpoint_and_final(zoo):
    pop = manyruns.open(zoo)
    metrics = np.asarray(pop.array("metrics")[:])
    same = zoo_samples(pop, "stats", "all", target="checkpoint")
    assert np.array_equal(same.y, metrics[same.runs, same.checkpoints, 3].astype(np.float64))
    final = zoo_samples(pop, "stats", "1", target="final")
    assert set(final.checkpoints) == {1}
    assert np.array_equal(final.y, metrics[final.runs, 2, 3].astype(np.float64))
    default = zoo_samples(pop, "stats")
    assert set(default.checkpoints) == {2}
    with pytest.raises(ValueError, match="no weights recorded at epoch"):
        zoo_samples(pop, "stats", 5)


def test_hyperparameter_features(zoo):
    pop = manyruns.open(zoo)
    table = hyperparameter_table(pop)
    runs = pop.runs
    for key in ("model.activation", "model.init", "optimizer.name", "optimizer.lr", "model.dropout"):
        assert table[key].tolist() == runs[f"sweep.{key}"].tolist()
    X, names = encode_hyperparameters(table)
    for r in range(len(table)):
        assert X[r, names.index(f"model.activation={runs['sweep.model.activation'][r]}")] == 1
        assert X[r, names.index("log10(optimizer.lr)")] == pytest.approx(np.log10(runs["sweep.optimizer.lr"][r]))
        assert X[r, names.index("train_fraction")] == runs["subset"][r]
    assert "label_noise" not in names  # constant columns are dropped
    one_hot = [j for j, n in enumerate(names) if n.startswith("model.init=")]
    assert (X[:, one_hot].sum(1) == 1).all()


# ----------------------------------------------------------------------- splits and scores


def test_split_never_puts_a_network_on_two_sides(zoo):
    pop = manyruns.open(zoo)
    result = predict_accuracy(pop, features="stats", model="linear", checkpoints="all", test_fraction=0.25, val_fraction=0.125)
    per_run = pd.DataFrame({"run": result.sample_runs, "split": result.split}).groupby("run").split.nunique()
    assert (per_run == 1).all()
    sides = [set(result.sample_runs[result.split == s]) for s in (0, 1, 2)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    m = result.metrics
    assert (m["n_train_networks"], m["n_val_networks"], m["n_test_networks"]) == (5, 1, 2)
    assert m["n_test_samples"] == 2 * 3 and m["n_train_samples"] == 5 * 3
    test = result.split == 2
    assert m["r2"] == pytest.approx(r2_score(result.y_true[test], result.y_pred[test]))


@settings(max_examples=40, deadline=None)
@given(runs=st.lists(st.integers(0, 500), min_size=3, max_size=60, unique=True), seed=st.integers(0, 100))
def test_split_partitions_networks(runs, seed):
    split = split_networks(np.array(runs), seed, 0.2, 0.1)
    assert set(split) == set(runs)
    counts = np.bincount(list(split.values()), minlength=3)
    n = len(runs)
    assert counts[2] == max(1, round(0.2 * n)) and counts[1] == max(1, round(0.1 * n))
    assert split == split_networks(np.array(runs[::-1]), seed, 0.2, 0.1)  # order of the input does not matter


def kendall_tau_b_by_pairs(x, y) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    return (concordant - discordant) / np.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=3, max_size=25))
def test_r2_and_kendall_tau_against_references(pairs):
    from sklearn.metrics import r2_score as sk_r2

    y = np.array([p[0] for p in pairs], dtype=float) / 6
    p = np.array([q[1] for q in pairs], dtype=float) / 6
    if np.ptp(y) > 0:
        assert r2_score(y, p) == pytest.approx(sk_r2(y, p))
    if np.ptp(y) > 0 and np.ptp(p) > 0:
        assert kendall_tau(y, p) == pytest.approx(kendall_tau_b_by_pairs(y, p))


# ------------------------------------------------------------------------------ predictors


def test_ridge_path_matches_sklearn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 7)), rng.normal(size=40)
    for a, (w, b) in zip((0.01, 1.0, 100.0), ridge_path(X, y, (0.01, 1.0, 100.0))):
        ref = Ridge(alpha=a).fit(X, y)
        np.testing.assert_allclose(w, ref.coef_, rtol=1e-8, atol=1e-10)
        assert b == pytest.approx(ref.intercept_)


def synthetic(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = 1 / (1 + np.exp(-(1.5 * X[:, 0] - X[:, 1] + 0.8 * np.abs(X[:, 2]))))
    return X, y


@pytest.mark.parametrize("model,backend,floor", [("linear", "auto", 0.8), ("gbm", "sklearn", 0.85), ("dnn", "auto", 0.85)])
def test_predictors_learn_a_known_function(model, backend, floor):
    X, y = synthetic()
    fitted = fit_predictor(model, X[:300], y[:300], X[300:380], y[300:380], seed=0, gbm_backend=backend)
    assert r2_score(y[380:], fitted.predict(X[380:])) > floor
    if model == "gbm":
        assert fitted.info["backend"] == "sklearn" and 1 <= fitted.info["trees"] <= 1000


def test_gbm_backend_choice():
    X, y = synthetic(200)
    fitted = fit_predictor("gbm", X[:120], y[:120], X[120:160], y[120:160], gbm_backend="auto")
    assert fitted.info["backend"] == ("lightgbm" if lightgbm_available() else "sklearn")
    if not lightgbm_available():
        with pytest.raises(ValueError, match="lightgbm is not installed"):
            fit_predictor("gbm", X[:120], y[:120], X[120:160], y[120:160], gbm_backend="lightgbm")


def test_gbm_falls_back_to_sklearn_without_lightgbm(zoo, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` now fails as if it were not installed
    assert not lightgbm_available()
    X, y = synthetic(200)
    fitted = fit_predictor("gbm", X[:120], y[:120], X[120:160], y[120:160], gbm_backend="auto")
    assert fitted.info["backend"] == "sklearn"
    result = predict_accuracy(manyruns.open(zoo), features="stats", model="gbm", gbm_backend="auto")
    assert result.metrics["predictor"]["backend"] == "sklearn"
    with pytest.raises(ValueError) as info:
        fit_predictor("gbm", X[:120], y[:120], X[120:160], y[120:160], gbm_backend="lightgbm")
    assert str(info.value) == "gbm_backend lightgbm asked for but lightgbm is not installed (pip install 'manyruns[zoo]')"


def test_lightgbm_backend():
    pytest.importorskip("lightgbm")
    X, y = synthetic()
    fitted = fit_predictor("gbm", X[:300], y[:300], X[300:380], y[300:380], gbm_backend="lightgbm")
    assert fitted.info["backend"] == "lightgbm" and r2_score(y[380:], fitted.predict(X[380:])) > 0.85


# ------------------------------------------------------------------------------------ CLI


def test_zoo_predict_cli(zoo, tmp_path):
    out = tmp_path / "report"
    result = invoke("zoo-predict", str(zoo), "--features", "stats+hyper", "--model", "linear", "--checkpoint", "all", "--out", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    m = json.loads(result.stdout)
    for key in ("r2", "kendall_tau", "n_train_networks", "n_test_networks"):
        assert key in m
    assert m["n_train_networks"] + m["n_val_networks"] + m["n_test_networks"] == 8
    assert m["checkpoints"] == [0, 1, 2] and m["target"] == "checkpoint"
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == m["n_train_samples"] + m["n_val_samples"] + m["n_test_samples"]
    test = table[table.split == "test"]
    assert m["r2"] == pytest.approx(r2_score(test.true_accuracy, test.predicted_accuracy))
    assert (out / "scatter.png").stat().st_size > 0
    group = manyruns.open(zoo).store.group["analysis/zoo-predict-stats-hyper-linear"]
    assert group.attrs["params"]["checkpoints"] == [0, 1, 2]
    assert np.array_equal(group["y_true"][:], table.true_accuracy.to_numpy())
    # the text form prints the table
    result = invoke("zoo-predict", str(zoo), "--features", "hyper", "--model", "linear", "--out", str(tmp_path / "r2"))
    assert result.exit_code == 0 and "Kendall tau (test)" in result.stdout


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_print_json_writes_null_for_non_finite_floats(capsys):
    from manyruns.cli import print_json

    print_json({"a": float("nan"), "b": [np.float32(np.inf), np.float64(-np.inf), 1.5], "c": np.int64(3), "d": np.bool_(True)})
    assert strict_json(capsys.readouterr().out) == {"a": None, "b": [None, None, 1.5], "c": 3, "d": True}


def test_zoo_predict_json_is_valid_when_scores_are_undefined(zoo, tmp_path):
    out = tmp_path / "report"
    # one test network with one checkpoint: R^2 and tau are undefined
    result = invoke("zoo-predict", str(zoo), "--model", "linear", "--test-fraction", "0.1", "--val-fraction", "0.125", "--out", str(out), "--json")
    assert result.exit_code == 0, result.stderr
    m = strict_json(result.stdout)
    assert m["n_test_networks"] == 1 and m["n_test_samples"] == 1
    assert m["r2"] is None and m["kendall_tau"] is None
    saved = strict_json((out / "metrics.json").read_text())
    assert saved["r2"] is None and saved["kendall_tau"] is None and saved["n_test_networks"] == 1


def test_zoo_predict_bad_input(zoo):
    pop = manyruns.open(zoo)
    with pytest.raises(ValueError, match="features must be one of"):
        predict_accuracy(pop, features="pixels")
    with pytest.raises(ValueError, match=r"no weights recorded at epoch\(s\) \[7\]"):
        predict_accuracy(pop, features="stats", model="linear", checkpoints=7)
    with pytest.raises(ValueError, match="gbm_backend must be one of"):
        predict_accuracy(pop, features="stats", model="gbm", gbm_backend="xgboost")
    result = invoke("zoo-predict", str(zoo), "--model", "forest")
    assert result.exit_code == 2 and result.stderr.strip() == "error: --model must be one of linear, gbm, dnn, got 'forest'"


def test_example_recipes_describe_the_published_space():
    full = manyruns.Recipe.load(EXAMPLES / "small-cnn-zoo-mnist.toml")
    cpu = manyruns.Recipe.load(EXAMPLES / "small-cnn-zoo-mnist-cpu.toml")
    assert full.record.weights == [0, 1, 2, 3, 20, 40, 60, 80, 86] and full.training.epochs == 86
    assert cpu.population.runs >= 1000 and cpu.record.weights[-1] == cpu.training.epochs
    for recipe in (full, cpu):
        sweep = recipe.population.sweep
        assert recipe.model.kind == "small-cnn" and recipe.training.batch_size == 512 and recipe.data.normalize == "symmetric"
        assert recipe.population.subset == [0.1, 0.25, 0.5, 1.0]
        assert sweep["optimizer.lr"].log_uniform == (5e-4, 5e-2)
        assert sweep["optimizer.weight_decay"].log_uniform == (2e-8, 2e-2)  # L2 1e-8..1e-2, weight_decay = 2 * L2
        assert sweep["model.init_std"].log_uniform == (1e-3, 0.5) and sweep["model.dropout"].uniform == (0.0, 0.7)
        assert set(sweep["model.init"].choice) == {"he_normal", "orthogonal", "glorot_normal", "normal", "truncated_normal"}
        assert set(sweep["optimizer.name"].choice) == {"sgd", "adam", "rmsprop"}
        assert recipe.record.logits == [] and recipe.record.train_metrics == "eval"
