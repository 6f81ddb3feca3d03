"""The audit side by side with cleanlab on planted label noise, duplicates and leaks (docs/audit.md).

For each dataset, noise setting and seed:

1. **Data.** The dataset with planted copies: ``--dups`` training images replaced by perturbed
   copies of other training images (a 1-2 pixel shift, Gaussian noise of std 8, or brightness
   x0.8), and ``--leaks`` test images replaced by perturbed copies of training images, each copy
   with its source's label. Written as IDX files under ``--work`` (the stores record their
   fingerprint).
2. **Noise** on the training labels only, through the recipe: ``sym-P`` replaces a fraction P by
   another class (uniform over the others); ``cc-P`` draws from a class-conditional noise
   matrix of trace C(1 - P) (cleanlab's generator, valid matrices, seeded).
3. **Arm C**: the same recipe as 5-fold cross-validation (``population.folds = 5``, penultimate
   features of every fold model kept): cleanlab's ``find_label_issues`` and ``Datalab`` (label,
   near-duplicate and outlier checks) on the cross-validated probabilities and the held-out
   fold model's features. **Arm M**: ``manyruns.audit`` on a population of random halves,
   with the first 8 runs (equal training compute: 8 x 0.5 = 5 x 0.8 examples per epoch) and
   more (``--runs``), and on the folds population itself (its first 5 runs are arm C's
   training; ``--fold-runs`` beyond 5 repeat the cross-validation on fresh partitions); each
   with its AP from held-out runs alone beside the audit's pooled ranking, and cleanlab's
   filter fed with the population's held-out probabilities.
4. **Metrics** per arm: AUROC and average precision of the label-quality scores against the
   planted errors, precision / recall / F1 of the flagged set, estimated against true noise
   rate, training and audit wall time; recall of the planted duplicate pairs and of the
   planted leaks, and how many pairs each method flags.

Writes ``results.json`` (every setting and seed) and ``summary.md`` (means and standard
deviations over seeds) into ``--out``.

    python experiments/audit/run_audit_vs_cleanlab.py --dataset mnist --noise sym-0.05,sym-0.2,cc-0.2 --seeds 0,1,2 [--runs 8,50,200]
    python experiments/audit/run_audit_vs_cleanlab.py --rescore ...   # arm M again on the stores (audit changed), cleanlab's arms kept
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import time
import warnings
from pathlib import Path

import numpy as np

import manyruns
from manyruns.analysis.audit import audit, out_of_sample
from manyruns.data import load_dataset

REPO = Path(__file__).resolve().parents[2]
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------------ data


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + array.tobytes())


def perturb(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A perturbed copy of one ``(H, W)`` uint8 image."""
    x = image.astype(np.float32)
    if kind == "shift":
        dy, dx = rng.choice([-2, -1, 1, 2], size=2)
        x = np.roll(x, (int(dy), int(dx)), axis=(0, 1))
    elif kind == "noise":
        x = x + rng.normal(0, 8, x.shape)
    else:  # brightness
        x = x * 0.8
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def planted_dataset(name: str, data_dir: str, work: Path, seed: int, dups: int, leaks: int) -> tuple[Path, dict]:
    """Write ``name`` with planted copies under ``work``; returns the data root and the plants."""
    root = work / f"data-{name}-s{seed}"
    info_path = root / "plants.json"
    if info_path.is_file():
        return root, json.loads(info_path.read_text())
    ds = load_dataset(name, data_dir)
    rng = np.random.default_rng(1000 + seed)
    xtr, ytr = ds.x_train[:, 0].copy(), ds.y_train.copy()
    xte, yte = ds.x_test[:, 0].copy(), ds.y_test.copy()
    N, T = len(ytr), len(yte)
    picks = rng.choice(N, size=2 * dups + leaks, replace=False)
    sources, copies, leak_sources = picks[:dups], picks[dups : 2 * dups], picks[2 * dups :]
    kinds = ("shift", "noise", "brightness")
    train_pairs = []
    for i, (s, c) in enumerate(zip(sources, copies)):
        kind = kinds[i % 3]
        xtr[c], ytr[c] = perturb(xtr[s], kind, rng), ytr[s]
        train_pairs.append([int(c), int(s), kind])
    test_rows = rng.choice(T, size=leaks, replace=False)
    leak_pairs = []
    for i, (t, s) in enumerate(zip(test_rows, leak_sources)):
        kind = kinds[i % 3]
        xte[t], yte[t] = perturb(xtr[s], kind, rng), ytr[s]
        leak_pairs.append([int(t), int(s), kind])
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, array in zip(IDX, (xtr, ytr, xte, yte)):
        write_idx(folder / file, array)
    info = {"train_pairs": train_pairs, "leaks": leak_pairs}
    info_path.write_text(json.dumps(info))
    return root, info


