"""The ray executor on real Ray instances started here: a local instance per command, and a
cluster of three nodes on this machine (a head without CPUs, two workers with one CPU each)
where a worker node dies mid-training.

Every Ray process these tests start is stopped through its own handle (``Cluster.shutdown``,
``ray.shutdown``, or the command that started it), never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import manyruns  # noqa: E402
from manyruns.errors import ClusterError, InputError, OptionError  # noqa: E402
from manyruns.store import Store  # noqa: E402

from .conftest import as_in_a_terminal, tiny_recipe  # noqa: E402

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", **RAY_ENV}
NODE = {"object_store_memory": 80 << 20, "memory": 1 << 30}  # small enough for CI (the object store's minimum is about 75 MB)
ARRAYS = ("logits/train", "logits/test", "mask/train", "labels/train", "metrics", "weights/epoch_3")
SLOW = "epochs = 60"  # runs in flight for a second or so each


@pytest.fixture(scope="module", autouse=True)
def ray_env():
    with pytest.MonkeyPatch.context() as mp:
        for name, value in RAY_ENV.items():
            mp.setenv(name, value)
        yield


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def arrays_equal(a: Path, b: Path) -> None:
    pa, pb = manyruns.open(a), manyruns.open(b)
    for name in ARRAYS:
        assert np.array_equal(np.asarray(pa.array(name)[:]), np.asarray(pb.array(name)[:]), equal_nan=True), name


def wait_for_commits(store: Path, n: int, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = int(Store.open(store).committed().sum())
        if done >= n:
            return done
        time.sleep(0.05)
    return int(Store.open(store).committed().sum())


def untouched(store: Path) -> None:
    """Nothing was claimed, failed or committed."""
    assert not list((store / "claims").glob("*")) and not list((store / "failures").glob("*"))
    assert not Store.open(store).committed().any()


# ------------------------------------------------------------------------ processes


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(root: int) -> set[int]:
    parent = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None:
            parent[int(entry.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def in_session(sid: int) -> list[int]:
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


class Watched:
    """A command in its own session, with every process it started recorded while it runs."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "manyruns.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            start_new_session=True, preexec_fn=as_in_a_terminal,
        )
        self.seen: set[int] = set()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            self.seen |= descendants(self.proc.pid)
            time.sleep(0.2)

    def communicate(self, timeout: float = 300) -> tuple[str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self._thread.join()
        return out, err

    def left_running(self, grace: float = 10) -> list[int]:
        """Processes this command started that are still alive ``grace`` seconds after it ended."""
        deadline = time.time() + grace
        while True:
            left = sorted({p for p in self.seen if alive(p)} | set(in_session(self.proc.pid)))
            if not left or time.time() > deadline:
                return left
            time.sleep(0.2)


# ------------------------------------------------------------------ without a cluster


def test_options_are_checked_before_any_work(tmp_path, write_recipe):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), store)
    cases = [
        ({"executor": "local", "address": "auto"}, "address", "executor ray only"),
        ({"executor": "serial", "gpus_per_worker": 0.5}, "gpus_per_worker", "executor ray only"),
        ({"executor": "ray", "gpus_per_worker": 0}, "gpus_per_worker", "positive"),
        ({"executor": "ray", "gpus_per_worker": 1.5}, "gpus_per_worker", "(0, 1] or a whole number"),
        ({"executor": "ray", "gpus_per_worker": 0.5, "device": "cpu"}, "device", "gpus_per_worker"),
        ({"executor": "ray", "device": "cuda:1"}, "device", "Ray assigns the GPUs"),
        ({"executor": "ray", "address": " "}, "address", "auto or HOST:PORT"),
        ({"executor": "ray", "address": "nowhere"}, "address", "auto or HOST:PORT"),
        ({"executor": "ray", "workers": 0}, "workers", "at least 1"),
    ]
    for kwargs, param, words in cases:
        with pytest.raises(OptionError) as info:
            manyruns.train(store, progress=False, **kwargs)
        assert info.value.param == param and words in str(info.value), (kwargs, str(info.value))
    assert issubclass(ClusterError, InputError)  # exit 2 on the command line
    assert not ray.is_initialized()
    untouched(store)


def test_a_missing_ray_is_one_line_that_says_what_to_install(tmp_path, write_recipe, monkeypatch):
    import importlib.util

    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), store)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "ray" else find_spec(name, *args))
    with pytest.raises(InputError, match=r"^the ray executor needs ray: pip install 'manyruns\[ray\]'$"):
        manyruns.train(store, executor="ray", progress=False)
    untouched(store)


def test_an_unreachable_address_fails_within_seconds_with_one_line(tmp_path, write_recipe):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), store)
    with socket.socket() as s:  # a local port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    result = cli("train", str(store), "--executor", "ray", "--address", f"127.0.0.1:{port}", timeout=120)
    seconds = time.monotonic() - t0
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --address 127.0.0.1:{port}:") and "no Ray cluster answers there" in lines[0]
    assert seconds < 30, seconds  # the interpreter, torch and ray start; the probe itself takes milliseconds
    assert result.stdout == ""
    untouched(store)


def test_without_address_a_local_instance_is_started_and_stopped(tmp_path, write_recipe):
    recipe = write_recipe(tiny_recipe(runs=3))
    ref, store = tmp_path / "ref", tmp_path / "s"
    manyruns.plan(recipe, ref)
    manyruns.plan(recipe, store)
    manyruns.train(ref, executor="serial", progress=False)
    command = Watched("train", str(store), "--executor", "ray", "--workers", "2", "--quiet")
    out, err = command.communicate()
    assert command.proc.returncode == 0, err
    # the command's own output only: one summary line on stdout, nothing from Ray on stderr
    assert out.startswith("trained 3 runs (0 diverged, 0 failed)") and len(out.splitlines()) == 1, out
    assert err.strip() == "", err
    assert len(command.seen) >= 3  # it did start Ray's processes (GCS, raylet, workers)
    assert command.left_running() == []
    assert Store.open(store).committed().all()
    arrays_equal(store, ref)


