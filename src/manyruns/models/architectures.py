"""The architectures a recipe can name, as ordinary single-network ``nn.Module`` s.

Every module maps ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits. These are the
canonical forms: initialization, flattened-weight layouts and the per-model training path use
them, and the population (many-runs-at-once) forms in :mod:`manyruns.models.population` are
built from them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..recipe import FastCNNSpec, MLPSpec, RecipeError, ResNetSpec, SmallCNNSpec, WideResNetSpec
from .layers import SeededDropout, activation


class MLP(nn.Module):
    """Flatten, then ``Linear -> activation -> dropout`` per hidden width, then a linear output."""

    def __init__(self, in_features: int, widths: list[int], num_classes: int, act: str = "relu", dropout: float = 0.0):
        super().__init__()
        sizes = [in_features, *widths]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = activation(act)
        self.drops = nn.ModuleList(SeededDropout(dropout) for _ in widths)
        self.out = nn.Linear(sizes[-1], num_classes)
        self.activation_name = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer, drop in zip(self.hidden, self.drops):
            h = drop(self.act(layer(h)))
        return self.out(h)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations ``(B, widths[-1])``."""
        h = x.flatten(1)
        for layer in self.hidden:
            h = self.act(layer(h))
        return h


class SmallCNN(nn.Module):
    """The Small CNN Zoo network: ``layers`` 3x3 stride-2 'valid' convolutions of ``channels``
    channels, each followed by the activation and optional dropout; global average pooling;
    a dense output. 4,970 parameters on one-channel inputs with the defaults."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 16, layers: int = 3, act: str = "relu", dropout: float = 0.0):
        super().__init__()
        sizes = [in_channels] + [channels] * layers
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=0) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = activation(act)
        self.drops = nn.ModuleList(SeededDropout(dropout) for _ in range(layers))
        self.out = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv, drop in zip(self.convs, self.drops):
            h = drop(self.act(conv(h)))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = activation(act)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.act(h + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (3x3 stem, no max-pool): ResNet-18 with ``blocks=[2, 2, 2, 2]``."""

    def __init__(self, in_channels: int, num_classes: int, blocks: list[int], width: int = 64, act: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), activation(act))
        stages, c = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(c, c_out, 2 if (i > 0 and j == 0) else 1, act))
                c = c_out
        self.stages = nn.Sequential(*stages)
        self.drop = SeededDropout(dropout)
        self.out = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.features(x)))


