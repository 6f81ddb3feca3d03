"""Checking a store: every chunk of every committed run read back, damaged runs uncommitted.

Stores live for months on shared disks and in buckets; a chunk can be truncated by a full disk
or altered in place. Every chunk of a new store carries a CRC32C checksum (see
``store.chunk_compressors``), so reading it back tells. :func:`verify` reads every per-run array
of every committed run (blocks of runs at a time, then run by run where a block fails) and the
dataset's labels, and reports each damaged run with its arrays. With ``repair``, the damaged
runs are uncommitted and a failure record says why, so that the next ``train`` redoes them;
damaged dataset labels cannot be repaired this way (plan the store again).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import DamagedChunkError
from .selection import format_runs
from .store import Store
from .streaming import run_blocks


@dataclass
class VerifyReport:
    """What :func:`verify` found: ``damaged`` run -> the arrays whose chunk failed;
    ``damaged_shared``: store-level arrays that failed; ``repaired``: runs uncommitted."""

    path: str
    runs_checked: int
    chunks_checked: int
    damaged: dict[int, list[str]] = field(default_factory=dict)
    damaged_shared: list[str] = field(default_factory=list)
    repaired: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sound(self) -> bool:
        return not self.damaged and not self.damaged_shared

    def to_dict(self) -> dict:
        out = asdict(self)
        out["damaged"] = {str(r): arrays for r, arrays in self.damaged.items()}
        out["sound"] = self.sound
        return out

    def lines(self) -> list[str]:
        """One line per damaged run (and per damaged shared array), then the totals."""
        out = [f"run {r}: damaged {', '.join(arrays)}" for r, arrays in sorted(self.damaged.items())]
        out += [f"{name}: damaged (the dataset's labels; plan the store again)" for name in self.damaged_shared]
        state = "sound" if self.sound else f"{len(self.damaged)} damaged runs ({format_runs(sorted(self.damaged), limit=8)})"
        out.append(f"{self.path}: {self.runs_checked} committed runs, {self.chunks_checked:,} chunks read in {self.seconds:.1f} s: {state}")
        if self.repaired:
            out.append(f"uncommitted {len(self.repaired)} runs ({format_runs(self.repaired, limit=8)}): `manyruns train {self.path}` redoes them")
        elif self.damaged:
            out.append(f"`manyruns verify {self.path} --repair` uncommits them so that `manyruns train` redoes them")
        return out


def verify(path, repair: bool = False, block_size: int = 64) -> VerifyReport:
    """Read back every chunk of every committed run of the store at ``path`` (see the module
    docstring); with ``repair``, uncommit the damaged runs."""
    t0 = time.perf_counter()
    store = Store.open(path)
    runs = np.flatnonzero(store.committed())
    names = [n for n in store.meta["arrays"]]
    report = VerifyReport(str(store.path), int(runs.size), 0)
    for name in names:
        for block in run_blocks(runs, block_size):
            report.chunks_checked += block.size
            try:
                store.read_rows(name, block)
            except DamagedChunkError:
                for r in block:  # every damaged run of the block, not only the first
                    try:
                        store.read_rows(name, np.array([r]))
                    except DamagedChunkError:
                        report.damaged.setdefault(int(r), []).append(name)
    for split in ("train", "test"):
        name = f"dataset/y_{split}"
        report.chunks_checked += 1
        try:
            np.asarray(store.group[name][:])
        except (ValueError, RuntimeError):
            report.damaged_shared.append(name)
    if repair and report.damaged:
        damaged = sorted(report.damaged)
        store.uncommit(damaged)
        for r in damaged:
            store.record_failure(r, f"damaged chunk in {', '.join(report.damaged[r])}; uncommitted by `manyruns verify --repair`")
        report.repaired = damaged
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["VerifyReport", "verify"]
