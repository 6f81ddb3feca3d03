"""The report: a static site opened from file:// in a real browser (Debian's Chromium driven by
Playwright), and its refusals and notes without one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import manyruns

from .conftest import tiny_recipe
from .test_cli import run

ARTIFACTS = Path(os.environ.get("MANYRUNS_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")) / "report"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("MANYRUNS_REQUIRE_BROWSER"):
            pytest.fail("MANYRUNS_REQUIRE_BROWSER is set and no chromium is installed")
        pytest.skip("no chromium on this machine (.ci/run installs Debian's package)")
    return path


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    path = _chromium()
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page that records every page error, console error and failed request."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("requestfailed", lambda r: page.problems.append(f"failed request: {r.url}"))
    yield page
    context.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=name.endswith("full"))


def test_demo_report_in_a_browser(demo, page, tmp_path):
    store, summary = demo
    index = Path(summary["report"])
    page.goto(index.resolve().as_uri())
    page.wait_for_load_state("load")
    _shot(page, "demo-top")
    _shot(page, "demo-full")
    # one section per analysis the demo saved, each gallery drawn with images of non-zero size
    for key in ("overview", "memorization", "cscore", "influence", "pairs", "audit", "knn"):
        assert page.locator(f"section#{key}").count() == 1, key
    galleries = page.locator(".gallery[data-gallery]")
    assert galleries.count() >= 8
    for g in range(galleries.count()):
        gallery = galleries.nth(g)
        name = gallery.get_attribute("data-gallery")
        thumbs = gallery.locator(".thumb .img")
        if gallery.inner_text().strip() == "none":
            continue
        assert thumbs.count() > 0, name
        box = thumbs.first.bounding_box()
        assert box and box["width"] > 0 and box["height"] > 0, name
    # every sprite sheet decodes to an image of non-zero size
    sizes = page.evaluate("""() => Promise.all(Object.values(MR_META.sprites).flatMap(s => s.files).map(f => new Promise(ok => {
        const i = new Image(); i.onload = () => ok([f, i.naturalWidth, i.naturalHeight]); i.onerror = () => ok([f, 0, 0]); i.src = f; })))""")
    assert sizes and all(w > 0 and h > 0 for _, w, h in sizes), sizes

    # a training image of the memorization gallery: its panel shows what `manyruns memorization --csv` says
    thumb = page.locator("section#memorization .gallery .thumb").nth(3)
    index_clicked = int(thumb.get_attribute("data-index"))
    thumb.click()
    page.wait_for_selector("#panel-memorization")
    _shot(page, "demo-panel")
    csv = tmp_path / "mem.csv"
    assert run("memorization", str(store), "--csv", str(csv)).returncode == 0
    row = pd.read_csv(csv).set_index("index").loc[index_clicked]
    assert page.locator("#panel-memorization").inner_text() == f"{row.mem:.3f} ± {row.se:.3f}"
    assert page.locator("#panel-title").inner_text() == f"train example #{index_clicked}"
    assert page.locator("#panel-label").inner_text() == str(int(row.dataset_label))

    # look-up by index, and the browse view filtered by class
    page.fill("#browse-index", "17")
    page.select_option("#browse-split", "test")
    page.click("#lookup button[type=submit]")
    page.wait_for_function("document.getElementById('panel-title').textContent === 'test example #17'")
    assert page.locator("#panel-label").inner_text() == str(int(manyruns.open(store).targets("test")[17]))
    page.select_option("#browse-split", "train")
    page.select_option("#browse-class", "3")
    page.wait_for_function("document.getElementById('page-info').textContent.includes('examples')")
    labels = manyruns.open(store).targets("train")
    shown = [int(x) for x in page.locator("#browse-gallery .thumb").evaluate_all("els => els.map(e => e.dataset.index)")]
    assert shown and all(labels[i] == 3 for i in shown)
    assert f"({int((labels == 3).sum())} examples)" in page.locator("#page-info").inner_text()
    _shot(page, "demo-browse")
    assert page.problems == [], page.problems


def test_report_of_a_store_without_runs_and_with_stale_analyses(tmp_path, write_recipe, page):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=4)), store)
    result = run("report", str(store), "--out", str(tmp_path / "site"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert any("no committed ok runs" in n for n in info["notes"])
    page.goto(Path(info["path"]).resolve().as_uri())
    assert "no committed ok runs" in page.locator("#notes").inner_text()
    assert page.problems == [], page.problems

    # memorization saved on 2 runs, then 2 more trained: the page says it is stale
    manyruns.train(store, executor="serial", max_runs=2, progress=False)
    from manyruns.analysis.heldout import memorization

    memorization(manyruns.open(store)).save(manyruns.open(store))
    manyruns.train(store, executor="serial", progress=False)
    result = run("report", str(store), "--out", str(tmp_path / "site"))  # replaces the earlier report
    assert result.returncode == 0, result.stderr
    assert "memorization: computed on 2 runs; the store now has 4 ok runs" in result.stderr
    page.goto((tmp_path / "site" / "index.html").resolve().as_uri())
    assert "computed on 2 runs" in page.locator("section#memorization .warning").inner_text()
    _shot(page, "stale")
    assert page.problems == [], page.problems


def test_out_folder_with_other_content_is_refused(tmp_path, write_recipe):
    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), store)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    result = run("report", str(store), "--out", str(other))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --out {other}: holds files that are not a manyruns report; name a new or empty folder, or an earlier report's"]
    assert (other / "notes.txt").read_text() == "keep me" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_example_columns_match_the_saved_analyses(demo):
    """The panel's data files hold the saved memorization and the audit's flags, row for row."""
    store, summary = demo
    site = Path(summary["report"]).parent
    text = (site / "data" / "train-0.js").read_text()
    data = json.loads(text[text.index(", {") + 2 : text.rindex(");")])
    pop = manyruns.open(store)
    mem = pop.store.group["analysis/memorization/estimate"][:]
    got = np.array([np.nan if v is None else v for v in data["mem"]])
    np.testing.assert_allclose(got, np.round(mem, 4), equal_nan=True)
    issues = pop.store.group["analysis/audit/is_label_issue"][:]
    assert np.array_equal(np.array(data["issue"], dtype=bool), issues)
    assert data["label"] == pop.targets("train")[: len(data["label"])].tolist()


def test_sections_for_fit_curves_and_ensembles(tmp_path, write_recipe):
    from manyruns.analysis.ensemble import ensemble_curve
    from manyruns.analysis.randomization import fit_curves

    store = tmp_path / "s"
    manyruns.plan(write_recipe(tiny_recipe(runs=4, subset="1.0").replace("[record]", "label_noise = [0.0, 0.5]\n[record]")), store)
    manyruns.train(store, executor="serial", progress=False)
    pop = manyruns.open(store)
    fit_curves(pop).save(pop)
    ensemble_curve(pop).save(pop)
    report = manyruns.write_report(pop, tmp_path / "site")
    assert report.sections == ["overview", "fit_curves", "ensemble-test"] and report.notes == []
    assert all((tmp_path / "site" / "figures" / f"{name}.png").stat().st_size > 0 for name in ("fit-curves", "ensemble-test", "accuracy", "epochs"))
    page = (tmp_path / "site" / "index.html").read_text()
    assert "labels:0.5" not in page  # the level names are in the figure, the lines say how many
    assert "2 levels from 4 runs" in page
