"""Sweep distributions of a recipe's ``population.sweep``: their forms, extremes and draws.

A sweep entry is one of ``{choice = [...]}`` (uniform over the values), ``{uniform = [low,
high]}`` or ``{log_uniform = [low, high]}`` (uniform in log space). The recipe validates every
entry at its extremes (:func:`sweep_extremes`); the plan draws each run's value from the run's
own random stream (:func:`sample_sweep`).
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SweepChoice(_Spec):
    choice: list[Any] = Field(min_length=1)


class SweepUniform(_Spec):
    uniform: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self) -> "SweepUniform":
        if not self.uniform[0] <= self.uniform[1]:
            raise ValueError(f"uniform bounds must be [low, high] with low <= high, got {list(self.uniform)}")
        return self


class SweepLogUniform(_Spec):
    log_uniform: tuple[float, float]

    @model_validator(mode="after")
    def _positive_ordered(self) -> "SweepLogUniform":
        lo, hi = self.log_uniform
        if not 0 < lo <= hi:
            raise ValueError(f"log_uniform bounds must satisfy 0 < low <= high, got {[lo, hi]}")
        return self


SweepSpec = Union[SweepChoice, SweepUniform, SweepLogUniform]


def sweep_extremes(spec: SweepSpec) -> list[Any]:
    if isinstance(spec, SweepChoice):
        return list(spec.choice)
    if isinstance(spec, SweepUniform):
        return list(spec.uniform)
    return list(spec.log_uniform)


def sample_sweep(spec: SweepSpec, rng: np.random.Generator) -> Any:
    """One draw from a sweep distribution (log-uniform: uniform in log space)."""
    if isinstance(spec, SweepChoice):
        return spec.choice[int(rng.integers(len(spec.choice)))]
    if isinstance(spec, SweepUniform):
        lo, hi = spec.uniform
        return float(rng.uniform(lo, hi))
    lo, hi = spec.log_uniform
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
