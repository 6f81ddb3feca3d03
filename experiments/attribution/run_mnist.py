"""Data attribution on MNIST in the settings of dattri's benchmark, judged by the LDS.

Logistic regression and an MLP on the first 5,000 training and 500 test images of MNIST
(recipes ``mnist-lr.toml`` and ``mnist-mlp.toml`` beside this file), and ``mlp-1k``, the MLP on
the first 1,000 training images only (where 2,000 fit runs outnumber the examples). Per model,
four stores under ``runs/attribution/<model>/``:

* ``fit``:  runs on random 50% subsets, one seed each, the population datamodels and the kernel
  are fitted on (their first 100, 300, 1,000, ... runs);
* ``eval``: the evaluation block, 100 subsets x 5 seeds (another population seed, so no subset
  is shared with ``fit``): the LDS ground truth, with its noise ceiling;
* ``half``: 50 runs on 50% subsets with their final weights (TRAK's models, as in dattri);
* ``full``: 10 runs on the whole 5,000 with their final weights (influence functions and
  TracIn's ensemble, as in dattri);
* ``fit-shared`` (``train --shared-runs N``): ``fit``'s subsets with one seed shared by every
  run (``population.shared_seed``), so the datamodels fitted on it (``ridge_shared``,
  ``ridge_near_shared``) see the subsets' effect without each seed's own;
* ``fit-fixed`` (``train --fixed-runs N``): the same, and batches cut from one shuffle of the
  whole training set (``training.batches = "dataset"``), so runs differ only by the examples
  they leave out (``ridge_fixed``, ``ridge_near_fixed``).

The target is dattri's: the negated test loss (``neg_loss``). Methods: manyruns' difference of
means and ridge datamodels and the ensemble kernel (raw, and signed by label agreement) at each
number of fit runs, ridge on each test example's kernel neighbours (``ridge_near``, 25 to
800 of them) and LASSO on 400 of them (``lasso_near``); through dattri (a benchmark-only extra): influence functions (explicit for
logistic regression, conjugate gradients), TracIn (10 full models), Grad-Dot, TRAK-1/10/50
(512 projection dimensions); and TRAK-1/10/50 again through MadryLab's ``traker`` (also a
benchmark extra; ``--only traker-1 traker-10`` skips its 50 models). For influence functions the regularization is chosen on the LDS
as dattri's benchmark script does (the best of 1, 0.1, ..., 1e-4 for logistic regression, of
0.1, 0.01, 0.001 for the MLP: dattri's grid, shortened for time), which flatters them; the
datamodels choose their penalty on held-out fit runs only.

    python experiments/attribution/run_mnist.py train lr --fit-runs 3000
    python experiments/attribution/run_mnist.py train mlp --shared-runs 1000   # and the fit-shared store
    python experiments/attribution/run_mnist.py train mlp --fixed-runs 1000 --stores fit-fixed
    python experiments/attribution/run_mnist.py train mlp-1k --stores eval half fit fit-fixed --fit-runs 2000 --fixed-runs 2000
    python experiments/attribution/run_mnist.py score mlp-1k --only ridge diffmeans kernel traker
    python experiments/attribution/run_mnist.py score lr
    python experiments/attribution/run_mnist.py evaluate lr
    python experiments/attribution/run_mnist.py spread lr          # one-model methods on each of 10 models
    python experiments/attribution/run_mnist.py summary          # docs/attribution/results.{json,md}

Every stage resumes: stores grow and train what is missing, scores already written are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import manyruns
from manyruns.analysis.attribution import datamodels, lds
from manyruns.analysis.attribution.lds import ground_truth
from manyruns.recipe import Recipe

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1] / "runs" / "attribution"
DOCS = HERE.parents[1] / "docs" / "attribution"
OUTPUT = "neg_loss"  # dattri's MNIST target: the negated cross-entropy loss
NEIGHBOURS = (25, 50, 100, 200, 400, 800)  # ridge_near: kernel neighbours tried per test example
LASSO_NEIGHBOURS = 400  # lasso_near: LASSO on this many kernel neighbours per test example

SETTINGS = {
    "lr": {"recipe": "mnist-lr.toml", "fit_steps": [100, 300, 1000, 3000], "group_size": 100},
    "mlp": {"recipe": "mnist-mlp.toml", "fit_steps": [100, 300, 1000, 2000, 3000], "group_size": 16},
    # the MLP on the first 1,000 training images only: where 2,000 runs outnumber the examples
    "mlp-1k": {"recipe": "mnist-mlp.toml", "overrides": {"data.train_examples": 1000}, "fit_steps": [100, 300, 1000, 2000], "group_size": 16},
}
STORES = {
    "fit": {"population.seed": 0, "population.subset": 0.5, "record.logits": ["train", "test"]},
    "eval": {"population.seed": 1, "population.subset": 0.5, "population.seeds_per_subset": 5, "population.runs": 500},
    "half": {"population.seed": 2, "population.subset": 0.5, "population.runs": 50},
    "full": {"population.seed": 3, "population.subset": 1.0, "population.runs": 10},
    # fit's subsets, every run with run 0's seed: the datamodels' outputs without the seed's own noise
    "fit-shared": {"population.seed": 0, "population.subset": 0.5, "population.shared_seed": True, "record.logits": ["train", "test"]},
    # and batches cut from one shuffle of all 5,000: runs differ only by the examples they leave out
    "fit-fixed": {
        "population.seed": 0, "population.subset": 0.5, "population.shared_seed": True, "training.batches": "dataset",
        "record.logits": ["train", "test"],
    },
}
VARIANTS = {"fit-shared": "shared", "fit-fixed": "fixed"}  # fit stores beside fit: store -> suffix of their methods
# dattri's published MNIST LDS (its paper's benchmark figure, read off the bars to about 0.01).
PUBLISHED = {
    "lr": {"if-explicit": 0.80, "if-cg": 0.80, "tracin": 0.33, "grad-dot": 0.33, "trak-1": 0.415, "trak-10": 0.645, "trak-50": 0.68},
    "mlp": {"if-cg": 0.258, "tracin": 0.146, "grad-dot": 0.10, "trak-1": 0.113, "trak-10": 0.333, "trak-50": 0.448},
}
IF_REGULARIZATION = [1e0, 1e-1, 1e-2, 1e-3, 1e-4]  # dattri's grid less 5e-3 and 1e-5 (each value costs minutes here)
TRAK_DIMS = 512


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def store_recipe(model: str, kind: str, fit_runs: int) -> Recipe:
    base = Recipe.load(HERE / SETTINGS[model]["recipe"]).with_overrides(SETTINGS[model].get("overrides", {}))
    overrides = dict(STORES[kind])
    if kind.startswith("fit"):
        overrides["population.runs"] = fit_runs
    if kind in ("half", "full"):
        overrides["record.weights"] = [base.training.epochs]
    return base.with_overrides(overrides)


# ----------------------------------------------------------------------------------- train


def train(model: str, fit_runs: int, workers: int, variant_runs: dict[str, int], stores: list[str] | None = None) -> None:
    times_path = ROOT / model / "train_times.json"
    times = read_json(times_path)
    for kind in ("eval", "full", "half", "fit", *[k for k, runs in variant_runs.items() if runs]):
        if stores and kind not in stores:
            continue
        path = ROOT / model / kind
        pop = manyruns.plan(store_recipe(model, kind, variant_runs.get(kind, fit_runs)), path)
        todo = int((~pop.committed).sum())
        if not todo:
            continue
        log(f"{model}/{kind}: training {todo} runs")
        t0 = time.perf_counter()
        report = manyruns.train(path, workers=workers, progress=False, group_size=SETTINGS[model]["group_size"])
        if report.failed or report.remaining:
            raise SystemExit(f"{model}/{kind}: training left runs undone: {report}")
        done = manyruns.open(path)
        entry = times.get(kind, {"seconds": 0.0, "runs": 0})
        entry = {"seconds": entry["seconds"] + time.perf_counter() - t0, "runs": entry["runs"] + todo}
        entry["seconds_per_run"] = entry["seconds"] / entry["runs"]
        times[kind] = entry
        write_json(times_path, times)
        log(f"{model}/{kind}: {todo} runs in {time.perf_counter() - t0:.0f} s; committed {int(done.committed.sum())}")


# ----------------------------------------------------------------------------------- dattri


def inputs(pop) -> tuple:
    """The training and test inputs exactly as the engine scaled them, and the labels."""
    import torch

    from manyruns.training.data import prepare

    data = prepare(pop.dataset(), pop.store.recipe, "none", torch.device("cpu"))
    y_train = torch.from_numpy(pop.targets("train").astype(np.int64))
    return data.x_train.flatten(1), y_train, data.x_test.flatten(1), data.y_test


class Net:
    """A plain torch module with the store's parameter layout (``hidden.k``, ``out``)."""

    @staticmethod
    def build(widths: list[int]):
        import torch
        from torch import nn

        class MLP(nn.Module):
            def __init__(self):
                super().__init__()
                sizes = [784, *widths]
                self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
                self.out = nn.Linear(sizes[-1], 10)

            def forward(self, x):
                for layer in self.hidden:
                    x = torch.relu(layer(x))
                return self.out(x)

        return MLP().eval()  # dropout off, as dattri's attributors use the model

    @staticmethod
    def state_dicts(pop, epoch: int) -> list[dict]:
        import torch

        W = np.asarray(pop.array(f"weights/epoch_{epoch}")[:], dtype=np.float32)
        out = []
        for row in W:
            out.append({p["name"]: torch.from_numpy(row[p["start"] : p["end"]].reshape(p["shape"]).copy()) for p in pop.layout["params"]})
        return out


