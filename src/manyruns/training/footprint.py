"""Will a group's training fit the device? An estimate made before any run is claimed.

One worker holds the dataset and ``G`` networks (the group), and trains them on batches of
``b = min(training.batch_size, n_train)`` examples (with ``training.batches = "dataset"``,
``batch_size`` divided by the smallest subset ratio: batches of the whole training set). Its
peak memory is estimated as::

    bytes = R + data + G * P * w * (2 + s) + G * max(b * (A + M), 2 * EVAL_BATCH * M)

* ``R`` = 0.5 GiB: the runtime itself (the libraries on CPU, the CUDA context on a GPU);
* ``data``: training and test inputs as float32 on the device (plus a bfloat16 copy for the
  stacked bfloat16 form) and the per-epoch label probabilities if recorded; on CPU twice, since
  the worker also holds the dataset as loaded while it prepares the device copy;
* ``P`` parameters of ``w`` = 4 bytes, their gradients, and ``s`` optimizer states each
  (SGD with momentum 1, Adam 2, RMSprop 1 or 2);
* ``A``: the bytes that autograd saves for the backward pass per example, measured by running
  the network once on shape-only "meta" tensors (nothing is allocated; under bfloat16 the
  network is held in bfloat16), and ``M``, the largest of them, once more for the gradient in
  flight when the backward pass starts (with the fast CIFAR-10 network on CPU, a 512-image
  step measured 390 to 690 MB of peak resident growth over repeated runs against 380 MB
  estimated: allocator and convolution workspaces come on top);
* ``2 * EVAL_BATCH * M``: a forward pass without gradients over an evaluation batch holds
  about two activations at a time.

The estimate is compared with what the device has: a GPU's total memory shared by the workers
placed on it, or on CPU the memory available now (``MemAvailable``) shared by all workers. It is
meant to catch a recipe that cannot fit (a batch ten times too large), not to predict the peak
to the byte: allocator caches, convolution workspaces and other processes are not counted (the
whole worker of the 64-run CIFAR-10 population: 2.13 GiB estimated, 2.37 GiB resident), so a
recipe within a factor of about two of the limit may pass the check and still run out.
"""

from __future__ import annotations

import math

import torch

from ..analysis.interpolation.memory import available_memory
from ..recipe import Recipe, RecipeError

GiB = 1 << 30
RUNTIME = GiB // 2


def _optimizer_states(recipe: Recipe) -> int:
    opt = recipe.optimizer
    if opt.name in ("adam", "adamw"):
        return 2
    if opt.name == "rmsprop":
        return 1 + (opt.momentum > 0)
    return int(opt.momentum > 0)


def activation_bytes(recipe: Recipe, input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int, int]:
    """``(A, M, P)``: saved bytes per example, the largest saved tensor per example, parameters.

    Runs one forward and backward pass of the recipe's network on meta tensors (shapes only)."""
    from ..models.architectures import create_model

    n = 4  # a few examples, so that per-batch tensors (batch-norm statistics) average out
    with torch.device("meta"):
        model = create_model(recipe.model, tuple(input_shape), num_classes, 0)
    model.train()
    params = {id(p) for p in model.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in params:
            saved[id(t)] = t
        return t

    # autocast does not act on meta tensors; a network held in bfloat16 saves what autocast's
    # would (matrix products and what follows them in bfloat16), up to a few float32 norms
    dtype = torch.bfloat16 if recipe.training.precision == "bfloat16" else torch.float32
    model.to(dtype)
    x = torch.empty(n, *input_shape, device="meta", dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x).float()
    out.sum().backward()
    sizes = [t.numel() * t.element_size() for t in saved.values()]
    total = sum(p.numel() for p in model.parameters())
    return math.ceil(sum(sizes) / n), math.ceil(max(sizes, default=0) / n), total


def estimate_bytes(recipe: Recipe, layout: dict, group_size: int, strategy: str, device_is_gpu: bool = False) -> int:
    """Peak bytes of one worker training ``group_size`` runs (see the module's formula)."""
    from .engine import EVAL_BATCH

    shape = tuple(layout["input_shape"])
    per_input = math.prod(shape) * 4
    data = (layout["n_train"] + layout["n_test"]) * per_input
    if recipe.training.precision == "bfloat16" and strategy == "stacked":
        data += layout["n_train"] * per_input // 2
    if recipe.record.true_prob:
        data += group_size * recipe.training.epochs * layout["n_train"] * 2
    if not device_is_gpu:
        data *= 2
    A, M, P = activation_bytes(recipe, shape, layout["num_classes"])
    b = recipe.training.batch_size
    if recipe.training.batches == "dataset":  # batches cut from the whole training set
        folds = recipe.population.folds
        smallest = (folds - 1) / folds if folds else min(recipe.population.subset_levels)
        b = math.ceil(b / smallest)
    b = min(b, layout["n_train"])
    weights = P * 4 * (2 + _optimizer_states(recipe))
    return int(RUNTIME + data + group_size * (weights + max(b * (A + M), 2 * EVAL_BATCH * M)))


def available_bytes(device: str, workers: int) -> tuple[int, str]:
    """Bytes one worker may use on ``device`` and a phrase that says where they come from."""
    if device.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(device.split(":")[1]) if ":" in device else 0
        per_gpu = max(1, math.ceil(workers / count)) if device == "cuda" else workers
        total = torch.cuda.get_device_properties(index).total_memory
        name = f"{device if ':' in device else 'cuda:0'} has {total / GiB:.1f} GiB"
        return total // per_gpu, name + (f" shared by {per_gpu} workers" if per_gpu > 1 else "")
    free = available_memory()
    return free // workers, f"this machine has {free / GiB:.1f} GiB available" + (f" for {workers} workers" if workers > 1 else "")


def check_fits(recipe: Recipe, layout: dict, device: str, workers: int, group_size: int, strategy: str) -> int:
    """Raise a :class:`RecipeError` naming ``training.batch_size`` when one worker's estimate
    exceeds its share of the device; return the estimate in bytes (0 when a network cannot be
    run on shape-only tensors: then nothing is checked)."""
    try:
        need = estimate_bytes(recipe, layout, group_size, strategy, device.startswith("cuda"))
    except (NotImplementedError, RuntimeError):  # a layer that shape-only tensors cannot run: no estimate, no check
        return 0
    have, where = available_bytes(device, workers)
    if have and need > have:
        runs = f"{group_size} networks" if group_size > 1 else "one network"
        raise RecipeError(
            f"field 'training.batch_size': training {runs} on batches of {recipe.training.batch_size} needs about "
            f"{need / GiB:.1f} GiB per worker on {device}, and {where}; lower training.batch_size "
            "(or --group-size, or --workers)",
            field="training.batch_size",
        )
    return need
