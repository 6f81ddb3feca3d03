"""Write the report of a population: a static site that opens from ``file://``.

Layout of ``OUT/``::

    index.html                  the page (Jinja2 template), style.css, app.js (plain JavaScript)
    data/meta.js                what every view needs: classes, sizes, sprite layout, galleries
    data/<split>-<c>.js         the example panel's columns, CHUNK examples per file, loaded on demand
    sprites/<split>-<s>.png     thumbnails (:mod:`.sprites`); .jpg for colour images
    figures/*.png               matplotlib figures
    manyruns-report.json        marks the folder as a report (what may be replaced)

Data are JavaScript files loaded with script tags, since ``fetch`` is refused from ``file://``.
The site is written to ``OUT.partial`` and moved into place when complete: an interrupted
report leaves the earlier one, never half of a new one. A folder that holds anything else is
refused.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InputError, OptionError
from ...population import Population
from .examples import ExampleData, collect_examples
from .saved import saved_analyses
from .sections import Section, analysis_sections, overview
from .sprites import write_sprites

CHUNK = 5000
MARKER = "manyruns-report.json"
HERE = Path(__file__).parent


@dataclass
class Report:
    """Where the report was written, its size in bytes, and the notes it shows."""

    path: Path
    bytes: int
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` folder that holds something other than an earlier report."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise InputError(f"--out {out}: holds files that are not a manyruns report; name a new or empty folder, or an earlier report's")


def _json_column(values: np.ndarray | None) -> list | None:
    """A column as JSON-ready lists: booleans as 0/1, floats to 4 decimals, NaN as null."""
    if values is None:
        return None
    a = np.asarray(values)
    if a.dtype == bool:
        return a.astype(np.int8).tolist()
    if np.issubdtype(a.dtype, np.integer):
        return a.tolist()
    rounded = np.round(a.astype(np.float64), 4)
    return [_json_column(row) for row in rounded] if rounded.ndim > 1 else [None if not math.isfinite(x) else x for x in rounded.tolist()]


def _write_chunks(data: ExampleData, folder: Path) -> dict:
    sizes = {}
    for split, cols in (("train", data.train), ("test", data.test)):
        n = cols["label"].size
        sizes[split] = n
        for c, start in enumerate(range(0, n, CHUNK)):
            part = {name: _json_column(None if v is None else v[start : start + CHUNK]) for name, v in cols.items() if v is not None}
            (folder / f"{split}-{c}.js").write_text(f"MR.chunk({json.dumps(split)}, {c}, {json.dumps(part, separators=(',', ':'))});\n")
    return sizes


def write_report(pop: Population, out: str | Path | None = None, data_dir: str | Path | None = None) -> Report:
    """Write the report of ``pop`` into ``out`` (default ``<report_dir>/site``); see the module."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    out = Path(out) if out is not None else Path(pop.report_dir) / "site"
    check_out(out)
    work = out.parent / (out.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    for sub in ("data", "sprites", "figures"):
        (work / sub).mkdir(parents=True)
    notes: list[str] = []
    try:
        ok = pop.select("ok")
    except OptionError:  # nothing committed and ok
        ok = np.zeros(0, dtype=np.int64)
    if not ok.size:
        notes.append("this store has no committed ok runs yet: train it (`manyruns train STORE`), then write the report again")
    saved = saved_analyses(pop)
    stale = {name: s.staleness(ok) for name, s in saved.items() if s.staleness(ok)}
    notes += [f"{name}: {why}" for name, why in stale.items()]
    try:
        ds = pop.dataset(data_dir)
        classes = [str(c) for c in ds.classes]
    except Exception as exc:  # noqa: BLE001 - any reason the images are not at hand is said on the page
        ds, classes = None, [str(c) for c in range(pop.classes)]
        notes.append(f"no thumbnails: the dataset's images are not at hand ({str(exc).splitlines()[0]}); pass --data-dir")
    data = collect_examples(pop, ok, saved)
    ensemble = None
    if ok.size and "logits/test" in pop.arrays:
        from ...analysis.ensemble import ensemble_curve

        curve = ensemble_curve(pop, runs=[int(r) for r in ok])
        ensemble = {"sizes": curve.sizes, "logit_accuracy": curve.logit_accuracy}
    sections: list[Section] = [overview(pop, ok, work, ensemble, saved.get("knn"))]
    sections += analysis_sections(pop, saved, ok, data, classes, work)
    sprites = {} if ds is None else {split: write_sprites(x, work / "sprites", split) for split, x in (("train", ds.x_train), ("test", ds.x_test))}
    sizes = _write_chunks(data, work / "data")
    meta = {
        "store": str(pop.path), "classes": classes, "sizes": sizes, "chunk": CHUNK, "sprites": sprites,
        "galleries": {g["key"]: g["items"] for s in sections for g in s.galleries},
        "stale": stale, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (work / "data" / "meta.js").write_text(f"window.MR_META = {json.dumps(meta, separators=(',', ':'))};\n")
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    page = env.get_template("index.html").render(
        title=f"{pop.recipe.name}: manyruns report", sections=sections, notes=notes, recipe=pop.recipe_text, meta=meta,
    )
    (work / "index.html").write_text(page)
    for name in ("app.js", "style.css"):
        shutil.copyfile(HERE / "templates" / name, work / name)
    (work / MARKER).write_text(json.dumps({"store": str(pop.path), "written": meta["written"], "runs": int(ok.size)}))
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return Report(path=out, bytes=size, notes=notes, sections=[s.key for s in sections])