class WideBlock(nn.Module):
    """Pre-activation wide basic block (BN-act-conv twice, dropout between the convolutions)."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = activation(act)
        self.drop = SeededDropout(dropout)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        h = self.conv1(o)
        h = self.conv2(self.drop(self.act(self.bn2(h))))
        return h + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-width (Zagoruyko and Komodakis): 3 groups of (depth-4)/6 blocks of 16k, 32k, 64k channels."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, width: int = 10, act: str = "relu", dropout: float = 0.0):
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, c = [], widths[0]
        for i, c_out in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(c, c_out, 2 if (i > 0 and j == 0) else 1, act, dropout))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.act = activation(act)
        self.out = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.blocks(self.stem(x)))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class FastBlock(nn.Module):
    """conv3x3 -> max-pool 2 -> batch norm -> act -> conv3x3 -> batch norm -> act."""

    def __init__(self, c_in: int, c_out: int, act: str, momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, momentum=momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=momentum)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(nn.functional.max_pool2d(self.conv1(x), 2)))
        return self.act(self.bn2(self.conv2(h)))


class FastCNN(nn.Module):
    """The fast CIFAR convnet (see :class:`~manyruns.recipe.FastCNNSpec`): 2x2 stem, one
    :class:`FastBlock` per width, global max-pool, dropout, bias-free linear output times
    ``logit_scale``. 1.97 M parameters with the defaults on 3-channel inputs."""

    def __init__(self, in_channels: int, num_classes: int, stem: int = 24, widths: list[int] = (64, 256, 256), act: str = "gelu",
                 logit_scale: float = 1 / 9, momentum: float = 0.4, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem, 2, 1, 0)
        self.stem_act = activation(act)
        blocks, c = [], stem
        for w in widths:
            blocks.append(FastBlock(c, w, act, momentum))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.drop = SeededDropout(dropout)
        self.out = nn.Linear(c, num_classes, bias=False)
        self.logit_scale = float(logit_scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem_act(self.stem(x))).amax(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(self.features(x))) * self.logit_scale


def build_model(spec, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """An untrained single network for a recipe's ``[model]`` section (PyTorch's default init)."""
    c, h, w = input_shape
    if isinstance(spec, MLPSpec):
        return MLP(c * h * w, list(spec.widths), num_classes, spec.activation, spec.dropout)
    if isinstance(spec, SmallCNNSpec):
        if min(h, w) < 2 ** (spec.layers + 1) - 1:
            raise RecipeError(
                f"field 'model.layers': small-cnn with {spec.layers} stride-2 'valid' layers needs inputs of at least "
                f"{2 ** (spec.layers + 1) - 1} pixels, and this dataset's are {h}x{w}",
                field="model.layers",
            )
        return SmallCNN(c, num_classes, spec.channels, spec.layers, spec.activation, spec.dropout)
    if isinstance(spec, ResNetSpec):
        return ResNet(c, num_classes, list(spec.blocks), spec.width, spec.activation, spec.dropout)
    if isinstance(spec, WideResNetSpec):
        return WideResNet(c, num_classes, spec.depth, spec.width, spec.activation, spec.dropout)
    if isinstance(spec, FastCNNSpec):
        if (min(h, w) - 1) >> len(spec.widths) < 1:
            raise RecipeError(
                f"field 'model.widths': fast-cnn with {len(spec.widths)} blocks halves the resolution {len(spec.widths)} times after a 2x2 stem, "
                f"and this dataset's images are {h}x{w}; use at most {max(1, (min(h, w) - 1).bit_length() - 1)} widths",
                field="model.widths",
            )
        return FastCNN(c, num_classes, spec.stem, list(spec.widths), spec.activation, spec.logit_scale, spec.batchnorm_momentum, spec.dropout)
    raise TypeError(f"unknown model spec {spec!r}")


def initialize(model: nn.Module, init: str, init_std: float = 0.05) -> None:
    """Re-initialize weights of conv and linear layers in place (biases to zero) unless ``init`` is 'default'."""
    if init == "default":
        return
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        w = module.weight
        if init == "he_normal":
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
        elif init == "glorot_normal":
            nn.init.xavier_normal_(w)
        elif init == "orthogonal":
            nn.init.orthogonal_(w)
        elif init == "normal":
            nn.init.normal_(w, 0.0, init_std)
        elif init == "truncated_normal":
            nn.init.trunc_normal_(w, 0.0, init_std, -2 * init_std, 2 * init_std)
        else:
            raise ValueError(f"unknown init {init!r}")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def create_model(spec, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """Build and initialize one network deterministically from ``seed`` (a run's init stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec, input_shape, num_classes)
        initialize(model, spec.init, spec.init_std)
    return model


def parameter_layout(model: nn.Module) -> list[dict]:
    """Where each parameter lives in the flattened weight vector: name, shape, [start, end)."""
    layout, start = [], 0
    for name, p in model.named_parameters():
        layout.append({"name": name, "shape": list(p.shape), "start": start, "end": start + p.numel()})
        start += p.numel()
    return layout


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of one forward pass on one example, from the conv and
    linear layers (activations, normalization and pooling are not counted)."""
    flops = 0

    def hook(module, inputs, output):
        nonlocal flops
        if isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features
        elif isinstance(module, nn.Conv2d):
            out_elems = math.prod(output.shape[1:])
            flops += 2 * out_elems * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return flops
