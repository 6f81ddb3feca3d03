"""In-process executor: runs each order when it is submitted. For debugging and tests."""

from __future__ import annotations

from concurrent.futures import Future

import torch

from ..training.worker import WorkOrder, WorkReport, run_work
from .base import Executor


class SerialExecutor(Executor):
    slots = 1

    def __init__(self, threads: int | None = None):
        if threads is not None:
            torch.set_num_threads(threads)

    def submit(self, order: WorkOrder) -> "Future[WorkReport]":
        future: Future = Future()
        try:
            future.set_result(run_work(order))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported through the future, like a pool
            future.set_exception(exc)
        return future
