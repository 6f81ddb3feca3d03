"""Ray executor: groups of runs train on a Ray cluster, one long-lived actor per device slot.

* **Actors, not tasks.** Each actor is one worker process that trains group after group (a
  GPU task would start a fresh process per call: about 4x slower for short groups). On CPU an
  actor asks for 1 CPU; with ``gpus_per_worker=g`` it also asks for ``g`` GPUs (0.25: four
  actors share a GPU) and trains on ``cuda`` (Ray sets ``CUDA_VISIBLE_DEVICES``). Like the local
  executor's workers, actors run torch with one intra-op thread (results bitwise equal to the
  serial executor's) and keep freed memory in the heap. They call ``run_work`` and return only
  its small report; an order goes to the actor with the fewest orders in flight.
* **Fault tolerance.** Actors restart without limit (``max_restarts=-1``) and their tasks are
  retried (``max_task_retries=-1``): when a node dies, Ray restarts its actors elsewhere and
  resubmits their orders; a retried group skips the runs committed before the failure. What is
  done is what the commit markers say.
* **Placement deadline.** Actors that cannot be placed within ``ready_timeout`` seconds fail
  the command with one line that says why (:class:`~manyruns.errors.ClusterError`).
* **Connection.** ``address=None`` starts a local Ray instance for this executor (stopped by
  :meth:`RayExecutor.close`); ``"auto"`` or ``HOST:PORT`` joins an existing cluster, probed
  first so that a wrong address fails within seconds (:class:`~manyruns.errors.OptionError`
  on ``address``); ``close`` then only kills the actors made here and disconnects.

The store must be reachable from every node at the same path or URL (a shared file system or
an object store), and manyruns installed on every node.

This module is imported only when the ray executor is used (absolute imports: ``import ray``
is the ``ray`` package, not this module).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future

import ray
import ray.exceptions
import torch

from ..errors import ClusterError, OptionError
from ..training.worker import WorkOrder, WorkReport, run_work
from .base import Executor
from .memory import keep_freed_memory

READY_TIMEOUT = 60.0
"""Seconds to wait for every actor to be placed and started (``$MANYRUNS_RAY_READY_TIMEOUT``
overrides it: an autoscaling cluster may need minutes to add nodes)."""
PROBE_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to the cluster's address before calling it unreachable."""
LOCAL_OBJECT_STORE = 128 << 20
"""Object store of a local instance: orders and reports are small (the store holds the data)."""


