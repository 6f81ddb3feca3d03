"""Executors: where groups of runs train. ``serial`` (in-process) and ``local`` (process pool).

The modules that import torch (the executors themselves) load only when an executor is made,
so that reading a store stays quick.
"""

from __future__ import annotations

from .base import Executor, available_cores

EXECUTORS = ("local", "serial")


def make_executor(kind: str, workers: int, device: str) -> Executor:
    """An executor of ``kind`` with ``workers`` slots for ``device`` ('cpu' or 'cuda')."""
    if kind == "serial":
        from .serial import SerialExecutor

        return SerialExecutor()
    if kind == "local":
        from .local import LocalExecutor

        if device.startswith("cuda"):
            return LocalExecutor(workers, threads=1, cuda_devices=max(1, torch_cuda_count()))
        return LocalExecutor(workers, threads=max(1, available_cores() // workers))
    from ..errors import check_choice

    check_choice("executor", kind, EXECUTORS)
    raise AssertionError("unreachable")


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


__all__ = ["EXECUTORS", "Executor", "available_cores", "make_executor"]
