"""Helpers shared by the benchmarks: machine description, GEMM rate, peak memory."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def plain_epoch(model: torch.nn.Module, loader, opt: torch.optim.Optimizer, flip: bool = False, pad: int = 0,
                label_smoothing: float = 0.0, schedule=None, autocast=None) -> None:
    """One epoch of the plain-PyTorch baselines: every batch of ``loader`` (any iterable of
    ``(inputs, labels)`` on one device) through forward, cross-entropy, backward and an optimizer
    step (and a scheduler step). ``flip``: each image mirrored with probability 1/2; ``pad``:
    zero-padded by ``pad`` pixels and cropped back at a random offset, one offset per batch
    (cheaper than per image: a favour to the baseline). ``autocast``: a context for the forward
    pass (bfloat16 products on a GPU)."""
    model.train()
    autocast = autocast if autocast is not None else contextlib.nullcontext()
    for xb, yb in loader:
        if flip:
            xb = torch.where(torch.rand(len(xb), 1, 1, 1, device=xb.device) < 0.5, xb.flip(-1), xb)
        if pad:
            h, w = xb.shape[-2:]
            dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
            xb = torch.nn.functional.pad(xb, (pad, pad, pad, pad))[..., dy : dy + h, dx : dx + w]
        with autocast:
            out = model(xb)
        loss = torch.nn.functional.cross_entropy(out.float(), yb, label_smoothing=label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()


def default_data_dir() -> str | None:
    shared = REPO.parent / "shared" / "data"
    return os.environ.get("MANYRUNS_DATA") or (str(shared) if shared.is_dir() else None)


def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def gemm_rate(dtype: torch.dtype = torch.float32, n: int = 4096, threads: int | None = None, device: str = "cpu", seconds: float = 2.0) -> float:
    """Measured FLOP/s of an ``n x n`` matrix product (2 n^3 FLOPs) with ``threads`` threads."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        for _ in range(2):
            a @ b
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        sync()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        sync()
        return 2 * n**3 * reps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def peak_rss_gb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 2**20
