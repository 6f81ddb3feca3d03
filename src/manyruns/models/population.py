"""Population forms: G networks trained as one module that maps ``(G, B, ...)`` to ``(G, B, C)``.

Three forms, all built from G canonical single networks (so initialization is identical):

* :class:`StackedMLP` keeps each layer's weights as one ``(G, in, out)`` tensor and runs every
  layer as one batched matrix product (``baddbmm``). Measured on 2-core CPUs it is 2.5-3x
  faster than a loop over models; it is the default for MLPs on every device.
* :class:`LoopPopulation` holds the G modules and runs them one after another. It is the
  default for convolutional networks on CPU, where batched forms measured slower.
* :class:`VmapPopulation` vectorizes any network without batch norm or dropout with
  ``torch.func.vmap`` (the default for the small CNN on CUDA).
* :class:`~manyruns.models.grouped.GroupedFastCNN` runs G fast convnets as one network of
  grouped convolutions, batch norm included (:mod:`manyruns.models.grouped`).

Each run's computations touch only its own slice, so a run's trajectory does not depend on the
other runs in its group: with one intra-op thread the results are bitwise the same for any G.
For the batched products this also needs every run's slice of every operand on the same
memory alignment: batches are padded to a multiple of ``ROW_MULTIPLE`` rows, and 'auto' trains
MLPs whose weight shapes would break it (:func:`stacked_weights_aligned`) with the loop form.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .architectures import MLP
from .layers import SeededDropout, activation

STRATEGIES = ("auto", "stacked", "loop", "vmap", "grouped")


class PopulationModule(nn.Module):
    """Interface shared by the population forms."""

    size: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (G, B, ...) -> (G, B, C)
        raise NotImplementedError

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same inputs ``(B, ...)`` through every network: ``(G, B, C)``."""
        return self.forward(x.unsqueeze(0).expand(self.size, *x.shape))

    def features_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(G, B, F)`` of shared inputs ``(B, ...)``."""
        raise NotImplementedError

    def set_dropout_generators(self, generators: list[torch.Generator]) -> None:
        raise NotImplementedError

    def run_parameters(self) -> list[dict[str, torch.Tensor]]:
        """Per run, its parameters by canonical name and in canonical layout (views or copies)."""
        raise NotImplementedError

    def flat_weights(self) -> torch.Tensor:
        """``(G, P) float32``: each run's parameters flattened in canonical order."""
        return torch.stack([torch.cat([p.detach().reshape(-1).float() for p in d.values()]) for d in self.run_parameters()])


class LoopPopulation(PopulationModule):
    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.size = len(models)
        self.memory_format = torch.contiguous_format

    def use_channels_last(self) -> None:
        """Keep convolution weights and inputs in channels-last layout (NHWC): on CPU the fast
        convnet's step is 1.2x (widths 32-64-128) to 1.8x (16-32-64) faster (docs/benchmarks.md)."""
        self.memory_format = torch.channels_last
        self.models.to(memory_format=torch.channels_last)

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.memory_format is torch.contiguous_format else x.contiguous(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(self._in(x[g])) for g, m in enumerate(self.models)])

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        x = self._in(x)
        return torch.stack([m(x) for m in self.models])

    def features_shared(self, x: torch.Tensor) -> torch.Tensor:
        x = self._in(x)
        return torch.stack([m.features(x) for m in self.models])

    def set_dropout_generators(self, generators: list[torch.Generator]) -> None:
        for m, gen in zip(self.models, generators):
            for d in m.modules():
                if isinstance(d, SeededDropout):
                    d.generator = gen

    def run_parameters(self) -> list[dict[str, torch.Tensor]]:
        return [dict(m.named_parameters()) for m in self.models]


