"""The held-out release layout: import aligns shuffled indices, every estimator runs on the
imported store, export and import round-trip, and bad files are named with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import manyruns
from manyruns.analysis.cscore import cscore
from manyruns.analysis.heldout import memorization
from manyruns.analysis.influence import influence
from manyruns.data import load_dataset
from manyruns.formats.heldout import HeldoutFormatError, export_release, import_release, read_run, scan_release

from .heldout_helpers import array_store, check_topk, dense_cscore, dense_influence_matrix, dense_memorization, values_dense

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DIGITS = load_dataset("digits")
N, T = DIGITS.n_train, DIGITS.n_test


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "manyruns.cli", *args], capture_output=True, text=True, env=ENV)


def write_run(folder: Path, mask: np.ndarray, correct_train: np.ndarray, correct_test: np.ndarray, rng: np.random.Generator, **override) -> Path:
    """One ``aux_arrays.npz`` with every index array in its own random order."""
    index_train = rng.permutation(np.flatnonzero(mask))
    index_removed = rng.permutation(np.flatnonzero(~mask))
    index_test = rng.permutation(correct_test.size)
    arrays = {
        "correctness_train": correct_train[index_train],
        "correctness_removed": correct_train[index_removed],
        "correctness_test": correct_test[index_test],
        "index_train": index_train,
        "index_removed": index_removed,
        "index_test": index_test,
        "subsample_idx": rng.permutation(index_train),
    }
    arrays.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "aux_arrays.npz", **arrays)
    return folder / "aux_arrays.npz"


def make_release(root: Path, seed: int = 0, per_ratio: int = 6, ratios=("0.3", "0.7")) -> dict:
    """A release for digits; returns the truth in import order (by ratio, then run number)."""
    rng = np.random.default_rng(seed)
    truth = {"mask": [], "ctr": [], "cte": [], "ratio": []}
    for ratio in ratios:
        for run in range(per_ratio):
            mask = rng.random(N) < float(ratio)
            ctr = np.where(mask, rng.random(N) < 0.97, rng.random(N) < 0.8)
            cte = rng.random(T) < 0.85
            write_run(root / ratio / str(run), mask, ctr, cte, rng)
            truth["mask"].append(mask)
            truth["ctr"].append(ctr)
            truth["cte"].append(cte)
            truth["ratio"].append(float(ratio))
    return {k: np.array(v) for k, v in truth.items()}


def test_import_aligns_indices_and_supports_every_estimator(tmp_path):
    truth = make_release(tmp_path / "release", per_ratio=6)
    # run names sort numerically: 10 comes after 9
    info = import_release(tmp_path / "release", tmp_path / "store", "digits")
    assert info["runs_added"] == 12 and info["ratios"] == {"0.3": 6, "0.7": 6}
    pop = manyruns.open(tmp_path / "store")
    assert np.array_equal(pop.load("mask/train"), truth["mask"])
    assert np.array_equal(pop.load("correct/train"), truth["ctr"])
    assert np.array_equal(pop.load("correct/test"), truth["cte"])
    assert np.array_equal(pop.load("labels/train"), np.broadcast_to(DIGITS.y_train, (12, N)))
    assert np.allclose(pop.runs.subset, truth["ratio"]) and (pop.runs.status == "ok").all()
    np.testing.assert_allclose(pop.runs.test_acc, truth["cte"].mean(1), rtol=1e-6)
    assert pop.runs.release_run.iloc[7].endswith("0.7/1")

    mem = memorization(pop)
    est, se = dense_memorization(truth["mask"], truth["ctr"])
    np.testing.assert_allclose(mem.estimate, est, atol=1e-12)
    np.testing.assert_allclose(mem.se, se, atol=1e-12)
    infl = influence(pop, top=3, max_block_bytes=4 * T * 500)
    check_topk(infl.top_index, infl.top_value, dense_influence_matrix(truth["mask"], truth["cte"]), 3)
    cs = cscore(pop)
    _, per, score, _ = dense_cscore(truth["mask"], truth["ctr"], truth["ratio"])
    np.testing.assert_allclose(cs.per_ratio, per, atol=1e-12)
    np.testing.assert_allclose(cs.cscore, score, atol=1e-12)


def test_export_then_import_round_trips(tmp_path):
    make_release(tmp_path / "release", seed=1, per_ratio=3)
    import_release(tmp_path / "release", tmp_path / "a", "digits")
    pop = manyruns.open(tmp_path / "a")
    res = cli("export", "heldout", str(tmp_path / "a"), str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "wrote 6 runs" in res.stdout
    original = scan_release(tmp_path / "release")
    exported = scan_release(tmp_path / "out")
    assert [r.key for r in exported] == [r.key for r in original]  # names kept
    for a, b in zip(original, exported):
        ra, rb = read_run(a.path, N, T), read_run(b.path, N, T)
        for field in ("mask", "correct_train", "correct_test"):
            assert np.array_equal(getattr(ra, field), getattr(rb, field))
    res = cli("import", "heldout", str(tmp_path / "out"), str(tmp_path / "b"), "--dataset", "digits")
    assert res.returncode == 0, res.stderr
    again = manyruns.open(tmp_path / "b")
    for name in ("mask/train", "correct/train", "correct/test"):
        assert np.array_equal(again.load(name), pop.load(name))
    # exporting into files that exist is refused
    res = cli("export", "heldout", str(tmp_path / "a"), str(tmp_path / "out"))
    assert res.returncode == 1 and "exists" in res.stderr


def test_export_derives_correctness_from_logits(tmp_path):
    rng = np.random.default_rng(2)
    R, C = 4, 10
    mask = rng.random((R, N)) < 0.5
    lt, lte = rng.normal(size=(R, N, C)).astype(np.float16), rng.normal(size=(R, T, C)).astype(np.float16)
    seen = np.where(rng.random((R, N)) < 0.1, rng.integers(0, C, (R, N)), DIGITS.y_train)
    pop = array_store(tmp_path / "s", mask, DIGITS.y_train, DIGITS.y_test, np.full(R, 0.5), logits_train=lt, logits_test=lte, labels_train=seen)
    info = export_release(pop, tmp_path / "out")
    assert info["runs"] == 4 and info["ratios"] == {"0.5": 4}
    for r in range(R):
        run = read_run(tmp_path / "out" / "0.5" / str(r) / "aux_arrays.npz", N, T)
        assert np.array_equal(run.mask, mask[r])
        assert np.array_equal(run.correct_train, values_dense(lt[r : r + 1], seen[r], "correct")[0])
        assert np.array_equal(run.correct_test, values_dense(lte[r : r + 1], DIGITS.y_test, "correct")[0])


def test_growing_a_store_and_skipping_runs_already_imported(tmp_path):
    make_release(tmp_path / "one", seed=3, per_ratio=2, ratios=("0.5",))
    make_release(tmp_path / "two", seed=4, per_ratio=3, ratios=("0.2",))
    import_release(tmp_path / "one", tmp_path / "s", "digits")
    info = import_release(tmp_path / "two", tmp_path / "s", "digits")
    assert info["runs_added"] == 3 and info["runs"] == 5
    again = import_release(tmp_path / "one", tmp_path / "s", "digits")
    assert again["runs_added"] == 0 and again["skipped"] == 2
    pop = manyruns.open(tmp_path / "s")
    assert pop.num_runs == 5 and pop.committed.all()
    assert list(pop.runs.subset) == [0.5, 0.5, 0.2, 0.2, 0.2] and list(pop.runs.cell) == [1, 1, 0, 0, 0]
    assert memorization(pop).runs == 5


def _corrupt(kind: str, folder: Path, rng: np.random.Generator) -> Path:
    mask = rng.random(N) < 0.5
    ctr, cte = rng.random(N) < 0.9, rng.random(T) < 0.9
    idx_train = np.flatnonzero(mask)
    if kind == "short correctness":
        return write_run(folder, mask, ctr, cte, rng, correctness_train=ctr[idx_train][:-1])
    if kind == "duplicate index":
        bad = idx_train.copy()
        bad[0] = bad[1]
        return write_run(folder, mask, ctr, cte, rng, index_train=bad, subsample_idx=bad)
    if kind == "test index out of range":
        return write_run(folder, mask, ctr, cte, rng, index_test=np.arange(T) + 1)
    if kind == "subsample differs":
        other = np.flatnonzero(~mask)[: idx_train.size]
        return write_run(folder, mask, ctr, cte, rng, subsample_idx=other)
    if kind == "wrong dataset size":
        return write_run(folder, mask[:-5], ctr[:-5], cte, rng)
    if kind == "not 0/1":
        return write_run(folder, mask, ctr, cte, rng, correctness_test=np.full(T, 2))
    if kind == "missing key":
        path = write_run(folder, mask, ctr, cte, rng)
        with np.load(path) as f:
            kept = {k: f[k] for k in f.files if k != "index_test"}
        np.savez(path, **kept)
        return path
    if kind == "not an npz":
        folder.mkdir(parents=True)
        (folder / "aux_arrays.npz").write_bytes(b"not a zip file")
        return folder / "aux_arrays.npz"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, words",
    [
        ("short correctness", "'correctness_train' has"),
        ("duplicate index", "exactly once"),
        ("test index out of range", "outside 0.."),
        ("subsample differs", "'subsample_idx'"),
        ("wrong dataset size", "training examples"),
        ("not 0/1", "0/1 values"),
        ("missing key", "missing index_test"),
        ("not an npz", "cannot be read"),
    ],
)
def test_bad_files_are_named_and_nothing_is_written(tmp_path, kind, words):
    make_release(tmp_path / "release", seed=5, per_ratio=2, ratios=("0.5",))
    bad = _corrupt(kind, tmp_path / "release" / "0.5" / "7", np.random.default_rng(6))
    with pytest.raises(HeldoutFormatError) as err:
        import_release(tmp_path / "release", tmp_path / "store", "digits")
    assert str(bad) in str(err.value) and words in str(err.value)
    assert not (tmp_path / "store").exists()
    # an existing store does not grow either
    make_release(tmp_path / "good", seed=7, per_ratio=1, ratios=("0.5",))
    import_release(tmp_path / "good", tmp_path / "store", "digits")
    with pytest.raises(HeldoutFormatError):
        import_release(tmp_path / "release", tmp_path / "store", "digits")
    assert manyruns.open(tmp_path / "store").num_runs == 1


def test_bad_layout_is_a_one_line_error(tmp_path):
    make_release(tmp_path / "release", seed=8, per_ratio=1, ratios=("0.5",))
    write_run(tmp_path / "release" / "half" / "0", np.ones(N, dtype=bool), np.ones(N, dtype=bool), np.ones(T, dtype=bool), np.random.default_rng(0))
    res = cli("import", "heldout", str(tmp_path / "release"), str(tmp_path / "s"), "--dataset", "digits")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "half" in res.stderr and "subset ratio" in res.stderr
    res = cli("import", "heldout", str(tmp_path / "nothing"), str(tmp_path / "s"), "--dataset", "digits")
    assert res.returncode == 1 and "no such directory" in res.stderr
    assert not (tmp_path / "s").exists()
