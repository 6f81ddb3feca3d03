"""The store and its protocol: plan/grow/refuse, commit markers, resume, interruption, concurrency."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import manyruns
from manyruns.store import Store, StoreError

from .conftest import as_in_a_terminal, cli_here, tiny_recipe

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=ENV, **kw)


def popen_train(store: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "manyruns.cli", "train", str(store), "--quiet", "--workers", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )


def arrays_equal(a: Path, b: Path, names=("logits/train", "logits/test", "mask/train", "labels/train", "metrics", "weights/epoch_3")) -> None:
    pa, pb = manyruns.open(a), manyruns.open(b)
    for name in names:
        assert np.array_equal(np.asarray(pa.array(name)[:]), np.asarray(pb.array(name)[:]), equal_nan=True), name


def wait_for_commits(store: Path, n: int, timeout: float = 120) -> None:
    """Poll the store until at least ``n`` runs are committed (or ``timeout`` seconds pass)."""
    deadline = time.time() + timeout
    while time.time() < deadline and Store.open(store).committed().sum() < n:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A slower population (more runs, more epochs) trained in-process, without interruption."""
    root = tmp_path_factory.mktemp("ref")
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(runs=24).replace("epochs = 3", "epochs = 20").replace("weights = [0, 3]", "weights = [0, 3]\ntrue_prob = true"))
    store = root / "store"
    manyruns.plan(recipe, store)
    manyruns.train(store, executor="serial", progress=False)
    return recipe, store


def test_layout_shapes_and_attributes(tmp_path, write_recipe):
    store = tmp_path / "s"
    pop = manyruns.plan(write_recipe(tiny_recipe(runs=5)), store)
    assert pop.array("logits/train").shape == (5, 1438, 10)
    assert pop.array("logits/train").chunks == (1, 1438, 10)
    assert pop.array("logits/test").dtype == np.float16
    assert pop.array("mask/train").shape == (5, 1438) and pop.array("labels/train").dtype == np.int16
    assert pop.array("metrics").shape == (5, 4, 4)  # epochs 0..3
    assert pop.array("weights/epoch_3").shape == (5, pop.layout["num_params"])
    assert pop.array("committed").chunks == (1,)
    meta = pop.store.meta
    assert meta["dataset"]["name"] == "digits" and len(meta["dataset"]["labels_sha256"]) == 64
    assert meta["version"] == manyruns.__version__
    assert "widths = [32]" in meta["recipe_text"]
    layout = pop.layout["params"]
    assert layout[0]["name"] == "hidden.0.weight" and layout[0]["shape"] == [32, 64] and layout[-1]["end"] == pop.layout["num_params"]
    assert np.array_equal(pop.targets("test"), manyruns.open(store).targets("test"))
    assert not pop.committed.any() and (pop.runs.status == "pending").all()


def test_the_first_examples_of_a_dataset(tmp_path, write_recipe):
    """data.train_examples / test_examples keep the first N of each split, in order, in the
    store's layout, labels and fingerprint; training and reading back use the same cut."""
    from manyruns.data import load_dataset

    text = tiny_recipe(runs=2).replace('normalize = "unit"', 'normalize = "unit"\ntrain_examples = 300\ntest_examples = 40')
    pop = manyruns.plan(write_recipe(text), tmp_path / "s")
    full = load_dataset("digits")
    assert pop.array("logits/train").shape == (2, 300, 10) and pop.array("logits/test").shape == (2, 40, 10)
    assert np.array_equal(pop.targets("train"), full.y_train[:300]) and np.array_equal(pop.targets("test"), full.y_test[:40])
    assert pop.store.fingerprint["train_shape"][0] == 300
    manyruns.train(tmp_path / "s", executor="serial", progress=False)
    data = manyruns.open(tmp_path / "s").dataset()
    assert np.array_equal(data.x_train, full.x_train[:300]) and data.n_test == 40
    too_many = text.replace("train_examples = 300", "train_examples = 5000")
    result = cli("plan", str(write_recipe(too_many, "big.toml")), str(tmp_path / "big"))
    assert result.returncode == 2 and "data.train_examples" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "big").exists()


