"""The scriptable API behind the command line: plan a store, train it, ask its status."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from . import store as store_mod
from .data import load_dataset, resolve_data_root, store_dataset
from .errors import OptionError, check_choice, check_number
from .execute.schedule import TrainReport
from .plan import group_key, plan_runs, plans_from_columns, plans_to_columns, run_recipe
from .population import Population
from .recipe import Recipe, RecipeError
from .storage import open_location
from .store import Store, StoreError

# torch is imported inside plan() and train() only, so that `status` and analyses of stored
# results start quickly.


def _as_recipe(recipe: Recipe | str | os.PathLike) -> tuple[Recipe, str]:
    if isinstance(recipe, Recipe):
        import json

        return recipe, "# recipe given as an object\n" + json.dumps(recipe.to_dict(), indent=1)
    path = Path(recipe)
    loaded = Recipe.load(path)
    return loaded, path.read_text()


def _layout(recipe: Recipe, plans, dataset) -> dict:
    """Data shapes and the flattened-weight layout; every run must share the layout if weights are kept."""
    from .models.architectures import count_parameters, create_model, parameter_layout

    specs = {}
    for p in plans:
        resolved = run_recipe(recipe, p).model
        specs.setdefault(resolved.model_dump_json(), resolved)
    import torch

    models = {k: create_model(s, dataset.input_shape, dataset.num_classes, 0) for k, s in specs.items()}
    counts = {count_parameters(m) for m in models.values()}
    if recipe.record.weights and len(counts) > 1:
        raise RecipeError(
            "field 'record.weights': the sweep gives runs different parameter counts "
            f"({sorted(counts)}); weights can only be kept when every run has the same layout",
            field="record.weights",
        )
    with torch.no_grad():
        widths = {int(m.eval().features(torch.zeros(1, *dataset.input_shape)).shape[1]) for m in models.values()}
    if recipe.record.features and len(widths) > 1:
        raise RecipeError(
            "field 'record.features': the sweep gives runs penultimate layers of different widths "
            f"({sorted(widths)}); features can only be kept when every run has the same width",
            field="record.features",
        )
    base = create_model(recipe.model, dataset.input_shape, dataset.num_classes, 0)
    with torch.no_grad():
        num_features = int(base.eval().features(torch.zeros(1, *dataset.input_shape)).shape[1])
    return {
        "n_train": dataset.n_train,
        "n_test": dataset.n_test,
        "num_classes": dataset.num_classes,
        "input_shape": list(dataset.input_shape),
        "num_params": count_parameters(base),
        "num_features": num_features,
        "params": parameter_layout(base),
    }


def plan(recipe: Recipe | str | os.PathLike, path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Population:
    """Create the store at ``path`` for ``recipe`` (a TOML path or a Recipe).

    On an existing store: the same recipe changes nothing; a recipe that differs only by a
    larger ``population.runs`` grows the store; any other difference is refused.
    """
    recipe, text = _as_recipe(recipe)
    path = open_location(path)  # a local folder or an object-store URL
    if path.exists("zarr.json"):
        existing = Store.open(path)
        old, new = existing.recipe.to_dict(), recipe.to_dict()  # a store from before a field existed reads its default
        old_runs, new_runs = old["population"]["runs"], new["population"]["runs"]
        old["population"] = {**old["population"], "runs": None}
        new["population"] = {**new["population"], "runs": None}
        diffs = store_mod.recipe_differences(old, new)
        if diffs:
            raise StoreError(f"{path} holds a population of a different recipe; differences: " + "; ".join(diffs))
        if new_runs < old_runs:
            raise StoreError(f"{path} has {old_runs} runs; a recipe with {new_runs} would drop runs (shrinking is not supported)")
        if new_runs > old_runs:
            columns = plans_to_columns(plan_runs(recipe))
            prefix = {k: v[:old_runs] for k, v in columns.items()}
            if prefix != existing.meta["runs"]:
                raise StoreError(f"{path}: the stored plan of the first {old_runs} runs does not match this recipe's")
            store_mod.grow(existing, recipe, text, columns)
        return Population(Store.open(path))
    if not path.is_empty():  # before the data is loaded
        raise StoreError(f"{path} exists and is not empty")
    root = resolve_data_root(data_dir)
    dataset = load_dataset(recipe.data.dataset, root)
    for field, asked, have in (("train_examples", recipe.data.train_examples, dataset.n_train), ("test_examples", recipe.data.test_examples, dataset.n_test)):
        if asked is not None and asked > have:
            raise RecipeError(f"field 'data.{field}': {recipe.data.dataset} has {have:,} {field.split('_')[0]} examples, {asked:,} asked for", field=f"data.{field}")
    dataset = dataset.head(recipe.data.train_examples, recipe.data.test_examples)
    noise = recipe.population.label_noise
    if noise is not None and noise.matrix is not None and len(noise.matrix) != dataset.num_classes:
        raise RecipeError(
            f"field 'population.label_noise.matrix': has {len(noise.matrix)} rows, and {recipe.data.dataset} has {dataset.num_classes} classes",
            field="population.label_noise.matrix",
        )
    plans = plan_runs(recipe)
    layout = _layout(recipe, plans, dataset)
    columns = plans_to_columns(plans)
    store = store_mod.create(
        path, recipe, text, dataset.fingerprint(), layout, columns, (dataset.y_train, dataset.y_test), str(root.resolve()) if root else None
    )
    return Population(store)


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise OptionError("device", f"must be cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise OptionError("device", f"{{param}} {device} was asked for but torch sees no CUDA device (use cpu or auto)")
    return device


def check_train_options(recipe: Recipe, executor: str, strategy: str) -> None:
    """Refuse an unknown executor or engine form before any worker starts or anything is recorded."""
    from .execute import EXECUTORS
    from .models.population import STRATEGIES

    check_choice("executor", executor, EXECUTORS)
    check_choice("strategy", strategy, STRATEGIES)
    if strategy == "stacked" and recipe.model.kind != "mlp":
        raise OptionError("strategy", f"{{param}} stacked is for MLPs only, and this recipe's model is {recipe.model.kind!r}; use loop or vmap")
    if strategy == "grouped" and recipe.model.kind != "fast-cnn":
        raise OptionError("strategy", f"{{param}} grouped is for fast-cnn only, and this recipe's model is {recipe.model.kind!r}; use loop or vmap")


def train(
    path: str | os.PathLike,
    workers: int | None = None,
    device: str = "auto",
    max_runs: int | None = None,
    data_dir: str | os.PathLike | None = None,
    executor: str = "local",
    strategy: str = "auto",
    group_size: int | None = None,
    progress: bool = True,
    log_epochs: bool = False,
    address: str | None = None,
    gpus_per_worker: float | None = None,
) -> TrainReport:
    """Train every run of the store at ``path`` that is not committed yet (resumable).

    ``workers``: parallel worker processes (default: one per core on CPU, one per GPU on CUDA).
    ``max_runs``: train at most this many runs in this call. Runs claimed by another live
    ``train`` process are left to it. A failing group is recorded and the others go on.
    ``executor="ray"``: actors on the Ray cluster at ``address`` (``auto`` or ``HOST:PORT``;
    default a Ray instance started for this call), one CPU each, or ``gpus_per_worker`` GPUs
    each (then they train on cuda); default workers: the cluster's CPUs (or GPUs divided by
    ``gpus_per_worker``).
    """
    from tqdm import tqdm

    from .execute import available_cores, check_cluster_options, make_executor
    from .execute.schedule import default_group_size, make_groups, run_groups
    from .training.worker import WorkOrder

    t0 = time.perf_counter()
    store = Store.open(path)
    recipe = store.recipe
    device, gpus_per_worker = check_cluster_options(executor, device, address, gpus_per_worker)
    if executor != "ray":  # with ray the cluster's GPUs count, not this machine's
        device = resolve_device(device)
    if workers is None and executor != "ray":  # ray: as many as the cluster has slots
        workers = 1 if executor == "serial" else (_cuda_count() or 1) if device.startswith("cuda") else available_cores()
    if workers is not None:
        check_number("workers", workers, 1, integer=True)
    if max_runs is not None:
        check_number("max_runs", max_runs, 0, integer=True)
    if group_size is not None:
        check_number("group_size", group_size, 1, integer=True)
    check_train_options(recipe, executor, strategy)
    data_dir = None if data_dir is None else str(data_dir)
    store_dataset(store, data_dir)  # fail here, with a clear message, before any worker starts

    committed = store.committed()
    others = store.claimed_by_others()
    todo = [r for r in range(store.num_runs) if not committed[r] and r not in others]
    report = TrainReport(skipped_claimed=sum(1 for r in others if not committed[r]))
    if max_runs is not None:
        todo = todo[:max_runs]
    if not todo:
        report.remaining = int((~committed).sum())
        report.seconds = time.perf_counter() - t0
        return report

    plans = plans_from_columns(store.meta["runs"])
    from .training.engine import resolve_strategy

    import torch

    form = resolve_strategy(recipe, torch.device("cuda" if device.startswith("cuda") else "cpu"), strategy)
    pool = None
    if executor == "ray":  # joins the cluster and places its workers before any run is claimed
        pool = make_executor("ray", workers, device, address=address, gpus_per_worker=gpus_per_worker, log_to_driver=log_epochs, store=str(store.path), data_dir=data_dir)
        workers = pool.slots
    size = group_size or min(default_group_size(form, device), max(1, math.ceil(len(todo) / workers)))
    if executor != "ray":  # a cluster's nodes are not this machine; their workers check nothing here
        from .training.footprint import check_fits

        check_fits(recipe, store.meta["layout"], device, workers, size, form)
    groups = make_groups({r: group_key(recipe, plans[r]) for r in todo}, todo, size)
    bar = tqdm(total=len(todo), unit="run", desc="train", disable=not progress, smoothing=0.1)
    try:
        run_groups(
            store,
            groups,
            (lambda: pool) if pool is not None else (lambda: make_executor(executor, workers, device)),
            lambda runs: WorkOrder(str(store.path), runs, device, data_dir, strategy, log_epochs),
            report,
            bar.update,
        )
    finally:
        if pool is not None:
            pool.close(cancel=True)  # stops a cluster's workers after an error (run_groups closed it otherwise)
        bar.close()
        report.remaining = int((~store.committed()).sum())
        report.seconds = time.perf_counter() - t0
    return report


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def status(path: str | os.PathLike) -> dict:
    """Counts of planned / committed / ok / diverged / failed / pending / running runs and the
    accuracy so far (mean and standard deviation over ok runs)."""
    pop = Population(Store.open(path))
    table = pop.runs
    ok = table[table.status == "ok"]
    committed = int(pop.committed.sum())
    running = len(pop.store.claimed_by_others())
    out = {
        "path": str(pop.path),
        "name": pop.recipe.name,
        "dataset": pop.recipe.data.dataset,
        "planned": pop.num_runs,
        "committed": committed,
        "ok": int(len(ok)),
        "diverged": int((table.status == "diverged").sum()),
        "failed": int((table.status == "failed").sum()),
        "pending": pop.num_runs - committed,
        "running": running,
    }
    for col in ("train_acc", "test_acc", "heldout_acc"):
        values = ok[col].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        out[f"mean_{col}"] = float(values.mean()) if values.size else None
        out[f"std_{col}"] = float(values.std(ddof=1)) if values.size > 1 else None
    out["failures"] = {str(k): v for k, v in pop.store.failures().items() if not pop.committed[k]}
    return out


__all__ = ["TrainReport", "plan", "status", "train"]


def write_report(store: Population | str | os.PathLike, out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None):
    """Write the browsable report of a population (a static site that opens from ``file://``)
    into ``out`` (default ``<store>/reports/site``); returns a
    :class:`~manyruns.report.site.Report` (its path, size and notes). See docs/report.md."""
    from .population import open as open_population
    from .report.site import write_report as write

    pop = store if isinstance(store, Population) else open_population(store)
    return write(pop, out, data_dir)
