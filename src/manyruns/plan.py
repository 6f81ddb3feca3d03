"""The per-run plan: which condition, seed and sampled hyperparameters each run gets, and the
realized subset mask, labels and inputs it trains on.

Runs are assigned to conditions ("cells": one subset ratio x one label-noise level x one input
randomization) round-robin: run ``r`` belongs to cell ``r % n_cells``. Growing a population
therefore keeps the cells balanced, and the first ``n`` runs cover every cell.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data.base import Dataset
from .data.transforms import corrupt_labels, corrupt_labels_by_matrix, fold_mask, randomize_inputs, subset_mask
from .recipe import Recipe
from .sweeps import sample_sweep
from .store import RUN_COLUMNS
from .seeding import Purpose, dataset_stream, generator, key_of, run_seed, run_stream, torch_seed


@dataclass(frozen=True)
class RunPlan:
    """What distinguishes run ``index`` from the other runs of its population."""

    index: int
    seed: int
    cell: int
    subset: float
    label_noise: float
    inputs: str
    sweep: dict[str, Any] = field(default_factory=dict)


def cells(recipe: Recipe) -> list[tuple[float, float, str]]:
    """Every (subset ratio, label-noise p, input randomization) combination, in cell order."""
    p = recipe.population
    return list(itertools.product(p.subset_levels, p.noise_levels, p.input_levels))


def plan_runs(recipe: Recipe, start: int = 0, stop: int | None = None) -> list[RunPlan]:
    """Plans for runs ``start .. stop-1`` (default: all ``population.runs``)."""
    stop = recipe.population.runs if stop is None else stop
    grid = cells(recipe)
    seed = recipe.population.seed
    plans = []
    per = recipe.population.seeds_per_subset
    for r in range(start, stop):
        c = (r // per) % len(grid)  # a block of runs sharing a subset shares its condition
        subset, noise, inputs = grid[c]
        sweep = {
            key: sample_sweep(spec, generator(run_stream(seed, r, Purpose.SWEEP, key_of(key))))
            for key, spec in sorted(recipe.population.sweep.items())
        }
        plans.append(RunPlan(r, run_seed(seed, seed_run(recipe, r)), c, subset, noise, inputs, sweep))
    return plans


def run_recipe(recipe: Recipe, plan: RunPlan) -> Recipe:
    """The recipe as run ``plan.index`` trains it: sweep values applied."""
    return recipe.with_overrides(plan.sweep) if plan.sweep else recipe


def group_key(recipe: Recipe, plan: RunPlan) -> str:
    """Runs with equal keys can train together in one group: same resolved training recipe,
    same subset size (so the same number of steps), same inputs. Label noise may differ."""
    resolved = run_recipe(recipe, plan).to_dict()
    resolved.pop("population")
    folds = recipe.population.folds
    fold = plan.index % folds if folds else None  # folds may differ in size by one example
    return json.dumps([resolved, plan.subset, plan.inputs, fold], sort_keys=True)


def realize_mask(recipe: Recipe, plan: RunPlan, n_train: int) -> np.ndarray:
    """``(N_train,) bool``: the examples run ``plan.index`` trains on (its own subset stream)."""
    folds = recipe.population.folds
    if folds:  # one partition per block of K runs, shared by its runs
        rng = generator(dataset_stream(recipe.population.seed, Purpose.SUBSET, folds, plan.index // folds))
        return fold_mask(n_train, folds, plan.index % folds, rng)
    first = plan.index - plan.index % recipe.population.seeds_per_subset  # the block's first run
    rng = generator(run_stream(recipe.population.seed, first, Purpose.SUBSET))
    return subset_mask(n_train, plan.subset, rng)


def realize_labels(recipe: Recipe, plan: RunPlan, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(N_train,) int64``: the labels run ``plan.index`` sees after label noise.

    Dataset scope draws the corruption from a stream keyed by the noise level only, so every
    run at that level sees the same labels; run scope keys it by the run.
    """
    noise = recipe.population.label_noise
    if noise is None or plan.label_noise == 0.0:
        return np.asarray(labels, dtype=np.int64).copy()
    seed = recipe.population.seed
    if noise.scope == "dataset":
        stream = dataset_stream(seed, Purpose.NOISE, key_of(plan.label_noise))
    else:
        stream = run_stream(seed, plan.index, Purpose.NOISE)
    if noise.matrix is not None:
        return corrupt_labels_by_matrix(labels, plan.label_noise, np.asarray(noise.matrix), generator(stream))
    return corrupt_labels(labels, plan.label_noise, num_classes, generator(stream), noise.exclude_true)


def realize_inputs(recipe: Recipe, kind: str, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images after the (dataset-scope) input randomization ``kind``.

    Both splits are drawn from one stream so that ``shuffled-pixels`` applies the same
    permutation to train and test images.
    """
    if kind == "none":
        return dataset.x_train, dataset.x_test
    rng = generator(dataset_stream(recipe.population.seed, Purpose.INPUTS, key_of(kind)))
    both = np.concatenate([dataset.x_train, dataset.x_test])
    stats = dataset.channel_stats() if kind == "gaussian" else None
    out = randomize_inputs(both, kind, rng, stats)
    return out[: dataset.n_train], out[dataset.n_train :]


@dataclass(frozen=True)
class RunSeeds:
    """Seeds for the engine's own random draws of one run."""

    init: int
    dropout: int
    order: np.random.SeedSequence
    augment: np.random.SeedSequence


def seed_run(recipe: Recipe, index: int) -> int:
    """The run whose seed streams run ``index`` draws from: itself, or run 0 with
    ``population.shared_seed``."""
    return 0 if recipe.population.shared_seed else index


def run_seeds(recipe: Recipe, index: int) -> RunSeeds:
    seed = recipe.population.seed
    index = seed_run(recipe, index)
    return RunSeeds(
        init=torch_seed(run_stream(seed, index, Purpose.INIT)),
        dropout=torch_seed(run_stream(seed, index, Purpose.DROPOUT)),
        order=run_stream(seed, index, Purpose.ORDER),
        augment=run_stream(seed, index, Purpose.AUGMENT),
    )


def plans_to_columns(plans: list[RunPlan]) -> dict[str, list]:
    """Column form of a list of plans (what the store keeps)."""
    keys = sorted({k for p in plans for k in p.sweep})
    cols: dict[str, list] = {name: [getattr(p, name) for p in plans] for name in RUN_COLUMNS}
    for k in keys:
        cols[f"sweep.{k}"] = [p.sweep.get(k) for p in plans]
    return cols


def plans_from_columns(cols: dict[str, list]) -> list[RunPlan]:
    n = len(cols["seed"])
    sweep_keys = [k for k in cols if k.startswith("sweep.")]
    return [
        RunPlan(
            i,
            int(cols["seed"][i]),
            int(cols["cell"][i]),
            float(cols["subset"][i]),
            float(cols["label_noise"][i]),
            str(cols["inputs"][i]),
            {k[len("sweep.") :]: cols[k][i] for k in sweep_keys},
        )
        for i in range(n)
    ]