def test_plan_is_idempotent_grows_and_refuses(tmp_path, write_recipe):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=4)), store)
    manyruns.train(store, executor="serial", progress=False)
    before = np.asarray(manyruns.open(store).array("logits/test")[:])
    # same recipe, even reformatted: nothing changes
    manyruns.plan(write_recipe("# a comment\n" + tiny_recipe(runs=4), "same.toml"), store)
    assert manyruns.open(store).num_runs == 4 and manyruns.open(store).committed.all()
    # more runs: the store grows, committed runs stay
    manyruns.plan(write_recipe(tiny_recipe(runs=7), "grown.toml"), store)
    pop = manyruns.open(store)
    assert pop.num_runs == 7 and pop.committed.tolist() == [True] * 4 + [False] * 3
    assert np.array_equal(pop.load("logits/test", [0, 1, 2, 3]), before)
    report = manyruns.train(store, executor="serial", progress=False)
    assert report.trained == 3 and manyruns.open(store).committed.all()
    # fewer runs or another recipe: refused, with what differs
    with pytest.raises(StoreError, match="shrinking"):
        manyruns.plan(write_recipe(tiny_recipe(runs=3), "fewer.toml"), store)
    with pytest.raises(StoreError) as info:
        manyruns.plan(write_recipe(tiny_recipe(runs=7).replace("lr = 0.1", "lr = 0.2"), "other.toml"), store)
    assert "optimizer.lr (store: 0.1, recipe: 0.2)" in str(info.value)
    assert manyruns.open(store).recipe.optimizer.lr == 0.1
    # a store written before a recipe field existed: its default, not a difference
    s = Store.open(store)
    meta = s.meta
    del meta["recipe"]["population"]["seeds_per_subset"]
    s._set_meta(meta)
    manyruns.plan(write_recipe(tiny_recipe(runs=8), "older.toml"), store)
    assert manyruns.open(store).num_runs == 8


def test_uncommitted_runs_are_invisible_and_redone_identically(tmp_path, reference):
    recipe, ref = reference
    store = tmp_path / "s"
    shutil.copytree(ref, store)
    s = Store.open(store)
    s.uncommit([2, 5])
    pop = manyruns.open(store)
    assert 2 not in pop.select("committed") and len(pop.select()) == 22
    assert [r for r, _ in pop.blocks("logits/test", block_size=100)][0].tolist() == [r for r in range(24) if r not in (2, 5)]
    # retraining (alone, in another group than the first time) reproduces the stored results exactly
    report = manyruns.train(store, executor="serial", progress=False)
    assert report.trained == 2
    arrays_equal(store, ref, names=("logits/train", "logits/test", "weights/epoch_3", "trueprob/train"))


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_killed_training_keeps_committed_runs_and_resumes(tmp_path, reference):
    recipe, ref = reference
    store = tmp_path / "s"
    manyruns.plan(recipe, store)
    proc = popen_train(store, "--group-size", "1")
    wait_for_commits(store, 3)
    workers = children(proc.pid)
    proc.kill()
    proc.wait()
    # the pool workers of a killed parent exit on their own (none is left waiting for work)
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "pool workers outlived their killed parent"
    committed = Store.open(store).committed()
    assert 3 <= committed.sum() < 24
    ref_pop, pop = manyruns.open(ref), manyruns.open(store)
    done = np.flatnonzero(committed)
    assert np.array_equal(pop.load("logits/test", done), ref_pop.load("logits/test", done))
    # the next train finishes the rest; the stale claims of the dead process do not block it
    result = cli("train", str(store), "--quiet", "--workers", "1")
    assert result.returncode == 0, result.stderr
    arrays_equal(store, ref)


