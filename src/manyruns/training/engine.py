"""The training engine: trains a group of runs of one recipe together on one device.

Read it top to bottom: build each run's network from its own init seed, wrap the group in a
population form, then for every epoch draw each run's data order (and augmentation) from its
own stream, gather batches by index from tensors already on the device (batches of the run's
subset, or of the whole training set with the run's members weighted in: ``training.batches``),
step, and keep what the recipe records. Everything a run computes touches only its own slice of the group.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.architectures import create_model
from ..models.population import LoopPopulation, PopulationModule, choose_strategy, make_population
from ..plan import RunSeeds
from ..recipe import Recipe
from ..seeding import generator
from ..store import METRIC_COLUMNS, RunRecord
from .data import DeviceData, augment
from .optim import lr_at, make_optimizer

EVAL_BATCH = 1000

EpochCallback = Callable[[int, list[int], np.ndarray], None]
"""``on_epoch(epoch, run_indices, metrics)`` with ``metrics (G, 4)``: METRIC_COLUMNS
(epoch 0: at initialization, when recorded)."""


@dataclass
class RunJob:
    """One run as the engine sees it: the examples it trains on, its labels, its seeds."""

    index: int
    mask: np.ndarray  # (N_train,) bool
    labels: np.ndarray  # (N_train,) int64
    seeds: RunSeeds


@torch.no_grad()
def predict_shared(pop: PopulationModule, x: torch.Tensor, batch: int = EVAL_BATCH, features: bool = False) -> torch.Tensor:
    """Logits ``(G, N, C)`` float32 of every network on the same inputs ``x (N, ...)``
    (with ``features``: penultimate-layer features ``(G, N, F)``)."""
    pop.eval()
    fn = pop.features_shared if features else pop.forward_shared
    return torch.cat([fn(x[i : i + batch]).float() for i in range(0, x.shape[0], batch)], dim=1)


@torch.no_grad()
def predict_per_run(pop: PopulationModule, x: torch.Tensor, idx: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Logits ``(G, n, C)`` of network g on its own examples ``x[idx[g]]``; ``idx (G, n)``."""
    pop.eval()
    return torch.cat([pop(x[idx[:, i : i + batch]]).float() for i in range(0, idx.shape[1], batch)], dim=1)


def tta_views(x: torch.Tensor, mode: str) -> list[tuple[float, torch.Tensor]]:
    """The weighted views of images ``x (B, C, H, W)`` whose logits ``mode`` averages."""
    mirror = x.flip(-1)
    views = [(0.5, x), (0.5, mirror)]
    if mode == "flip-translate":
        shifted = []
        for image in (x, mirror):
            padded = F.pad(image, (1, 1, 1, 1), mode="reflect")
            h, w = x.shape[-2:]
            shifted += [padded[..., :h, :w], padded[..., 2 : h + 2, 2 : w + 2]]
        views = [(0.25, v) for _, v in views] + [(0.125, v) for v in shifted]
    return views


