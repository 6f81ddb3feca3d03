"""Helpers for the held-out statistics tests: stores holding given arrays, and straightforward
dense (loop-based) implementations of the estimators to check the streaming ones against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import manyruns
from manyruns import store as store_mod


def array_store(
    path: Path,
    mask: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    ratios: np.ndarray,
    correct_train: np.ndarray | None = None,
    correct_test: np.ndarray | None = None,
    logits_train: np.ndarray | None = None,
    logits_test: np.ndarray | None = None,
    labels_train: np.ndarray | None = None,
    trueprob: np.ndarray | None = None,
    status: np.ndarray | None = None,
) -> manyruns.Population:
    """A real store on disk holding exactly the given per-run arrays (all runs committed)."""
    R, N = mask.shape
    T = y_test.size
    C = int(max(y_train.max(), y_test.max())) + 1
    arrays = {"mask/train": ((N,), "bool", False), "labels/train": ((N,), "int16", -1)}
    if correct_train is not None:
        arrays["correct/train"] = ((N,), "bool", False)
        arrays["correct/test"] = ((T,), "bool", False)
    if logits_train is not None:
        C = logits_train.shape[-1]
        arrays["logits/train"] = ((N, C), "float16", np.nan)
        arrays["logits/test"] = ((T, C), "float16", np.nan)
    if trueprob is not None:
        arrays["trueprob/train"] = (trueprob.shape[1:], "float16", np.nan)
    fingerprint = {"name": "synthetic", "train_shape": [N, 1, 1, 1], "test_shape": [T, 1, 1, 1], "num_classes": C}
    spec = store_mod.ImportSpec("digits", fingerprint, (y_train, y_test), C, (1, 1, 1), arrays, {"format": "test arrays"})
    store = store_mod.create_imported(path, spec)
    store_mod.append_runs(store, {"subset": [float(q) for q in ratios]})
    rows = {
        "mask/train": mask,
        "labels/train": np.broadcast_to(y_train if labels_train is None else labels_train, (R, N)).astype(np.int16),
    }
    if correct_train is not None:
        rows["correct/train"] = correct_train
        rows["correct/test"] = correct_test
    if logits_train is not None:
        rows["logits/train"] = logits_train.astype(np.float16)
        rows["logits/test"] = logits_test.astype(np.float16)
    if trueprob is not None:
        rows["trueprob/train"] = trueprob.astype(np.float16)
    store.write_runs(0, rows, np.ones(R, dtype=np.int8) if status is None else status)
    return manyruns.open(path)


def random_heldout(rng: np.random.Generator, R: int, N: int, T: int, classes: int = 3, ratios=(0.5,)):
    """Random masks (each run at one of ``ratios``), correctness and labels, with one training
    example never held out (0) and one never trained on (1), and one test example every run gets
    right (0) and one every run gets wrong (1)."""
    ratio = np.array([ratios[r % len(ratios)] for r in range(R)])
    mask = rng.random((R, N)) < ratio[:, None]
    mask[:, 0] = True
    mask[:, 1] = False
    p_train = rng.uniform(0.2, 0.95, N)
    correct_train = rng.random((R, N)) < p_train
    correct_test = rng.random((R, T)) < rng.uniform(0.2, 0.95, T)
    correct_test[:, 0] = True
    if T > 1:
        correct_test[:, 1] = False
    y_train = rng.integers(0, classes, N)
    y_test = rng.integers(0, classes, T)
    return ratio, mask, correct_train, correct_test, y_train, y_test


# ----------------------------------------------------------------------------- dense references


def welch(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """Difference of means and its standard error (sample variances), NaN where undefined."""
    if inside.size == 0 or outside.size == 0:
        return float("nan"), float("nan")
    diff = float(inside.mean() - outside.mean())
    if inside.size < 2 or outside.size < 2:
        return diff, float("nan")
    se = float(np.sqrt(inside.var(ddof=1) / inside.size + outside.var(ddof=1) / outside.size))
    return diff, se


def dense_memorization(mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    N = mask.shape[1]
    est, se = np.full(N, np.nan), np.full(N, np.nan)
    for i in range(N):
        est[i], se[i] = welch(values[mask[:, i], i].astype(float), values[~mask[:, i], i].astype(float))
    return est, se


def dense_influence(mask: np.ndarray, test_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T, N)`` influence and standard errors."""
    N, T = mask.shape[1], test_values.shape[1]
    est, se = np.full((T, N), np.nan), np.full((T, N), np.nan)
    for i in range(N):
        inside, outside = mask[:, i], ~mask[:, i]
        for j in range(T):
            est[j, i], se[j, i] = welch(test_values[inside, j].astype(float), test_values[outside, j].astype(float))
    return est, se


def dense_influence_matrix(mask: np.ndarray, test_values: np.ndarray) -> np.ndarray:
    """``(T, N)`` influence as masked means in float64 matrix products (for larger inputs)."""
    m, v = mask.astype(np.float64), test_values.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = (v.T @ m) / m.sum(0)
        outside = (v.T @ (1 - m)) / (1 - m).sum(0)
    return inside - outside