class _LowPrecisionBatchedLinear(torch.autograd.Function):
    """``h @ w + b`` per run with bfloat16 products and float32 master weights.

    The forward pass and the input gradient use ``w_low``, a bfloat16 copy of ``w`` refreshed
    once per optimizer step; the weight and bias gradients come back in float32. Casting inside
    autograd instead (``w.to(bfloat16)`` each step) spent a third of the step in conversions.
    """

    @staticmethod
    def forward(ctx, h, w, b, w_low):
        ctx.save_for_backward(h, w_low)
        return torch.baddbmm(b.to(w_low.dtype), h, w_low)

    @staticmethod
    def backward(ctx, g):
        h, w_low = ctx.saved_tensors
        grad_h = torch.bmm(g, w_low.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(h.transpose(1, 2), g).float()
        grad_b = g.sum(1, keepdim=True, dtype=torch.float32)
        return grad_h, grad_w, grad_b, None


ROW_MULTIPLE = 32


def _pad_rows(x: torch.Tensor) -> torch.Tensor:
    """``x (G, b, ...)`` with zero rows appended up to a multiple of ``ROW_MULTIPLE`` examples.

    Batched matrix products give a run the same bits wherever it sits in the group only when
    every run's slice of each operand starts on the same alignment. With ``b`` rows of ``o``
    outputs a run's slice starts ``g * b * o`` elements in, so an odd ``b`` (the last batch of
    an epoch, the last chunk of an evaluation) and 10 classes put odd runs on another alignment
    than even ones, and MKL rounds them differently. The padded rows carry zero gradients.
    """
    b = x.shape[1]
    extra = -b % ROW_MULTIPLE
    if extra == 0:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], extra, *x.shape[2:])], dim=1)