class _Trainer:
    """One worker process of the cluster: trains the groups sent to it, one at a time."""

    def __init__(self, device: str):
        # One intra-op thread, as the local executor's workers: results do not depend on the
        # grouping of runs and equal the serial executor's bit for bit.
        torch.set_num_threads(1)
        keep_freed_memory()
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"torch sees no CUDA device on {socket.gethostname()} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        self.device = device

    def ready(self, store_path: str | None = None, data_dir: str | None = None) -> dict:
        """This worker's pid and host, once it has opened the store and loaded the dataset
        (cached for training): a node without the store's credentials or the data fails here,
        before any run is claimed."""
        host = socket.gethostname()
        if store_path is not None:
            from ..data.base import DatasetNotFoundError
            from ..data.lookup import store_dataset
            from ..errors import InputError, StoreError
            from ..store import Store

            try:
                store = Store.open(store_path)
            except StoreError as exc:
                raise ClusterError(f"a worker on {host} cannot open the store: {exc}; every Ray node needs the store's settings in its environment (set them before `ray start`)") from None
            try:
                store_dataset(store, data_dir)
            except (InputError, DatasetNotFoundError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ClusterError(f"a worker on {host} cannot load the data: {first}; every Ray node needs the data under the same root (MANYRUNS_DATA or --data-dir)") from None
        return {"pid": os.getpid(), "host": host}

    def run(self, order: WorkOrder) -> WorkReport:
        order.device = self.device
        report = run_work(order)
        missing = [r for r in order.runs if r not in report.status]
        if missing:
            # A retried order (its node died) skips the runs its first attempt committed, whose
            # report was lost with the node: report them from the store.
            from ..store import STATUS_NAMES, Store

            store = Store.open(order.store_path)
            committed = store.committed()
            codes = store.status_codes(committed)
            for r in missing:
                if committed[r]:
                    report.status[r] = STATUS_NAMES[int(codes[r])]
        return report


def _resources_text(resources: dict) -> str:
    shown = {k: resources.get(k, 0) for k in ("CPU", "GPU")}
    return ", ".join(f"{k} {v:g}" for k, v in shown.items())


def _ask_text(ask: dict) -> str:
    return " and ".join(f"{v:g} {k}" for k, v in ask.items() if v)


def resolve_address(address: str) -> str:
    """``HOST:PORT`` of the cluster ``address`` names (``auto``: the one this machine belongs to,
    from ``RAY_ADDRESS`` or the latest ``ray start``), after a TCP probe: an address where nothing
    answers raises an :class:`OptionError` on ``address`` within seconds (``ray.init`` would
    wait for minutes)."""
    target = address
    if address.startswith("ray://"):
        target = address[len("ray://"):]
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            target = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no Ray instance found"
            raise OptionError("address", f"{{param}} auto: no Ray cluster found on this machine ({first}); start one with `ray start --head` or give HOST:PORT") from None
        except (ImportError, AttributeError):  # a Ray without that helper: let ray.init find it
            return address
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OptionError("address", f"must be auto or HOST:PORT, got {address!r}")
    tried = f"{address} ({target})" if target != address else address
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        raise OptionError("address", f"{{param}} {tried}: no Ray cluster answers there ({why} after trying {host}:{port})") from None
    if address.startswith("ray://"):
        return address
    why = _not_a_cluster(target)
    if why:
        raise OptionError("address", f"{{param}} {tried}: something answers there, but not a Ray cluster ({why})")
    return target


def _not_a_cluster(target: str) -> str | None:
    """What went wrong asking the Ray GCS at ``target`` for its cluster id, or None when it
    answers (or this Ray cannot tell: the check uses a private client). Something else on that
    port would make ``ray.init`` retry for about 30 s."""
    try:
        from ray._raylet import InnerGcsClient

        standalone = InnerGcsClient.standalone
    except (ImportError, AttributeError):
        return None
    try:
        with _quiet_stderr():  # Ray's client logs each failed try there
            standalone(target, None, int(PROBE_TIMEOUT * 1000))
    except Exception as exc:  # noqa: BLE001 - any failure says the same
        text = " ".join(str(exc).split())
        if "auth" in text.lower() or "token" in text.lower():  # a cluster that wants credentials: ray.init says more
            return None
        return text or type(exc).__name__
    return None


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 to /dev/null for a moment (Ray's C++ logging writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_closing = threading.Event()


def _notes_to_stderr() -> None:
    """Ray prints its notes to the driver (a task retried after its actor's node died, ...) on
    stdout, where the command's own lines go: send them to stderr, and drop those about the
    actors that :meth:`RayExecutor.close` kills. Ray's ``(raylet)`` messages only; a Ray
    without this private hook keeps its own behaviour."""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    original = getattr(module, "print_to_stdstream", None)
    if original is None or getattr(original, "manyruns", False):
        return

    def to_stderr(data, *args, **kwargs):
        if isinstance(data, dict) and data.get("pid") == "raylet":
            if _closing.is_set():
                return None
            data = {**data, "is_err": True}
        return original(data, *args, **kwargs)

    to_stderr.manyruns = True
    module.print_to_stdstream = to_stderr


def _connect(address: str | None, num_cpus: int | None, log_to_driver: bool) -> tuple[str, bool]:
    """Connect this process to Ray; returns the cluster's address and whether this call
    connected (and must disconnect)."""
    _closing.clear()
    if ray.is_initialized():  # the caller's own connection: use it, leave it
        return ray.get_runtime_context().gcs_address, False
    _notes_to_stderr()
    quiet = {"logging_level": logging.ERROR, "log_to_driver": log_to_driver}
    if address is None:
        # The terminal's Ctrl-C goes to the whole process group: the instance's processes (and
        # the actors they start) ignore it, so that the driver can cancel in order (close).
        previous = None
        try:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
        try:
            context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE, **quiet)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return context.address_info.get("gcs_address", "a local instance"), True
    target = resolve_address(address)
    try:
        ray.init(address=target, **quiet)
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OptionError("address", f"{{param}} {address}: cannot join the Ray cluster there ({first})") from None
    return ray.get_runtime_context().gcs_address, True


class RayExecutor(Executor):
    """``workers`` actors on the Ray cluster at ``address`` (None: a local instance started here,
    with ``workers`` CPUs, default every core). Default workers: the cluster's CPUs, or its GPUs
    divided by ``gpus_per_worker``. With ``store`` (its path or URL), each actor opens the store
    and loads its dataset (from ``data_dir``) before the executor is ready."""

    def __init__(
        self,
        workers: int | None = None,
        *,
        address: str | None = None,
        gpus_per_worker: float | None = None,
        ready_timeout: float | None = None,
        log_to_driver: bool = False,
        store: str | None = None,
        data_dir: str | None = None,
    ):
        from .base import available_cores

        self._actors: list = []
        self._in_flight: list[int] = []
        self._lock = threading.Lock()
        self._closed = False
        self._connected = False
        num_cpus = None if address is not None else (workers or available_cores())
        self.address, self._connected = _connect(address, num_cpus, log_to_driver)
        self.where = f"the Ray cluster at {self.address}" if address is not None else f"the local Ray instance ({self.address})"
        try:
            gpus = float(gpus_per_worker or 0)
            self.device = "cuda" if gpus else "cpu"
            self.ask = {"CPU": 1.0, "GPU": gpus} if gpus else {"CPU": 1.0}
            if workers is None:
                totals = ray.cluster_resources()
                count = totals.get("GPU", 0) / gpus if gpus else totals.get("CPU", 0)
                workers = max(1, int(math.floor(count + 1e-9)))
            self.slots = workers
            actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=-1, max_task_retries=-1)(_Trainer)
            self._actors = [actor.remote(self.device) for _ in range(workers)]
            self._in_flight = [0] * workers
            if ready_timeout is None:
                ready_timeout = float(os.environ.get("MANYRUNS_RAY_READY_TIMEOUT") or READY_TIMEOUT)
            self._wait_ready(ready_timeout, store, data_dir)
        except BaseException:
            self.close(cancel=True)
            raise

    def _wait_ready(self, timeout: float, store: str | None, data_dir: str | None) -> None:
        refs = [a.ready.remote(store, data_dir) for a in self._actors]
        t0 = time.monotonic()
        ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in ready:
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                if isinstance(_unwrap(exc), ClusterError):
                    raise _unwrap(exc) from None
                raise ClusterError(f"a worker could not start on {self.where}: {_cause_line(exc)}") from None
        if not waiting:
            return
        totals = ray.cluster_resources()
        free = ray.available_resources()
        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        fits = any(all(node.get(k, 0) >= v for k, v in self.ask.items()) for node in alive)
        if not fits:
            lacking = {k: v for k, v in self.ask.items() if not any(node.get(k, 0) >= v for node in alive)}
            raise ClusterError(f"{self.where} has no node that offers {_ask_text(lacking or self.ask)} (it has {_resources_text(totals)})")
        raise ClusterError(
            f"{self.where} started {len(ready)} of {len(refs)} workers within {time.monotonic() - t0:.0f} s "
            f"(each asks for {_ask_text(self.ask)}; it has {_resources_text(totals)}, {_resources_text(free)} free); "
            "ask for fewer workers"
        )

    def submit(self, order: WorkOrder) -> "Future[WorkReport]":
        with self._lock:
            slot = min(range(len(self._actors)), key=self._in_flight.__getitem__)
            self._in_flight[slot] += 1
        outer: Future = Future()

        def finished(inner: Future) -> None:
            with self._lock:
                self._in_flight[slot] -= 1
            try:
                outer.set_result(inner.result())
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler through the future
                outer.set_exception(_unwrap(exc))

        self._actors[slot].run.remote(order).future().add_done_callback(finished)
        return outer

    def close(self, cancel: bool = False) -> None:
        """Kill the actors made here; then stop the local instance, or disconnect from the cluster
        (which stays up). Orders in flight are abandoned (their runs are redone next time)."""
        if self._closed:
            return
        self._closed = True
        if self._connected:  # the notes about the actors killed here would be noise
            _closing.set()
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        if self._connected:
            ray.shutdown()
            self._connected = False


def _cause_line(exc: BaseException) -> str:
    cause = _unwrap(exc)
    text = str(cause).strip()
    last = text.splitlines()[-1] if text else ""
    return f"{type(cause).__name__}: {last}" if last else type(cause).__name__


def _unwrap(exc: BaseException) -> BaseException:
    """The worker's own exception rather than Ray's wrapper (whose text is a traceback)."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(getattr(exc, "cause", None), BaseException):
        return exc.cause
    if isinstance(exc, ray.exceptions.RayActorError):
        return RuntimeError(f"the Ray worker died: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
    return exc


__all__ = ["READY_TIMEOUT", "RayExecutor", "resolve_address"]
