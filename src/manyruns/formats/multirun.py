"""Multirun logits: the published ``log.pt`` files of many training runs of one script.

Each file is a torch-saved dict::

    logits        (R, T, C) float16   final logits of each run on the T test examples
    logits_train  (R, N, C) float16   the same on the N training examples
    logits_tta    (R, T, C)           optional: test logits with test-time augmentation
    accs          (R,)                optional: each run's test accuracy as the script measured it
    code          str                 optional: the training script

The labels are not in the files: they come from the dataset named on import (its own order).
Importing validates every file against that dataset first (shapes, class count, example
counts, and that finite logits of other dtypes fit the store's float16) and appends nothing
unless all files pass; NaN or infinite logits are kept and mark their run diverged. Runs
append to the store in file order; the training scripts are kept (once per distinct text) in
the store's ``source`` attribute.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import store as store_mod
from ..data import Dataset, check_fingerprint, load_dataset, resolve_data_root
from ..errors import InputError
from ..storage import open_location
from ..population import Population
from ..store import SUMMARY_COLUMNS, Store, StoreError

FORMAT = "multirun-logits"
REQUIRED = ("logits", "logits_train")
STORED_DTYPE = torch.float16
CHECK_ELEMENTS = 1 << 24


class MultirunFormatError(InputError):
    """A file that is not a valid multirun-logits log for the dataset."""


@dataclass
class MultirunLog:
    """One validated file: its tensors stay memory-mapped until the runs are written."""

    path: Path
    runs: int
    logits: torch.Tensor  # (R, T, C)
    logits_train: torch.Tensor  # (R, N, C)
    logits_tta: torch.Tensor | None
    accs: np.ndarray | None  # (R,)
    code: str | None
    size: int


def _load(path: Path) -> dict:
    if not path.is_file():
        raise MultirunFormatError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise MultirunFormatError(f"{path}: cannot be read as a torch-saved dict of tensors ({str(exc).splitlines()[0]})") from None
        obj = None  # a legacy (non-zip) file: read it without memory-mapping below
    except Exception as exc:  # unpickling errors of files that are not torch saves
        raise MultirunFormatError(f"{path}: cannot be read as a torch-saved dict of tensors ({str(exc).splitlines()[0]})") from None
    if obj is None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MultirunFormatError(f"{path}: cannot be read as a torch-saved dict of tensors ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise MultirunFormatError(f"{path}: expected a dict with keys {', '.join(REQUIRED)}, found a {type(obj).__name__}")
    return obj


def _tensor(obj: dict, key: str, path: Path) -> torch.Tensor:
    value = obj[key]
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise MultirunFormatError(f"{path}: '{key}' must be a tensor, found a {type(value).__name__}")
    return value


def _check_stored_range(path: Path, key: str, value: torch.Tensor) -> None:
    """Refuse finite values that become infinite in the store's float16 (NaN and infinities in
    the file are kept: they mark a diverged run)."""
    if value.dtype == STORED_DTYPE or value.numel() == 0:
        return
    step = max(1, CHECK_ELEMENTS // max(1, math.prod(value.shape[1:])))
    largest = 0.0
    for i in range(0, value.shape[0], step):
        block = value[i : i + step]
        largest = max(largest, float(block.abs().masked_fill_(~torch.isfinite(block), 0).max()))
    if torch.tensor([largest], dtype=torch.float64).to(value.dtype).to(STORED_DTYPE).isinf().item():
        limit = float(torch.finfo(STORED_DTYPE).max)
        raise MultirunFormatError(
            f"{path}: '{key}' ({value.dtype}) holds finite values up to |x| = {largest:g}, which overflow the float16 "
            f"the store keeps logits in (largest finite value {limit:g}); rescale or clip them before importing"
        )


def read_log(path: str | os.PathLike, n_train: int, n_test: int, num_classes: int) -> MultirunLog:
    """Open ``path`` and check it against a dataset of ``n_train`` train and ``n_test`` test
    examples in ``num_classes`` classes; raises :class:`MultirunFormatError` naming the file,
    the key and the shapes."""
    path = Path(path)
    obj = _load(path)
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise MultirunFormatError(f"{path}: missing {', '.join(repr(k) for k in missing)} (keys found: {', '.join(map(str, obj)) or 'none'})")
    test = _tensor(obj, "logits", path)
    train = _tensor(obj, "logits_train", path)
    expected = {"logits": (n_test, num_classes), "logits_train": (n_train, num_classes)}
    for key, value in (("logits", test), ("logits_train", train)):
        if value.ndim != 3 or tuple(value.shape[1:]) != expected[key]:
            raise MultirunFormatError(
                f"{path}: '{key}' has shape {tuple(value.shape)}, expected (runs, {expected[key][0]}, {expected[key][1]}) "
                f"for this dataset ({n_train} train and {n_test} test examples, {num_classes} classes)"
            )
        if not value.is_floating_point():
            raise MultirunFormatError(f"{path}: '{key}' must hold floating-point logits, found {value.dtype}")
    R = int(test.shape[0])
    if R < 1 or train.shape[0] != R:
        raise MultirunFormatError(f"{path}: 'logits' has {R} runs but 'logits_train' has {train.shape[0]}; both need the same number (at least 1)")
    tta = None
    if obj.get("logits_tta") is not None:
        tta = _tensor(obj, "logits_tta", path)
        if tuple(tta.shape) != (R, n_test, num_classes) or not tta.is_floating_point():
            raise MultirunFormatError(f"{path}: 'logits_tta' has shape {tuple(tta.shape)} ({tta.dtype}), expected ({R}, {n_test}, {num_classes}) floating point")
    accs = None
    if obj.get("accs") is not None:
        raw = obj["accs"]
        accs = np.asarray(raw.float().numpy() if isinstance(raw, torch.Tensor) else raw, dtype=np.float64).reshape(-1)
        if accs.shape != (R,):
            raise MultirunFormatError(f"{path}: 'accs' has {accs.size} values, expected one per run ({R})")
    for key, value in (("logits", test), ("logits_train", train), ("logits_tta", tta)):
        if value is not None:
            _check_stored_range(path, key, value)
    code = obj.get("code")
    if isinstance(code, bytes):
        code = code.decode("utf-8", errors="replace")
    if code is not None and not isinstance(code, str):
        raise MultirunFormatError(f"{path}: 'code' must be a string, found a {type(code).__name__}")
    return MultirunLog(path, R, test, train, tta, accs, code, path.stat().st_size)


def _run_summaries(test: np.ndarray, train: np.ndarray, y_test: np.ndarray, y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(b, 6)`` summaries (SUMMARY_COLUMNS) and ``(b,)`` status codes of a block of runs."""
    out = np.full((test.shape[0], len(SUMMARY_COLUMNS)), np.nan, dtype=np.float32)
    col = {name: j for j, name in enumerate(SUMMARY_COLUMNS)}
    for split, logits, labels in (("test", test, y_test), ("train", train, y_train)):
        x = torch.from_numpy(logits).float()  # (b, N, C)
        lsm = x.log_softmax(-1)
        target = torch.from_numpy(labels).long()
        nll = -lsm.gather(2, target.view(1, -1, 1).expand(x.shape[0], -1, 1)).squeeze(2)
        out[:, col[f"{split}_acc"]] = (x.argmax(-1) == target).float().mean(1).numpy()
        out[:, col[f"{split}_loss"]] = nll.mean(1).numpy()
    finite = np.isfinite(test).all(axis=(1, 2)) & np.isfinite(train).all(axis=(1, 2))
    status = np.where(finite, store_mod.STATUS_CODES["ok"], store_mod.STATUS_CODES["diverged"]).astype(np.int8)
    return out, status


