"""What an executor runs for one group of run indices: load (cached), train, write, commit.

Workers write straight into the store and return only a small report.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from ..data import Dataset, store_dataset
from ..plan import group_key, plans_from_columns, realize_labels, realize_mask, run_recipe, run_seeds
from ..store import Store
from .data import DeviceData, prepare
from .engine import RunJob, train_group

# Per-process cache: a worker trains many groups of the same store.
_DEVICE_DATA: dict[tuple, DeviceData] = {}


@dataclass
class WorkOrder:
    """One unit of work: train these runs of this store."""

    store_path: str
    runs: list[int]
    device: str = "cpu"
    data_dir: str | None = None
    strategy: str = "auto"
    log_epochs: bool = False


@dataclass
class WorkReport:
    runs: list[int]
    status: dict[int, str] = field(default_factory=dict)
    test_acc: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    pid: int = 0


def _device_data(dataset: Dataset, recipe, inputs: str, device: torch.device) -> DeviceData:
    key = (id(dataset), inputs, recipe.data.normalize, recipe.population.seed, str(device))
    if key not in _DEVICE_DATA:
        if len(_DEVICE_DATA) >= 4:
            _DEVICE_DATA.pop(next(iter(_DEVICE_DATA)))
        _DEVICE_DATA[key] = prepare(dataset, recipe, inputs, device)
    return _DEVICE_DATA[key]


def _print_epoch(epoch: int, runs: list[int], metrics) -> None:
    for r, (tl, ta, vl, va) in zip(runs, metrics):
        print(f"run {r:5d} {epoch:03d}: Acc-tr: {100 * ta:6.2f}, Acc-val: {100 * va:6.2f}, L-tr: {tl:.4f}, L-val: {vl:.4f}", flush=True)


def run_work(order: WorkOrder) -> WorkReport:
    """Train ``order.runs`` and commit each to the store. Runs already committed are skipped."""
    t0 = time.perf_counter()
    store = Store.open(order.store_path)
    recipe = store.recipe
    committed = store.committed()
    plans = plans_from_columns(store.meta["runs"])
    dataset = store_dataset(store, order.data_dir)
    device = torch.device(order.device)
    report = WorkReport(runs=list(order.runs), pid=os.getpid())

    groups: dict[str, list] = {}
    for r in order.runs:
        if not committed[r]:
            groups.setdefault(group_key(recipe, plans[r]), []).append(plans[r])
    for members in groups.values():
        resolved = run_recipe(recipe, members[0])
        data = _device_data(dataset, resolved, members[0].inputs, device)
        jobs = [
            RunJob(
                index=p.index,
                mask=realize_mask(recipe, p, dataset.n_train),
                labels=realize_labels(recipe, p, dataset.y_train, dataset.num_classes),
                seeds=run_seeds(recipe, p.index),
            )
            for p in members
        ]
        records = train_group(resolved, jobs, data, device, order.strategy, _print_epoch if order.log_epochs else None)
        for rec in records:
            store.write_run(rec)
            report.status[rec.index] = rec.status
            report.test_acc[rec.index] = float(rec.summary[2])
    report.seconds = time.perf_counter() - t0
    return report