# ----------------------------------------------------------------------------------- noise


def noise_block(setting: str, num_classes: int, prior: np.ndarray, seed: int) -> tuple[str, float]:
    kind, p = setting.split("-")
    p = float(p)
    if kind == "sym":
        return f"\n[population.label_noise]\np = {p}\nscope = \"dataset\"\nexclude_true = true\n", p
    from cleanlab.benchmarking.noise_generation import generate_noise_matrix_from_trace

    # cleanlab's matrix is P(noisy label = row | true label = column); the recipe's rows are true classes
    m = generate_noise_matrix_from_trace(num_classes, num_classes * (1 - p), py=prior, valid_noise_matrix=True, seed=seed)
    rows = np.asarray(m).T
    rows = rows / rows.sum(1, keepdims=True)
    text = ", ".join("[" + ", ".join(f"{x:.10f}" for x in row) + "]" for row in rows)
    return f"\n[population.label_noise]\np = 1.0\nscope = \"dataset\"\nmatrix = [{text}]\n", p


def recipe_text(dataset: str, noise: str, seed: int, folds: bool, runs: int) -> str:
    text = (REPO / "examples" / "audit-mnist.toml").read_text()
    text = text.replace('dataset = "mnist"', f'dataset = "{dataset}"').replace("seed = 0", f"seed = {seed}")
    if folds:  # features of the first 5 runs (one cross-validation) for Datalab's checks
        text = text.replace("subset = 0.5", "folds = 5").replace("metrics = true", "metrics = true\nfeatures = 5")
    return text.replace("runs = 200", f"runs = {runs}") + noise


