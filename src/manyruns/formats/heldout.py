"""The published held-out training release: per-run correctness of models trained on random subsets.

One experiment's directory holds ``<subset_ratio>/<run>/aux_arrays.npz``; each file has

    correctness_train   (n_in,)   0/1: the run's final prediction on the examples it trained on
    correctness_removed (n_out,)  0/1: ... on the training examples it held out
    correctness_test    (T,)      0/1: ... on the test set
    index_train         (n_in,)   original training-set index of each entry of correctness_train
    index_removed       (n_out,)  ... of correctness_removed (train + removed = the training set)
    index_test          (T,)      original test-set index of each entry of correctness_test
    subsample_idx       (n_in,)   the training examples the run was given (as a set: index_train)

The index arrays put every value at its example, so runs evaluated in different orders align.
Import validates every file (keys, lengths, that the indices cover the dataset exactly once,
that ``subsample_idx`` is the training part, that the training part's size matches the ratio
directory) before writing anything, and writes ``mask/train``, ``correct/train``,
``correct/test`` and ``labels/train`` (the dataset's labels) per run; each run's subset ratio
comes from its directory name. Export writes the same layout from any store with masks and
correctness (or logits to derive it from).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store as store_mod
from ..analysis.heldout import HeldoutSource
from ..data import Dataset, check_fingerprint, load_dataset, resolve_data_root
from ..errors import InputError
from ..storage import open_location
from ..population import Population
from ..store import SUMMARY_COLUMNS, StoreError

FORMAT = "heldout-release"
FILE_NAME = "aux_arrays.npz"
KEYS = (
    "correctness_train",
    "correctness_removed",
    "correctness_test",
    "index_train",
    "index_removed",
    "index_test",
    "subsample_idx",
)


class HeldoutFormatError(InputError):
    """A release directory or file that does not have the published layout."""


@dataclass(frozen=True)
class ReleaseRun:
    """One run of a release: ``ratio`` and run ``name`` from the directory names, and its file."""

    ratio: float
    ratio_name: str
    name: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.ratio_name}/{self.name}"


@dataclass
class RunArrays:
    """One run's arrays aligned to the original example order: ``mask (N,) bool``,
    ``correct_train (N,) bool``, ``correct_test (T,) bool``."""

    mask: np.ndarray
    correct_train: np.ndarray
    correct_test: np.ndarray


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def scan_release(root: str | os.PathLike) -> list[ReleaseRun]:
    """Every ``<ratio>/<run>/aux_arrays.npz`` under ``root``, ordered by ratio, then run name
    (numerically where names are numbers)."""
    root = Path(root)
    if not root.is_dir():
        raise HeldoutFormatError(f"{root}: no such directory (expected one experiment's directory holding <subset_ratio>/<run>/{FILE_NAME})")
    runs = []
    for path in root.glob(f"*/*/{FILE_NAME}"):
        ratio_dir, run_dir = path.parent.parent.name, path.parent.name
        try:
            ratio = float(ratio_dir)
        except ValueError:
            raise HeldoutFormatError(f"{path}: the directory {ratio_dir!r} should be a subset ratio such as 0.7") from None
        if not 0.0 < ratio <= 1.0:
            raise HeldoutFormatError(f"{path}: subset ratio {ratio_dir} is outside (0, 1]")
        runs.append(ReleaseRun(ratio, ratio_dir, run_dir, path))
    if not runs:
        raise HeldoutFormatError(f"{root}: found no <subset_ratio>/<run>/{FILE_NAME} files")
    return sorted(runs, key=lambda r: (r.ratio, _natural(r.name)))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise HeldoutFormatError(f"{path}: missing {', '.join(missing)} (found: {', '.join(f.files) or 'nothing'})")
            return {k: np.asarray(f[k]) for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, HeldoutFormatError):
            raise
        raise HeldoutFormatError(f"{path}: cannot be read as an .npz file ({exc})") from None


def _as_binary(values: np.ndarray, key: str, path: Path) -> np.ndarray:
    if values.ndim != 1:
        raise HeldoutFormatError(f"{path}: '{key}' must be one-dimensional, has shape {values.shape}")
    if values.dtype == bool:
        return values
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise HeldoutFormatError(f"{path}: '{key}' must hold 0/1 values, has dtype {values.dtype}")
    if values.size and not np.isin(values, (0, 1)).all():
        bad = values[~np.isin(values, (0, 1))][0]
        raise HeldoutFormatError(f"{path}: '{key}' must hold 0/1 values, found {bad!r}")
    return values.astype(bool)


def _as_index(values: np.ndarray, key: str, path: Path) -> np.ndarray:
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise HeldoutFormatError(f"{path}: '{key}' must be a one-dimensional integer array, has shape {values.shape} and dtype {values.dtype}")
    return values.astype(np.int64)


def read_run(path: str | os.PathLike, n_train: int, n_test: int) -> RunArrays:
    """Read and check one ``aux_arrays.npz`` against a dataset of ``n_train`` training and
    ``n_test`` test examples; the arrays come back in the original example order."""
    path = Path(path)
    raw = _load_npz(path)
    correct = {s: _as_binary(raw[f"correctness_{s}"], f"correctness_{s}", path) for s in ("train", "removed", "test")}
    index = {s: _as_index(raw[f"index_{s}"], f"index_{s}", path) for s in ("train", "removed", "test")}
    for s in ("train", "removed", "test"):
        if correct[s].size != index[s].size:
            raise HeldoutFormatError(f"{path}: 'correctness_{s}' has {correct[s].size} entries but 'index_{s}' has {index[s].size}")
    if index["train"].size + index["removed"].size != n_train:
        raise HeldoutFormatError(
            f"{path}: 'index_train' ({index['train'].size}) and 'index_removed' ({index['removed'].size}) "
            f"together have {index['train'].size + index['removed'].size} entries; the dataset has {n_train} training examples"
        )
    if index["test"].size != n_test:
        raise HeldoutFormatError(f"{path}: 'index_test' has {index['test'].size} entries; the dataset has {n_test} test examples")
    both = np.concatenate([index["train"], index["removed"]])
    _check_permutation(both, n_train, "index_train and index_removed together", path)
    _check_permutation(index["test"], n_test, "index_test", path)
    subsample = _as_index(raw["subsample_idx"], "subsample_idx", path)
    if subsample.size != index["train"].size or not np.array_equal(np.sort(subsample), np.sort(index["train"])):
        raise HeldoutFormatError(f"{path}: 'subsample_idx' ({subsample.size} entries) is not the set of examples in 'index_train' ({index['train'].size} entries)")
    mask = np.zeros(n_train, dtype=bool)
    mask[index["train"]] = True
    correct_train = np.zeros(n_train, dtype=bool)
    correct_train[index["train"]] = correct["train"]
    correct_train[index["removed"]] = correct["removed"]
    correct_test = np.zeros(n_test, dtype=bool)
    correct_test[index["test"]] = correct["test"]
    return RunArrays(mask, correct_train, correct_test)


def _check_permutation(index: np.ndarray, n: int, what: str, path: Path) -> None:
    if index.size and (index.min() < 0 or index.max() >= n):
        bad = index[(index < 0) | (index >= n)][0]
        raise HeldoutFormatError(f"{path}: {what} hold index {bad}, outside 0..{n - 1}")
    counts = np.bincount(index, minlength=n)
    if (counts != 1).any():
        dup = np.flatnonzero(counts > 1)
        missing = np.flatnonzero(counts == 0)
        detail = f"index {dup[0]} appears {counts[dup[0]]} times" if dup.size else f"index {missing[0]} is missing"
        raise HeldoutFormatError(f"{path}: {what} must name every example exactly once; {detail}")


def check_subset_ratio(run: ReleaseRun, mask: np.ndarray) -> None:
    """Refuse a run whose training part does not have the size its ratio directory says.

    ``mask (N,) bool``: the examples the run trained on. A subset of ratio ``q`` holds
    ``q N`` examples rounded down or to the nearest (at least one), and one example more or
    less is tolerated; anything else means the file is under the wrong directory.
    """
    n, k = mask.size, int(np.count_nonzero(mask))
    expected = run.ratio * n
    low = math.floor(expected + 1e-9) - 1
    high = max(1, math.ceil(expected - 1e-9)) + 1
    if not low <= k <= high:
        raise HeldoutFormatError(
            f"{run.path}: 'index_train' holds {k:,} of the {n:,} training examples (fraction {k / n:.4f}), "
            f"but the file is under subset ratio {run.ratio_name} ({expected:,.1f} examples); move it under its ratio's directory"
        )


# ------------------------------------------------------------------------------- import


def import_release(
    release_dir: str | os.PathLike,
    store_path: str | os.PathLike,
    dataset: str,
    data_dir: str | os.PathLike | None = None,
) -> dict:
    """Import one experiment's directory into the store at ``store_path`` (created when absent;
    an existing store made by this importer grows by the runs it does not hold yet).

    ``dataset``: the dataset the release was trained on (labels, sizes and fingerprint come from
    it, loaded from ``data_dir`` or ``$MANYRUNS_DATA``). Every file is checked before anything
    is written. Returns a summary: store, dataset, runs_added, runs, ratios, skipped.
    """
    release = Path(release_dir)
    found = scan_release(release)
    root = resolve_data_root(data_dir)
    data: Dataset = load_dataset(dataset, root)
    path = open_location(store_path)
    existing = store_mod.open_imported(path, FORMAT, "held-out release")
    known: set[str] = set()
    if existing is not None:
        check_fingerprint(existing.fingerprint, data, str(path))
        known = set(existing.meta["runs"].get("release_run", []))

    release_key = str(release.resolve())
    todo = [r for r in found if f"{release_key}::{r.key}" not in known]
    skipped = len(found) - len(todo)
    for run in todo:  # validate everything before writing anything
        check_subset_ratio(run, read_run(run.path, data.n_train, data.n_test).mask)
    if not todo:
        return {"store": str(path), "dataset": data.name, "runs_added": 0, "runs": existing.num_runs if existing else 0, "skipped": skipped}

    if existing is None:
        arrays = {
            "mask/train": ((data.n_train,), "bool", False),
            "labels/train": ((data.n_train,), "int16", -1),
            "correct/train": ((data.n_train,), "bool", False),
            "correct/test": ((data.n_test,), "bool", False),
        }
        spec = store_mod.ImportSpec(
            data.name, data.fingerprint(), (data.y_train, data.y_test), data.num_classes, data.input_shape, arrays, {"format": FORMAT, "directories": []}
        )
        store = store_mod.create_imported(path, spec)
    else:
        store = existing
    first = store.num_runs
    store_mod.append_runs(store, {"subset": [run.ratio for run in todo], "release_run": [f"{release_key}::{run.key}" for run in todo]})
    source = dict(store.meta.get("source") or {"format": FORMAT})
    source["directories"] = sorted(set(source.get("directories", [])) | {release_key})
    store.record_source(source, str(root.resolve()) if root is not None else None)
    columns = store.meta["runs"]
    ratios = sorted(set(columns["subset"]))

    labels = np.asarray(data.y_train, dtype=np.int16)[None]
    for offset, run in enumerate(todo):
        arrays = read_run(run.path, data.n_train, data.n_test)
        rows = {
            "mask/train": arrays.mask[None],
            "labels/train": labels,
            "correct/train": arrays.correct_train[None],
            "correct/test": arrays.correct_test[None],
            "summary": _summary(arrays)[None],
        }
        store.write_runs(first + offset, rows, np.array([store_mod.STATUS_CODES["ok"]]))
    return {
        "store": str(path),
        "dataset": data.name,
        "runs_added": len(todo),
        "runs": first + len(todo),
        "ratios": {f"{q:g}": int(sum(1 for s in columns["subset"] if s == q)) for q in ratios},
        "skipped": skipped,
    }


def _summary(arrays: RunArrays) -> np.ndarray:
    out = np.full(len(SUMMARY_COLUMNS), np.nan, dtype=np.float32)
    col = {name: j for j, name in enumerate(SUMMARY_COLUMNS)}
    m = arrays.mask
    if m.any():
        out[col["train_acc"]] = arrays.correct_train[m].mean()
    if (~m).any():
        out[col["heldout_acc"]] = arrays.correct_train[~m].mean()
    out[col["test_acc"]] = arrays.correct_test.mean() if arrays.correct_test.size else np.nan
    return out


# ------------------------------------------------------------------------------- export


def export_release(pop: Population, out_dir: str | os.PathLike, runs="ok", block_size: int = 64, overwrite: bool = False) -> dict:
    """Write ``runs`` of ``pop`` as ``out_dir/<subset_ratio>/<run>/aux_arrays.npz``.

    Correctness is read from ``correct/*`` or derived from the logits (argmax equal to the
    label each run trained with; the dataset's label on the test set). Runs keep their names
    from an imported release; otherwise run ``r`` is named ``r``. Returns a summary: out_dir,
    runs, ratios.
    """
    out = Path(out_dir)
    source = HeldoutSource(pop, "correct", runs)
    ratios = source.subset_ratios()
    names = _run_names(pop, source.runs)
    targets = [out / f"{q:g}" / name / FILE_NAME for q, name in zip(ratios, names)]
    if not overwrite:
        clash = [t for t in targets if t.exists()]
        if clash:
            raise StoreError(f"{clash[0]} exists; export into an empty directory (or pass overwrite)")
    position = {int(r): k for k, r in enumerate(source.runs)}
    T = source.n_test
    for block in source.blocks(block_size, train=True, test=True):
        for b, r in enumerate(block.runs):
            target = targets[position[int(r)]]
            mask = block.mask[b]
            index_train = np.flatnonzero(mask)
            index_removed = np.flatnonzero(~mask)
            index_test = np.arange(T)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp.npz")
            np.savez(
                tmp,
                correctness_train=block.train[b][index_train],
                correctness_removed=block.train[b][index_removed],
                correctness_test=block.test[b][index_test],
                index_train=index_train,
                index_removed=index_removed,
                index_test=index_test,
                subsample_idx=index_train,
            )
            tmp.replace(target)
    counts: dict[str, int] = {}
    for q in ratios:
        counts[f"{q:g}"] = counts.get(f"{q:g}", 0) + 1
    return {"out_dir": str(out), "runs": source.runs.tolist(), "run_count": int(source.runs.size), "ratios": counts}


def _run_names(pop: Population, runs: np.ndarray) -> list[str]:
    imported = pop.store.meta["runs"].get("release_run")
    if imported is not None:
        names = [imported[int(r)].rsplit("/", 1)[-1] for r in runs]
        if len(set(zip(names, pop.runs["subset"].to_numpy()[runs]))) == len(names):
            return names
    return [str(int(r)) for r in runs]
