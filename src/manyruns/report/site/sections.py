"""The report's sections: the overview of the population, then one section per saved analysis.

A section is a title, a few summary lines, figures (PNG files drawn with matplotlib, written
into the site's ``figures/``) and galleries (lists of examples or pairs of examples, drawn by
the page from the sprite sheets). Each analysis that is not current (:mod:`.saved`) carries a
warning that says on which runs it was computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...population import Population
from ...store import METRIC_COLUMNS
from ..figures import pyplot, save
from .examples import ExampleData, pair_item, per_class_extremes
from .saved import Saved

GALLERY = 12  # examples or pairs per gallery
PER_CLASS = 4  # examples per class in per-class galleries


@dataclass
class Section:
    key: str
    title: str
    lines: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # paths relative to the site
    galleries: list[dict] = field(default_factory=list)  # {"key", "title", "items"}
    warning: str | None = None


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.2f}%"


def _figure(out: Path, name: str, draw) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    draw(ax)
    save(fig, out / "figures" / f"{name}.png", dpi=110)
    return f"figures/{name}.png"


# -------------------------------------------------------------------------------- overview


def overview(pop: Population, runs: np.ndarray, out: Path, ensemble: dict | None, knn: Saved | None) -> Section:
    table = pop.runs
    counts = table.status.value_counts().to_dict()
    fp = pop.fingerprint
    layout = pop.layout
    sec = Section("overview", "Overview")
    sec.lines = [
        f"recipe {pop.recipe.name}" + (f": {pop.recipe.description}" if pop.recipe.description else ""),
        f"dataset {fp.get('name')}: {layout['n_train']:,} training and {layout['n_test']:,} test examples, {layout['num_classes']} classes",
        f"runs planned {pop.num_runs:,}; committed {int(pop.committed.sum()):,}; ok {counts.get('ok', 0):,}; "
        f"diverged {counts.get('diverged', 0):,}; failed {counts.get('failed', 0):,}; pending {counts.get('pending', 0):,}",
    ]
    acc = table.test_acc.to_numpy(dtype=np.float64)[runs] if runs.size else np.zeros(0)
    if acc.size:
        sec.lines.append(f"single-run test accuracy {_pct(acc.mean())} ± {100 * acc.std():.2f} (mean ± std over {acc.size:,} runs)")
        sec.figures.append(_figure(out, "accuracy", lambda ax: _hist(ax, 100 * acc, "single-run test accuracy (%)", "runs")))
    if runs.size and "metrics" in pop.arrays:
        metrics = pop.load("metrics", runs[:512]).astype(np.float64)  # (R', E+1, 4)
        sec.figures.append(_figure(out, "epochs", lambda ax: _epochs(ax, metrics)))
    if ensemble is not None:
        sec.lines.append(f"ensemble test accuracy {_pct(ensemble['logit_accuracy'][-1])} (averaged logits of {int(ensemble['sizes'][-1]):,} runs)")
        if knn is not None:
            sec.lines.append(f"kernel k-NN test accuracy {_pct(float(knn.array('accuracy')[-1]))} ({int(knn.array('run_counts')[-1]):,} runs, k = {knn.params.get('k')})")
        sec.figures.append(_figure(out, "ensemble", lambda ax: _ensemble(ax, ensemble, knn)))
    return sec


def _hist(ax, values: np.ndarray, xlabel: str, ylabel: str) -> None:
    v = values[np.isfinite(values)]
    ax.hist(v, bins=min(40, max(5, v.size // 4)), color="#4477aa")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _epochs(ax, metrics: np.ndarray) -> None:
    epochs = np.arange(metrics.shape[1])
    for col, color in (("train_acc", "#4477aa"), ("test_acc", "#cc6677")):
        y = 100 * metrics[:, :, METRIC_COLUMNS.index(col)]
        ok = np.isfinite(y).any(0)  # epochs where the metric was recorded
        if not ok.any():
            continue
        y = y[:, ok]
        ax.plot(epochs[ok], np.nanmean(y, 0), color=color, label=col.replace("_", " "))
        lo, hi = np.nanpercentile(y, [10, 90], axis=0)
        ax.fill_between(epochs[ok], lo, hi, color=color, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%): mean, 10-90% of runs")
    ax.legend(fontsize=7)


def _ensemble(ax, ensemble: dict, knn: Saved | None) -> None:
    ax.plot(ensemble["sizes"], 100 * np.asarray(ensemble["logit_accuracy"]), marker="o", ms=3, label="ensemble (mean logits)")
    if knn is not None:
        ax.plot(knn.array("run_counts"), 100 * knn.array("accuracy"), marker="s", ms=3, label=f"kernel k-NN (k = {knn.params.get('k')})")
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log")
    sizes = [int(n) for n in ensemble["sizes"]]
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(sizes, [str(n) for n in sizes])  # the run counts themselves, not powers of ten
    ax.set_xlabel("runs")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)


# ------------------------------------------------------------------------------- analyses


def analysis_sections(pop: Population, saved: dict[str, Saved], ok: np.ndarray, data: ExampleData, classes: list[str], out: Path) -> list[Section]:
    """One section per saved analysis the report knows how to show, in a fixed order."""
    builders = {
        "memorization": _memorization, "cscore": _cscore, "influence": _influence, "pairs": _pairs,
        "audit": _audit, "fit_curves": _fit_curves, "knn": _knn, "kernel-train": _kernel, "kernel-test": _kernel,
        "ensemble-test": _ensemble_section, "ensemble-train": _ensemble_section,
    }
    sections = []
    names = [n for n in builders if n in saved] + sorted(n for n in saved if n.startswith("zoo-predict"))
    for name in names:
        s = saved[name]
        build = builders.get(name, _zoo)
        sec = build(s, data, classes, out)
        sec.warning = s.staleness(ok)
        sections.append(sec)
    other = sorted(set(saved) - set(names))
    if other:
        sections.append(Section("other", "Other saved analyses", lines=[f"{n}: {_short(saved[n].summary)}" for n in other]))
    return sections


def _short(summary: dict) -> str:
    keys = [k for k, v in summary.items() if isinstance(v, (int, float, str)) and k not in ("analysis",)][:6]
    return ", ".join(f"{k} {summary[k]:.4g}" if isinstance(summary[k], float) else f"{k} {summary[k]}" for k in keys)


def _memorization(s: Saved, data: ExampleData, classes, out) -> Section:
    m = s.summary
    sec = Section("memorization", "Memorization", lines=[
        f"{m.get('estimated', 0):,} of {m.get('examples', 0):,} training examples estimated from {s.runs.size:,} runs (value: {s.params.get('value')})",
        f"mean {m.get('mean', float('nan')):.4f}; {m.get('at_least_0.5', 0):,} examples at 0.5 or more, {m.get('at_least_0.25', 0):,} at 0.25 or more",
    ])
    stab = m.get("stability") or {}
    if stab.get("split_half_spearman") is not None:
        sec.lines.append(f"split-half Spearman {stab['split_half_spearman']:.3f}; predicted reliability of all runs {stab.get('reliability_all_runs') or float('nan'):.3f}")
    mem = data.train.get("mem")
    if mem is not None:
        sec.figures.append(_figure(out, "memorization", lambda ax: _hist(ax, mem, "memorization", "training examples")))
        labels = data.train["label"]
        sec.galleries = [
            {"key": "mem-most", "title": "Most memorized, per class", "items": per_class_extremes(mem, labels, classes, PER_CLASS, True, "{:.2f}")},
            {"key": "mem-least", "title": "Least memorized, per class", "items": per_class_extremes(mem, labels, classes, PER_CLASS, False, "{:.2f}")},
        ]
    return sec


def _cscore(s: Saved, data: ExampleData, classes, out) -> Section:
    m = s.summary
    sec = Section("cscore", "C-scores", lines=[f"held-out accuracy at subset ratios {s.params.get('ratios') or m.get('ratios')} over {s.runs.size:,} runs, averaged over the ratios"])
    cs = data.train.get("cscore")
    if cs is not None:
        sec.lines.append(f"mean C-score {np.nanmean(cs):.4f}; {int((cs < 0.5).sum()):,} examples below 0.5")
        sec.figures.append(_figure(out, "cscore", lambda ax: _hist(ax, cs, "C-score", "training examples")))
        labels = data.train["label"]
        sec.galleries = [
            {"key": "cscore-low", "title": "Lowest C-scores (atypical), per class", "items": per_class_extremes(cs, labels, classes, PER_CLASS, False, "{:.2f}")},
            {"key": "cscore-high", "title": "Highest C-scores (typical), per class", "items": per_class_extremes(cs, labels, classes, PER_CLASS, True, "{:.2f}")},
        ]
    return sec


def _influence(s: Saved, data: ExampleData, classes, out) -> Section:
    sec = Section("influence", "Influence", lines=[f"held-out influence of training examples on test examples from {s.runs.size:,} runs"])
    train, test, infl = (s.array(f"pairs/{c}") for c in ("train_index", "test_index", "infl"))
    if train is not None and train.size:
        sec.lines.append(f"{train.size:,} high-influence pairs (influence at least {s.params.get('threshold')})")
        order = np.argsort(-infl, kind="stable")[:GALLERY]
        sec.galleries = [{"key": "influence-pairs", "title": "Highest-influence pairs: training example, influenced test example", "items": [
            pair_item({"split": "train", "index": int(train[i]), "caption": f"train {classes[data.train['label'][train[i]]]}"},
                      {"split": "test", "index": int(test[i]), "caption": f"test {classes[data.test['label'][test[i]]]}"}, f"influence {infl[i]:.2f}")
            for i in order]}]
        sec.figures.append(_figure(out, "influence", lambda ax: _hist(ax, infl, "influence of the pairs", "pairs")))
    return sec


def _pairs(s: Saved, data: ExampleData, classes, out) -> Section:
    test, train, kernel = (s.array(f"ranked/{c}") for c in ("test_index", "train_index", "kernel"))
    sec = Section("pairs", "Near-duplicate pairs and failure modes", lines=[f"test examples ranked by the kernel value of their nearest training example ({s.runs.size:,} runs)"])
    if test is None or not test.size:
        return sec
    yt, yr = data.test["label"][test], data.train["label"][train]

    def items(rows):
        return [pair_item({"split": "test", "index": int(test[i]), "caption": f"test {classes[yt[i]]}"},
                          {"split": "train", "index": int(train[i]), "caption": f"train {classes[yr[i]]}"}, f"kernel {kernel[i]:.3f}") for i in rows]

    differ = np.flatnonzero(yt != yr)
    sec.lines.append(f"{differ.size:,} test examples whose nearest training example has another label")
    sec.galleries = [
        {"key": "pairs-top", "title": "Most similar test/train pairs", "items": items(range(min(GALLERY, test.size)))},
        {"key": "pairs-differ", "title": "Failure modes: most similar pairs with different labels", "items": items(differ[:GALLERY])},
    ]
    sec.figures.append(_figure(out, "pairs", lambda ax: _hist(ax, kernel, "kernel value of the nearest training example", "test examples")))
    return sec


def _audit(s: Saved, data: ExampleData, classes, out) -> Section:
    m = s.summary
    sec = Section("audit", "Data audit")
    if m.get("noise_rate") is not None:
        sec.lines.append(f"{m.get('n_label_issues', 0):,} label issues among {m.get('scored', 0):,} scored training examples; estimated noise rate {_pct(m['noise_rate'])}")
        by_class = m.get("noise_rate_by_class") or []
        if by_class:
            sec.figures.append(_figure(out, "audit-noise", lambda ax: _bars(ax, classes, 100 * np.asarray(by_class, dtype=float), "estimated noise rate (%)")))
    else:
        sec.lines.append("label issues not scored: no run held any training example out")
    tr, te = data.train, data.test
    for key, text in (("dup", "training examples with a near-duplicate"), ("outlier", "outliers")):
        if key in tr:
            sec.lines.append(f"{int(np.sum(tr[key])):,} {text}")
    if "leak" in te:
        sec.lines.append(f"{int(np.sum(te['leak'])):,} test examples with a copy in the training set (leaks)")
    if "issue" in tr and "quality" in tr:
        flagged = np.flatnonzero(tr["issue"])
        flagged = flagged[np.argsort(tr["quality"][flagged], kind="stable")][: 2 * GALLERY]
        sec.galleries.append({"key": "audit-issues", "title": "Label issues: given label, suggested label", "items": [
            {"split": "train", "index": int(i), "caption": f"{classes[tr['given'][i] if tr.get('given') is not None else tr['label'][i]]} → {classes[tr['suggested'][i]]}"} for i in flagged]})
    if "dup" in tr:
        dup = np.flatnonzero(tr["dup"])
        dup = dup[np.argsort(-tr["nn_k"][dup, 0], kind="stable")]
        seen, pairs = set(), []
        for i in dup:
            j = int(tr["nn"][i, 0])
            if (min(i, j), max(i, j)) not in seen and len(pairs) < GALLERY:
                seen.add((min(i, j), max(i, j)))
                pairs.append(pair_item({"split": "train", "index": int(i), "caption": classes[tr["label"][i]]}, {"split": "train", "index": j, "caption": classes[tr["label"][j]]}, f"kernel {tr['nn_k'][i, 0]:.3f}"))
        sec.galleries.append({"key": "audit-dups", "title": "Near-duplicate training pairs", "items": pairs})
    if "leak" in te:
        leaks = np.flatnonzero(te["leak"])[:GALLERY]
        sec.galleries.append({"key": "audit-leaks", "title": "Leaks: test example, its training copy", "items": [
            pair_item({"split": "test", "index": int(t), "caption": f"test {classes[te['label'][t]]}"}, {"split": "train", "index": int(te["nn"][t, 0]), "caption": f"train {classes[tr['label'][te['nn'][t, 0]]]}"}, f"kernel {te['nn_k'][t, 0]:.3f}")
            for t in leaks]})
    if "outlier" in tr:
        score = s.array("outlier_score")
        top = np.argsort(-score, kind="stable")[:GALLERY]
        sec.galleries.append({"key": "audit-outliers", "title": "Outliers (treated like no other example)", "items": [{"split": "train", "index": int(i), "caption": f"{classes[tr['label'][i]]} {score[i]:.2f}"} for i in top]})
    return sec


def _bars(ax, classes, values, ylabel) -> None:
    ax.bar(range(len(values)), values, color="#4477aa")
    ax.set_xticks(range(len(values)), classes, fontsize=7, rotation=45 if max(len(c) for c in classes) > 3 else 0)
    ax.set_ylabel(ylabel)


def _fit_curves(s: Saved, data: ExampleData, classes, out) -> Section:
    mean = s.array("curve_mean")  # (L, E+1, 4)
    levels = s.summary.get("levels") or []
    sec = Section("fit_curves", "Fit curves per corruption level", lines=[f"{mean.shape[0]} levels from {s.runs.size:,} runs"])

    def draw(ax):
        col = METRIC_COLUMNS.index("train_acc")
        for i in range(mean.shape[0]):
            name = levels[i].get("corruption", i) if i < len(levels) and isinstance(levels[i], dict) else i
            ax.plot(100 * mean[i, :, col], label=str(name))
        ax.set_xlabel("epoch")
        ax.set_ylabel("train accuracy (%)")
        ax.legend(fontsize=6)

    sec.figures.append(_figure(out, "fit-curves", draw))
    return sec


def _knn(s: Saved, data: ExampleData, classes, out) -> Section:
    counts, acc, ens = s.array("run_counts"), s.array("accuracy"), s.array("ensemble_accuracy")
    return Section("knn", "Kernel k-NN", lines=[f"{int(n):,} runs: k-NN {_pct(a)}, ensemble {_pct(e)}" for n, a, e in zip(counts, acc, ens)])


def _ensemble_section(s: Saved, data: ExampleData, classes, out) -> Section:
    sizes, acc = s.array("sizes"), s.array("logit_accuracy")
    split = s.name.split("-", 1)[1]
    sec = Section(s.name, f"Ensemble accuracy ({split})", lines=[f"{int(n):,} runs: {_pct(a)}" for n, a in zip(sizes, acc)])
    sec.figures.append(_figure(out, s.name, lambda ax: _ensemble(ax, {"sizes": sizes, "logit_accuracy": acc}, None)))
    return sec


def _kernel(s: Saved, data: ExampleData, classes, out) -> Section:
    values = s.array("values")
    split = s.params.get("queries", "train")
    sec = Section(s.name, f"Kernel neighbours of the {split} examples", lines=[f"top {values.shape[1]} training neighbours of {values.shape[0]:,} {split} examples by the kernel of {s.runs.size:,} runs"])
    sec.figures.append(_figure(out, s.name, lambda ax: _hist(ax, values[:, 0].astype(np.float64), "kernel value of the nearest training example", f"{split} examples")))
    return sec


def _zoo(s: Saved, data: ExampleData, classes, out) -> Section:
    y, p = s.array("y_true"), s.array("y_pred")
    sec = Section(s.name, "Accuracy predicted from weights", lines=[_short(s.summary)])
    if y is not None and p is not None:
        def draw(ax):
            ax.scatter(y, p, s=4, alpha=0.5)
            ax.set_xlabel("true accuracy")
            ax.set_ylabel("predicted")
        sec.figures.append(_figure(out, s.name, draw))
    return sec
