"""Import of multirun-logits files: round trip, appending, validation that appends nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import manyruns
from manyruns.data import DatasetMismatchError, load_dataset
from manyruns.formats.multirun import MultirunFormatError, import_multirun_logits, training_scripts
from manyruns.store import StoreError

from .logfiles import write_log, write_tiny_cifar10


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=full, timeout=300)


@pytest.fixture
def cifar(tmp_path):
    root = write_tiny_cifar10(tmp_path / "data")
    return root, load_dataset("cifar10", root)


def test_import_keeps_logits_accs_code_and_appends(tmp_path, cifar):
    root, data = cifar
    a = write_log(tmp_path / "a.pt", 3, data.y_train, data.y_test, seed=1, tta=True, code="script A")
    b = write_log(tmp_path / "b.pt", 2, data.y_train, data.y_test, seed=2, code="script B")
    store = tmp_path / "c10"
    summary = import_multirun_logits([tmp_path / "a.pt"], store, "cifar10", root)
    assert summary["runs_added"] == 3 and summary["runs"] == 3
    summary = import_multirun_logits([tmp_path / "b.pt"], store, "cifar10", root)
    assert summary["runs_added"] == 2 and summary["runs"] == 5

    pop = manyruns.open(store)
    assert pop.num_runs == 5 and pop.committed.all() and (pop.runs.status == "ok").all()
    test = np.asarray(pop.array("logits/test")[:])
    assert np.array_equal(test[:3], a["logits"].numpy()) and np.array_equal(test[3:], b["logits"].numpy())
    assert np.array_equal(np.asarray(pop.array("logits/train")[:])[3:], b["logits_train"].numpy())
    tta = np.asarray(pop.array("logits/test_tta")[:])
    assert np.array_equal(tta[:3], a["logits_tta"].numpy()) and np.isnan(tta[3:].astype(np.float32)).all()
    assert np.allclose(np.asarray(pop.array("accs")[:]), np.concatenate([a["accs"].numpy(), b["accs"].numpy()]))
    # the summary's accuracy is recomputed from the logits and the dataset's labels
    expected = (test.astype(np.float32).argmax(-1) == data.y_test).mean(1)
    assert np.allclose(pop.runs.test_acc.to_numpy(), expected)
    assert np.array_equal(pop.targets("train"), data.y_train)
    assert sorted(training_scripts(pop).values()) == ["script A", "script B"]
    # the store remembers the data root: the images come back for the grids
    assert pop.dataset().n_train == data.n_train


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"logits": torch.zeros(2, 12, 9, dtype=torch.float16), "logits_train": torch.zeros(2, 40, 9, dtype=torch.float16)}, "'logits' has shape (2, 12, 9), expected (runs, 12, 10)"),
        ({"logits_train": torch.zeros(2, 39, 10, dtype=torch.float16)}, "'logits_train' has shape (2, 39, 10), expected (runs, 40, 10)"),
        ({"logits_train": torch.zeros(3, 40, 10, dtype=torch.float16)}, "'logits' has 2 runs but 'logits_train' has 3"),
        ({"logits_train": None}, "missing 'logits_train'"),
        ({"accs": torch.zeros(5)}, "'accs' has 5 values, expected one per run (2)"),
        ({"logits_tta": torch.zeros(2, 11, 10)}, "'logits_tta' has shape (2, 11, 10)"),
        ({"logits": torch.zeros(2, 12, 10, dtype=torch.int64)}, "floating-point"),
    ],
)
def test_bad_file_names_file_and_shapes_and_appends_nothing(tmp_path, cifar, overrides, message):
    root, data = cifar
    write_log(tmp_path / "good.pt", 2, data.y_train, data.y_test)
    store = tmp_path / "c10"
    import_multirun_logits([tmp_path / "good.pt"], store, "cifar10", root)
    before = np.asarray(manyruns.open(store).array("logits/test")[:])
    write_log(tmp_path / "more.pt", 2, data.y_train, data.y_test, seed=5)
    write_log(tmp_path / "bad.pt", 2, data.y_train, data.y_test, **overrides)
    with pytest.raises(MultirunFormatError) as info:
        import_multirun_logits([tmp_path / "more.pt", tmp_path / "bad.pt"], store, "cifar10", root)
    assert str(tmp_path / "bad.pt") in str(info.value) and message in str(info.value)
    pop = manyruns.open(store)
    assert pop.num_runs == 2 and np.array_equal(np.asarray(pop.array("logits/test")[:]), before)
    # a first import that fails creates no store
    with pytest.raises(MultirunFormatError):
        import_multirun_logits([tmp_path / "bad.pt"], tmp_path / "fresh", "cifar10", root)
    assert not (tmp_path / "fresh").exists()


def test_other_bad_inputs(tmp_path, cifar):
    root, data = cifar
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(MultirunFormatError, match="junk.pt: cannot be read"):
        import_multirun_logits([tmp_path / "junk.pt"], tmp_path / "s", "cifar10", root)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(MultirunFormatError, match="list.pt: expected a dict"):
        import_multirun_logits([tmp_path / "list.pt"], tmp_path / "s", "cifar10", root)
    with pytest.raises(MultirunFormatError, match="missing.pt: no such file"):
        import_multirun_logits([tmp_path / "missing.pt"], tmp_path / "s", "cifar10", root)
    write_log(tmp_path / "ok.pt", 2, data.y_train, data.y_test)
    import_multirun_logits([tmp_path / "ok.pt"], tmp_path / "s", "cifar10", root)
    with pytest.raises(MultirunFormatError, match="already imported"):
        import_multirun_logits([tmp_path / "ok.pt"], tmp_path / "s", "cifar10", root)
    # the same logits over another dataset: the fingerprint does not match the store's
    other = write_tiny_cifar10(tmp_path / "other", seed=9)
    with pytest.raises(DatasetMismatchError, match="not the data"):
        import_multirun_logits([tmp_path / "ok.pt"], tmp_path / "s", "cifar10", other)
    # a store made by a recipe is not appended to
    (tmp_path / "r.toml").write_text('[data]\ndataset = "digits"\n[population]\nruns = 2\n')
    manyruns.plan(tmp_path / "r.toml", tmp_path / "planned")
    digits = load_dataset("digits")
    write_log(tmp_path / "d.pt", 2, digits.y_train, digits.y_test)
    with pytest.raises(StoreError, match="holds no imported multirun logits"):
        import_multirun_logits([tmp_path / "d.pt"], tmp_path / "planned", "digits")


def test_cli_import_several_files_and_errors(tmp_path, cifar):
    root, data = cifar
    for i in range(2):
        write_log(tmp_path / f"log{i}.pt", 2 + i, data.y_train, data.y_test, seed=i)
    env = {"MANYRUNS_DATA": str(root)}
    result = cli("import", "multirun-logits", str(tmp_path / "log0.pt"), str(tmp_path / "log1.pt"), str(tmp_path / "c10"), "--dataset", "cifar10", env=env)
    assert result.returncode == 0, result.stderr
    assert "imported 5 runs from 2 file(s)" in result.stdout
    assert manyruns.open(tmp_path / "c10").num_runs == 5
    write_log(tmp_path / "bad.pt", 2, data.y_train[:-1], data.y_test)
    result = cli("import", "multirun-logits", str(tmp_path / "bad.pt"), str(tmp_path / "c10"), "--dataset", "cifar10", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.pt" in lines[0] and "(2, 39, 10)" in lines[0]
    assert manyruns.open(tmp_path / "c10").num_runs == 5


def _float_log(path, data, dtype=torch.float32, seed=0, **changes):
    """A file of 3 runs whose logits are of ``dtype``; ``changes`` maps key -> (index, value)."""
    obj = write_log(path, 3, data.y_train, data.y_test, seed=seed, tta=True)
    tensors = {key: obj[key].to(dtype) for key in ("logits", "logits_train", "logits_tta")}
    for key, (index, value) in changes.items():
        tensors[key][index] = value
    write_log(path, 3, data.y_train, data.y_test, seed=seed, tta=True, **tensors)
    return tensors


@pytest.mark.parametrize(
    "key, value, dtype, shown",
    [
        ("logits_train", 7e4, torch.float32, "70000"),
        ("logits", -1e5, torch.float32, "100000"),
        ("logits_tta", 65520.0, torch.float32, "65520"),
        ("logits", 3e38, torch.float64, "3e+38"),
        ("logits_train", -2e5, torch.bfloat16, "199680"),
    ],
)
def test_finite_logits_beyond_float16_are_refused(tmp_path, cifar, key, value, dtype, shown):
    root, data = cifar
    write_log(tmp_path / "good.pt", 2, data.y_train, data.y_test, tta=True)
    store = tmp_path / "c10"
    import_multirun_logits([tmp_path / "good.pt"], store, "cifar10", root)
    before = np.asarray(manyruns.open(store).array("logits/train")[:])
    _float_log(tmp_path / "more.pt", data, seed=4)
    _float_log(tmp_path / "big.pt", data, dtype, seed=5, **{key: ((1, 3, 2), value)})
    with pytest.raises(MultirunFormatError) as info:
        import_multirun_logits([tmp_path / "more.pt", tmp_path / "big.pt"], store, "cifar10", root)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'big.pt'}: '{key}' ") and f"|x| = {shown}," in message and "float16" in message
    pop = manyruns.open(store)
    assert pop.num_runs == 2 and np.array_equal(np.asarray(pop.array("logits/train")[:]), before)


def test_float32_logits_keep_non_finite_runs_as_diverged(tmp_path, cifar):
    root, data = cifar
    tensors = _float_log(
        tmp_path / "f32.pt", data,
        logits=((1, 0, 3), float("inf")), logits_train=((1, 5, 0), float("nan")), logits_tta=((0, 2, 1), 65519.0),
    )
    tensors["logits_train"][2, 7, 4] = -float("inf")
    write_log(tmp_path / "f32.pt", 3, data.y_train, data.y_test, tta=True, **tensors)
    summary = import_multirun_logits([tmp_path / "f32.pt"], tmp_path / "c10", "cifar10", root)
    assert summary["runs_added"] == 3
    pop = manyruns.open(tmp_path / "c10")
    assert pop.runs.status.tolist() == ["ok", "diverged", "diverged"]
    for key, name in (("logits", "logits/test"), ("logits_train", "logits/train"), ("logits_tta", "logits/test_tta")):
        stored = np.asarray(pop.array(name)[:])
        assert stored.dtype == np.float16
        assert np.array_equal(stored, tensors[key].to(torch.float16).numpy(), equal_nan=True)
    assert np.asarray(pop.array("logits/test_tta")[:])[0, 2, 1] == 65504
    assert np.isposinf(np.asarray(pop.array("logits/test")[:])[1, 0, 3]) and np.isnan(np.asarray(pop.array("logits/train")[:])[1, 5, 0])
