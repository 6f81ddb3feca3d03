"""The errors manyruns raises on purpose, and what the command line does with each.

* :class:`InputError`: the input is wrong (an option, a selection of runs, a file, a store that
  lacks what an analysis needs). The command line prints one line and exits 2; nothing was
  written. :class:`OptionError` names the parameter (``param``) so that the command line can
  put its own flag in its place: the library says ``memory_gib must be positive``, the command
  line ``--memory-gib must be positive``.
* :class:`StoreError`: a store cannot be created, opened or changed as asked (exit 2);
  :class:`NotApplicableError` is both: the store lacks what was asked of it.
* :class:`ClusterError` (an input error, exit 2): a cluster that cannot run the work as asked
  (no node offers a GPU that was asked for). Nothing was written.
* :class:`ComputationError`: the input was fine but the work failed (a matrix that is not
  numerically positive definite, workers that keep dying). Exit 1.

``RecipeError`` and the dataset errors keep their own classes (and modules); the command line
treats them as bad input too.
"""

from __future__ import annotations

import re
from typing import Callable


class ManyrunsError(Exception):
    """Base of the errors manyruns raises on purpose."""


class InputError(ManyrunsError, ValueError):
    """Invalid input: the message says what, and where there is a fixed set, the allowed values."""


class OptionError(InputError):
    """An invalid value of the parameter ``param``.

    ``message`` may hold ``{param}`` where the parameter's name goes (without it the message
    starts with the name) and ``{param:other}`` where another parameter is named.
    ``str(error)`` uses the Python names; :meth:`worded` other words for them (the command
    line's flags).
    """

    def __init__(self, param: str, message: str):
        self.param = param
        self.template = message if "{param}" in message else "{param} " + message
        super().__init__(self.worded())

    def worded(self, name: str | None = None, names: Callable[[str], str] = lambda p: p) -> str:
        """The message with this parameter called ``name`` (default ``names(param)``) and any
        other parameter ``p`` called ``names(p)``."""
        return word(self.template, names, self.param if name is None else None, name)


_PLACE = re.compile(r"\{param(?::(\w+))?\}")


def word(template: str, names: Callable[[str], str] = lambda p: p, param: str | None = None, name: str | None = None) -> str:
    """``template`` with each ``{param:p}`` replaced by ``names(p)``, and ``{param}`` by ``name``
    (or ``names(param)``): how a message names parameters in Python or on the command line."""

    def one(m: re.Match) -> str:
        other = m.group(1)
        if other:
            return names(other)
        return name if name is not None else names(param or "")

    return _PLACE.sub(one, template)


class StoreError(ManyrunsError, RuntimeError):
    """A store cannot be created, opened or changed as asked."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store at the path given."""


class NotApplicableError(InputError, StoreError):
    """The store lacks what the analysis needs (no logits, no run held anything out, ...)."""


class ClusterError(InputError):
    """The cluster cannot run the work as asked: no node offers what a worker asks for (a GPU on
    a CPU-only cluster), or workers that cannot start there. Nothing was written."""


class ComputationError(ManyrunsError, RuntimeError):
    """The input was valid but the computation failed."""


class DamagedChunkError(ComputationError):
    """A stored chunk cannot be read back (truncated, altered): ``run`` and ``array`` say which."""

    def __init__(self, message: str, run: int, array: str):
        super().__init__(message)
        self.run, self.array = run, array


# -------------------------------------------------------------------- checks of one value


def check_choice(param: str, value, choices) -> None:
    if value not in choices:
        raise OptionError(param, f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def check_number(param: str, value, low: float | None = None, high: float | None = None, *, integer: bool = False,
                 low_open: bool = False, high_open: bool = False) -> None:
    """``value`` is a finite number (an integer with ``integer``) within the bounds given."""
    import math
    import numbers

    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise OptionError(param, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = ("positive" if low == 0 else f"greater than {low:g}") if low_open else f"at least {low:g}"
        else:
            where = f"less than {high:g}" if high_open else f"at most {high:g}"
        raise OptionError(param, f"must be {where}, got {value!r}")


__all__ = [
    "ClusterError",
    "ComputationError",
    "DamagedChunkError",
    "InputError",
    "ManyrunsError",
    "NotApplicableError",
    "OptionError",
    "StoreError",
    "StoreNotFoundError",
    "check_choice",
    "check_number",
    "word",
]
