"""The analyses saved in a store (``analysis/<name>/``), read back for the report.

Each saved analysis holds its arrays, ``runs`` (the run indices it used), and the attributes
``params`` (its options), ``summary`` and ``saved`` (a Unix time). An analysis is **current**
when its runs are the store's ok runs now, or a selection of them that its options asked for
(``runs = N`` or a range); otherwise the report says on which runs it was computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...population import Population


@dataclass
class Saved:
    """One saved analysis: ``name`` (the group under ``analysis/``), ``params``, ``summary``,
    ``runs (R',)`` and its arrays, read on first use."""

    pop: Population
    name: str
    params: dict
    summary: dict
    runs: np.ndarray | None

    def array(self, key: str) -> np.ndarray | None:
        path = f"analysis/{self.name}/{key}"
        group = self.pop.store.group
        return np.asarray(group[path][...]) if path in group else None

    def has(self, key: str) -> bool:
        return f"analysis/{self.name}/{key}" in self.pop.store.group

    def staleness(self, ok: np.ndarray) -> str | None:
        """None when the analysis used runs the store still has as ok runs and, asked for all of
        them, all of them; else one sentence saying what differs."""
        if self.runs is None:
            return None
        used = set(int(r) for r in self.runs)
        now = set(int(r) for r in ok)
        gone = used - now
        if gone:
            return f"computed on {len(used):,} runs, {len(gone):,} of which are no longer ok runs of this store; recompute it"
        asked = self.params.get("runs", "ok")
        if asked in ("ok", None) and used != now:
            return f"computed on {len(used):,} runs; the store now has {len(now):,} ok runs; recompute it to include them"
        return None


def saved_analyses(pop: Population) -> dict[str, Saved]:
    """Every analysis saved in ``pop``'s store, by name."""
    group = pop.store.group
    if "analysis" not in group:
        return {}
    out = {}
    for name in sorted(group["analysis"].group_keys()):
        g = group[f"analysis/{name}"]
        attrs = dict(g.attrs)
        runs = np.asarray(g["runs"][...], dtype=np.int64) if "runs" in g else None
        out[name] = Saved(pop, name, dict(attrs.get("params") or {}), dict(attrs.get("summary") or {}), runs)
    return out