def test_ctrl_c_stops_the_local_instance_and_keeps_committed_runs(tmp_path, write_recipe):
    recipe = write_recipe(tiny_recipe(runs=24).replace("epochs = 3", SLOW))  # 24: the signal lands mid-training on a busy machine too
    store = tmp_path / "s"
    manyruns.plan(recipe, store)
    command = Watched("train", str(store), "--executor", "ray", "--workers", "2", "--group-size", "1", "--quiet")
    wait_for_commits(store, 1)
    os.killpg(command.proc.pid, signal.SIGINT)  # what a terminal sends to the whole foreground group
    out, err = command.communicate(timeout=120)
    assert command.proc.returncode == 130, (out, err)
    assert "interrupted" in err and "resumes" in err and "Traceback" not in err
    assert "_Trainer" not in err  # no notes from Ray about the workers it was told to kill
    assert command.left_running() == []
    committed = Store.open(store).committed()
    assert 1 <= committed.sum() < 24
    assert not list((store / "claims").glob("*"))  # claims released
    report = manyruns.train(store, executor="serial", progress=False)  # the rest, anywhere
    assert report.trained == 24 - committed.sum() and Store.open(store).committed().all()


# ------------------------------------------------------------------ on a cluster


@pytest.fixture(scope="module")
def cluster(ray_env):
    """A head without CPUs (nothing trains there) and two worker nodes with one CPU each."""
    from ray.cluster_utils import Cluster

    head = {"num_cpus": 0, "include_dashboard": False, **NODE, "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}}
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(2):
            c.add_node(num_cpus=1, **NODE)
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


def test_workers_that_cannot_be_placed_fail_within_the_deadline(cluster, tmp_path, write_recipe, monkeypatch):
    monkeypatch.setenv("MANYRUNS_RAY_READY_TIMEOUT", "3")
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), store)
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as info:
        manyruns.train(store, executor="ray", address=cluster.address, gpus_per_worker=1, progress=False)
    assert time.monotonic() - t0 < 3 + 20  # joining the cluster, the deadline, leaving
    message = str(info.value)
    assert message == f"the Ray cluster at {cluster.address} has no node that offers 1 GPU (it has CPU 2, GPU 0)"
    assert not ray.is_initialized()  # disconnected
    assert cluster.remaining_processes_alive()  # and the cluster is still up
    untouched(store)
    from manyruns.execute.ray import resolve_address

    assert resolve_address("auto") == cluster.address  # the cluster this machine belongs to


def test_a_node_dies_mid_training_and_every_run_ends_committed_and_identical(cluster, tmp_path, write_recipe):
    recipe = write_recipe(tiny_recipe(runs=12).replace("epochs = 3", SLOW))
    ref, store = tmp_path / "ref", tmp_path / "s"
    manyruns.plan(recipe, ref)
    manyruns.plan(recipe, store)
    manyruns.train(ref, executor="serial", progress=False)

    result: dict = {}

    def train() -> None:
        try:
            result["report"] = manyruns.train(store, executor="ray", address=cluster.address, workers=2, group_size=1, progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=train, daemon=True)
    thread.start()  # the cluster's nodes are added and removed from the main thread (signal handlers)
    done = wait_for_commits(store, 2)
    assert 2 <= done < 12, done  # runs still in flight on both nodes
    driver = ray._private.worker.global_worker.node
    victim = next(n for n in cluster.worker_nodes if driver is None or n._raylet_socket_name != driver._raylet_socket_name)
    cluster.remove_node(victim)
    cluster.add_node(num_cpus=1, **NODE)  # where Ray restarts the lost actor
    thread.join(timeout=240)
    assert not thread.is_alive(), "train did not finish"
    assert "error" not in result, result.get("error")
    report = result["report"]
    assert (report.trained, report.failed, report.remaining, report.stopped) == (12, {}, 0, None)
    info = manyruns.status(store)
    assert (info["committed"], info["failed"], info["running"]) == (12, 0, 0)
    assert not ray.is_initialized()  # the driver disconnected
    arrays_equal(store, ref)


def test_nodes_without_the_stores_settings_fail_before_any_run_is_claimed(tmp_path, write_recipe, monkeypatch):
    """The driver reaches the S3 store; the nodes were started with an endpoint where nothing
    listens (as if `ray start` ran before the settings were exported): one line that says so."""
    from ray.cluster_utils import Cluster

    from .s3server import CREDENTIALS, bucket, free_port, start_server

    server, endpoint = start_server()
    try:
        for name, value in CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # what the nodes see
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **NODE})
        try:
            c.add_node(num_cpus=1, **NODE)
            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # what the driver sees
            url = f"s3://{bucket(endpoint)}/p"
            manyruns.plan(write_recipe(tiny_recipe(runs=2)), url)
            t0 = time.monotonic()
            with pytest.raises(ClusterError) as info:
                manyruns.train(url, executor="ray", address=c.address, progress=False)
            message = str(info.value)
            assert message.startswith("a worker on ") and "cannot open the store" in message and "cannot reach the object store" in message, message
            assert "every Ray node needs the store's settings in its environment" in message and "\n" not in message
            assert time.monotonic() - t0 < 60
            assert not ray.is_initialized()
            store = Store.open(url)
            assert not store.committed().any() and not store.claimed_by_others()
        finally:
            if ray.is_initialized():
                ray.shutdown()
            c.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=10)
