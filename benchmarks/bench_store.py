"""Store throughput: an MNIST population in an S3-compatible object store against a local disk,
same recipe, same bytes, same run.

The object store is a moto server in server mode started by this script on this machine
(``python -m moto.server``, a Python HTTP server holding objects in memory): it has no network
latency and is CPU-bound on the same cores as the client, so its figures say what the client
side costs (requests, encoding, checksums) rather than what a real bucket across a network
gives.

Measured, each against a local folder in the same run:

* ``train``: ``manyruns.train`` of the MNIST memorization recipe (MLP 784-512-256-10 on 70%
  subsets) cut to ``--runs`` runs and ``--epochs`` epochs, with the local executor: the share
  of a training job that goes to the store. The logits written must be equal bit for bit.
* ``write``: the worker's write path alone (``Store.write_run``: every array of a run, then
  its status and commit marker) for the ``--runs`` runs read back from the trained store,
  into a freshly planned store: seconds, runs/s, MB/s of array bytes.
* ``read``: ``logits/train`` (``(R, 60000, 10) float16``, 1.2 MB a run) read in blocks of
  ``--block-size`` runs: seconds and MB/s, split into the GETs alone (every chunk fetched
  with 8 threads and nothing decoded) and the rest (decompression, checksums, assembly).
* ``memorization`` and ``kernel`` (top-50 train neighbours of the 10,000 test images by the
  correlation kernel) computed from each store: seconds, and the results must be equal.

    python benchmarks/bench_store.py [--runs 64 --epochs 1 --block-size 16] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, default_data_dir, machine  # noqa: E402

import manyruns  # noqa: E402
from manyruns.analysis.heldout.memorization import memorization  # noqa: E402
from manyruns.analysis.neighbours import neighbours  # noqa: E402
from manyruns.store import RunRecord, Store  # noqa: E402

MB = 1e6
LOGIT_ARRAYS = ("logits/train", "logits/test")


def start_s3() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in its own process (stopped by the caller); returns it and its endpoint."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("the moto server did not start")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", AWS_ALLOW_HTTP="true", AWS_ENDPOINT_URL=endpoint)
    return proc, endpoint


def make_bucket(endpoint: str) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{name}", method="PUT"), timeout=10)
    return name


def recipe_text(runs: int, epochs: int) -> str:
    text = (REPO / "examples" / "mnist-memorization.toml").read_text()
    return text.replace("runs = 2000", f"runs = {runs}").replace("epochs = 10", f"epochs = {epochs}")


def stored_bytes(store: Store) -> int:
    """Bytes of every object (or file) of the store."""
    location = store.location
    if location.local is not None:
        return sum(p.stat().st_size for p in location.local.rglob("*") if p.is_file())
    import obstore

    return sum(item["size"] for batch in obstore.list(location.store) for item in batch)


def chunk_keys(store: Store, name: str, runs: np.ndarray) -> list[str]:
    """The keys of ``name``'s chunks of ``runs`` (one run per chunk; the other axes whole)."""
    tail = "/".join("0" for _ in store.array(name).shape[1:])
    return [f"{name}/c/{int(r)}/{tail}" for r in runs]