def dense_cscore(mask: np.ndarray, values: np.ndarray, ratios: np.ndarray):
    """Per-ratio held-out means ``(L, N)``, C-score and its standard error ``(N,)`` (runs of
    ratio 1.0 left out)."""
    levels = sorted(set(float(q) for q in ratios if q < 1.0))
    N = mask.shape[1]
    per = np.full((len(levels), N), np.nan)
    var_over_n = np.full((len(levels), N), np.nan)
    for k, q in enumerate(levels):
        runs = ratios == q
        for i in range(N):
            held = values[runs & ~mask[:, i], i].astype(float)
            if held.size:
                per[k, i] = held.mean()
            if held.size > 1:
                var_over_n[k, i] = held.var(ddof=1) / held.size
    score = per.mean(0)
    se = np.sqrt(var_over_n.sum(0)) / len(levels)
    return np.array(levels), per, score, se


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def values_dense(logits: np.ndarray, labels: np.ndarray, kind: str) -> np.ndarray:
    """Per-run values from logits ``(R, n, C)`` and labels ``(R, n)`` or ``(n,)``, in float64."""
    x = logits.astype(np.float64)
    labels = np.broadcast_to(labels, x.shape[:2])
    own = np.take_along_axis(x, labels[..., None], -1)[..., 0]
    if kind == "correct":
        return x.argmax(-1) == labels
    if kind == "trueprob":
        return np.take_along_axis(softmax(x), labels[..., None], -1)[..., 0]
    others = x.copy()
    np.put_along_axis(others, labels[..., None], -np.inf, -1)
    return own - others.max(-1)


def check_topk(top_index: np.ndarray, top_value: np.ndarray, dense: np.ndarray, k: int) -> None:
    """``top_index``/``top_value (T, k)`` are a valid top-k of each row of ``dense (T, N)``
    (NaN entries excluded): the values match the dense values at those indices and the k
    largest dense values."""
    for j in range(dense.shape[0]):
        row = dense[j]
        finite = np.isfinite(row)
        expected = np.sort(row[finite])[::-1][:k]
        got = top_index[j][top_index[j] >= 0]
        assert got.size == min(k, finite.sum())
        assert len(set(got.tolist())) == got.size
        np.testing.assert_allclose(top_value[j][: got.size], row[got], atol=1e-5)
        np.testing.assert_allclose(np.sort(row[got])[::-1], expected, atol=1e-5)


def dense_learning_speed(trueprob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Learning-speed proxy of ``trueprob (R, E, N)`` (NaN where a run did not train on the
    example), by loops: the mean of all finite values, their number, the runs with any, and the
    standard error over runs of the per-run means over epochs."""
    R, E, N = trueprob.shape
    mean, se = np.full(N, np.nan), np.full(N, np.nan)
    count, runs = np.zeros(N), np.zeros(N)
    for i in range(N):
        values, run_means = [], []
        for r in range(R):
            seen = [float(trueprob[r, e, i]) for e in range(E) if np.isfinite(trueprob[r, e, i])]
            values += seen
            if seen:
                run_means.append(sum(seen) / len(seen))
        count[i], runs[i] = len(values), len(run_means)
        if values:
            mean[i] = sum(values) / len(values)
        if len(run_means) > 1:
            se[i] = np.std(run_means, ddof=1) / np.sqrt(len(run_means))
    return mean, se, count, runs


def half_influence32(mask: np.ndarray, test_values: np.ndarray) -> np.ndarray:
    """``(T, N) float32`` influence from the runs given, with the streaming estimator's float32
    operations (``s / n_in - (total - s) / n_out``), -inf where a column has no run in or out."""
    m, v = mask.astype(np.int64), test_values.astype(np.int64)
    s = (v.T @ m).astype(np.float32)
    n_in = m.sum(0).astype(np.float32)
    n_out = (m.shape[0] - m.sum(0)).astype(np.float32)
    total = v.sum(0).astype(np.float32)[:, None]
    valid = (n_in > 0) & (n_out > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = s / np.where(valid, n_in, 1).astype(np.float32) - (total - s) / np.where(valid, n_out, 1).astype(np.float32)
    return np.where(valid[None, :], est, np.float32(-np.inf)).astype(np.float32)


def dense_pair_stability(mask, correct_train, correct_test, half, y_train, y_test, k, infl_threshold, mem_threshold, same_label=True, rows=None) -> dict:
    """The split-half agreement of pairs and top-k computed per half from the whole arrays:
    pairs per half (as ``(train, test)`` sets) and the Spearman over the union of the halves'
    top-k entries of the test examples whose value varies (of ``rows`` only, when given)."""
    from manyruns.analysis.heldout import spearman

    R, N = mask.shape
    infl, found, tops = [], [], []
    for h in (0, 1):
        sel = half == h
        m, ct = mask[sel], correct_train[sel].astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            mem = (ct * m).sum(0) / m.sum(0) - (ct * ~m).sum(0) / (~m).sum(0)
        est = half_influence32(m, correct_test[sel])
        hit = (est >= np.float32(infl_threshold)) & (mem >= mem_threshold)[None, :]
        if same_label:
            hit &= y_test[:, None] == y_train[None, :]
        j, i = np.nonzero(hit)
        found.append(set(zip(i.tolist(), j.tolist())))
        top = set()
        for row in range(est.shape[0]):
            order = np.lexsort((np.arange(N), -est[row]))[:k]
            top |= {(row, int(c)) for c in order if np.isfinite(est[row, c])}
        infl.append(est)
        tops.append(top)
    total = correct_test.sum(0)
    varying = (total > 0) & (total < R)
    if rows is not None:
        varying &= np.isin(np.arange(varying.size), rows)
    union = sorted(e for e in tops[0] | tops[1] if varying[e[0]])
    a = np.array([infl[0][e] for e in union], dtype=np.float64)
    b = np.array([infl[1][e] for e in union], dtype=np.float64)
    rho, entries = spearman(np.where(np.isfinite(a), a, np.nan), np.where(np.isfinite(b), b, np.nan))
    return {"pairs": found, "topk_spearman": rho, "topk_entries": entries}
