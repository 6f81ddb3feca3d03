"""Executors: where groups of runs train. ``serial`` (in-process), ``local`` (process pool) and
``ray`` (actors on a Ray cluster).

The modules that import torch (the executors themselves) load only when an executor is made,
so that reading a store stays quick; ray loads only when the ray executor is made.
"""

from __future__ import annotations

import importlib.util

from .base import Executor, available_cores

EXECUTORS = ("local", "ray", "serial")
RAY_MISSING = "the ray executor needs ray: pip install 'manyruns[ray]'"


def make_executor(kind: str, workers: int | None, device: str, **options) -> Executor:
    """An executor of ``kind`` with ``workers`` slots for ``device`` ('cpu' or 'cuda').
    ``options``: the ray executor's (``address``, ``gpus_per_worker``, ``ready_timeout``,
    ``log_to_driver``, ``store`` and ``data_dir`` that each worker checks it can read; see :class:`~manyruns.execute.ray.RayExecutor`), where ``workers=None``
    means as many as the cluster has slots."""
    if kind == "serial":
        from .serial import SerialExecutor

        return SerialExecutor()
    if kind == "local":
        from .local import LocalExecutor

        if device.startswith("cuda"):
            return LocalExecutor(workers, threads=1, cuda_devices=max(1, torch_cuda_count()))
        return LocalExecutor(workers, threads=max(1, available_cores() // workers))
    if kind == "ray":
        check_ray_installed()
        from .ray import RayExecutor

        return RayExecutor(workers, **options)
    from ..errors import check_choice

    check_choice("executor", kind, EXECUTORS)
    raise AssertionError("unreachable")


def check_ray_installed() -> None:
    from ..errors import InputError

    if importlib.util.find_spec("ray") is None:
        raise InputError(RAY_MISSING)


def check_cluster_options(executor: str, device: str, address: str | None, gpus_per_worker: float | None) -> tuple[str, float | None]:
    """Check ``address`` and ``gpus_per_worker`` (the ray executor's) against ``executor`` and
    ``device``; returns the device the workers train on and the GPUs each asks for.

    With the ray executor the cluster's GPUs count, not this machine's: ``gpus_per_worker``
    means ``cuda``; ``device='cuda'`` alone means one GPU per worker; ``auto`` without
    ``gpus_per_worker`` means ``cpu``.
    """
    from ..errors import OptionError, check_number

    if executor != "ray":
        for param, value in (("address", address), ("gpus_per_worker", gpus_per_worker)):
            if value is not None:
                raise OptionError(param, f"{{param}} is for {{param:executor}} ray only (got {{param:executor}} {executor})")
        return device, None
    check_ray_installed()
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise OptionError("address", f"must be auto or HOST:PORT, got {address!r}")
    if gpus_per_worker is not None:
        check_number("gpus_per_worker", gpus_per_worker, 0, low_open=True)
        if gpus_per_worker > 1 and gpus_per_worker != int(gpus_per_worker):
            raise OptionError("gpus_per_worker", f"must be in (0, 1] or a whole number of GPUs, got {gpus_per_worker!r}")
        if device not in ("auto", "cuda"):
            raise OptionError("device", f"{{param}} {device} does not go with {{param:gpus_per_worker}}: workers with GPUs train on cuda (leave {{param}} out)")
        return "cuda", float(gpus_per_worker)
    if device == "cuda":
        return "cuda", 1.0
    if device in ("auto", "cpu"):
        return "cpu", None
    raise OptionError("device", f"{{param}} must be cpu, cuda or auto with {{param:executor}} ray (Ray assigns the GPUs), got {device!r}")


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


__all__ = ["EXECUTORS", "Executor", "available_cores", "check_cluster_options", "check_ray_installed", "make_executor"]
