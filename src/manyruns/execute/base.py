"""The executor interface: submit a work order (a group of run indices), get a future.

Workers write to the store themselves and return a small :class:`WorkReport`, so the same
interface serves an in-process loop, a local process pool and a cluster (ray).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the worker module imports torch
    from ..training.worker import WorkOrder, WorkReport


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Executor(ABC):
    """Runs work orders. ``slots`` is how many orders it runs at once."""

    slots: int = 1

    @abstractmethod
    def submit(self, order: WorkOrder) -> "Future[WorkReport]": ...

    def close(self, cancel: bool = False) -> None:
        """Release workers. With ``cancel``, stop at once: orders in flight are abandoned
        (their runs are not committed and will be redone)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)
