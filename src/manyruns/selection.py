"""Run selection: which runs of a population an analysis, an export or a read uses.

One meaning everywhere (the Python API and every command's ``--runs``):

=====================  ============================================================
``"ok"`` (default)     every ok run: committed and not diverged
``"committed"``        every committed run, diverged ones included
``N`` (or ``"N"``)     the first ``N`` ok runs (lowest indices)
``"0-99,200,300-"``    exactly these runs: closed ranges and single indices must all be
                       committed; an open range ``300-`` is every committed run from 300 on
a list of indices      exactly these runs, read in the order given (Python only)
=====================  ============================================================

A selection that names a run the store does not have, names an uncommitted run, repeats a
run, or selects nothing is refused (:class:`~manyruns.errors.OptionError` on ``runs``), with
the runs at fault. Selections by keyword, count or range come back in increasing run order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np

from .errors import OptionError

RunSelection = Union[int, str, Sequence[int], np.ndarray, None]
KEYWORDS = ("ok", "committed")
SYNTAX = "a count such as 100, 'ok', 'committed', or run indices such as 0-99,200,300-"
_PART = re.compile(r"^(\d+)(?:-(\d*))?$")


@dataclass(frozen=True)
class Spec:
    """A parsed selection: ``kind`` is 'ok', 'committed', 'first' (``count``), 'ranges'
    (``ranges``: ``(start, stop or None)`` inclusive) or 'list' (``indices``, in order)."""

    kind: str
    text: str
    count: int = 0
    ranges: tuple[tuple[int, int | None], ...] = ()
    indices: tuple[int, ...] = ()


def parse(runs: RunSelection) -> Spec:
    """Check the form of a selection (nothing about a store yet)."""
    if runs is None:
        return Spec("ok", "ok")
    if isinstance(runs, (bool, np.bool_)):
        raise OptionError("runs", f"must be {SYNTAX}; got {runs!r}")
    if isinstance(runs, (int, np.integer)):
        if runs < 1:
            raise OptionError("runs", f"must be at least 1 when it counts runs (the first N ok runs), got {int(runs)}")
        return Spec("first", str(int(runs)), count=int(runs))
    if isinstance(runs, str):
        text = runs.strip()
        if text in KEYWORDS:
            return Spec(text, text)
        if text.isdigit():
            return parse(int(text))
        ranges = []
        for part in text.split(","):
            m = _PART.match(part.strip())
            if not m:
                raise OptionError("runs", f"must be {SYNTAX}; got {runs!r}")
            start = int(m.group(1))
            stop = None if m.group(2) == "" else int(m.group(2) if m.group(2) is not None else m.group(1))
            if stop is not None and stop < start:
                raise OptionError("runs", f"{runs!r}: the range {part.strip()} ends before it starts")
            ranges.append((start, stop))
        return Spec("ranges", text, ranges=tuple(ranges))
    values = np.asarray(runs)
    if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
        raise OptionError("runs", f"must be {SYNTAX}, or a list of run indices; got {_short(runs)}")
    indices = tuple(int(v) for v in values)
    return Spec("list", "[" + ", ".join(map(str, indices[:20])) + (", ..." if len(indices) > 20 else "") + "]", indices=indices)


def resolve(spec: Spec, num_runs: int, committed: np.ndarray, ok: Callable[[], np.ndarray]) -> np.ndarray:
    """The run indices ``spec`` selects in a store of ``num_runs`` runs whose commit markers are
    ``committed (R,) bool``; ``ok()`` gives the ok runs as ``(R,) bool`` (read only when the
    selection needs them). Returns ``(n,) int64``."""
    ok_runs = np.flatnonzero(ok()) if spec.kind in ("ok", "first") else None
    if spec.kind == "ok":
        chosen = ok_runs
    elif spec.kind == "committed":
        chosen = np.flatnonzero(committed)
    elif spec.kind == "first":
        if spec.count > ok_runs.size:
            raise OptionError("runs", f"{{param}} {spec.count}: asks for the first {spec.count} ok runs, but the store has {ok_runs.size}")
        chosen = ok_runs[: spec.count]
    else:
        if spec.kind == "list":
            named = np.asarray(spec.indices, dtype=np.int64)
            open_from = None
        else:
            # ranges past the last run are refused before any of them is spelled out
            beyond = [(a, b) for a, b in spec.ranges if b is not None and b >= num_runs]
            if beyond:
                a, b = beyond[0]
                first = max(a, num_runs)
                raise OptionError(
                    "runs", f"{{param}} {spec.text}: {'run' if first == b else 'runs'} {first if first == b else f'{first}-{b}'} "
                    f"{'does' if first == b else 'do'} not exist (the store has runs 0-{num_runs - 1})"
                )
            closed = [np.arange(a, b + 1) for a, b in spec.ranges if b is not None]
            named = np.concatenate(closed) if closed else np.zeros(0, dtype=np.int64)
            starts = [a for a, b in spec.ranges if b is None]
            open_from = min(starts) if starts else None
            if open_from is not None:  # named runs inside the open range are named twice
                named = np.concatenate([named, np.arange(open_from, num_runs)[committed[open_from:]]]) if open_from < num_runs else named
        unknown = named[(named < 0) | (named >= num_runs)]
        if unknown.size:
            raise OptionError(
                "runs", f"{{param}} {spec.text}: {_runs_word(unknown)} {format_runs(unknown, limit=6)} "
                f"{'does' if unknown.size == 1 else 'do'} not exist (the store has runs 0-{num_runs - 1})"
            )
        if open_from is not None and open_from >= num_runs:
            raise OptionError("runs", f"{{param}} {spec.text}: run {open_from} does not exist (the store has runs 0-{num_runs - 1})")
        not_committed = named[~committed[named]]
        if not_committed.size:
            raise OptionError(
                "runs", f"{{param}} {spec.text}: {_runs_word(not_committed)} {format_runs(not_committed, limit=6)} "
                f"{'is' if not_committed.size == 1 else 'are'} not committed (train first, or leave {'it' if not_committed.size == 1 else 'them'} out)"
            )
        if np.unique(named).size != named.size:
            values, counts = np.unique(named, return_counts=True)
            raise OptionError("runs", f"{{param}} {spec.text}: names run(s) {format_runs(values[counts > 1], limit=6)} more than once")
        chosen = named if spec.kind == "list" else np.sort(named)
    if chosen.size == 0:
        done = int(committed.sum())
        what = {"ok": "no run is ok", "committed": "no run is committed"}.get(spec.kind, "none of them is committed")
        hint = "; train the population first" if done == 0 else ""
        raise OptionError("runs", f"{{param}} {spec.text}: selects no runs ({what}: {done} of {num_runs} runs committed{hint})")
    return np.asarray(chosen, dtype=np.int64)


def format_runs(runs, limit: int | None = None) -> str:
    """Run indices as ranges, e.g. ``[0, 1, 2, 5, 7, 8]`` -> ``'0-2,5,7-8'`` (the first
    ``limit`` ranges, then '...')."""
    values = [int(v) for v in np.asarray(runs).reshape(-1)]
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    if limit is not None and len(parts) > limit:
        parts = parts[:limit] + ["..."]
    return ",".join(parts)


def _runs_word(runs: np.ndarray) -> str:
    return "run" if runs.size == 1 else "runs"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = ["KEYWORDS", "RunSelection", "Spec", "format_runs", "parse", "resolve"]