def dattri_scores(model: str, method: str, grid_value=None, first: int = 0) -> np.ndarray:
    """``(T, N)`` scores of a dattri attributor on the ``full``/``half`` store's models (from
    model ``first`` on)."""
    import torch
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import TRAKAttributor
    from dattri.task import AttributionTask
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    kind = "half" if method.startswith("trak") else "full"
    pop = manyruns.open(ROOT / model / kind)
    recipe = pop.store.recipe
    net = Net.build(list(recipe.model.widths))
    ckpts = Net.state_dicts(pop, recipe.training.epochs)[first:]
    x_tr, y_tr, x_te, y_te = inputs(pop)
    train_set, test_set = TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te)
    # One batch per split: dattri's attributors redo the test side for every training batch.
    train_loader = DataLoader(train_set, batch_size=5000, shuffle=False)
    test_loader = DataLoader(test_set, batch_size=500, shuffle=False)
    ce = nn.CrossEntropyLoss()

    def loss_batch(params, batch):
        x, y = batch
        return ce(torch.func.functional_call(net, params, x), y)

    def loss_one(params, batch):
        x, y = batch
        return ce(torch.func.functional_call(net, params, x.unsqueeze(0)), y.unsqueeze(0))

    def trak_margin(params, batch):  # TRAK's output: log p / (1 - p) of the label
        logp = -loss_one(params, batch)
        return logp - torch.log(1 - torch.exp(logp))

    def trak_prob(params, batch):
        return torch.exp(-loss_one(params, batch))

    if method in ("if-explicit", "if-cg"):
        task = AttributionTask(model=net, loss_func=loss_batch, checkpoints=ckpts[0])
        cls = IFAttributorExplicit if method == "if-explicit" else IFAttributorCG
        extra = {"max_iter": 10} if method == "if-cg" else {}
        attributor = cls(task=task, device="cpu", regularization=grid_value, **extra)
        attributor.cache(train_loader)
        with torch.no_grad():
            score = attributor.attribute(train_loader, test_loader)
    elif method in ("tracin", "grad-dot"):
        k = 10 if method == "tracin" else 1
        task = AttributionTask(model=net, loss_func=loss_one, checkpoints=ckpts[:k])
        attributor = TracInAttributor(task=task, weight_list=torch.ones(k) * 1e-3, normalized_grad=False, device="cpu")
        # dattri 0.3 projects the gradients to 512 dimensions by default (a random sketch);
        # its published benchmark took exact gradient products, as here
        attributor.projector_kwargs = None
        with torch.no_grad():
            score = attributor.attribute(train_loader, test_loader)
    elif method.startswith("trak-"):
        k = int(method.split("-")[1])
        task = AttributionTask(model=net, loss_func=trak_margin, checkpoints=ckpts[:k])
        attributor = TRAKAttributor(task=task, correct_probability_func=trak_prob, device="cpu", projector_kwargs={"proj_dim": TRAK_DIMS, "device": "cpu"})
        attributor.cache(DataLoader(train_set, batch_size=500, shuffle=False))
        with torch.no_grad():
            score = attributor.attribute(test_loader)
    else:
        raise ValueError(method)
    return np.asarray(score.T.cpu().numpy(), dtype=np.float32)  # dattri's (N, T) -> (T, N)