def test_ctrl_c_keeps_committed_runs(tmp_path, reference):
    recipe, ref = reference
    # the reference recipe grown to 400 runs (its first 24 plan as the reference's): the
    # signal lands mid-training however busy the machine is
    many = tmp_path / "many.toml"
    many.write_text(recipe.read_text().replace("runs = 24", "runs = 400"))
    store = tmp_path / "s"
    manyruns.plan(many, store)
    proc = subprocess.Popen(
        [sys.executable, "-m", "manyruns.cli", "train", str(store), "--quiet", "--workers", "1", "--group-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True, preexec_fn=as_in_a_terminal,
    )
    wait_for_commits(store, 2)
    finished_before_signal = proc.poll() is not None
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (finished_before_signal, Store.open(store).committed().sum(), out, err)
    assert "interrupted" in err and "resumes" in err
    committed = Store.open(store).committed()
    assert 2 <= committed.sum() < 400
    assert not list((store / "claims").glob("*"))  # claims released
    done = np.flatnonzero(committed)
    first = done[done < 24]
    assert np.array_equal(manyruns.open(store).load("logits/train", first), manyruns.open(ref).load("logits/train", first))
    # runs are trained in order: the next call redoes the interrupted run first, as the reference made it
    manyruns.train(store, executor="serial", progress=False, max_runs=2)
    now = Store.open(store).committed()
    assert now.sum() == committed.sum() + 2 and now[: committed.sum() + 2].all()
    check = f"0-{min(int(now.sum()), 24) - 1}"
    a, b = manyruns.open(store), manyruns.open(ref)
    for name in ("logits/train", "logits/test", "mask/train", "labels/train", "metrics", "weights/epoch_3"):
        assert np.array_equal(a.load(name, check), b.load(name, check), equal_nan=True), name


def test_two_train_processes_share_the_work(tmp_path, reference):
    recipe, ref = reference
    store = tmp_path / "s"
    manyruns.plan(recipe, store)
    procs = [popen_train(store, "--group-size", "2") for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]  # generous: CI machines may be busy
    assert all(p.returncode == 0 for p in procs), outs
    trained = [int(out.split("trained ")[1].split(" ")[0]) for out, _ in outs]
    assert sum(trained) == 24 and min(trained) > 0  # every run trained once, by one of them
    assert Store.open(store).committed().all()
    arrays_equal(store, ref)


def test_local_executor_matches_serial(tmp_path, write_recipe):
    recipe = write_recipe(tiny_recipe(runs=6))
    a, b = tmp_path / "a", tmp_path / "b"
    manyruns.plan(recipe, a)
    manyruns.plan(recipe, b)
    manyruns.train(a, executor="serial", progress=False)
    report = manyruns.train(b, executor="local", workers=2, progress=False)
    assert report.trained == 6
    arrays_equal(a, b)


def test_max_runs_and_status(tmp_path, write_recipe):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=5)), store)
    report = manyruns.train(store, executor="serial", max_runs=2, progress=False)
    assert report.trained == 2 and report.remaining == 3
    info = manyruns.status(store)
    assert (info["planned"], info["committed"], info["pending"], info["failed"]) == (5, 2, 3, 0)
    pop = manyruns.open(store)
    test_acc = pop.runs.test_acc.to_numpy()
    assert np.isnan(test_acc[2:]).all() and info["mean_test_acc"] == pytest.approx(np.mean(test_acc[:2]), abs=1e-6)


def test_a_failing_group_is_recorded_and_retried(tmp_path, write_recipe):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=3).replace("widths = [32]", "widths = [32]\ndropout = 0.2")), store)
    # the vmap form refuses dropout: every group fails inside the worker
    report = manyruns.train(store, executor="serial", strategy="vmap", progress=False)
    assert set(report.failed) == {0, 1, 2} and "dropout" in report.failed[0]
    info = manyruns.status(store)
    assert info["failed"] == 3 and info["committed"] == 0 and "dropout" in info["failures"]["0"]
    assert (manyruns.open(store).runs.status == "failed").all()
    report = manyruns.train(store, executor="serial", progress=False)
    assert report.trained == 3 and manyruns.status(store)["failed"] == 0


