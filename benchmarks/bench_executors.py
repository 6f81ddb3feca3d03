"""Runs per hour through Ray against the local process pool, same recipe, same machine, same run.

For each case, a fresh store is planned and trained by the ``manyruns train`` command as a user
runs it, once per executor:

* ``local``: ``--executor local --workers <cores>`` (the default executor);
* ``ray-cluster``: ``--executor ray --address HOST:PORT`` on a Ray cluster started before the
  command (``ray start --head --num-cpus <cores> --block``, stopped at the end through its
  process): what a user of an existing cluster sees, one actor per CPU;
* ``ray-local``: ``--executor ray`` with no address: the command starts a Ray instance on this
  machine and stops it at the end (start-up included).

Each figure is the command's wall clock, process start-up included; ``train_s`` is the
training loop alone as the command reports it (``TrainReport.seconds``, from opening the store
to the last commit, including joining the cluster and placing its actors). The logits of every
executor are compared, bit for bit, with the local executor's.

Cases: ``demo`` (``examples/demo.toml``: 128 MLPs on the bundled digits, 30 epochs) and
``mnist`` (``examples/mnist-memorization.toml`` cut to ``--mnist-runs`` runs and
``--mnist-epochs`` epochs: MLP 784-512-256-10 on 70% subsets of MNIST).

    python benchmarks/bench_executors.py [--cases demo,mnist] [--mnist-runs 64 --mnist-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, default_data_dir, machine  # noqa: E402

from manyruns.execute import available_cores  # noqa: E402
from manyruns.store import Store  # noqa: E402

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(cpus: int) -> tuple[subprocess.Popen, str]:
    """A one-node Ray cluster in a process of its own (``ray start --block``); returns it and its address."""
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [str(ray), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(2)  # the GCS answers before the raylet registers its CPUs
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("ray start did not come up")


def stop_cluster(proc: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` stops the node's processes it started."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def manyruns(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=ENV)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"manyruns {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return seconds, result.stdout


def recipe_file(case: str, args, scratch: Path) -> tuple[Path, int]:
    if case == "demo":
        return REPO / "examples" / "demo.toml", 128
    text = (REPO / "examples" / "mnist-memorization.toml").read_text()
    text = text.replace("runs = 2000", f"runs = {args.mnist_runs}").replace("epochs = 10", f"epochs = {args.mnist_epochs}")
    path = scratch / "mnist.toml"
    path.write_text(text)
    return path, args.mnist_runs


def train_seconds(stdout: str) -> float | None:
    for line in stdout.splitlines():
        if line.startswith("trained") and " in " in line:
            try:
                return float(line.rsplit(" in ", 1)[1].split()[0].rstrip("s"))
            except ValueError:
                return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="demo,mnist")
    parser.add_argument("--executors", default="local,ray-cluster,ray-local")
    parser.add_argument("--mnist-runs", type=int, default=64)
    parser.add_argument("--mnist-epochs", type=int, default=2)
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "executors.json")
    args = parser.parse_args()
    cores = available_cores()
    executors = args.executors.split(",")
    out: dict = {"machine": machine(), "cores": cores, "cases": {}}
    cluster, address = start_cluster(cores) if "ray-cluster" in executors else (None, None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-exec-") as tmp:
            scratch = Path(tmp)
            for case in args.cases.split(","):
                recipe, runs = recipe_file(case, args, scratch)
                rows, reference = {}, None
                for executor in executors:
                    store = scratch / f"{case}-{executor}"
                    manyruns("plan", str(recipe), str(store), *(["--data-dir", args.data_dir] if args.data_dir else []))
                    flags = {"local": ["--workers", str(cores)], "ray-cluster": ["--executor", "ray", "--address", address], "ray-local": ["--executor", "ray"]}[executor]
                    seconds, stdout = manyruns("train", str(store), "--quiet", *flags)
                    s = Store.open(store)
                    assert s.committed().all(), f"{case}/{executor}: not every run committed"
                    logits = s.read_rows("logits/test", np.arange(runs))
                    if reference is None:
                        reference = logits
                    equal = bool(np.array_equal(logits, reference))
                    rows[executor] = {"seconds": seconds, "train_s": train_seconds(stdout), "runs_per_hour": runs / seconds * 3600, "equal_to_local": equal}
                    print(f"{case} {executor}: {runs} runs in {seconds:.1f} s ({runs / seconds * 3600:.0f} runs/h; training loop {rows[executor]['train_s']} s); logits equal to local: {equal}", flush=True)
                base = rows.get("local")
                for executor, row in rows.items():
                    if base:
                        row["overhead"] = row["seconds"] / base["seconds"] - 1
                out["cases"][case] = {"runs": runs, "recipe": recipe.name, "epochs": args.mnist_epochs if case == "mnist" else 30, "executors": rows}
    finally:
        if cluster is not None:
            stop_cluster(cluster)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