def traker_scores(model: str, k: int, first: int = 0) -> np.ndarray:
    """``(T, N)`` TRAK scores by MadryLab's ``traker`` (its CPU projector, Gaussian, the same 512
    dimensions) on the first ``k`` models of the ``half`` store: a second implementation of
    TRAK beside dattri's."""
    import tempfile

    import torch
    from trak import TRAKer

    torch.manual_seed(0)
    pop = manyruns.open(ROOT / model / "half")
    recipe = pop.store.recipe
    net = Net.build(list(recipe.model.widths))
    ckpts = Net.state_dicts(pop, recipe.training.epochs)[first : first + k]
    x_tr, y_tr, x_te, y_te = inputs(pop)
    with tempfile.TemporaryDirectory() as tmp:
        traker = TRAKer(model=net, task="image_classification", train_set_size=len(y_tr), save_dir=tmp, device="cpu",
                        proj_dim=TRAK_DIMS, use_half_precision=False)
        for i, ckpt in enumerate(ckpts):
            traker.load_checkpoint(ckpt, model_id=i)
            for b in range(0, len(y_tr), 500):
                traker.featurize(batch=(x_tr[b : b + 500], y_tr[b : b + 500]), num_samples=len(y_tr[b : b + 500]))
        traker.finalize_features()
        for i, ckpt in enumerate(ckpts):
            traker.start_scoring_checkpoint(exp_name="test", checkpoint=ckpt, model_id=i, num_targets=len(y_te))
            traker.score(batch=(x_te, y_te), num_samples=len(y_te))
        scores = traker.finalize_scores(exp_name="test")
    return np.asarray(scores.T if not hasattr(scores, "numpy") else scores.numpy().T, dtype=np.float32)  # (N, T) -> (T, N)


