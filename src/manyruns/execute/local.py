"""Local process pool: the default executor.

On CPU each worker process gets ``cores // workers`` intra-op threads (one by default: one
process per core trains independent runs without thread synchronization, and single-threaded
kernels make results bitwise independent of group composition). On CUDA each worker owns one
device, ``cuda:0``, ``cuda:1``, ...
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

import torch

from ..training.worker import WorkOrder, WorkReport, run_work
from .base import Executor
from .memory import keep_freed_memory

_WORKER_DEVICE: str | None = None


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Exit this worker once its parent is gone (a killed parent cannot shut the pool down, and
    an idle worker would otherwise wait on its task queue for ever). A run in flight is lost
    with it, uncommitted, and trained again by the next ``train``."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _init_worker(threads: int, devices, parent: int) -> None:
    global _WORKER_DEVICE
    # Ctrl-C goes to the whole process group: let the parent decide, workers are terminated.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    torch.set_num_threads(threads)
    keep_freed_memory()
    if devices is not None:
        _WORKER_DEVICE = devices.get()


def _run(order: WorkOrder) -> WorkReport:
    if _WORKER_DEVICE is not None and order.device.startswith("cuda"):
        order.device = _WORKER_DEVICE
    return run_work(order)


class LocalExecutor(Executor):
    def __init__(self, workers: int, threads: int = 1, cuda_devices: int = 0):
        ctx = mp.get_context("spawn")
        devices = None
        if cuda_devices:
            devices = ctx.Queue()
            for w in range(workers):
                devices.put(f"cuda:{w % cuda_devices}")
        self.slots = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, devices, os.getpid()))

    def submit(self, order: WorkOrder) -> "Future[WorkReport]":
        return self._pool.submit(_run, order)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            processes = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in processes:
                # The pool's own thread may reap a dying worker at any moment; terminate() does
                # nothing for a process already gone, where a bare os.kill would raise.
                p.terminate()
            for p in processes:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
        else:
            self._pool.shutdown(wait=True)
