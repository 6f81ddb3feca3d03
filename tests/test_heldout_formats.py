"""The held-out release layout: import aligns shuffled indices, every estimator runs on the
imported store, export and import round-trip, and bad files are named with nothing written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import manyruns
from manyruns.analysis.heldout import cscore
from manyruns.analysis.heldout import memorization
from manyruns.analysis.heldout import influence
from manyruns.data import load_dataset
from manyruns.formats.heldout import HeldoutFormatError, export_release, import_release, read_run, scan_release

from .conftest import cli_here
from .heldout_helpers import array_store, check_topk, dense_cscore, dense_influence_matrix, dense_memorization, values_dense

DIGITS = load_dataset("digits")
N, T = DIGITS.n_train, DIGITS.n_test


cli = cli_here  # the analysis commands, in this process


def exact_mask(rng: np.random.Generator, ratio: float, size: int | None = None) -> np.ndarray:
    """``(N,) bool``: ``size`` (default ``round(ratio * N)``) random training examples, as the
    release draws its subsets."""
    mask = np.zeros(N, dtype=bool)
    mask[rng.choice(N, round(ratio * N) if size is None else size, replace=False)] = True
    return mask


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
            mask = exact_mask(rng, float(ratio))
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
    infl = influence(pop, top=3, memory_gib=(4 * T * 500) / 2**30)
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
    assert res.returncode == 2 and "exists" in res.stderr


def test_export_derives_correctness_from_logits(tmp_path):
    rng = np.random.default_rng(2)
    R, C = 4, 10
    mask = rng.random((R, N)) < 0.5
    lt, lte = rng.normal(size=(R, N, C)).astype(np.float16), rng.normal(size=(R, T, C)).astype(np.float16)
    seen = np.where(rng.random((R, N)) < 0.1, rng.integers(0, C, (R, N)), DIGITS.y_train)
    pop = array_store(tmp_path / "s", mask, DIGITS.y_train, DIGITS.y_test, np.full(R, 0.5), logits_train=lt, logits_test=lte, labels_train=seen)
    info = export_release(pop, tmp_path / "out")
    assert info["run_count"] == 4 and info["runs"] == [0, 1, 2, 3] and info["ratios"] == {"0.5": 4}
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
    assert memorization(pop).run_count == 5


def _corrupt(kind: str, folder: Path, rng: np.random.Generator) -> Path:
    mask = exact_mask(rng, 0.5)
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
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "half" in res.stderr and "subset ratio" in res.stderr
    res = cli("import", "heldout", str(tmp_path / "nothing"), str(tmp_path / "s"), "--dataset", "digits")
    assert res.returncode == 2 and "no such directory" in res.stderr
    assert not (tmp_path / "s").exists()


def _release_with_train_size(root: Path, ratio: str, size: int, seed: int = 9) -> Path:
    """A release of two good runs at ``ratio`` and a third whose training part has ``size``
    examples; returns the third's file."""
    make_release(root, seed=seed, per_ratio=2, ratios=(ratio,))
    rng = np.random.default_rng(seed + 1)
    return write_run(root / ratio / "2", exact_mask(rng, 0, size), rng.random(N) < 0.9, rng.random(T) < 0.9, rng)


def test_a_training_part_that_does_not_match_its_ratio_directory_is_refused(tmp_path):
    # a file under 0.3/ whose index_train covers 90% of the training set
    bad = _release_with_train_size(tmp_path / "release", "0.3", round(0.9 * N))
    with pytest.raises(HeldoutFormatError) as err:
        import_release(tmp_path / "release", tmp_path / "store", "digits")
    message = str(err.value)
    assert str(bad) in message and "subset ratio 0.3" in message and f"fraction {round(0.9 * N) / N:.4f}" in message
    assert not (tmp_path / "store").exists()
    res = cli("import", "heldout", str(tmp_path / "release"), str(tmp_path / "store"), "--dataset", "digits")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "subset ratio 0.3" in res.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "ratio, size, accepted",
    [
        # 0.3 x 1438 = 431.4: floor and round 431; one example either side is tolerated
        ("0.3", 430, True), ("0.3", 431, True), ("0.3", 432, True), ("0.3", 433, True),
        ("0.3", 429, False), ("0.3", 434, False),
        # 0.25 x 1438 = 359.5: floor 359, round 360
        ("0.25", 358, True), ("0.25", 361, True), ("0.25", 357, False), ("0.25", 362, False),
        ("1", N - 1, True), ("1", N - 2, False),
    ],
)
def test_subset_sizes_within_rounding_of_the_ratio_are_accepted(tmp_path, ratio, size, accepted):
    _release_with_train_size(tmp_path / "release", ratio, size)
    if accepted:
        assert import_release(tmp_path / "release", tmp_path / "store", "digits")["runs_added"] == 3
    else:
        with pytest.raises(HeldoutFormatError, match=f"holds {size:,} of the {N:,} training examples"):
            import_release(tmp_path / "release", tmp_path / "store", "digits")


@pytest.mark.parametrize("per_ratio, ratios", [(1, ("0.5",)), (2, ("0.5",)), (1, ("0.3", "0.7"))])
def test_commands_on_stores_of_one_or_two_runs(tmp_path, per_ratio, ratios):
    make_release(tmp_path / "release", seed=12, per_ratio=per_ratio, ratios=ratios)
    import_release(tmp_path / "release", tmp_path / "s", "digits")
    runs = per_ratio * len(ratios)
    store = str(tmp_path / "s")
    text = {c: cli(c, store, "--no-grid") for c in ("memorization", "influence", "cscore")}
    for command, res in text.items():
        assert res.returncode == 0 and "Traceback" not in res.stderr, f"{command}: {res.stderr}"
        assert f"from {runs} runs" in res.stdout
    # too few runs for a standard error (or any estimate) prints n/a, never a traceback or nan
    assert "median standard error n/a" in text["memorization"].stdout
    assert ("mean n/a" in text["memorization"].stdout) == (runs == 1)
    assert "Spearman n/a" in text["influence"].stdout and "top-1 agreement n/a" in text["influence"].stdout
    assert ("median standard error n/a" in text["cscore"].stdout) == (per_ratio == 1)
    assert not any(re.search(r"\bnan\b", res.stdout) for res in text.values())  # "NaN for ... examples" notes are fine
    summaries = {c: json.loads(cli(c, store, "--json", "--no-grid").stdout) for c in text}
    assert all(s["run_count"] == runs for s in summaries.values())
    assert summaries["memorization"]["median_se"] is None and (summaries["memorization"]["mean"] is None) == (runs == 1)
    assert summaries["influence"]["pair_stability"]["topk_spearman"] is None
    assert (summaries["cscore"]["median_se"] is None) == (per_ratio == 1)


def test_learning_speed_on_an_imported_store_says_releases_carry_no_probabilities(tmp_path):
    make_release(tmp_path / "release", seed=13, per_ratio=2, ratios=("0.3", "0.7"))
    import_release(tmp_path / "release", tmp_path / "s", "digits")
    res = cli("cscore", str(tmp_path / "s"), "--learning-speed", "--no-grid")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "this store holds no per-epoch true-class probabilities" in res.stderr and "imported (heldout-release)" in res.stderr
    assert "imported releases carry none" in res.stderr and "record.true_prob" not in res.stderr