# ----------------------------------------------------------------------------------- score


def score(model: str, only: list[str] | None) -> None:
    folder = ROOT / model / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    times_path = ROOT / model / "score_times.json"
    fit = manyruns.open(ROOT / model / "fit") if (ROOT / model / "fit").exists() else None  # a variant may be scored alone
    n_fit = int(fit.committed.sum()) if fit is not None else 0
    labelled = fit if fit is not None else manyruns.open(ROOT / model / "eval")
    labels_train, labels_test = labelled.targets("train"), labelled.targets("test")
    same = (labels_test[:, None] == labels_train[None, :]).astype(np.float32) * 2 - 1

    def save(name: str, make) -> None:
        if (only and not any(name.startswith(o) for o in only)) or (folder / f"{name}.npy").exists():
            return
        log(f"{model}: scoring {name}")
        t0 = time.perf_counter()
        s = make()
        seconds = time.perf_counter() - t0
        np.save(folder / f"{name}.npy", np.asarray(s, dtype=np.float32))
        times = {**read_json(times_path), name: seconds}  # read again: another score stage may have written
        write_json(times_path, times)
        log(f"{model}: {name} in {seconds:.1f} s")

    for R in SETTINGS[model]["fit_steps"]:
        if R > n_fit:
            continue
        runs = f"0-{R - 1}"
        save(f"diffmeans-{R}", lambda: datamodels(fit, runs=runs, output=OUTPUT, estimator="diffmeans").scores)
        save(f"ridge-{R}", lambda: datamodels(fit, runs=runs, output=OUTPUT, estimator="ridge").scores)
        save(f"ridge_near-{R}", lambda: datamodels(fit, runs=runs, output=OUTPUT, estimator="ridge", neighbours=NEIGHBOURS).scores)
        save(f"lasso_near-{R}", lambda: datamodels(fit, runs=runs, output=OUTPUT, estimator="lasso", neighbours=(LASSO_NEIGHBOURS,)).scores)

        def kernel():
            from manyruns.analysis.kernel import KernelOptions, PopulationLogits, kernel_matrix

            return kernel_matrix(PopulationLogits(fit, np.arange(R), ("train", "test")), "test", KernelOptions())

        save(f"kernel-{R}", kernel)
        if (folder / f"kernel-{R}.npy").exists():
            save(f"kernel_signed-{R}", lambda: np.load(folder / f"kernel-{R}.npy") * same)
    for store, suffix in VARIANTS.items():  # ridge on the variant fit stores, beside ridge on fit's
        if not (ROOT / model / store).exists():
            continue
        other = manyruns.open(ROOT / model / store)
        for R in [R for R in SETTINGS[model]["fit_steps"] if R <= int(other.committed.sum())]:
            save(f"ridge_{suffix}-{R}", lambda: datamodels(other, runs=f"0-{R - 1}", output=OUTPUT, estimator="ridge").scores)
            save(f"ridge_near_{suffix}-{R}", lambda: datamodels(other, runs=f"0-{R - 1}", output=OUTPUT, estimator="ridge", neighbours=NEIGHBOURS).scores)
            save(f"lasso_near_{suffix}-{R}", lambda: datamodels(other, runs=f"0-{R - 1}", output=OUTPUT, estimator="lasso", neighbours=(LASSO_NEIGHBOURS,)).scores)
    for method in ("tracin", "grad-dot", "trak-1", "trak-10", "trak-50"):
        save(method, lambda: dattri_scores(model, method))
    for k in (1, 10, 50):  # the same TRAK by MadryLab's traker
        save(f"traker-{k}", lambda: traker_scores(model, k))
    # Influence functions: dattri's regularization grid, every value kept (evaluate picks the best).
    for method in (["if-explicit"] if model == "lr" else []) + ["if-cg"]:
        for reg in IF_REGULARIZATION if model == "lr" else IF_REGULARIZATION[1:4]:  # the MLP: 0.1, 0.01, 0.001
            save(f"{method}@{reg:g}", lambda: dattri_scores(model, method, reg))


