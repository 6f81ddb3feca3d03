"""Stores in object storage: a real S3-compatible server (moto in server mode, which enforces
conditional writes) started by the fixture, and the same commands as on a local folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import manyruns
from manyruns.storage import LocalLocation, open_location
from manyruns.store import Store

from .conftest import cli_here, tiny_recipe
from .logfiles import write_log, write_tiny_cifar10
from .s3server import CREDENTIALS, bucket, free_port, start_server  # noqa: F401 - the s3 fixture is in conftest
from .test_heldout_formats import make_release
from .test_zoo import ZOO_RECIPE, write_fake_mnist


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=full, timeout=timeout)


invoke = cli_here  # a command in this process (the environment points at the fixture's server)


def keys(endpoint: str, name: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", []))


@pytest.fixture(scope="module")
def trained(s3, tmp_path_factory):
    """The same recipe planned and trained into a local folder and into S3 by the commands."""
    root = tmp_path_factory.mktemp("s3pop")
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(runs=6, extra="true_prob = true\n"))
    url = f"s3://{bucket(s3)}/populations/tiny"
    for target in (url, str(root / "local")):
        result = invoke("plan", str(recipe), target)
        assert result.returncode == 0, result.stderr
        result = cli("train", target, "--workers", "2", "--quiet")
        assert result.returncode == 0, result.stderr
    return url, root / "local"


def test_plan_train_status_and_the_python_api_on_s3(trained):
    url, local = trained
    status = json.loads(invoke("status", url, "--json").stdout)
    assert status["committed"] == status["ok"] == 6 and status["failed"] == 0 and status["path"] == url
    pop, ref = manyruns.open(url), manyruns.open(local)
    assert pop.path == url and str(pop.store.location) == url
    for name in ("logits/train", "logits/test", "mask/train", "labels/train", "metrics", "weights/epoch_3", "trueprob/train"):
        assert np.array_equal(pop.load(name), ref.load(name), equal_nan=True), name
    assert pop.runs.drop(columns="seconds").equals(ref.runs.drop(columns="seconds"))
    # nothing of the environment's secrets is kept in the store
    assert "testing" not in json.dumps(dict(pop.store.meta))


@pytest.mark.parametrize(
    "command, extra",
    [
        ("ensemble", []), ("kernel", ["--k", "3"]), ("knn", ["--k", "3"]), ("pairs", []), ("memorization", ["--no-grid"]),
        ("influence", ["--no-grid"]), ("cscore", ["--no-grid"]), ("fit-curves", []),
        ("zoo-predict", ["--model", "linear", "--checkpoint", "all"]),
    ],
)
def test_every_analysis_reads_and_saves_on_s3(trained, tmp_path, command, extra):
    url, local = trained
    if command in ("ensemble", "fit-curves", "zoo-predict"):
        extra = [*extra, "--plot", str(tmp_path / "figure.png")]
    results = {}
    for target in (url, str(local)):
        result = invoke(command, target, "--runs", "0-4", "--json", *extra)
        assert result.returncode == 0, (command, result.stderr)
        results[target] = json.loads(result.stdout)
    a, b = results[url], results[str(local)]
    assert a["runs"] == b["runs"] == [0, 1, 2, 3, 4]
    stored = manyruns.open(url).store.group[a["stored"]]
    assert stored["runs"][:].tolist() == [0, 1, 2, 3, 4]
    drop = ("stored", "files", "seconds_features", "seconds_fit")
    same = {k: v for k, v in a.items() if k not in drop}
    assert same == {k: v for k, v in b.items() if k not in drop}, command


def test_imports_and_exports_on_s3(s3, tmp_path):
    name = bucket(s3)
    # held-out release: import into S3, export back, compare with the local import
    release = tmp_path / "release"
    make_release(release, seed=3, per_ratio=2)
    assert cli("import", "heldout", str(release), f"s3://{name}/heldout", "--dataset", "digits").returncode == 0
    assert cli("import", "heldout", str(release), str(tmp_path / "heldout"), "--dataset", "digits").returncode == 0
    for target, out in ((f"s3://{name}/heldout", tmp_path / "out-s3"), (str(tmp_path / "heldout"), tmp_path / "out-local")):
        result = cli("export", "heldout", target, str(out))
        assert result.returncode == 0, result.stderr
    files = sorted(p.relative_to(tmp_path / "out-s3") for p in (tmp_path / "out-s3").rglob("*.npz"))
    assert files and files == sorted(p.relative_to(tmp_path / "out-local") for p in (tmp_path / "out-local").rglob("*.npz"))
    for f in files:
        a, b = np.load(tmp_path / "out-s3" / f), np.load(tmp_path / "out-local" / f)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    # multirun logits: two files appended to one S3 store
    data_root = write_tiny_cifar10(tmp_path / "data")
    data = manyruns.data.load_dataset("cifar10", data_root)
    logs = [write_log(tmp_path / f"log{i}.pt", 2, data.y_train, data.y_test, seed=i) for i in range(2)]
    env = {"MANYRUNS_DATA": str(data_root)}
    for i in range(2):
        result = cli("import", "multirun-logits", str(tmp_path / f"log{i}.pt"), f"s3://{name}/multirun", "--dataset", "cifar10", env=env)
        assert result.returncode == 0, result.stderr
    pop = manyruns.open(f"s3://{name}/multirun")
    assert np.array_equal(pop.load("logits/test"), np.concatenate([log["logits"].numpy() for log in logs]))
    # Small CNN Zoo: export from an S3 store, import into another S3 store, export again
    mnist = write_fake_mnist(tmp_path / "mnist-data")
    recipe = tmp_path / "zoo.toml"
    recipe.write_text(ZOO_RECIPE.replace("runs = 8", "runs = 3"))
    zoo = f"s3://{name}/zoo"
    manyruns.plan(recipe, zoo, data_dir=mnist)
    manyruns.train(zoo, executor="serial", progress=False, data_dir=mnist)
    assert cli("export", "smallcnnzoo", zoo, str(tmp_path / "zoo1")).returncode == 0
    assert cli("import", "smallcnnzoo", str(tmp_path / "zoo1"), f"s3://{name}/zoo2").returncode == 0
    assert cli("export", "smallcnnzoo", f"s3://{name}/zoo2", str(tmp_path / "zoo2")).returncode == 0
    assert np.array_equal(np.load(tmp_path / "zoo1" / "weights.npy"), np.load(tmp_path / "zoo2" / "weights.npy"), equal_nan=True)


def test_two_trainers_on_one_s3_store_train_each_run_once(s3, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tiny_recipe(runs=10).replace("epochs = 3", "epochs = 6"))
    url = f"s3://{bucket(s3)}/shared"
    assert cli("plan", str(recipe), url).returncode == 0
    args = [sys.executable, "-m", "manyruns.cli", "train", url, "--workers", "1", "--group-size", "1", "--quiet", "--log-epochs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outputs]
    trained = [{int(line.split()[1]) for line in out.splitlines() if line.startswith("run ")} for out, _ in outputs]
    assert not (trained[0] & trained[1]), "a run was trained by both processes"
    assert trained[0] | trained[1] == set(range(10))
    assert Store.open(url).committed().all() and manyruns.status(url)["failed"] == 0
    assert not Store.open(url).location.list("claims")  # every claim released


@pytest.mark.parametrize("where", ["local", "s3"])
def test_claims_are_conditional_and_stale_ones_taken_over_once(s3, tmp_path, monkeypatch, where):
    import manyruns.store as store_mod

    url = f"s3://{bucket(s3)}/claims" if where == "s3" else str(tmp_path / "claims")
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(runs=3))
    manyruns.plan(recipe, url)
    store = Store.open(url)
    assert store.try_claim(0) and not store.try_claim(0)  # created once, even by its holder
    location = store.location
    # a claim of another host, fresh: left alone; once older than the TTL: taken over, by one taker only
    other = json.dumps({"owner": "elsewhere:1:x", "host": "elsewhere", "pid": 1, "time": 0}).encode()
    location.write("claims/00000001", other)
    assert not store.try_claim(1) and 1 in store.claimed_by_others()
    monkeypatch.setattr(store_mod, "CLAIM_TTL", -1.0)
    data, token = location.read("claims/00000001")
    assert store.try_claim(1)
    assert not location.replace("claims/00000001", b"late taker", token)  # the first taker changed it
    # a claim of a dead process on this host is stale at once
    dead = json.dumps({"owner": "dead", "host": socket.gethostname(), "pid": 2**22 + 12345, "time": time.time()}).encode()
    monkeypatch.setattr(store_mod, "CLAIM_TTL", 15 * 60.0)
    location.write("claims/00000002", dead)
    assert store.try_claim(2)
    for r in (0, 1, 2):
        store.release(r)
    assert location.list("claims") == []


def test_bad_store_urls_are_one_line_errors_within_seconds(s3, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(runs=2))
    cases = [
        (["plan", str(recipe), "s3://no-such-bucket-here/x"], "the bucket does not exist"),
        (["status", "s3://no-such-bucket-here/x"], "the bucket does not exist"),
        (["status", "http://example.org/x"], "unsupported store URL scheme 'http'"),
        (["status", "s3:///x"], "a store URL names a bucket"),
        (["kernel", f"s3://{bucket(s3)}/empty"], "no population store at"),
    ]
    for args, words in cases:
        t0 = time.time()
        result = cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and words in lines[0], (args, result.stderr)
        assert time.time() - t0 < 30
    # an unreachable endpoint and wrong credentials name the variables to check, and write nothing
    result = cli("plan", str(recipe), "s3://somewhere/x", env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 2 and "cannot reach the object store" in result.stderr and "AWS_ENDPOINT_URL" in result.stderr
    proc, endpoint = start_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # this server checks credentials
    try:
        name = "locked"
        result = cli("plan", str(recipe), f"s3://{name}/x", env={"AWS_ENDPOINT_URL": endpoint, "AWS_SECRET_ACCESS_KEY": "wrong"})
        assert result.returncode == 2 and "access denied" in result.stderr and "AWS_SECRET_ACCESS_KEY" in result.stderr, result.stderr
        assert "wrong" not in result.stderr.replace("wrong credentials", "")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_local_paths_and_file_urls_are_the_same_store(tmp_path, write_recipe):
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), tmp_path / "s")
    via_url = manyruns.open(f"file://{tmp_path / 's'}")
    assert isinstance(via_url.store.location, LocalLocation) and via_url.path == tmp_path / "s"
    assert open_location(tmp_path / "s").report_dir() == tmp_path / "s" / "reports"
    assert open_location("s3://bucket/pop/c10").report_dir() == Path("reports") / "c10"
    shutil.rmtree(tmp_path / "s")
