"""The cluster launch scripts shipped in examples/cluster, run for real on this machine.

The Slurm batch script runs with stand-ins for ``srun`` (runs the step's command here) and
``scontrol`` (names two nodes): the script starts a Ray head and a second Ray node on this
machine, waits for both, and trains a store that lives in a moto S3 server, then stops what it
started. The KubeRay manifest is checked for what can be checked without a Kubernetes cluster:
its entrypoint is a valid ``manyruns train`` command for the ray executor.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("obstore")

import manyruns  # noqa: E402

from .conftest import tiny_recipe  # noqa: E402
from .s3server import bucket, free_port  # noqa: E402
from .test_ray import RAY_ENV, alive, descendants, in_session  # noqa: E402
from .test_s3 import cli  # noqa: E402

CLUSTER = Path(manyruns.__file__).parent / "examples" / "cluster"

SRUN = r"""#!/bin/bash
# srun stand-in: drop the step's Slurm options and run its command on this machine.
while [ $# -gt 0 ]; do
    case "$1" in
        -w|--nodelist|-N|-n) shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
exec "$@"
"""

SCONTROL = r"""#!/bin/bash
# scontrol stand-in: `scontrol show hostnames LIST` names two nodes.
[ "$1 $2" = "show hostnames" ] || { echo "scontrol stand-in: only 'show hostnames'" >&2; exit 1; }
printf 'node1\nnode2\n'
"""


def shims(folder: Path) -> Path:
    folder.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
    return folder


def test_the_slurm_script_trains_a_store_on_s3_and_stops_its_ray_nodes(s3, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(tiny_recipe(runs=8))
    url = f"s3://{bucket(s3)}/populations/slurm"
    local = tmp_path / "local"
    for target in (url, str(local)):
        assert cli("plan", str(recipe), target).returncode == 0
    assert cli("train", str(local), "--executor", "serial", "--quiet").returncode == 0

    path = os.pathsep.join([str(shims(tmp_path / "bin")), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {
        **os.environ, **RAY_ENV, "PATH": path, "OMP_NUM_THREADS": "1",
        "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_CPUS_PER_TASK": "1",
        "STORE": url, "RAY_PORT": str(free_port()),
        # two nodes on one machine: small object stores, and ports of their own
        "RAY_NODE_ARGS": "--object-store-memory=80000000 --memory=1073741824 --dashboard-agent-listen-port=0 --metrics-export-port=0",
    }
    proc = subprocess.Popen(
        ["bash", str(CLUSTER / "slurm-train.sbatch")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=tmp_path, start_new_session=True,
    )
    seen: set[int] = set()
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        seen |= descendants(proc.pid)
        time.sleep(0.2)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, err[-3000:]
    assert "ray head: node1" in out and "nodes: node1 node2" in out
    assert "8 planned, 8 committed" in out, out

    pop, ref = manyruns.open(url), manyruns.open(local)
    assert pop.store.committed().all()
    for name in ("logits/train", "logits/test", "metrics"):
        assert np.array_equal(pop.load(name), ref.load(name), equal_nan=True), name

    deadline = time.time() + 20
    left = [p for p in seen if alive(p)] + in_session(proc.pid)
    while left and time.time() < deadline:
        time.sleep(0.5)
        left = [p for p in seen if alive(p)] + in_session(proc.pid)
    for pid in left:  # only what this script started
        os.kill(pid, 9)
    assert not left, f"processes left running: {left}"


def test_the_rayjob_entrypoint_is_a_valid_train_command():
    yaml = pytest.importorskip("yaml")
    manifest = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    args = shlex.split(manifest["spec"]["entrypoint"])
    assert args[:2] == ["manyruns", "train"] and args[2].startswith("s3://")
    from manyruns.execute import check_cluster_options

    options = dict(zip(args[3::2], args[4::2]))
    assert options["--executor"] == "ray" and options["--address"] == "auto"
    assert check_cluster_options("ray", "auto", options["--address"], float(options["--gpus-per-worker"])) == ("cuda", 0.25)