# -------------------------------------------------------------------------------- evaluate


def evaluate(model: str) -> None:
    """LDS of every saved score by manyruns (with its interval and the noise ceiling) and by
    dattri's metric on the same ground truth written in dattri's layout; both timed."""
    import torch
    from dattri.metric import lds as dattri_lds

    eval_pop = manyruns.open(ROOT / model / "eval")
    runs = eval_pop.select("ok")
    gt_path = ROOT / model / "ground_truth.npz"
    if not gt_path.exists():
        ground_truth(eval_pop, runs, OUTPUT).save(gt_path)
    gt = np.load(gt_path)
    # float64 inputs: in float32 dattri's own subset sums reorder near ties (up to 1e-3 apart)
    values, indices = torch.from_numpy(gt["values"]).double(), torch.from_numpy(gt["indices"]).long()
    results_path = ROOT / model / "lds.json"
    results = read_json(results_path)
    seeds = int(eval_pop.store.recipe.population.seeds_per_subset)
    for path in sorted((ROOT / model / "scores").glob("*.npy")):
        name = path.stem
        if name in results:
            continue
        s = np.load(path)
        # dattri's protocol trains each evaluation subset once: the LDS on one seed per subset,
        # averaged over the choice of that seed.
        one_seed = float(np.mean([lds(eval_pop, s, runs=runs[k::seeds], output=OUTPUT, bootstrap=0).lds for k in range(seeds)]))
        t0 = time.perf_counter()
        ours = lds(eval_pop, s, runs=runs, output=OUTPUT)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = dattri_lds(torch.from_numpy(s.T.astype(np.float64)), (values, indices))[0].numpy()
        t_theirs = time.perf_counter() - t0
        ok = np.isfinite(theirs) & np.isfinite(ours.per_test)
        results[name] = {
            "lds": ours.lds,
            "ci": list(ours.ci),
            "ceiling": ours.ceiling,
            "lds_one_seed": one_seed,
            "dattri_lds": float(np.nanmean(theirs)),
            "max_abs_difference": float(np.max(np.abs(theirs[ok] - ours.per_test[ok]))) if ok.any() else None,
            "seconds_manyruns": t_ours,
            "seconds_dattri": t_theirs,
        }
        write_json(results_path, results)
        log(f"{model}: {name}: LDS {ours.lds:.3f} [{ours.ci[0]:.3f}, {ours.ci[1]:.3f}] (dattri {results[name]['dattri_lds']:.3f}); ceiling {ours.ceiling}")


