"""The analysis contract: every analysis is ``compute(pop, options) -> Result``.

* **Options** are a frozen, keyword-only dataclass derived from :class:`Options`. Each field
  is checked once, when the object is made (:meth:`Options.validate`); an invalid value raises
  :class:`~manyruns.errors.OptionError` naming the field. Every options object has ``runs``
  (see :mod:`manyruns.selection`; default ``"ok"``).
* **compute** reads the population (block by block of runs) and returns a result; it never
  writes to the store. ``compute(pop)`` uses the default options, and
  ``compute(pop, field=value, ...)`` is short for ``compute(pop, Options(field=value, ...))``.
* **Results** derive from :class:`Result`: ``runs`` (the run indices used, in the order read),
  ``options``, :meth:`~Result.summary` (a JSON-ready dict that holds ``runs``),
  :meth:`~Result.table` (a pandas DataFrame, one row per example, run, level, ...) and
  :meth:`~Result.save` (writes ``analysis/<name>/`` in the store: the options as attributes,
  ``runs``, the arrays of :meth:`~Result.arrays`, and the summary).

Figures are not part of a result: ``manyruns.report`` draws them from results.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import pandas as pd

from .. import selection
from ..errors import OptionError
from ..selection import RunSelection
from ..streaming import json_safe
from ..version import __version__


@dataclass(frozen=True, kw_only=True)
class CheckedOptions:
    """Frozen, keyword-only options whose fields are checked once, when the object is made."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the fields (raise :class:`OptionError` naming the field); subclasses extend it."""

    def params(self) -> dict:
        """The options as a JSON-ready dict (what the store records with a result)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "runs":  # a list stays a list: its text would read back as a count or a sorted set
                value = list(value) if isinstance(value, tuple) else selection.parse(value).text
            out[f.name] = value
        return json_safe(out)

    def replace(self, **changes):
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class Options(CheckedOptions):
    """Base of the options of analyses of a population: ``runs`` (:mod:`manyruns.selection`)."""

    runs: RunSelection = "ok"

    def __post_init__(self) -> None:
        selection.parse(self.runs)  # the form only; the store is checked by Population.select
        if isinstance(self.runs, np.integer):
            object.__setattr__(self, "runs", int(self.runs))
        elif not isinstance(self.runs, (str, int, type(None))):
            object.__setattr__(self, "runs", tuple(int(r) for r in np.asarray(self.runs).reshape(-1)))
        self.validate()


O = TypeVar("O", bound=Options)


def options_of(cls: type[O], options: O | None, fields: dict) -> O:
    """The options a compute function was called with: ``options``, or ``cls(**fields)``."""
    if options is None:
        return cls(**fields)
    if fields:
        raise TypeError(f"give either an options object or keyword options, not both (got {', '.join(fields)})")
    if not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}, got {type(options).__name__}")
    return options


@dataclass(kw_only=True)
class Result:
    """Base of analysis results: the runs used and the options, plus the three outputs."""

    name: ClassVar[str] = "analysis"
    runs: np.ndarray
    options: Options

    @property
    def run_count(self) -> int:
        return 0 if self.runs is None else int(np.asarray(self.runs).size)

    def summary(self, **detail) -> dict:
        """A JSON-ready dict: the analysis, the runs used, the options, and what the analysis
        reports (:meth:`_summary`, which takes ``detail`` such as ``top=5``)."""
        runs = None if self.runs is None else [int(r) for r in np.asarray(self.runs).reshape(-1)]
        head = {"analysis": self.store_name, "runs": runs, "run_count": self.run_count}
        return json_safe({**head, **self._summary(**detail), "options": self.options.params()})

    def _summary(self) -> dict:
        return {}

    def table(self) -> pd.DataFrame:
        """One row per example, run, level or pair, as the analysis has them."""
        raise NotImplementedError

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays :meth:`save` writes (name -> array)."""
        return {}

    @property
    def store_name(self) -> str:
        """The group under ``analysis/`` where :meth:`save` writes (some analyses name it after
        their options)."""
        return self.name

    def save(self, pop) -> str:
        """Write this result to ``analysis/<store_name>`` of ``pop``'s store (replacing what was
        there); returns that path."""
        group = pop.store.analysis_group(self.store_name, self.options.params())
        if self.runs is not None:
            group.create_array("runs", data=np.asarray(self.runs, dtype=np.int64))
        for key, value in self.arrays().items():
            group.create_array(key, data=np.asarray(value))
        summary = self.summary()
        summary.pop("runs")  # kept as the array
        group.attrs.update({"summary": summary, "version": __version__, "saved": time.time()})
        return f"analysis/{self.store_name}"


def check_counts(param: str, values, low: int = 1) -> tuple[int, ...] | None:
    """``values`` (None, or integers of at least ``low``) as a sorted tuple without repeats."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise OptionError(param, f"must be a list of run counts, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise OptionError(param, f"must be run counts of at least {low}, got {list(values)!r}")
        out.append(int(v))
    if not out:
        raise OptionError(param, "needs at least one run count")
    return tuple(sorted(set(out)))


def describe_values(values: np.ndarray, quantiles=(0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)) -> dict:
    """Mean and quantiles of the finite entries of ``values`` (None where there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    q = np.quantile(v, quantiles) if v.size else [None] * len(quantiles)
    return {
        "mean": float(v.mean()) if v.size else None,
        "quantiles": {f"{100 * p:g}%": (None if x is None else float(x)) for p, x in zip(quantiles, q)},
    }


__all__ = ["CheckedOptions", "OptionError", "Options", "Result", "describe_values", "options_of"]