def trained(recipe: str, store: Path, data_root: Path, workers: int) -> tuple[manyruns.Population, float]:
    """The store trained to the end (resumed, or grown to the recipe's runs, if it exists), and
    its training time: the runs' seconds over the workers."""
    path = store.parent / (store.name + ".toml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe)
    manyruns.plan(path, store, data_root)  # creates, grows to more runs, or changes nothing
    manyruns.train(store, workers=workers, data_dir=data_root, progress=False)
    pop = manyruns.open(store)
    return pop, float(pop.runs.seconds.sum() / workers)  # wall time with the workers busy


# --------------------------------------------------------------------------------- metrics


def score_metrics(truth: np.ndarray, doubt: np.ndarray, flagged: np.ndarray, estimated: float | None) -> dict:
    """AUROC and AP of ``doubt`` (higher = more likely an error), P/R/F1 of ``flagged``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ok = np.isfinite(doubt)
    tp = int((flagged & truth).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    return {
        "auroc": float(roc_auc_score(truth[ok], doubt[ok])),
        "ap": float(average_precision_score(truth[ok], doubt[ok])),
        "flagged": int(flagged.sum()),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "noise_estimated": estimated,
        "noise_true": float(truth.mean()),
    }


def pair_recall(planted: list, found: set[tuple[int, int]]) -> float:
    return float(np.mean([(min(a, b), max(a, b)) in found for a, b, _ in planted])) if planted else float("nan")


def kind_recall(planted: list, found) -> dict:
    """Recall of the planted copies per perturbation kind; ``found(a, b)`` says whether a pair was flagged."""
    kinds = sorted({k for _, _, k in planted})
    return {k: float(np.mean([found(a, b) for a, b, kk in planted if kk == k])) for k in kinds}


def cleanlab_filter(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
    from cleanlab.filter import find_label_issues

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flags = find_label_issues(labels, probs, n_jobs=1)
    return flags, time.perf_counter() - t0


def oos_features(pop: manyruns.Population) -> np.ndarray:
    """``(N, F)``: each training example's features from the fold model that held it out."""
    feats = pop.load("features/train", np.arange(5)).astype(np.float32)  # (5, N, F)
    mask = pop.load("mask/train", np.arange(5)).astype(bool)
    out = np.empty(feats.shape[1:], dtype=np.float32)
    for r in range(5):
        out[~mask[r]] = feats[r][~mask[r]]
    return out


def datalab_arm(labels: np.ndarray, probs: np.ndarray, feats: np.ndarray, test_feats: np.ndarray, neighbours: bool) -> dict:
    """Datalab's label check; with ``neighbours`` also its near-duplicate and outlier checks on
    the features, and its near-duplicate check over train and test features together (leaks)."""
    from cleanlab import Datalab

    t0 = time.perf_counter()
    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    checks = {"label": {}, "near_duplicate": {}, "outlier": {}} if neighbours else {"label": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab.find_issues(pred_probs=probs, features=feats if neighbours else None, issue_types=checks)
    seconds = time.perf_counter() - t0
    label = lab.get_issues("label")
    if not neighbours:
        return {"seconds": seconds, "label_flags": label.is_label_issue.to_numpy(), "label_score": label.label_score.to_numpy()}
    dup = lab.get_issues("near_duplicate")
    pairs = {(min(i, int(j)), max(i, int(j))) for i, sets in enumerate(dup.near_duplicate_sets) for j in sets}
    # leaks: the same near-duplicate check over train and test features together
    N = len(labels)
    t1 = time.perf_counter()
    both = Datalab(data={"label": np.concatenate([labels, np.zeros(len(test_feats), dtype=labels.dtype)])}, label_name="label", verbosity=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both.find_issues(features=np.concatenate([feats, test_feats]), issue_types={"near_duplicate": {}})
    cross = both.get_issues("near_duplicate").near_duplicate_sets
    leak_pairs = {(t - N, int(j)) for t in range(N, N + len(test_feats)) for j in cross[t] if int(j) < N}
    return {
        "seconds": seconds,
        "seconds_leaks": time.perf_counter() - t1,
        "label_flags": label.is_label_issue.to_numpy(),
        "label_score": label.label_score.to_numpy(),
        "pairs": pairs,
        "leak_pairs": leak_pairs,
    }


# ------------------------------------------------------------------------------------ main


def stores(args, dataset: str, noise: str, seed: int) -> tuple:
    """The planted dataset's root and plants, the rate of planted noise, the tag, and the two
    populations trained (resumed, grown to the run counts asked for): the folds (5 runs are one
    cross-validation; more repeat it on fresh partitions) and the halves."""
    root, plants = planted_dataset(dataset, args.data_dir, args.work, seed, args.dups, args.leaks)
    ds = load_dataset(dataset, root)
    prior = np.bincount(ds.y_train, minlength=ds.num_classes) / ds.n_train
    block, rate = noise_block(noise, ds.num_classes, prior, seed)
    tag = f"{dataset}-{noise}-s{seed}"
    cv, _ = trained(recipe_text(dataset, block, seed, True, max(5, *args.fold_runs)), args.work / f"{tag}-cv", root, args.workers)
    pop, _ = trained(recipe_text(dataset, block, seed, False, max(args.runs)), args.work / f"{tag}-pop", root, args.workers)
    return ds, plants, rate, tag, cv, pop


def truth_of(cv: manyruns.Population, ds) -> tuple:
    """The cross-validated held-out probabilities (the first 5 runs), the given labels and
    which of them are planted errors."""
    oos = out_of_sample(cv, np.arange(5))
    return oos, oos.labels, oos.labels != ds.y_train


def audit_arm(store: manyruns.Population, n: int, truth: np.ndarray, plants: dict, workers: int) -> dict:
    """``manyruns.audit`` on the first ``n`` runs of a store: its label scores (pooled, and from
    the held-out runs alone), flags, planted copies found, and cleanlab's filter on its held-out
    probabilities."""
    t0 = time.perf_counter()
    result = audit(store, runs=n)
    seconds = time.perf_counter() - t0
    s = result.summary()
    noisy, scored = result.labels, result.scored
    quality = np.where(scored, result.self_confidence, np.nan)
    held_out = np.where(scored, result.probs[np.arange(noisy.size), noisy], np.nan)
    held = score_metrics(truth, 1 - held_out, result.is_label_issue, None)
    pairs = {(int(a), int(b)) for a, b in result.near_duplicate_pairs()[["a", "b"]].itertuples(index=False)}
    leaks = result.is_leak
    entry = {
        **score_metrics(truth, 1 - quality, result.is_label_issue, s["noise_rate"]),
        "auroc_normalized_margin": score_metrics(truth, 1 - np.where(scored, result.normalized_margin, np.nan), result.is_label_issue, None)["auroc"],
        "ap_held_out": held["ap"],
        "auroc_held_out": held["auroc"],
        "in_sample_weight": s["in_sample_weight"],
        "memorized": s["memorized"],
        "scored": s["scored"],
        "seconds_audit": seconds,
        "training_seconds": float(store.runs.seconds.to_numpy()[result.runs].sum() / workers),
        "duplicate_recall": pair_recall(plants["train_pairs"], pairs),
        "duplicate_pairs_flagged": len(pairs),
        "duplicate_recall_by_kind": kind_recall(plants["train_pairs"], lambda a, b: (min(a, b), max(a, b)) in pairs),
        "leak_recall": float(np.mean([leaks[t] and result.test_nearest_train[t] == s_ for t, s_, _ in plants["leaks"]])),
        "leak_recall_by_kind": kind_recall(plants["leaks"], lambda t, s_: bool(leaks[t] and result.test_nearest_train[t] == s_)),
        "leaks_flagged": int(leaks.sum()),
    }
    cl_flags = np.zeros(len(noisy), dtype=bool)
    cl_flags[scored], _ = cleanlab_filter(noisy[scored], result.probs[scored].astype(np.float64))
    entry["cleanlab_filter_on_population"] = score_metrics(truth, 1 - held_out, cl_flags, None)
    return entry


def population_arms(args, out: dict, pop, cv, truth: np.ndarray, plants: dict, tag: str) -> None:
    """Arm M on the halves (``--runs``) and on the folds (``--fold-runs``: the audit of the very
    population cleanlab's arm trained, and of repeated cross-validation)."""
    for key, store, counts in (("manyruns", pop, args.runs), ("manyruns_folds", cv, args.fold_runs)):
        out[key] = {}
        for n in counts:
            entry = out[key][str(n)] = audit_arm(store, n, truth, plants, args.workers)
            print(f"  {tag} {key} n={n}: AP {entry['ap']:.4f} (held-out only {entry['ap_held_out']:.4f}, cleanlab CV {out['cleanlab_cv']['ap']:.4f}), "
                  f"F1 {entry['f1']:.3f} (CV {out['cleanlab_cv']['f1']:.3f}), audit {entry['seconds_audit']:.1f} s", flush=True)


def one_setting(args, dataset: str, noise: str, seed: int, done: list[dict]) -> dict:
    ds, plants, rate, tag, cv, pop = stores(args, dataset, noise, seed)
    cv_seconds = float(cv.runs.seconds.to_numpy()[:5].sum() / args.workers)
    out: dict = {"dataset": dataset, "noise": noise, "seed": seed, "planted_rate": rate, "training_seconds": {"cv_5_folds": cv_seconds}}

    # arm C: cleanlab on 5-fold cross-validated probabilities and features
    oos, noisy, truth = truth_of(cv, ds)
    out["true_noise_rate"] = float(truth.mean())
    flags, t_filter = cleanlab_filter(noisy, oos.probs.astype(np.float64))
    sc = oos.probs[np.arange(len(noisy)), noisy]
    out["cleanlab_cv"] = {**score_metrics(truth, 1 - sc, flags, None), "seconds_filter": t_filter}
    feats = oos_features(cv)
    test_feats = cv.load("features/test", np.arange(1)).astype(np.float32)[0]
    # the planted copies do not depend on the noise: Datalab's neighbour checks (about 100 s each
    # on 60,000 examples) run for the first noise setting of each dataset and seed
    neighbours = not any(r["dataset"] == dataset and r["seed"] == seed and "duplicate_recall" in r["datalab_cv"] for r in done)
    lab = datalab_arm(noisy, oos.probs.astype(np.float64), feats, test_feats, neighbours)
    out["datalab_cv"] = {**score_metrics(truth, 1 - lab["label_score"], lab["label_flags"], None), "seconds": lab["seconds"]}
    if neighbours:
        out["datalab_cv"].update({
            "seconds_leaks": lab["seconds_leaks"],
            "duplicate_recall": pair_recall(plants["train_pairs"], lab["pairs"]),
            "duplicate_recall_by_kind": kind_recall(plants["train_pairs"], lambda a, b: (min(a, b), max(a, b)) in lab["pairs"]),
            "duplicate_pairs_flagged": len(lab["pairs"]),
            "leak_recall": float(np.mean([(t, s) in lab["leak_pairs"] for t, s, _ in plants["leaks"]])),
            "leak_recall_by_kind": kind_recall(plants["leaks"], lambda t, s: (t, s) in lab["leak_pairs"]),
            "leak_pairs_flagged": len(lab["leak_pairs"]),
        })

    # arm M: the audit on the first n runs of the population of halves and of the folds
    population_arms(args, out, pop, cv, truth, plants, tag)
    return out


def rescore(args, entry: dict) -> None:
    """Arm M of a setting redone on its stores (grown to the run counts asked for)."""
    ds, plants, _, tag, cv, pop = stores(args, entry["dataset"], entry["noise"], entry["seed"])
    _, _, truth = truth_of(cv, ds)
    population_arms(args, entry, pop, cv, truth, plants, tag)


def _ms(entries: list[dict], key: str) -> str:
    v = np.array([e[key] for e in entries if e.get(key) is not None], dtype=float)
    return "n/a" if v.size == 0 else f"{v.mean():.3f} ± {v.std(ddof=1) if v.size > 1 else 0:.3f}"


ARMS = (("manyruns_folds", "folds"), ("manyruns", "halves"))  # arm M's populations, as results.json keys them


def arm_columns(results: list[dict]) -> list[tuple[str, str, str]]:
    """``(key, run count, title)`` of every arm M entry in the results: folds first, then halves."""
    return [(key, n, f"{n} runs on {what}") for key, what in ARMS for n in sorted({n for r in results for n in r.get(key, {})}, key=int)]


def compact(results: list[dict]) -> str:
    """Two short tables: AP (pooled and held-out only) and F1 of each arm per setting; recall of
    the planted copies."""
    columns = arm_columns(results)
    head = ["setting", "seeds", "cleanlab 5-fold CV"] + [f"audit, {title}" for _, _, title in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for dataset, noise in sorted({(r["dataset"], r["noise"]) for r in results}):
        group = [r for r in results if (r["dataset"], r["noise"]) == (dataset, noise)]

        def cell(entries):
            if not entries:
                return "n/a"
            ap = np.array([e["ap"] for e in entries])
            f1 = np.array([e["f1"] for e in entries])
            sd = lambda v: f" ± {v.std(ddof=1):.4f}" if v.size > 1 else ""  # noqa: E731
            held = [e["ap_held_out"] for e in entries if "ap_held_out" in e]
            held = f" (held-out only {np.mean(held):.4f})" if held else ""
            return f"AP {ap.mean():.4f}{sd(ap)}{held}, F1 {f1.mean():.3f}" + ("" if len(entries) == len(group) else f" ({len(entries)} seed)")

        row = [f"{dataset} {noise}", str(len(group)), cell([r["cleanlab_cv"] for r in group])]
        row += [cell([r[key][n] for r in group if n in r.get(key, {})]) for key, n, _ in columns]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| dataset | method | settings | train pairs found (shift / noise / brightness) | pairs flagged | leaks found (shift / noise / brightness) | leaks flagged |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for dataset in sorted({r["dataset"] for r in results}):
        group = [r for r in results if r["dataset"] == dataset]
        methods = [("Datalab, CV features", [r["datalab_cv"] for r in group], "leak_pairs_flagged")]
        methods += [(f"audit kernel, {title}", [r[key][n] for r in group if n in r.get(key, {})], "leaks_flagged") for key, n, title in arm_columns(group)]
        for name, entries, flagged in methods:
            entries = [e for e in entries if "duplicate_recall" in e]
            if not entries:
                continue
            kinds = lambda key: " / ".join(f"{np.mean([e[key][k] for e in entries]):.2f}" for k in ("shift", "noise", "brightness"))  # noqa: E731
            lines.append(f"| {dataset} | {name} | {len(entries)} | {np.mean([e['duplicate_recall'] for e in entries]):.2f} ({kinds('duplicate_recall_by_kind')}) | "
                         f"{np.mean([e['duplicate_pairs_flagged'] for e in entries]):.0f} | {np.mean([e['leak_recall'] for e in entries]):.2f} ({kinds('leak_recall_by_kind')}) | {np.mean([e[flagged] for e in entries]):.0f} |")
    return "\n".join(lines) + "\n"


def summarize(results: list[dict]) -> str:
    """Means ± standard deviations over seeds: the compact tables, one label table per dataset
    and noise setting, then one table of planted duplicates and leaks per dataset."""
    lines = [compact(results), ""]
    for dataset, noise in sorted({(r["dataset"], r["noise"]) for r in results}):
        group = [r for r in results if (r["dataset"], r["noise"]) == (dataset, noise)]
        lines += [f"### {dataset}, {noise}", "", "| arm | seeds | AUROC | AP | precision | recall | F1 | noise est. (true) | training s | audit s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

        def row(name, entries, train, audit):
            lines.append(f"| {name} | {len(entries)} | {_ms(entries, 'auroc')} | {_ms(entries, 'ap')} | {_ms(entries, 'precision')} | {_ms(entries, 'recall')} | "
                         f"{_ms(entries, 'f1')} | {_ms(entries, 'noise_estimated')} ({_ms(entries, 'noise_true')}) | {train} | {audit} |")

        cv_train = _ms([r["training_seconds"] for r in group], "cv_5_folds")
        row("cleanlab filter, 5-fold CV", [r["cleanlab_cv"] for r in group], cv_train, _ms([r["cleanlab_cv"] for r in group], "seconds_filter"))
        row("Datalab label check, 5-fold CV", [r["datalab_cv"] for r in group], cv_train, _ms([r["datalab_cv"] for r in group], "seconds"))
        for key, n, title in arm_columns(group):
            entries = [r[key][n] for r in group if n in r.get(key, {})]
            row(f"**manyruns audit, {title}**", entries, _ms(entries, "training_seconds"), _ms(entries, "seconds_audit"))
            row(f"cleanlab filter on its held-out probabilities ({title})", [e["cleanlab_filter_on_population"] for e in entries], "", "")
        lines.append("")
    for dataset in sorted({r["dataset"] for r in results}):
        group = [r for r in results if r["dataset"] == dataset]
        lines += [f"### {dataset}: planted near-duplicates and leaks", "", "| method | settings | duplicate recall (shift / noise / brightness) | pairs flagged | leak recall (shift / noise / brightness) | leaks flagged |", "| --- | --- | --- | --- | --- | --- |"]

        def dup_row(name, entries, flagged_key):
            entries = [e for e in entries if "duplicate_recall" in e]
            if not entries:
                return
            by = lambda key: " / ".join(_ms([e[key] for e in entries], k) for k in ("shift", "noise", "brightness"))  # noqa: E731
            lines.append(f"| {name} | {len(entries)} | {_ms(entries, 'duplicate_recall')} ({by('duplicate_recall_by_kind')}) | {_ms(entries, 'duplicate_pairs_flagged')} | "
                         f"{_ms(entries, 'leak_recall')} ({by('leak_recall_by_kind')}) | {_ms(entries, flagged_key)} |")

        dup_row("Datalab near-duplicate check, 5-fold CV features", [r["datalab_cv"] for r in group], "leak_pairs_flagged")
        for key, n, title in arm_columns(group):
            dup_row(f"manyruns audit, kernel of {title}", [r[key][n] for r in group if n in r.get(key, {})], "leaks_flagged")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist (comma-separated)")
    parser.add_argument("--noise", default="sym-0.05,sym-0.2,cc-0.2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default="8,50,200", help="run counts of arm M on random halves")
    parser.add_argument("--fold-runs", default="5", help="run counts of arm M on the folds (5: cleanlab's own cross-validation; 10, 25, ...: repeated)")
    parser.add_argument("--rescore", action="store_true", help="redo arm M of the settings already in results.json (the cleanlab arms are kept)")
    parser.add_argument("--dups", type=int, default=100, help="planted duplicate pairs in the training set")
    parser.add_argument("--leaks", type=int, default=100, help="planted train-to-test copies")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "audit")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "audit")
    args = parser.parse_args()
    args.runs = [int(n) for n in args.runs.split(",")]
    args.fold_runs = [int(n) for n in args.fold_runs.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else []
    done = {(r["dataset"], r["noise"], r["seed"]) for r in results}
    for dataset in args.dataset.split(","):
        for noise in args.noise.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                if (dataset, noise, seed) in done:
                    if args.rescore:
                        rescore(args, next(r for r in results if (r["dataset"], r["noise"], r["seed"]) == (dataset, noise, seed)))
                        path.write_text(json.dumps(results, indent=1, default=float))
                    continue
                results.append(one_setting(args, dataset, noise, seed, results))
                path.write_text(json.dumps(results, indent=1, default=float))  # kept after every setting
    (args.out / "summary.md").write_text(summarize(results))
    print(f"wrote {path} and {args.out / 'summary.md'}")


if __name__ == "__main__":
    main()