def spread(model: str) -> None:
    """How much a one-model method's LDS depends on which model it is given: Grad-Dot on each
    of the 10 ``full`` models and TRAK-1 (by traker) on each of the first 10 ``half`` models,
    against one seed per subset (dattri's protocol) and the 5-seed block."""
    eval_pop = manyruns.open(ROOT / model / "eval")
    runs = eval_pop.select("ok")
    seeds = int(eval_pop.store.recipe.population.seeds_per_subset)
    path = ROOT / model / "spread.json"
    out = read_json(path)
    for method, make in (("grad-dot", lambda j: dattri_scores(model, "grad-dot", first=j)), ("trak-1", lambda j: traker_scores(model, 1, first=j))):
        for j in range(10):
            key = f"{method}#{j}"
            if key in out:
                continue
            s = make(j)
            one = float(np.mean([lds(eval_pop, s, runs=runs[k::seeds], output=OUTPUT, bootstrap=0).lds for k in range(seeds)]))
            out[key] = {"lds": lds(eval_pop, s, runs=runs, output=OUTPUT, bootstrap=0).lds, "lds_one_seed": one}
            write_json(path, out)
            log(f"{model}: {key}: LDS {out[key]['lds']:.3f}, one seed {one:.3f}")


def spread_line(model: str, out: dict) -> str | None:
    parts = []
    for method in ("grad-dot", "trak-1"):
        v = np.array([r["lds_one_seed"] for k, r in out.items() if k.split("#")[0] == method])
        if v.size:
            parts.append(f"{method} {v.min():.3f} to {v.max():.3f} (mean {v.mean():.3f}, published {PUBLISHED.get(model, {}).get(method, float('nan')):.2f})")
    return "Each of 10 models alone (LDS, 1 seed): " + "; ".join(parts) + "." if parts else None


# --------------------------------------------------------------------------------- summary


def models_of(method: str) -> tuple[str, str, int]:
    """A method's row label, the store whose runs its scores come from, and how many of those
    runs it needed (``ridge-300``: ridge, fit, 300)."""
    family, _, count = method.rpartition("-")
    if family in ("diffmeans", "ridge", "ridge_near", "lasso_near", "kernel", "kernel_signed"):
        return family, "fit", int(count)
    for store, suffix in VARIANTS.items():
        if family in (f"ridge_{suffix}", f"ridge_near_{suffix}", f"lasso_near_{suffix}"):
            return family, store, int(count)
    if family in ("trak", "traker"):
        return method, "half", int(count)
    return method, "full", 10 if method == "tracin" else 1


