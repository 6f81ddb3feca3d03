"""Executors: where groups of runs train. ``serial`` (in-process) and ``local`` (process pool)."""

from __future__ import annotations

from .base import Executor, available_cores
from .local import LocalExecutor
from .serial import SerialExecutor

EXECUTORS = ("local", "serial")


def make_executor(kind: str, workers: int, device: str) -> Executor:
    """An executor of ``kind`` with ``workers`` slots for ``device`` ('cpu' or 'cuda')."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "local":
        if device.startswith("cuda"):
            return LocalExecutor(workers, threads=1, cuda_devices=max(1, torch_cuda_count()))
        return LocalExecutor(workers, threads=max(1, available_cores() // workers))
    raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "SerialExecutor", "available_cores", "make_executor"]
