"""The data audit: confident learning against the reference library, out-of-sample probabilities
and kernel checks against dense computations, planted label noise found on a real population,
and the command line (outputs, bad input, stores without held-out runs or logits)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import manyruns
from manyruns.analysis.audit import AuditOptions, audit, confident_learning, normalized_margin, out_of_sample, self_confidence
from manyruns.analysis.audit.outofsample import memorized, pooled
from manyruns.errors import InputError, NotApplicableError, OptionError

from .conftest import tiny_recipe
from .test_cli import run

NOISE = 0.1
NOISY = """
[population.label_noise]
p = {p}
scope = "dataset"
exclude_true = true
"""


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """24 runs of an MLP on digits, each on half the training set, 10% of the labels replaced."""
    tmp = tmp_path_factory.mktemp("audit")
    recipe = tmp / "recipe.toml"
    text = tiny_recipe(runs=24, subset="0.5").replace("epochs = 3", "epochs = 8").replace("weights = [0, 3]", "weights = []") + NOISY.format(p=NOISE)
    recipe.write_text(text)
    store = tmp / "store"
    manyruns.plan(recipe, store)
    manyruns.train(store, executor="serial", progress=False)
    return manyruns.open(store)


def _random_probs(rng, n, c):
    true = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * rng.uniform(0.5, 3)
    logits[np.arange(n), true] += rng.uniform(0, 4)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    y = true.copy()
    flip = rng.random(n) < rng.uniform(0, 0.4)
    y[flip] = rng.integers(0, c, flip.sum())
    return p, y


def test_confident_learning_agrees_with_the_reference_library():
    cleanlab = pytest.importorskip("cleanlab")
    from cleanlab.count import compute_confident_joint, estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(25):
        p, y = _random_probs(rng, int(rng.integers(50, 2000)), int(rng.integers(2, 12)))
        if len(np.unique(y)) < p.shape[1]:
            continue
        mine = confident_learning(p, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert np.array_equal(find_label_issues(y, p, n_jobs=1), mine.is_label_issue)
            assert np.array_equal(compute_confident_joint(y, p, calibrate=False), mine.confident_joint)
            assert np.array_equal(compute_confident_joint(y, p), mine.calibrated_joint)
            np.testing.assert_allclose(estimate_joint(y, p), mine.joint)
        np.testing.assert_allclose(get_label_quality_scores(y, p, method="self_confidence"), self_confidence(p, y))
        np.testing.assert_allclose(get_label_quality_scores(y, p, method="normalized_margin"), normalized_margin(p, y))
        checked += 1
    assert checked >= 15 and cleanlab.__version__


def test_confident_joint_by_hand():
    # two classes; thresholds 0.7 (class 0: mean of 0.9, 0.5) and 0.6 (class 1: mean of 0.8, 0.4)
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 0, 1, 1])
    cl = confident_learning(p, y)
    np.testing.assert_allclose(cl.thresholds, [0.7, 0.6])
    # example 1 is confident in class 1 only (0.5 < 0.7, 0.5 < 0.6: none) -> not counted;
    # example 3 (given 1) has p0 = 0.6 < 0.7 and p1 = 0.4 < 0.6 -> not counted
    assert cl.confident_joint.tolist() == [[1, 0], [0, 1]]
    assert not cl.is_label_issue.any() and cl.noise_rate == 0


def test_out_of_sample_probabilities_match_a_dense_computation(noisy):
    runs = noisy.select("ok")
    oos = out_of_sample(noisy, runs, block_size=5)
    logits = noisy.load("logits/train").astype(np.float64)  # (R, N, C)
    mask = noisy.load("mask/train").astype(bool)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    out = ~mask
    n_out = out.sum(0)
    with np.errstate(invalid="ignore"):
        expected = (soft * out[..., None]).sum(0) / n_out[:, None]
    assert np.array_equal(oos.n_out, n_out)
    np.testing.assert_allclose(oos.probs[n_out > 0], expected[n_out > 0], rtol=1e-5, atol=1e-6)
    assert np.isnan(oos.probs[n_out == 0]).all()
    assert np.array_equal(oos.labels, noisy.load("labels/train")[0])
    n_in = mask.sum(0)
    with np.errstate(invalid="ignore"):
        expected_in = (soft * mask[..., None]).sum(0) / n_in[:, None]
    assert np.array_equal(oos.n_in, n_in)
    np.testing.assert_allclose(oos.in_probs[n_in > 0], expected_in[n_in > 0], rtol=1e-5, atol=1e-6)


def test_pooled_probabilities_and_memorization_by_hand(noisy):
    """Pooling and the memorization measure against a loop over examples and runs."""
    oos = out_of_sample(noisy, noisy.select("ok"))
    logits = noisy.load("logits/train").astype(np.float64)
    mask = noisy.load("mask/train").astype(bool)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    y = oos.labels
    rng = np.random.default_rng(0)
    doubtful = rng.choice(y.size, 40, replace=False)
    gaps = []
    for i in doubtful:
        held, trained = soft[~mask[:, i], i, y[i]], soft[mask[:, i], i, y[i]]
        if held.size and trained.size:
            gaps.append(min(max((trained.mean() - held.mean()) / (1 - held.mean()), 0.0), 1.0))
    assert abs(memorized(oos, doubtful) - np.mean(gaps)) < 1e-5
    for w in (0.0, 0.3, 1.0):
        p = pooled(oos, w)
        for i in rng.choice(y.size, 30, replace=False):
            weights = np.where(mask[:, i], w, 1.0)
            if (~mask[:, i]).any():
                np.testing.assert_allclose(p[i], (weights[:, None] * soft[:, i]).sum(0) / weights.sum(), rtol=1e-5, atol=1e-6)
            else:
                assert np.isnan(p[i]).all()


def test_memorization_is_measured_on_the_least_confident_when_few_are_flagged():
    from manyruns.analysis.audit.audit import _in_sample_weight
    from manyruns.analysis.audit.outofsample import OutOfSample

    rng = np.random.default_rng(1)
    N, C = 3000, 4
    held, trained = rng.dirichlet(np.ones(C), N).astype(np.float32), rng.dirichlet(np.ones(C), N).astype(np.float32)
    oos = OutOfSample(probs=held, n_out=np.full(N, 3), labels=rng.integers(0, C, N), runs=np.arange(6), in_probs=trained, n_in=np.full(N, 3))
    scored = np.ones(N, dtype=bool)
    lowest = np.argsort(held[np.arange(N), oos.labels], kind="stable")[:30]  # 1% of 3,000
    for flagged in (np.zeros(N, dtype=bool), np.isin(np.arange(N), lowest[:9])):
        notes: list[str] = []
        weight, memo = _in_sample_weight(oos, oos.labels, flagged, scored, AuditOptions(), notes)
        assert memo == pytest.approx(memorized(oos, lowest)) and weight == pytest.approx(max(0.0, 1 - 2 * memo))
    flagged = np.isin(np.arange(N), lowest[:12])
    weight, memo = _in_sample_weight(oos, oos.labels, flagged, scored, AuditOptions(in_sample=0.25), [])
    assert weight == 0.25 and memo == pytest.approx(memorized(oos, flagged))


def test_label_quality_pools_training_runs_by_their_memorization(noisy):
    """in_sample=0 ranks by held-out probabilities alone; "auto" pools the training runs with
    weight max(0, 1 - 2 m), m measured on the flagged examples; the flags never change."""
    held = audit(noisy, in_sample=0, kernel=False, heldout_stats=False)
    oos = out_of_sample(noisy, noisy.select("ok"))
    scored = held.scored
    np.testing.assert_allclose(held.self_confidence[scored], oos.probs[scored, held.labels[scored]], rtol=1e-6)
    assert held.in_sample_weight == 0 and held.memorized == pytest.approx(memorized(oos, held.is_label_issue))
    auto = audit(noisy, kernel=False, heldout_stats=False)
    m = memorized(oos, auto.is_label_issue)
    assert auto.is_label_issue.sum() >= 10 and 0 <= m < 0.5
    assert auto.in_sample_weight == pytest.approx(1 - 2 * m) and auto.summary()["memorized"] == pytest.approx(m)
    p = pooled(oos, 1 - 2 * m)
    np.testing.assert_allclose(auto.self_confidence[scored], p[scored, auto.labels[scored]], rtol=1e-5, atol=1e-7)
    assert np.array_equal(auto.is_label_issue, held.is_label_issue) and np.array_equal(auto.suggested_label, held.suggested_label)
    assert any("pool the training runs" in n for n in auto.notes)
    full = audit(noisy, in_sample=1.0, score="normalized_margin", kernel=False, heldout_stats=False)
    np.testing.assert_allclose(full.label_quality[scored], normalized_margin(pooled(oos, 1.0)[scored], full.labels[scored]), rtol=1e-5, atol=1e-7)
    # other labels than the runs trained with: the training runs say nothing about them
    other = audit(noisy, labels=noisy.targets("train"), kernel=False, heldout_stats=False)
    assert other.in_sample_weight == 0 and other.memorized is None and any("not the ones the runs trained" in n for n in other.notes)


def _dense_kernel(logits_a: np.ndarray, logits_b: np.ndarray) -> np.ndarray:
    """The ensemble kernel from its definition: per class, correlations across runs of the
    log-softmax, averaged over classes; ``logits (R, n, C)``."""

    def z(logits):
        x = logits - logits.max(-1, keepdims=True)
        x = x - np.log(np.exp(x).sum(-1, keepdims=True))
        std = x.std(0, ddof=1, keepdims=True)
        return np.where(std > 0, (x - x.mean(0, keepdims=True)) / np.where(std > 0, std, 1), 0.0)

    za, zb = z(logits_a), z(logits_b)
    R, _, C = za.shape
    return np.einsum("rac,rbc->ab", za, zb) / (R * C)


def test_audit_finds_planted_label_noise_and_its_kernel_checks_match_the_dense_kernel(noisy):
    result = audit(noisy, near_duplicate=0.9, leak=0.9, outlier_k=5)
    clean = noisy.targets("train")
    planted = result.labels != clean
    assert abs(planted.mean() - NOISE) < 0.01
    scored = result.scored
    # label quality ranks the planted errors first: AUROC of (1 - self-confidence)
    from sklearn.metrics import roc_auc_score

    auroc = roc_auc_score(planted[scored], -result.self_confidence[scored])
    assert auroc > 0.9, auroc
    flagged = result.is_label_issue
    precision = planted[flagged].mean()
    recall = flagged[planted & scored].mean()
    assert precision > 0.6 and recall > 0.5, (precision, recall)
    assert abs(result.cl.noise_rate - planted[scored].mean()) < 0.05
    # the suggested label of a flagged planted error is mostly its clean label
    assert (result.suggested_label[flagged & planted] == clean[flagged & planted]).mean() > 0.7

    logits = noisy.load("logits/train").astype(np.float64)
    K = _dense_kernel(logits, logits)
    np.fill_diagonal(K, -np.inf)
    best = K.max(1)
    R = result.run_count
    # by default each example searches its predicted class (and an ambiguous one its second):
    # exact values, never above the dense nearest, nearly always it, always for close pairs
    np.testing.assert_allclose(result.kernel, K[np.arange(K.shape[0]), result.nearest_train], atol=2e-4)
    assert (result.kernel <= best + 2e-4).all() and np.isclose(result.kernel, best, atol=2e-4).mean() > 0.98
    close = best * R / (R - 1) >= 0.95  # (this tiny population's misses lie at 0.79 to 0.92)
    assert close.sum() > 0 and np.allclose(result.kernel[close], best[close], atol=2e-4)
    whole = audit(noisy, near_duplicate=0.9, leak=0.9, outlier_k=5, class_gap=None, heldout_stats=False)
    np.testing.assert_allclose(whole.kernel, best, atol=2e-4)
    # the nearest example is the argmax up to float ties
    assert (K[np.arange(K.shape[0]), whole.nearest_train] >= best - 2e-4).all()
    top5 = -np.sort(-K, axis=1)[:, :5]
    # 24 runs x 10 classes <= 2 x 128: the exact scan, so the top 5 are the dense ones too
    np.testing.assert_allclose(whole.outlier_score, 1 - top5.mean(1), atol=2e-4)
    exact = audit(noisy, near_duplicate=0.9, leak=0.9, outlier_k=5, neighbours="exact", heldout_stats=False)
    np.testing.assert_allclose(exact.outlier_score, 1 - top5.mean(1), atol=2e-4)
    np.testing.assert_allclose(exact.kernel, whole.kernel, atol=2e-4)
    assert np.array_equal(result.is_near_duplicate, result.kernel.astype(np.float64) * R / (R - 1) >= 0.9)
    Kt = _dense_kernel(noisy.load("logits/test").astype(np.float64), logits)
    np.testing.assert_allclose(whole.test_kernel, Kt.max(1), atol=2e-4)
    assert (result.test_kernel <= Kt.max(1) + 2e-4).all() and np.isclose(result.test_kernel, Kt.max(1), atol=2e-4).mean() > 0.98
    assert np.array_equal(result.is_leak, result.test_kernel.astype(np.float64) * R / (R - 1) >= 0.9)
    assert result.is_outlier.sum() == round(0.01 * result.labels.size)
    pairs = result.near_duplicate_pairs()
    assert (pairs.a < pairs.b).all() and not pairs.duplicated(["a", "b"]).any()

    table = result.table()
    assert len(table) == result.labels.size and table.is_label_issue.sum() == flagged.sum()
    assert result.memorization is not None and np.isfinite(table.memorization[scored]).mean() > 0.95
    s = result.summary()
    assert s["n_label_issues"] == int(flagged.sum()) and len(s["noise_rate_by_class"]) == 10
    assert s["top_label_issues"] and all(flagged[i] for i in s["top_label_issues"])


def test_audit_of_given_labels_and_refusals(noisy):
    clean = noisy.targets("train")
    result = audit(noisy, labels=clean, kernel=False, heldout_stats=False)
    assert np.array_equal(result.labels, clean) and result.kernel is None
    with pytest.raises(InputError, match=r"labels: expected one label per training example"):
        audit(noisy, labels=clean[:-1], kernel=False)
    with pytest.raises(InputError, match=r"labels: class indices must be in \[0, 9\]"):
        audit(noisy, labels=clean + 10, kernel=False)
    with pytest.raises(OptionError, match="near_duplicate must be a kernel value"):
        AuditOptions(near_duplicate=1.5)
    with pytest.raises(OptionError, match="outlier_fraction"):
        AuditOptions(outlier_fraction=-0.1)
    with pytest.raises(OptionError, match="score"):
        AuditOptions(score="entropy")
    for bad in (1.5, -0.1, "most", True):
        with pytest.raises(OptionError, match="in_sample"):
            AuditOptions(in_sample=bad)


def test_command_line_outputs(noisy, tmp_path):
    csv, test_csv, grid = tmp_path / "audit.csv", tmp_path / "test.csv", tmp_path / "issues.png"
    result = run("audit", str(noisy.path), "--json", "--csv", str(csv), "--test-csv", str(test_csv), "--grid", str(grid), "--dims", "64")
    assert result.returncode == 0, result.stderr
    assert "64-dimensional sketch, the best 32" in result.stderr  # 240 columns > 2 x 64
    summary = json.loads(result.stdout)
    assert {"n_label_issues", "noise_rate", "noise_rate_by_class"} <= set(summary)
    table = pd.read_csv(csv)
    required = ["index", "label", "suggested_label", "label_quality", "is_label_issue", "n_out", "nearest_train", "kernel", "is_near_duplicate"]
    assert list(table.columns[: len(required)]) == required and len(table) == summary["examples"]
    assert table.is_label_issue.sum() == summary["n_label_issues"]
    assert len(pd.read_csv(test_csv)) == noisy.layout["n_test"]
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bad input, in process (the subprocess above checked the real entry point)
    from typer.testing import CliRunner

    from manyruns.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["audit", str(noisy.path), "--near-duplicate", "2"])
    assert bad.exit_code == 2 and "--near-duplicate must be a kernel value" in bad.output
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(5, dtype=np.int64))
    bad = runner.invoke(app, ["audit", str(noisy.path), "--labels", str(labels), "--no-kernel"])
    assert bad.exit_code == 2 and "labels: expected one label per training example" in bad.output
    bad = runner.invoke(app, ["audit", str(noisy.path), "--class-gap", "-1"])
    assert bad.exit_code == 2 and "--class-gap must be at least 0" in bad.output
    for value, message in (("often", '--in-sample must be "auto" or a weight'), ("2", "--in-sample must be in [0, 1]")):
        bad = runner.invoke(app, ["audit", str(noisy.path), "--in-sample", value, "--no-kernel"])
        assert bad.exit_code == 2 and message in bad.output, bad.output
    held = runner.invoke(app, ["audit", str(noisy.path), "--in-sample", "0", "--no-kernel", "--json"])
    assert held.exit_code == 0 and json.loads(held.stdout)["in_sample_weight"] == 0
    # every pair searched: the nearest of the dense kernel (test_audit_finds_planted_... checks it)
    whole = run("audit", str(noisy.path), "--json", "--all-pairs", "--csv", str(csv))
    assert whole.returncode == 0 and "predicted class" not in whole.stderr
    assert "predicted class" in result.stderr
    whole_kernel = pd.read_csv(csv).kernel.to_numpy()
    assert (table.kernel.to_numpy() <= whole_kernel + 2e-4).all() and np.isclose(table.kernel, whole_kernel, atol=2e-4).mean() > 0.98


def test_store_without_heldout_runs_still_gets_kernel_checks(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(runs=4, subset="1.0"))
    store = tmp_path / "s"
    manyruns.plan(recipe, store)
    manyruns.train(store, executor="serial", progress=False)
    pop = manyruns.open(store)
    result = audit(pop)
    assert result.cl is None and not result.is_label_issue.any() and np.isnan(result.self_confidence).all()
    assert result.kernel is not None and result.test_kernel is not None
    assert any("no selected run held any training example out" in n for n in result.notes)
    s = result.summary()
    assert s["noise_rate"] is None and s["not_scored"] == s["examples"]


def test_store_without_logits_is_refused(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe(runs=2).replace('logits = ["train", "test"]', "logits = []"))
    store = tmp_path / "s"
    manyruns.plan(recipe, store)
    manyruns.train(store, executor="serial", progress=False)
    with pytest.raises(NotApplicableError, match="needs logits/train"):
        audit(manyruns.open(store))
    from typer.testing import CliRunner

    from manyruns.cli import app

    result = CliRunner().invoke(app, ["audit", str(store)])
    assert result.exit_code == 2 and "logits/train" in result.output


def test_preloaded_reads_equal_the_store(noisy):
    pop = noisy
    runs = pop.select("ok")[[3, 5, 6, 10]]
    view = pop.preloaded(("logits/train", "mask/train", "absent/array"), runs)
    for name in ("logits/train", "mask/train"):
        for ask in (runs, runs[::-1], runs[1:3], np.array([runs[0], 0])):  # the last: run 0 is not kept
            np.testing.assert_array_equal(view.read(name, ask), pop.read(name, ask))
    np.testing.assert_array_equal(view.read("logits/test", runs), pop.read("logits/test", runs))  # not kept
    np.testing.assert_array_equal(view.committed, pop.committed)
    pd.testing.assert_frame_equal(view.runs, pop.runs)
    # the audit through the view gives what it gives through the store
    a = audit(pop, runs=12, kernel=False)
    b = audit(view, runs=12, kernel=False)
    np.testing.assert_array_equal(a.probs, b.probs)
    # memorization and C-scores read the correctness the audit derives once in its view:
    # equal to what each computes from the store's logits on its own
    from manyruns.analysis.heldout import cscore, memorization

    np.testing.assert_array_equal(a.memorization, memorization(pop, runs=a.runs).estimate)
    np.testing.assert_array_equal(a.cscore, cscore(pop, runs=a.runs, learning_speed=False).cscore)
    # a derived array: served for the preloaded runs, listed, never in the store
    correct = np.arange(len(runs) * 5).reshape(len(runs), 5)
    view.derive("correct/train", correct)
    assert "correct/train" in view.arrays and "correct/train" not in pop.arrays
    np.testing.assert_array_equal(view.read("correct/train", runs[::-1]), correct[::-1])
    with pytest.raises(ValueError, match="3 rows for 4 preloaded runs"):
        view.derive("other", correct[:3])
