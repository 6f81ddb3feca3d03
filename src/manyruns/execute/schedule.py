"""The scheduling loop of ``train``: claim runs, submit groups to an executor, record outcomes.

Runs are claimed in the store before their group is submitted (another ``train`` process
leaves them alone), a group's failure is recorded per run and the other groups go on, and a
broken process pool (a worker killed or out of memory) takes only the runs in flight with it:
the runs still queued go to a fresh pool, up to :data:`MAX_POOL_RESTARTS` times. Completion is
what the commit markers say, never what workers report: a group that is retried skips the
runs it committed before it failed. The claims of the runs in flight are refreshed every
``CLAIM_REFRESH`` seconds, so that trainers on other hosts see them alive (and take them over
only when this driver is gone).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

from .base import Executor

if TYPE_CHECKING:  # the worker module imports torch
    from ..training.worker import WorkOrder

WORKER_DIED = "the worker process died while this run was in flight (killed, or out of memory); the next train redoes it"
MAX_POOL_RESTARTS = 3


@dataclass
class TrainReport:
    """What one ``train`` call did."""

    trained: int = 0
    diverged: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    skipped_claimed: int = 0
    remaining: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stopped: str | None = None

    @property
    def runs_per_hour(self) -> float:
        return 3600.0 * self.trained / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = {str(k): v for k, v in self.failed.items()}
        d["runs_per_hour"] = self.runs_per_hour
        return d


def default_group_size(strategy: str, device: str) -> int:
    """Runs per group: many for the batched forms; one for the per-model loop, which gains
    nothing from a group (its models train one after another) and would commit a group's runs
    only at its end (a CIFAR-10 convnet group of 4 on CPU: no progress for an hour, and 4 runs
    lost on an interruption)."""
    if strategy in ("stacked", "vmap"):
        return 256 if device.startswith("cuda") else 32
    if strategy == "grouped":
        return 8 if device.startswith("cuda") else 4
    return 1


def make_groups(keys: dict[int, str], todo: list[int], group_size: int) -> list[list[int]]:
    """Split ``todo`` runs into groups of at most ``group_size`` runs that share a key (runs
    with equal keys can train together), ordered by their first run."""
    by_key: dict[str, list[int]] = {}
    for r in todo:
        by_key.setdefault(keys[r], []).append(r)
    groups = []
    for runs in by_key.values():
        groups += [runs[i : i + group_size] for i in range(0, len(runs), group_size)]
    return sorted(groups, key=lambda g: g[0])


def run_groups(
    store,
    groups: list[list[int]],
    make_pool: Callable[[], Executor],
    order_for: Callable[[list[int]], WorkOrder],
    report: TrainReport,
    progress: Callable[[int], None] = lambda n: None,
) -> None:
    """Train ``groups`` of runs of ``store`` through executors from ``make_pool``; fills
    ``report`` (trained, diverged, failed, stopped). ``order_for(runs)``: the work order of a
    group. ``progress(n)``: called as ``n`` more runs finish (or fail). Ctrl-C cancels the
    pool and re-raises; claims are released whatever happens."""
    from ..store import CLAIM_REFRESH

    pending = deque(groups)
    in_flight: dict[Future, list[int]] = {}
    claimed: set[int] = set()
    pool = make_pool()
    restarts = 0
    refreshed = time.monotonic()

    def failed(runs, message: str) -> None:
        for r in runs:
            store.record_failure(r, message)
            report.failed[r] = message

    def release(runs) -> None:
        for r in runs:
            store.release(r)
            claimed.discard(r)
        progress(len(runs))

    try:
        while pending or in_flight:
            while pending and len(in_flight) < 2 * pool.slots:
                group = [r for r in pending.popleft() if store.try_claim(r)]
                claimed.update(group)
                if group:
                    in_flight[pool.submit(order_for(group))] = group
            if not in_flight:
                break
            done, _ = wait(list(in_flight), timeout=CLAIM_REFRESH / 4, return_when=FIRST_COMPLETED)
            if time.monotonic() - refreshed > CLAIM_REFRESH:
                store.refresh_claims(sorted(claimed))
                refreshed = time.monotonic()
            broken = False
            for fut in done:
                group = in_flight.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken = True
                    failed(group, WORKER_DIED)
                except Exception as exc:  # noqa: BLE001 - a failing group must not stop the others
                    failed(group, f"{type(exc).__name__}: {exc}")
                else:
                    report.trained += sum(1 for s in result.status.values() if s == "ok")
                    report.diverged += sum(1 for s in result.status.values() if s == "diverged")
                release(group)
            if broken:
                # A dead worker breaks the whole pool: every run in flight is lost with it, and the
                # runs still queued go to a new pool.
                for fut in list(in_flight):
                    group = in_flight.pop(fut)
                    failed(group, WORKER_DIED)
                    release(group)
                restarts += 1
                if restarts > MAX_POOL_RESTARTS:
                    report.stopped = f"worker processes died {restarts} times; the remaining runs were not started"
                    break
                pool.close(cancel=True)
                pool = make_pool()
        pool.close()
    except KeyboardInterrupt:
        report.interrupted = True
        pool.close(cancel=True)
        raise
    finally:
        for r in list(claimed):
            store.release(r)


__all__ = ["MAX_POOL_RESTARTS", "TrainReport", "WORKER_DIED", "default_group_size", "make_groups", "run_groups"]