@torch.no_grad()
def predict_tta(pop: PopulationModule, x: torch.Tensor, mode: str, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Test-time-augmented logits ``(G, N, C)`` float32 of every network on ``x (N, C, H, W)``
    (see ``record.tta``): the weighted mean of the logits of :func:`tta_views`."""
    pop.eval()
    out = []
    for i in range(0, x.shape[0], batch):
        views = tta_views(x[i : i + batch].float(), mode)
        out.append(sum(w * pop.forward_shared(v.to(x.dtype)).float() for w, v in views))
    return torch.cat(out, dim=1)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-network mean cross-entropy and accuracy: ``logits (G, n, C)``, ``labels (G, n)`` -> ``(G,), (G,)``."""
    if logits.shape[1] == 0:
        nan = torch.full(logits.shape[:1], float("nan"), device=logits.device)
        return nan, nan
    g, n, c = logits.shape
    ce = F.cross_entropy(logits.reshape(g * n, c), labels.reshape(-1), reduction="none").view(g, n)
    return ce.mean(1), (logits.argmax(-1) == labels).float().mean(1)


def resolve_strategy(recipe: Recipe, device: torch.device, strategy: str, input_shape: tuple[int, ...] | None = None, num_classes: int | None = None) -> str:
    """The population form: ``strategy`` unless 'auto'. With the data's ``input_shape`` and
    ``num_classes``, 'auto' also checks that the stacked MLP keeps runs independent."""
    if strategy != "auto":
        return strategy
    sizes = None
    if recipe.model.kind == "mlp" and input_shape is not None and num_classes is not None:
        sizes = [math.prod(input_shape), *recipe.model.widths, num_classes]
    return choose_strategy(recipe.model.kind, device, recipe.model.dropout > 0, sizes, recipe.training.precision)


def train_group(
    recipe: Recipe,
    runs: list[RunJob],
    data: DeviceData,
    device: torch.device | str = "cpu",
    strategy: str = "auto",
    on_epoch: EpochCallback | None = None,
) -> list[RunRecord]:
    """Train ``runs`` (all with the same resolved recipe and subset size) and return their records."""
    t0 = time.perf_counter()
    device = torch.device(device)
    G, E = len(runs), recipe.training.epochs
    B, C = recipe.training.batch_size, data.num_classes
    record = recipe.record
    subset_sizes = {int(r.mask.sum()) for r in runs}
    if len(subset_sizes) != 1:
        raise ValueError(f"a group trains runs of one subset size, got sizes {sorted(subset_sizes)}")
    n = subset_sizes.pop()

    models = [create_model(recipe.model, data.input_shape, C, r.seeds.init).to(device) for r in runs]
    strategy = resolve_strategy(recipe, device, strategy, data.input_shape, C)
    pop = make_population(models, strategy, recipe.training.precision).to(device)
    if recipe.model.kind == "fast-cnn" and device.type == "cpu" and isinstance(pop, LoopPopulation):
        pop.use_channels_last()
    pop.set_dropout_generators([torch.Generator(device=device).manual_seed(r.seeds.dropout) for r in runs])
    opt = make_optimizer(pop.parameters(), recipe.optimizer)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if recipe.training.precision == "bfloat16" and strategy != "stacked"
        else nullcontext()
    )

    subsets = torch.stack([torch.from_numpy(np.flatnonzero(r.mask)) for r in runs]).to(device)  # (G, n)
    labels = torch.stack([torch.from_numpy(np.asarray(r.labels, dtype=np.int64)) for r in runs]).to(device)  # (G, N)
    order_rngs = [generator(r.seeds.order) for r in runs]
    augment_rngs = [generator(r.seeds.augment) for r in runs]
    flip, pad = recipe.data.augment.flip, recipe.data.augment.crop
    # the stacked bfloat16 form gathers batches straight from a bfloat16 copy of the inputs
    low = recipe.training.precision == "bfloat16" and strategy == "stacked"
    x_source = data.train_inputs(torch.bfloat16 if low else torch.float32)
    # batches cut from a shuffle of the run's subset (span n, B examples), or of the whole
    # training set (span N, B N / n examples) keeping the subset's members in each
    N = labels.shape[1]
    by_dataset = recipe.training.batches == "dataset"
    member = torch.stack([torch.from_numpy(r.mask) for r in runs]).to(device) if by_dataset else None  # (G, N)
    span, Bs = (N, max(1, round(B * N / n))) if by_dataset else (n, B)
    steps_per_epoch = math.ceil(span / Bs)

    metrics = torch.full((G, E + 1, len(METRIC_COLUMNS)), float("nan"))  # row e: after epoch e
    weights = {0: pop.flat_weights().cpu()} if 0 in record.weights else {}
    true_prob = torch.full((G, E, labels.shape[1]), float("nan"), dtype=torch.float16, device=device) if record.true_prob else None
    diverged = torch.zeros(G, dtype=torch.bool)
    step = 0

    def evaluate(epoch: int, train_loss: torch.Tensor | None = None, train_acc: torch.Tensor | None = None) -> None:
        """Fill ``metrics[:, epoch]``; train metrics from an evaluation pass unless given."""
        if train_loss is None or record.train_metrics == "eval":
            train_loss, train_acc = loss_and_accuracy(predict_per_run(pop, data.x_train, subsets), labels.gather(1, subsets))
        test_loss, test_acc = loss_and_accuracy(predict_shared(pop, data.x_test), data.y_test.expand(G, -1))
        metrics[:, epoch] = torch.stack([train_loss, train_acc, test_loss, test_acc], 1).float().cpu()
        if on_epoch is not None:
            on_epoch(epoch, [r.index for r in runs], metrics[:, epoch].numpy())

    if record.metrics_at_init:
        evaluate(0)

    for epoch in range(1, E + 1):
        if by_dataset:
            order = torch.stack([torch.from_numpy(rng.permutation(N)) for rng in order_rngs]).to(device)
        else:
            order = torch.stack([subsets[g][torch.from_numpy(rng.permutation(n)).to(device)] for g, rng in enumerate(order_rngs)])
        flips = torch.stack([torch.from_numpy(rng.random(span) < 0.5) for rng in augment_rngs]).to(device) if flip else None
        offsets = torch.stack([torch.from_numpy(rng.integers(0, 2 * pad + 1, (span, 2))) for rng in augment_rngs]).to(device) if pad else None
        loss_sum = torch.zeros(G, dtype=torch.float64, device=device)
        correct = torch.zeros(G, dtype=torch.float64, device=device)
        pop.train()
        for start in range(0, span, Bs):
            idx = order[:, start : start + Bs]  # (G, b)
            b = idx.shape[1]
            x = x_source[idx]  # (G, b, C, H, W)
            if flip or pad:
                x = augment(
                    x.flatten(0, 1),
                    flips[:, start : start + Bs].flatten() if flip else None,
                    offsets[:, start : start + Bs].flatten(0, 1) if pad else None,
                    pad,
                ).view(x.shape)
            y = labels.gather(1, idx)
            lr = lr_at(step, steps_per_epoch, E, recipe.optimizer.lr, recipe.schedule)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast:
                out = pop(x).float()  # (G, b, C)
            ce = F.cross_entropy(out.reshape(G * b, C), y.reshape(-1), reduction="none", label_smoothing=recipe.training.label_smoothing).view(G, b)
            kept = member.gather(1, idx) if by_dataset else None  # (G, b) bool: in the run's subset
            opt.zero_grad(set_to_none=True)
            (ce.mean(1) if kept is None else torch.where(kept, ce, 0.0).sum(1) / B).sum().backward()
            opt.step()
            step += 1
            with torch.no_grad():
                hit = out.argmax(-1) == y
                if recipe.training.label_smoothing:
                    ce = F.cross_entropy(out.reshape(G * b, C), y.reshape(-1), reduction="none").view(G, b)
                if kept is not None:
                    hit, ce = hit & kept, torch.where(kept, ce, 0.0)
                correct += hit.sum(1)
                loss_sum += ce.sum(1)
                if true_prob is not None:
                    p = out.softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
                    if kept is not None:  # each example comes once an epoch; only members are trained on
                        p = torch.where(kept, p, torch.nan)
                    true_prob[:, epoch - 1].scatter_(1, idx, p.half())

        if record.metrics or on_epoch is not None:
            evaluate(epoch, loss_sum / n, correct / n)
        if epoch in record.weights:
            weights[epoch] = pop.flat_weights().cpu()
        diverged |= ~torch.isfinite(loss_sum).cpu()
        if diverged.all():
            break

    for e in record.weights:  # epochs never reached because every run diverged
        weights.setdefault(e, torch.full_like(weights.get(0, pop.flat_weights().cpu()), float("nan")))
    logits_train = predict_shared(pop, data.x_train)  # (G, N, C)
    logits_test = predict_shared(pop, data.x_test)  # (G, T, C)
    diverged |= ~torch.isfinite(logits_train).all(dim=(1, 2)).cpu() | ~torch.isfinite(logits_test).all(dim=(1, 2)).cpu()
    tta = {}
    if record.tta != "none":
        for split in record.logits:
            tta[split] = predict_tta(pop, data.x_train if split == "train" else data.x_test, record.tta)
    keeps_features = [r.index < record.features for r in runs]
    features_train = features_test = None
    if any(keeps_features):
        features_train = predict_shared(pop, data.x_train, features=True)  # (G, N, F)
        features_test = predict_shared(pop, data.x_test, features=True)
    seconds = (time.perf_counter() - t0) / G

    # Accuracies from the float16 logits that the store keeps, so the runs table agrees with
    # every analysis of the stored logits (rounding can flip near-ties).
    stored_train, stored_test = logits_train.half().float(), logits_test.half().float()
    records = []
    for g, run in enumerate(runs):
        mask = torch.from_numpy(run.mask).to(device)
        own = labels[g]
        tr_loss, _ = loss_and_accuracy(logits_train[g : g + 1, mask], own[mask][None])
        _, tr_acc = loss_and_accuracy(stored_train[g : g + 1, mask], own[mask][None])
        _, ho_acc = loss_and_accuracy(stored_train[g : g + 1, ~mask], own[~mask][None])
        te_loss, _ = loss_and_accuracy(logits_test[g : g + 1], data.y_test[None])
        _, te_acc = loss_and_accuracy(stored_test[g : g + 1], data.y_test[None])
        summary = np.array([tr_acc.item(), ho_acc.item(), te_acc.item(), tr_loss.item(), te_loss.item(), seconds], dtype=np.float32)
        records.append(
            RunRecord(
                index=run.index,
                status="diverged" if diverged[g] else "ok",
                mask=run.mask,
                labels=np.asarray(run.labels),
                summary=summary,
                metrics=metrics[g].numpy(),
                logits_train=logits_train[g].cpu().numpy().astype(np.float16),
                logits_test=logits_test[g].cpu().numpy().astype(np.float16),
                logits_tta_train=tta["train"][g].cpu().numpy().astype(np.float16) if "train" in tta else None,
                logits_tta_test=tta["test"][g].cpu().numpy().astype(np.float16) if "test" in tta else None,
                weights={e: w[g].numpy() for e, w in weights.items()},
                true_prob=true_prob[g].cpu().numpy() if true_prob is not None else None,
                features_train=features_train[g].cpu().numpy().astype(np.float16) if keeps_features[g] else None,
                features_test=features_test[g].cpu().numpy().astype(np.float16) if keeps_features[g] else None,
            )
        )
    return records