class StackedMLP(PopulationModule):
    """G MLPs as batched matrix products. ``precision='bfloat16'`` runs the products in
    bfloat16 with float32 master weights, float32 gradients and a float32 loss."""

    def __init__(self, models: list[MLP], precision: str = "float32"):
        super().__init__()
        first = models[0]
        self.size = len(models)
        self.act = activation(first.activation_name)
        self.dropout = first.drops[0].p if len(first.drops) else 0.0
        layers = [*range(len(first.hidden))]
        # weights stored (G, in, out) so that h @ W needs no transpose in the hot loop
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([m.hidden[i].weight.detach().t() for m in models]).contiguous()) for i in layers]
            + [nn.Parameter(torch.stack([m.out.weight.detach().t() for m in models]).contiguous())]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([m.hidden[i].bias.detach() for m in models]).unsqueeze(1).contiguous()) for i in layers]
            + [nn.Parameter(torch.stack([m.out.bias.detach() for m in models]).unsqueeze(1).contiguous())]
        )
        self._names = [f"hidden.{i}" for i in layers] + ["out"]
        self.compute_dtype = torch.bfloat16 if precision == "bfloat16" else None
        if self.compute_dtype is not None:
            for i, w in enumerate(self.weights):
                self.register_buffer(f"_low_{i}", w.detach().to(self.compute_dtype), persistent=False)
            self._low_versions = [-1] * len(self.weights)
        self.generators: list[torch.Generator | None] = [None] * self.size

    def _dropout(self, h: torch.Tensor, rows: int) -> torch.Tensor:
        """Dropout on ``h (G, b_padded, width)``; each run's masks for its ``rows`` real examples
        come from its own generator, as in the single network."""
        if not self.training or self.dropout == 0.0:
            return h
        keep = torch.stack([
            torch.rand((rows, *h.shape[2:]), generator=gen, device=h.device) >= self.dropout for gen in self.generators
        ])
        if rows < h.shape[1]:
            keep = torch.cat([keep, keep.new_zeros(h.shape[0], h.shape[1] - rows, *h.shape[2:])], dim=1)
        return h * keep / (1.0 - self.dropout)

    def _layer(self, h: torch.Tensor, i: int) -> torch.Tensor:
        w, b = self.weights[i], self.biases[i]
        if self.compute_dtype is None:
            return torch.baddbmm(b, h, w)
        low = getattr(self, f"_low_{i}")
        if self._low_versions[i] != w._version:  # the optimizer stepped since the last refresh
            with torch.no_grad():
                low.copy_(w)
            self._low_versions[i] = w._version
        return _LowPrecisionBatchedLinear.apply(h.to(self.compute_dtype), w, b, low)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Last hidden activations ``(G, b_padded, width)`` of ``x (G, b, ...)``."""
        rows = x.shape[1]
        h = _pad_rows(x).flatten(2)
        for i in range(len(self.weights) - 1):
            h = self._dropout(self.act(self._layer(h, i)), rows)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._layer(self._hidden(x), len(self.weights) - 1)[:, : x.shape[1]].float()

    def features_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self._hidden(x.unsqueeze(0).expand(self.size, *x.shape))[:, : x.shape[0]]

    def set_dropout_generators(self, generators: list[torch.Generator]) -> None:
        self.generators = list(generators)

    def run_parameters(self) -> list[dict[str, torch.Tensor]]:
        out = []
        for g in range(self.size):
            d = {}
            for name, w, b in zip(self._names, self.weights, self.biases):
                d[f"{name}.weight"] = w[g].t()
                d[f"{name}.bias"] = b[g, 0]
            out.append(d)
        return out


class VmapPopulation(PopulationModule):
    """Any network without batch norm or dropout, vectorized over runs with ``torch.func``."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        from torch.func import stack_module_state

        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in models[0].modules()):
            raise ValueError("the vmap population form does not support batch norm; use strategy 'loop'")
        if any(isinstance(m, SeededDropout) and m.p > 0 for m in models[0].modules()):
            raise ValueError("the vmap population form cannot give each run its own dropout masks; use strategy 'loop'")
        params, _ = stack_module_state(models)
        self._keys = list(params)
        self.stacked = nn.ParameterList([nn.Parameter(params[k].detach().clone()) for k in self._keys])
        # a copy without real storage, called functionally with each run's parameters
        self._template = [copy.deepcopy(models[0]).to("meta")]
        self.size = len(models)

    def _vmapped(self, x: torch.Tensor, in_dims, features: bool = False) -> torch.Tensor:
        from torch.func import functional_call, vmap

        template = self._template[0]
        module = _FeaturesOf(template) if features else template
        prefix = "net." if features else ""
        params = {prefix + k: p for k, p in zip(self._keys, self.stacked)}
        return vmap(lambda p, xi: functional_call(module, p, (xi,)), in_dims=(0, in_dims))(params, x)

    def features_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self._vmapped(x, None, features=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._vmapped(x, 0)

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self._vmapped(x, None)

    def set_dropout_generators(self, generators: list[torch.Generator]) -> None:
        return None

    def run_parameters(self) -> list[dict[str, torch.Tensor]]:
        return [{k: p[g] for k, p in zip(self._keys, self.stacked)} for g in range(self.size)]


class _FeaturesOf(nn.Module):
    """A module whose forward is ``net.features`` (so that it can be called functionally)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def stacked_weights_aligned(layer_sizes: list[int], precision: str = "float32") -> bool:
    """Whether every run's slice of each stacked ``(G, in, out)`` weight (and of its gradient)
    starts 64 bytes after the previous run's: ``layer_sizes`` is ``[inputs, *widths, classes]``.

    Only then are the batched products bitwise the same for a run wherever it sits in its
    group; a width such as 100 before 10 classes (1,000 floats per run) is not."""
    elements = 32 if precision == "bfloat16" else 16
    return all((a * b) % elements == 0 for a, b in zip(layer_sizes[:-1], layer_sizes[1:]))


def choose_strategy(model_kind: str, device: torch.device, has_dropout: bool, layer_sizes: list[int] | None = None, precision: str = "float32") -> str:
    """The population form to use when the caller says 'auto' (see module docstring).

    MLPs use the stacked form, unless ``layer_sizes`` (``[inputs, *widths, classes]``) leave
    some run's weights off alignment on CPU, where results would then depend on the group."""
    if model_kind == "mlp":
        if device.type == "cpu" and layer_sizes is not None and not stacked_weights_aligned(layer_sizes, precision):
            return "loop"
        return "stacked"
    if model_kind == "small-cnn" and device.type == "cuda" and not has_dropout:
        return "vmap"
    return "loop"


def make_population(models: list[nn.Module], strategy: str, precision: str = "float32") -> PopulationModule:
    if strategy == "stacked":
        if not all(isinstance(m, MLP) for m in models):
            raise ValueError("the stacked population form is for MLPs only; use strategy 'loop' or 'vmap'")
        return StackedMLP(models, precision)
    if strategy == "loop":
        return LoopPopulation(models)
    if strategy == "vmap":
        return VmapPopulation(models)
    if strategy == "grouped":
        from .grouped import GroupedFastCNN

        return GroupedFastCNN(models)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
