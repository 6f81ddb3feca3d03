"""Attribution: model outputs, datamodels and the LDS, each against a straightforward
implementation (scipy, scikit-learn, loops), then end to end on a trained store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import spearmanr

import manyruns
from manyruns.analysis.attribution import LdsOptions, datamodels, fit_diffmeans, fit_lasso, fit_neighbour_ridge, fit_ridge, lds_from_arrays, model_output

from .conftest import cli_here as run, tiny_recipe


def test_outputs_match_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3, size=(4, 7, 5))
    y = rng.integers(0, 5, 7)
    for r in range(4):
        for t in range(7):
            l = logits[r, t]
            others = np.delete(l, y[t])
            assert model_output(logits, y, "margin")[r, t] == pytest.approx(l[y[t]] - logsumexp(others), abs=1e-12)
            assert model_output(logits, y, "neg_loss")[r, t] == pytest.approx(l[y[t]] - logsumexp(l), abs=1e-12)
            assert model_output(logits, y, "prob")[r, t] == pytest.approx(np.exp(l[y[t]] - logsumexp(l)), abs=1e-12)


def _population(seed=0, R=60, N=40, T=6):
    """Masks of random halves and outputs linear in them plus noise."""
    rng = np.random.default_rng(seed)
    masks = rng.random((R, N)) < 0.5
    w = rng.normal(size=(N, T))
    outputs = 1.0 + masks @ w + rng.normal(scale=0.5, size=(R, T))
    return masks, outputs, w


def test_difference_of_means_equals_a_loop():
    masks, outputs, _ = _population()
    masks[:, 0] = True  # always in: undefined
    scores, _ = fit_diffmeans(masks, outputs)
    assert np.isnan(scores[:, 0]).all()
    for i in range(1, masks.shape[1]):
        expect = outputs[masks[:, i]].mean(0) - outputs[~masks[:, i]].mean(0)
        np.testing.assert_allclose(scores[:, i], expect, rtol=1e-5, atol=1e-5)


def test_ridge_equals_scikit_learn_at_the_chosen_penalty():
    from sklearn.linear_model import Ridge

    masks, outputs, w = _population(R=50, N=80)
    scores, intercept, alpha, validation = fit_ridge(masks.astype(np.float32), outputs, (0.01, 0.1, 1.0, 10.0), 0.2)
    assert set(validation) == {"0.01", "0.1", "1.0", "10.0"} and validation[str(alpha)] == min(validation.values())
    X = masks - masks.mean(0)
    lam = alpha * np.trace(X @ X.T) / masks.shape[0]
    ref = Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(masks.astype(np.float64), outputs)
    np.testing.assert_allclose(scores, ref.coef_, atol=2e-4)
    np.testing.assert_allclose(intercept, ref.intercept_, atol=2e-3)
    assert np.corrcoef(scores.ravel(), w.T.ravel())[0, 1] > 0.5  # it recovers the planted weights


def test_neighbour_ridge_equals_scikit_learn_per_test_example():
    """Each test example: every (size, penalty) fitted by scikit-learn on the first runs, the one
    of least error on the held-out runs refitted on all; zero outside the neighbours."""
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(3)
    R, N, T = 70, 50, 5
    masks = rng.random((R, N)) < 0.5
    near = np.stack([rng.permutation(N) for _ in range(T)])  # (T, N), most similar first
    w = np.zeros((N, T))
    for t in range(T):  # the planted influence sits on each test example's first 6 neighbours
        w[near[t, :6], t] = rng.normal(scale=2.0, size=6)
    outputs = 0.5 + masks @ w + rng.normal(scale=0.5, size=(R, T))
    sizes, alphas, holdout = (3, 6, 12, 24), (0.01, 0.1, 1.0, 10.0), 0.2
    scores, intercept, size, alpha = fit_neighbour_ridge(masks, outputs, near[:, :24], sizes, alphas, holdout)
    n_fit = R - int(round(holdout * R))

    def ridge(X, y, a):
        Xc = X - X.mean(0)
        return Ridge(alpha=a * np.trace(Xc.T @ Xc) / X.shape[1], fit_intercept=True, solver="svd").fit(X, y)

    for t in range(T):
        errors = {}
        for k in sizes:
            X = masks[:, near[t, :k]].astype(np.float64)
            for a in alphas:
                model = ridge(X[:n_fit], outputs[:n_fit, t], a)
                errors[k, a] = np.mean((outputs[n_fit:, t] - model.predict(X[n_fit:])) ** 2)
        k, a = min(errors, key=errors.get)
        assert (size[t], alpha[t]) == (k, a)
        ref = ridge(masks[:, near[t, :k]].astype(np.float64), outputs[:, t], a)
        expect = np.zeros(N)
        expect[near[t, :k]] = ref.coef_
        np.testing.assert_allclose(scores[t], expect, atol=1e-5)
        assert intercept[t] == pytest.approx(ref.intercept_, abs=1e-5)
    # with the right neighbours it recovers the planted weights better than ridge on all
    plain, *_ = fit_ridge(masks.astype(np.float32), outputs, alphas, holdout)
    err = lambda s: np.mean((s - w.T) ** 2)
    assert err(scores) < 0.5 * err(plain)


def test_neighbours_that_never_vary_get_no_weight():
    rng = np.random.default_rng(4)
    masks = rng.random((12, 20)) < 0.5
    masks[:, :10] = True  # in every run: no evidence either way
    outputs = rng.normal(size=(12, 3))
    near = np.tile(np.arange(20), (3, 1))
    scores, intercept, size, _ = fit_neighbour_ridge(masks, outputs, near, (5, 20), (1.0, 10.0), 0.25)
    assert np.isfinite(scores).all() and np.abs(scores[:, :10]).max() < 1e-9 and (size == 20).all()
    scores, intercept, *_ = fit_neighbour_ridge(masks, outputs, near, (5,), (1.0,), 0.25)  # only those
    assert (scores == 0).all() and np.allclose(intercept, outputs.mean(0))


def _lasso_by_hand(X, y, fraction, sweeps=400):
    """Coordinate descent written out: min 1/(2R)||y_c - X_c w||^2 + a alpha_max ||w||_1."""
    R = len(y)
    mx, my = X.mean(0), y.mean()
    Xc, r = X - mx, y - my
    alpha = fraction * np.abs(Xc.T @ r).max() / R
    w = np.zeros(X.shape[1])
    for _ in range(sweeps):
        for j in range(X.shape[1]):
            norm = Xc[:, j] @ Xc[:, j] / R
            if norm == 0:
                continue
            r = r + Xc[:, j] * w[j]
            rho = Xc[:, j] @ r / R
            w[j] = np.sign(rho) * max(abs(rho) - alpha, 0.0) / norm
            r = r - Xc[:, j] * w[j]
    return w, my - mx @ w


def test_lasso_equals_coordinate_descent_written_out():
    masks, outputs, _ = _population(R=60, N=12, T=3)
    masks[:, 5] = True  # never varies: no weight
    fractions = (0.5, 0.2, 0.05, 0.01)
    scores, intercept, chosen = fit_lasso(masks, outputs, None, fractions, 0.2)
    X, n_fit = masks.astype(np.float64), 48
    for z in range(3):
        errors = []
        for a in fractions:  # the held-out choice, redone
            w, b = _lasso_by_hand(X[:n_fit], outputs[:n_fit, z], a)
            errors.append(np.mean((outputs[n_fit:, z] - X[n_fit:] @ w - b) ** 2))
        assert chosen[z] == fractions[int(np.argmin(errors))]
        w, b = _lasso_by_hand(X, outputs[:, z], chosen[z])
        np.testing.assert_allclose(scores[z], w, atol=1e-4)
        assert intercept[z] == pytest.approx(b, abs=1e-4) and scores[z, 5] == 0
    # sparse planted weights: found, and the rest left at exactly zero
    rng = np.random.default_rng(1)
    masks = rng.random((300, 60)) < 0.5
    w = np.zeros(60)
    w[[3, 17, 42]] = (2.0, -1.5, 1.0)
    y = masks @ w + rng.normal(scale=0.3, size=300)
    scores, _, _ = fit_lasso(masks, y[:, None], None, (0.3, 0.1, 0.05), 0.1)
    assert set(np.argsort(-np.abs(scores[0]))[:3]) == {3, 17, 42} and (scores[0] == 0).sum() > 30
    # candidate columns per test example: weights only there, equal to the fit on those columns
    cols = np.array([[3, 17, 42, 0, 1]])
    near, _, _ = fit_lasso(masks, y[:, None], cols, (0.1,), 0.1)
    alone, _, _ = fit_lasso(masks[:, cols[0]], y[:, None], None, (0.1,), 0.1)
    assert set(np.flatnonzero(near[0])) <= set(cols[0])
    np.testing.assert_allclose(near[0, cols[0]], alone[0], atol=1e-6)


def test_lds_equals_spearman_per_test_example_and_its_ceiling():
    rng = np.random.default_rng(1)
    N, T, m, seeds = 30, 8, 12, 4
    subsets = rng.random((m, N)) < 0.5
    masks = np.repeat(subsets, seeds, axis=0)  # seeds consecutive per subset
    w = rng.normal(size=(N, T))
    outputs = masks @ w + rng.normal(scale=1.0, size=(m * seeds, T))
    scores = (w + rng.normal(scale=0.5, size=w.shape)).T
    result = lds_from_arrays(scores, masks, outputs, LdsOptions(bootstrap=200))
    f = outputs.reshape(m, seeds, T).mean(1)
    g = subsets @ scores.T
    expect = np.array([spearmanr(f[:, t], g[:, t]).statistic for t in range(T)])
    np.testing.assert_allclose(result.per_test, expect, atol=1e-12)
    assert result.lds == pytest.approx(expect.mean()) and result.ci[0] <= result.lds <= result.ci[1]
    fa, fb = outputs.reshape(m, seeds, T)[:, :2].mean(1), outputs.reshape(m, seeds, T)[:, 2:].mean(1)
    assert result.ceiling == pytest.approx(np.mean([spearmanr(fa[:, t], fb[:, t]).statistic for t in range(T)]))
    assert result.subset_sizes.tolist() == subsets.sum(1).tolist() and result.seeds == seeds
    one = lds_from_arrays(scores, subsets, f, LdsOptions(bootstrap=0))
    assert one.ceiling is None and one.lds == pytest.approx(result.lds)
    with pytest.raises(manyruns.InputError, match=r"scores: expected shape \(n_test, n_train\) = \(8, 30\)"):
        lds_from_arrays(scores.T, masks, outputs)


@pytest.fixture(scope="module")
def subsets(tmp_path_factory):
    """60 runs on random halves of digits, two seeds per subset: fit on 0-39, evaluate on 40-59."""
    tmp = tmp_path_factory.mktemp("attr")
    recipe = tmp / "recipe.toml"
    recipe.write_text(tiny_recipe(runs=60).replace("weights = [0, 3]", "weights = []").replace("[record]", "seeds_per_subset = 2\n[record]"))
    store = tmp / "store"
    manyruns.plan(recipe, store)
    manyruns.train(store, executor="local", workers=2, progress=False)
    return store


def test_datamodels_and_lds_from_the_command_line(subsets, tmp_path):
    pop = manyruns.open(subsets)
    dm = tmp_path / "dm.npz"
    res = run("datamodels", str(subsets), "--fit-runs", "0-39", "--estimator", "ridge", "--out", str(dm), "--json")
    assert res.returncode == 0, res.stderr
    saved = np.load(dm)
    assert saved["scores"].shape == (pop.layout["n_test"], pop.layout["n_train"]) and saved["scores"].dtype == np.float32
    assert saved["fit_runs"].tolist() == list(range(40))
    # the command's scores are the API's
    api = datamodels(pop, runs="0-39")
    np.testing.assert_allclose(saved["scores"], api.scores, rtol=1e-3, atol=1e-8)  # threads sum in other orders
    res = run("lds", str(subsets), "--scores", str(dm), "--eval-runs", "40-59", "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert {"lds", "ci", "n_test", "n_subsets", "ceiling"} <= set(s)
    assert s["n_subsets"] == 10 and s["seeds_per_subset"] == 2 and s["ceiling"] is not None
    assert s["ci"][0] <= s["lds"] <= s["ci"][1]
    # with 20 subsets to fit on, difference-of-means datamodels of the loss already carry signal
    # (the noise ceiling of one seed against another is only about 0.18 at this scale)
    from manyruns.analysis.attribution import lds

    fitted = lds(pop, datamodels(pop, runs="0-39", estimator="diffmeans", output="neg_loss").scores, runs="40-59", output="neg_loss")
    assert fitted.ci[0] > 0, (fitted.lds, fitted.ci)
    noise = np.random.default_rng(0).normal(size=saved["scores"].shape)
    assert lds(pop, noise, runs="40-59", output="neg_loss").lds < fitted.lds
    # top-k scores and the kernel are accepted too
    top = tmp_path / "top.npz"
    assert run("datamodels", str(subsets), "--fit-runs", "0-39", "--estimator", "diffmeans", "--top", "20", "--out", str(top)).returncode == 0
    assert np.load(top)["indices"].shape == (pop.layout["n_test"], 20)
    assert run("lds", str(subsets), "--scores", str(top), "--eval-runs", "40-59").returncode == 0
    kern = run("lds", str(subsets), "--scores", "kernel", "--fit-runs", "0-39", "--eval-runs", "40-59", "--json")
    assert kern.returncode == 0, kern.stderr and np.isfinite(json.loads(kern.stdout)["lds"])


def test_kernel_neighbour_datamodels_from_the_command_line(subsets, tmp_path, monkeypatch):
    from manyruns.analysis.kernel import KernelOptions, PopulationLogits, kernel_matrix

    pop = manyruns.open(subsets)
    dm = tmp_path / "near.npz"
    res = run("datamodels", str(subsets), "--fit-runs", "0-39", "--neighbours", "5,10,20", "--output", "neg_loss", "--out", str(dm), "--json")
    assert res.returncode == 0, res.stderr
    saved, summary = np.load(dm), json.loads(res.stdout)
    assert summary["neighbours"]["tried"] == [5, 10, 20] and sum(summary["neighbours"]["chosen"].values()) == pop.layout["n_test"]
    # every test example's weights lie on its kernel neighbours (the kernel of the fit runs alone)
    kern = kernel_matrix(PopulationLogits(pop, "0-39"), "test", KernelOptions())
    order = np.argsort(-kern, axis=1, kind="stable")
    for t, k in enumerate(saved["neighbours"]):
        assert k in (5, 10, 20)
        assert set(np.flatnonzero(saved["scores"][t])) <= set(order[t, :k])
    api = datamodels(pop, runs="0-39", output="neg_loss", neighbours=(5, 10, 20))
    np.testing.assert_allclose(saved["scores"], api.scores, rtol=1e-3, atol=1e-6)
    lasso = tmp_path / "lasso.npz"
    res = run("datamodels", str(subsets), "--fit-runs", "0-39", "--neighbours", "20", "--estimator", "lasso", "--output", "neg_loss", "--out", str(lasso))
    assert res.returncode == 0, res.stderr
    sparse = np.load(lasso)["scores"]
    for t in range(sparse.shape[0]):  # L1 weights on the 20 neighbours only
        assert set(np.flatnonzero(sparse[t])) <= set(order[t, :20])
    np.testing.assert_allclose(sparse, datamodels(pop, runs="0-39", output="neg_loss", estimator="lasso", neighbours=(20,)).scores, atol=1e-6)
    import importlib

    from manyruns.errors import OptionError

    module = importlib.import_module("manyruns.analysis.attribution.datamodels")  # the module, not the function of that name

    monkeypatch.setattr(module, "MAX_COLUMNS", 20)  # above it, all training examples would need too large a Gram matrix
    with pytest.raises(OptionError, match="neighbours"):
        datamodels(pop, runs="0-39", estimator="lasso")
    assert run("lds", str(subsets), "--scores", str(dm), "--eval-runs", "40-59", "--output", "neg_loss").returncode == 0
    for args, flag in ((["--neighbours", "5", "--estimator", "diffmeans"], "--neighbours"), (["--neighbours", "0"], "--neighbours"),
                       (["--neighbours", "100000"], "--neighbours"), (["--neighbours", "a,b"], "--neighbours")):
        bad = run("datamodels", str(subsets), "--fit-runs", "0-39", *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and flag in bad.stderr, (args, bad.stderr)


def test_lds_refusals(subsets, tmp_path):
    dm = tmp_path / "dm.npz"
    assert run("datamodels", str(subsets), "--fit-runs", "0-39", "--estimator", "diffmeans", "--out", str(dm)).returncode == 0
    overlap = run("lds", str(subsets), "--scores", str(dm), "--eval-runs", "30-59")
    assert overlap.returncode == 2
    assert overlap.stderr.strip() == "error: --eval-runs: 10 evaluation runs are runs the scores were fitted on (30, 31, 32, 33, 34, ...); the two must be disjoint"
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 4)))
    bad = run("lds", str(subsets), "--scores", str(wrong), "--eval-runs", "40-59")
    assert bad.returncode == 2 and "--scores" in bad.stderr and "expected shape (n_test, n_train)" in bad.stderr
    one_seed = run("lds", str(subsets), "--scores", str(dm), "--eval-runs", "40,42,44,46,48,50", "--ceiling")
    assert one_seed.returncode == 2 and "--ceiling" in one_seed.stderr
    assert run("datamodels", str(subsets), "--estimator", "elasticnet").returncode == 2
    one = run("datamodels", str(subsets), "--fit-runs", "0-0")
    assert one.returncode == 2 and one.stderr.startswith("error: --fit-runs selects 1 run;"), one.stderr
    for extra in ([], ["--neighbours", "5"]):  # runs 0 and 1 are two seeds of one subset
        same = run("datamodels", str(subsets), "--fit-runs", "0-1", "--estimator", "ridge", *extra)
        assert same.returncode == 2 and "all trained on the same examples" in same.stderr, same.stderr


def test_lds_equals_dattri_on_the_same_inputs():
    """dattri's metric (a test-only extra) on its own layout: scores (N, T), ground truth
    (values (m, T), indices of each subset (m, k))."""
    torch = pytest.importorskip("torch")
    metric = pytest.importorskip("dattri.metric")
    rng = np.random.default_rng(3)
    N, T, m, k = 50, 12, 30, 25
    indices = np.stack([rng.choice(N, size=k, replace=False) for _ in range(m)])
    masks = np.zeros((m, N), dtype=bool)
    masks[np.arange(m)[:, None], indices] = True
    w = rng.normal(size=(N, T))
    values = masks @ w + rng.normal(size=(m, T))
    scores = w.T + rng.normal(scale=0.7, size=(T, N))
    ours = lds_from_arrays(scores, masks, values, LdsOptions(bootstrap=0))
    theirs, _ = metric.lds(torch.tensor(scores.T), (torch.tensor(values), torch.tensor(indices)))
    np.testing.assert_allclose(ours.per_test, theirs.numpy(), atol=1e-6)


def test_ground_truth_round_trips_through_dattri_and_trak_layouts(subsets, tmp_path):
    pop = manyruns.open(subsets)
    gt = tmp_path / "gt.npz"
    assert run("lds", str(subsets), "--eval-runs", "40-59", "--write-ground-truth", str(gt)).returncode == 0
    data = np.load(gt)
    assert data["masks"].shape == (10, pop.layout["n_train"]) and data["values"].shape == (10, pop.layout["n_test"])
    assert (data["seeds"] == 2).all() and np.array_equal(data["margins"], data["values"])
    assert data["indices"].shape == (10, int(data["masks"][0].sum()))
    dm = tmp_path / "dm.npz"
    assert run("datamodels", str(subsets), "--fit-runs", "0-39", "--estimator", "diffmeans", "--out", str(dm)).returncode == 0
    direct = json.loads(run("lds", str(subsets), "--scores", str(dm), "--eval-runs", "40-59", "--json", "--bootstrap", "0").stdout)
    # dattri's layout (values, indices) and TRAK's (masks, margins) give the same score
    dattri_only, trak_only = tmp_path / "dattri.npz", tmp_path / "trak.npz"
    np.savez(dattri_only, values=data["values"], indices=data["indices"])
    np.savez(trak_only, masks=data["masks"], margins=data["margins"])
    for path in (dattri_only, trak_only):
        got = json.loads(run("lds", str(subsets), "--scores", str(dm), "--ground-truth", str(path), "--json", "--bootstrap", "0").stdout)
        assert got["lds"] == pytest.approx(direct["lds"], abs=1e-12) and got["ceiling"] is None
    both = run("lds", str(subsets), "--scores", str(dm), "--ground-truth", str(gt), "--eval-runs", "40-59")
    assert both.returncode == 2 and "--eval-runs" in both.stderr and "--ground-truth" in both.stderr