def _code_id(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def import_multirun_logits(
    files: list[str | os.PathLike],
    store_path: str | os.PathLike,
    dataset: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    block_runs: int = 64,
) -> dict:
    """Append the runs of ``files`` to the store at ``store_path`` (created when absent).

    ``dataset``: the dataset the logits are over (labels, sizes and fingerprint come from it,
    loaded from ``data_dir`` or ``$MANYRUNS_DATA``). Every file is validated before anything is
    written. Returns a summary: store, dataset, files, runs_added, runs, mean_test_acc.
    """
    if not files:
        raise InputError("give at least one log file")
    root = resolve_data_root(data_dir)
    data: Dataset = load_dataset(dataset, root)
    path = open_location(store_path)
    existing = store_mod.open_imported(path, FORMAT, "multirun logits")
    known = []
    if existing is not None:
        check_fingerprint(existing.fingerprint, data, str(path))
        known = [(f["path"], f["bytes"]) for f in (existing.meta["source"].get("files") or [])]

    logs: list[MultirunLog] = []
    for f in files:
        log = read_log(f, data.n_train, data.n_test, data.num_classes)
        key = (str(log.path.resolve()), log.size)
        if key in known or key in [(str(x.path.resolve()), x.size) for x in logs]:
            raise MultirunFormatError(f"{log.path}: this file is already imported into {path}" if key in known else f"{log.path}: given twice")
        logs.append(log)

    added = sum(log.runs for log in logs)
    has_tta = existing.has("logits/test_tta") if existing is not None else any(log.logits_tta is not None for log in logs)
    if existing is None:
        arrays = {
            "logits/test": ((data.n_test, data.num_classes), "float16", np.nan),
            "logits/train": ((data.n_train, data.num_classes), "float16", np.nan),
            "accs": ((), "float32", np.nan),
        }
        if has_tta:
            arrays["logits/test_tta"] = ((data.n_test, data.num_classes), "float16", np.nan)
        spec = store_mod.ImportSpec(
            data.name, data.fingerprint(), (data.y_train, data.y_test), data.num_classes, data.input_shape, arrays, {"format": FORMAT, "files": [], "code": {}}
        )
        store = store_mod.create_imported(path, spec)
    else:
        store = existing
    first = store.num_runs
    store_mod.append_runs(store, {"seed": [0] * added})

    source = dict(store.meta["source"])
    source = {"format": FORMAT, "files": list(source.get("files", [])), "code": dict(source.get("code", {}))}
    ignored_tta = []
    start = first
    for log in logs:
        stop = start + log.runs
        _write_log(store, log, start, data, block_runs, has_tta)
        code_id = None
        if log.code is not None:
            code_id = _code_id(log.code)
            source["code"].setdefault(code_id, log.code)
        if log.logits_tta is not None and not has_tta:
            ignored_tta.append(str(log.path))
        source["files"].append({"path": str(log.path.resolve()), "bytes": log.size, "runs": [start, stop], "code": code_id, "tta": log.logits_tta is not None and has_tta})
        start = stop
    # where `pairs` finds the images later
    store.record_source(source, str(root.resolve()) if root is not None else None)

    pop = Population(Store.open(path))
    acc = pop.store.summary()[first:, SUMMARY_COLUMNS.index("test_acc")]
    return {
        "store": str(path),
        "dataset": data.name,
        "files": len(logs),
        "runs_added": added,
        "runs": pop.num_runs,
        "mean_test_acc": float(np.nanmean(acc)) if acc.size else None,
        "ignored_tta": ignored_tta,
    }


def _write_log(store: Store, log: MultirunLog, start: int, data: Dataset, block_runs: int, has_tta: bool) -> None:
    """Write the runs of ``log`` to runs ``start..`` block by block; commit markers last."""
    for i in range(0, log.runs, block_runs):
        j = min(log.runs, i + block_runs)
        test = log.logits[i:j].to(torch.float16).numpy()
        train = log.logits_train[i:j].to(torch.float16).numpy()
        summary, status = _run_summaries(test, train, data.y_test, data.y_train)
        rows = {"logits/test": test, "logits/train": train, "summary": summary}
        if has_tta and log.logits_tta is not None:
            rows["logits/test_tta"] = log.logits_tta[i:j].to(torch.float16).numpy()
        if log.accs is not None:
            rows["accs"] = log.accs[i:j].astype(np.float32)
        store.write_runs(start + i, rows, status)


def training_scripts(pop: Population) -> dict[str, str]:
    """The training script of each imported file: ``{file path: code}`` (files without one omitted)."""
    source = pop.store.meta.get("source") or {}
    if source.get("format") != FORMAT:
        raise StoreError(f"{pop.path} holds no imported multirun logits")
    return {f["path"]: source["code"][f["code"]] for f in source.get("files", []) if f.get("code")}