def summary() -> None:
    """Tables of every scored method. Rows of the results already in ``docs/attribution``
    that this checkout's stores did not score again are kept (with their training times):
    stores are working files, the summary is the record."""
    out, before = {}, read_json(DOCS / "results.json")
    lines = ["# Attribution on MNIST (dattri's settings): LDS of each method", ""]
    for model in SETTINGS:
        res = read_json(ROOT / model / "lds.json")
        earlier = before.get(model, {"rows": [], "train_seconds_per_run": {}})
        if not res and not earlier["rows"]:
            continue
        train_t = read_json(ROOT / model / "train_times.json")
        score_t = read_json(ROOT / model / "score_times.json")
        per_run = {**earlier["train_seconds_per_run"], **{k: v["seconds_per_run"] for k, v in train_t.items()}}
        best = {}  # influence functions: the best regularization of the grid
        for name, r in res.items():
            method = name.split("@")[0]
            if "@" in name and (method not in best or r["lds"] > res[best[method]]["lds"]):
                best[method] = name
        rows = []
        for name, r in sorted(res.items()):
            method = name.split("@")[0]
            if "@" in name and best[method] != name:
                continue
            label, store, models = models_of(method)
            rows.append({
                "method": name if "@" in name else label, "models": models, **r, "published": PUBLISHED.get(model, {}).get(method),
                "score_seconds": score_t.get(name), "total_seconds": models * per_run.get(store, float("nan")) + score_t.get(name, 0.0),
            })
        scored = {(r["method"].split("@")[0], r["models"]) for r in rows}
        rows += [r for r in earlier["rows"] if (r["method"].split("@")[0], r["models"]) not in scored]
        ceiling = next(iter(res.values()))["ceiling"] if res else earlier["ceiling"]
        out[model] = {"rows": rows, "ceiling": ceiling, "train_seconds_per_run": per_run}
        lines += [f"## {model.upper()} (noise ceiling {ceiling:.3f})", "", "| method | models trained | LDS (5 seeds) | 95% CI | by dattri's metric | max diff | LDS (1 seed) | published (1 seed) | training + scoring (s) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["method"].split("@")[0], r["models"])):
            lines.append(
                f"| {r['method']} | {r['models']} | {r['lds']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['dattri_lds']:.3f} | "
                f"{r['max_abs_difference']:.1e} | {r['lds_one_seed']:.3f} | {'' if r['published'] is None else format(r['published'], '.2f')} | {r['total_seconds']:.0f} |"
            )
        spread_data = read_json(ROOT / model / "spread.json") or earlier.get("spread", {})
        line = spread_line(model, spread_data)
        if line:
            out[model]["spread"] = spread_data
            lines += ["", line]
        lines.append("")
    write_json(DOCS / "results.json", out)
    (DOCS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["train", "score", "evaluate", "spread", "summary"])
    ap.add_argument("model", nargs="?", choices=list(SETTINGS))
    ap.add_argument("--fit-runs", type=int, default=None, help="runs in the fit store (default: the largest step)")
    ap.add_argument("--shared-runs", type=int, default=0, help="train: also a fit store of this many runs sharing one seed")
    ap.add_argument("--fixed-runs", type=int, default=0, help="train: also a fit store of this many runs sharing one seed and the batches of the whole set")
    ap.add_argument("--stores", nargs="*", help="train: only these stores (eval, full, half, fit, fit-shared, fit-fixed)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="score only the methods whose names start so")
    a = ap.parse_args(argv)
    if a.stage != "summary" and a.model is None:
        ap.error("give the model (lr or mlp)")
    if a.stage == "train":
        variants = {"fit-shared": a.shared_runs, "fit-fixed": a.fixed_runs}
        train(a.model, a.fit_runs or SETTINGS[a.model]["fit_steps"][-1], a.workers, variants, a.stores)
    elif a.stage == "score":
        score(a.model, a.only)
    elif a.stage == "evaluate":
        evaluate(a.model)
    elif a.stage == "spread":
        spread(a.model)
    else:
        summary()


if __name__ == "__main__":
    sys.exit(main())