def test_dataset_fingerprint_is_checked(tmp_path, write_recipe):
    import gzip

    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def write_idx(name, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(data / name, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())

    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    recipe = write_recipe(tiny_recipe(runs=2).replace('dataset = "digits"', 'dataset = "mnist"'))
    store = tmp_path / "s"
    manyruns.plan(recipe, store, data_dir=tmp_path / "data")
    assert manyruns.open(store).store.meta["data_dir"] == str((tmp_path / "data").resolve())
    write_idx("t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))  # the data changes under the store
    result = cli("train", str(store), "--quiet")
    assert result.returncode == 2
    assert "not the data" in result.stderr and "labels" in result.stderr
    assert not Store.open(store).committed().any()


def test_a_killed_worker_fails_its_runs_and_the_rest_train(tmp_path, reference):
    recipe, ref = reference
    store = tmp_path / "s"
    manyruns.plan(recipe, store)
    proc = popen_train(store, "--group-size", "1")
    wait_for_commits(store, 2)
    victims = [pid for pid in children(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)  # what the out-of-memory killer does
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "runs failed" in err and "died" in err
    info = manyruns.status(store)
    assert info["committed"] + info["failed"] == 24 and info["failed"] >= 1
    assert not list((store / "claims").glob("*"))
    result = cli("train", str(store), "--quiet", "--workers", "1")
    assert result.returncode == 0, result.stderr
    arrays_equal(store, ref)


def test_cancelling_a_pool_whose_worker_is_already_gone_is_quiet():
    """A worker killed and reaped before the pool is cancelled (the pool's own thread races the
    cancel for it) must not turn the cancel into an error."""
    from manyruns.execute.local import LocalExecutor

    pool = LocalExecutor(workers=2)
    assert pool._pool.submit(os.getpid).result(timeout=60)
    processes = list(pool._pool._processes.values())
    victim = processes[0]
    os.kill(victim.pid, signal.SIGKILL)
    try:
        os.waitpid(victim.pid, 0)  # reaped behind the Process object's back
    except ChildProcessError:
        pass  # the pool's thread reaped it first
    pool.close(cancel=True)
    assert not any(p.is_alive() and p.exitcode is None and _pid_exists(p.pid) for p in processes)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unknown_train_options_are_refused_before_any_work(tmp_path, write_recipe):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), store)
    for option, value in (("--strategy", "foo"), ("--executor", "spark")):
        result = cli_here("train", str(store), option, value)
        assert result.returncode == 2 and value in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "train:" not in result.stderr  # no progress bar was drawn
    result = cli_here("train", str(store), "--strategy", "stacked", "--executor", "serial")
    assert result.returncode == 0, result.stderr  # the MLP recipe has a stacked form
    small_cnn = write_recipe(tiny_recipe(runs=1).replace('kind = "mlp"\nwidths = [32]', 'kind = "small-cnn"\nlayers = 1'), "cnn.toml")
    cnn_store = tmp_path / "cnn"
    manyruns.plan(small_cnn, cnn_store)
    result = cli_here("train", str(cnn_store), "--strategy", "stacked")
    assert result.returncode == 2 and "MLPs only" in result.stderr
    assert manyruns.status(cnn_store)["failed"] == 0 and manyruns.status(store)["failed"] == 0


def test_a_row_of_the_wrong_shape_is_refused_before_anything_is_written(tmp_path, write_recipe):
    from manyruns.store import RunRecord

    store = tmp_path / "s"
    pop = manyruns.plan(write_recipe(tiny_recipe(runs=2).replace("weights = [0, 3]", "weights = []")), store)
    n, e = pop.array("mask/train").shape[1], pop.array("metrics").shape[1]
    summary = np.zeros(pop.array("summary").shape[1], np.float32)
    logits_train = np.zeros(pop.array("logits/train").shape[1:], np.float32)
    logits_test = np.zeros(pop.array("logits/test").shape[1:], np.float32)
    good_labels = pop.targets("train")
    short_metrics = np.zeros((e - 1, pop.array("metrics").shape[2]), np.float32)
    rec = RunRecord(0, "ok", np.ones(n, bool), good_labels, summary, short_metrics, logits_train=logits_train, logits_test=logits_test)
    with pytest.raises(StoreError, match=r"'metrics' has shape"):
        pop.store.write_run(rec)
    assert not Store.open(store).committed().any()
    assert not np.asarray(Store.open(store).array("mask/train")[0]).any()