def get_only(store: Store, keys: list[str]) -> int:
    """Fetch ``keys`` with 8 threads, decoding nothing; returns the bytes fetched."""
    location = store.location
    if location.local is not None:
        fetch = lambda key: len((location.local / key).read_bytes())  # noqa: E731
    else:
        import obstore

        fetch = lambda key: len(obstore.get(location.store, key).bytes())  # noqa: E731
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(fetch, keys))


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def measure(targets: dict[str, str], args, scratch: Path) -> dict:
    text = scratch / "recipe.toml"
    text.write_text(recipe_text(args.runs, args.epochs))
    out: dict = {}
    trained = {}
    for kind, target in targets.items():
        _, plan_s = timed(lambda: manyruns.plan(text, target + "/trained", args.data_dir))
        report, train_s = timed(lambda: manyruns.train(target + "/trained", workers=args.workers, progress=False))
        assert report.remaining == 0, report
        store = Store.open(target + "/trained")
        trained[kind] = store
        out.setdefault("plan_s", {})[kind] = plan_s
        out.setdefault("train_s", {})[kind] = train_s
        out.setdefault("stored_mb", {})[kind] = stored_bytes(store) / MB
        print(f"{kind}: plan {plan_s:.1f} s, train {args.runs} runs {train_s:.1f} s ({args.runs / train_s * 3600:.0f} runs/h), stored {out['stored_mb'][kind]:.0f} MB", flush=True)
    runs = np.arange(args.runs)
    for name in LOGIT_ARRAYS:
        equal = np.array_equal(trained["local"].read_rows(name, runs), trained["s3"].read_rows(name, runs))
        assert equal, f"{name} differs between the local and the S3 store"

    # The worker's write path alone, for records read back from the local store.
    src = trained["local"]
    status = src.status_codes()
    rows = {name: src.read_rows(name, runs) for name in ("mask/train", "labels/train", "summary", "metrics", *LOGIT_ARRAYS)}
    records = [
        RunRecord(
            int(r), "ok" if status[r] == 1 else "diverged", rows["mask/train"][i], rows["labels/train"][i], rows["summary"][i],
            metrics=rows["metrics"][i], logits_train=rows["logits/train"][i], logits_test=rows["logits/test"][i],
        )
        for i, r in enumerate(runs)
    ]
    raw = sum(v.nbytes for v in rows.values())
    out["array_mb"] = raw / MB
    for kind, target in targets.items():
        manyruns.plan(text, target + "/written", args.data_dir)
        store = Store.open(target + "/written")
        _, write_s = timed(lambda: [store.write_run(rec) for rec in records])
        assert store.committed().all()
        out.setdefault("write_s", {})[kind] = write_s
        print(f"{kind}: write_run x {args.runs}: {write_s:.2f} s, {args.runs / write_s:.1f} runs/s, {raw / MB / write_s:.0f} MB/s of arrays", flush=True)

    # Reading logits/train in blocks, and the GETs alone.
    for kind, store in trained.items():
        pop = manyruns.open(str(store.path))
        nbytes = 0

        def read_all():
            nonlocal nbytes
            for _, block in pop.blocks("logits/train", block_size=args.block_size):
                nbytes += block.nbytes

        _, read_s = timed(read_all)
        keys = chunk_keys(store, "logits/train", runs)
        fetched, get_s = timed(lambda: get_only(store, keys))
        out.setdefault("read_s", {})[kind] = read_s
        out.setdefault("get_s", {})[kind] = get_s
        out.setdefault("read_mb", {})[kind] = nbytes / MB
        out.setdefault("fetched_mb", {})[kind] = fetched / MB
        print(
            f"{kind}: read logits/train {nbytes / MB:.0f} MB in {read_s:.2f} s ({nbytes / MB / read_s:.0f} MB/s); "
            f"GETs alone {fetched / MB:.0f} MB in {get_s:.2f} s ({fetched / MB / get_s:.0f} MB/s)",
            flush=True,
        )

    results = {}
    for kind, store in trained.items():
        pop = manyruns.open(str(store.path))
        mem, mem_s = timed(lambda: memorization(pop, block_size=args.block_size))
        nb, kernel_s = timed(lambda: neighbours(pop, k=50, block_runs=args.block_size))
        results[kind] = (mem, nb)
        out.setdefault("memorization_s", {})[kind] = mem_s
        out.setdefault("kernel_s", {})[kind] = kernel_s
        print(f"{kind}: memorization {mem_s:.2f} s, kernel top-50 {kernel_s:.2f} s", flush=True)
    (m1, n1), (m2, n2) = results["local"], results["s3"]
    assert np.array_equal(m1.estimate, m2.estimate, equal_nan=True) and np.array_equal(n1.indices, n2.indices)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=None, help="training worker processes (default: one per core)")
    parser.add_argument("--block-size", type=int, default=16, help="runs read at a time")
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "store.json")
    args = parser.parse_args()

    proc, endpoint = start_s3()
    scratch = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        targets = {"local": str(scratch / "local"), "s3": f"s3://{make_bucket(endpoint)}/bench"}
        out = measure(targets, args, scratch)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
    out = {"machine": machine(), "runs": args.runs, "epochs": args.epochs, "block_size": args.block_size, "server": "moto (in memory, same machine)", **out}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
