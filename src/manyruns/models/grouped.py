"""The grouped population form of the fast convnet: G networks as one network of grouped
convolutions.

The G runs' images of one step, ``x (G, b, C, H, W)``, become one batch ``(b, G*C, H, W)``;
every convolution is a ``Conv2d(G*c_in, G*c_out, groups=G)`` whose group ``g`` holds run g's
kernel, so run g's channels only ever meet run g's weights. Batch norm over ``G*c`` channels
computes each channel's statistics over ``(b, H, W)``, which are exactly the statistics the
single network computes over its own batch, and keeps per-run running statistics in its slice.
Max-pooling and activations are per channel. The output layer is a batched product
``(G, b, c) @ (G, c, classes)``.

Same mathematics as the per-model loop; the floating-point order of the grouped kernels differs,
so results agree up to float tolerance (``tests/test_grouped.py``), not bit for bit. Memory:
activations are those of the G networks side by side, as in the loop; the weights are
``G`` times the single network's, stored once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .architectures import FastCNN
from .layers import SeededDropout
from .population import PopulationModule


def _grouped_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first = convs[0]
    g = len(convs)
    conv = nn.Conv2d(
        g * first.in_channels, g * first.out_channels, first.kernel_size, first.stride, first.padding,
        groups=g, bias=first.bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.cat([c.weight for c in convs]))
        if first.bias is not None:
            conv.bias.copy_(torch.cat([c.bias for c in convs]))
    return conv


def _grouped_bn(bns: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = bns[0]
    bn = nn.BatchNorm2d(len(bns) * first.num_features, eps=first.eps, momentum=first.momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.cat([b.weight for b in bns]))
        bn.bias.copy_(torch.cat([b.bias for b in bns]))
        bn.running_mean.copy_(torch.cat([b.running_mean for b in bns]))
        bn.running_var.copy_(torch.cat([b.running_var for b in bns]))
    return bn


class GroupedFastCNN(PopulationModule):
    """G :class:`~manyruns.models.architectures.FastCNN` s as one grouped network (see the
    module docstring). Dropout is not supported (each run would need its own masks)."""

    def __init__(self, models: list[FastCNN]):
        super().__init__()
        if not all(isinstance(m, FastCNN) for m in models):
            raise ValueError("the grouped population form is for fast-cnn networks only; use strategy 'loop'")
        if any(isinstance(d, SeededDropout) and d.p > 0 for m in models for d in m.modules()):
            raise ValueError("the grouped population form cannot give each run its own dropout masks; use strategy 'loop'")
        first = models[0]
        self.size = len(models)
        self.logit_scale = first.logit_scale
        self.stem = _grouped_conv([m.stem for m in models])
        self.stem_act = first.stem_act
        self.blocks = nn.ModuleList()
        for i, block in enumerate(first.blocks):
            parts = [m.blocks[i] for m in models]
            grouped = nn.Module()
            grouped.conv1 = _grouped_conv([p.conv1 for p in parts])
            grouped.bn1 = _grouped_bn([p.bn1 for p in parts])
            grouped.conv2 = _grouped_conv([p.conv2 for p in parts])
            grouped.bn2 = _grouped_bn([p.bn2 for p in parts])
            grouped.act = block.act
            self.blocks.append(grouped)
        self.out = nn.Parameter(torch.stack([m.out.weight.detach().t() for m in models]).contiguous())  # (G, c, classes)
        self._widths = [first.stem.out_channels] + [b.conv1.out_channels for b in first.blocks]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``x (G, b, C, H, W)`` -> features ``(G, b, c)``."""
        g, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, g * x.shape[2], *x.shape[3:])
        h = self.stem_act(self.stem(h))
        for blk in self.blocks:
            h = blk.act(blk.bn1(F.max_pool2d(blk.conv1(h), 2)))
            h = blk.act(blk.bn2(blk.conv2(h)))
        return h.amax(dim=(2, 3)).view(b, g, -1).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self._features(x), self.out) * self.logit_scale

    def features_shared(self, x: torch.Tensor) -> torch.Tensor:
        return self._features(x.unsqueeze(0).expand(self.size, *x.shape))

    def set_dropout_generators(self, generators: list[torch.Generator]) -> None:
        return None

    def run_parameters(self) -> list[dict[str, torch.Tensor]]:
        """Each run's parameters as views of the grouped ones, under the single network's names."""
        out = []
        for g in range(self.size):
            c = self._widths[0]
            d = {"stem.weight": self.stem.weight[g * c : (g + 1) * c], "stem.bias": self.stem.bias[g * c : (g + 1) * c]}
            for i, blk in enumerate(self.blocks):
                c = self._widths[i + 1]
                part = slice(g * c, (g + 1) * c)
                d[f"blocks.{i}.conv1.weight"] = blk.conv1.weight[part]
                d[f"blocks.{i}.bn1.weight"] = blk.bn1.weight[part]
                d[f"blocks.{i}.bn1.bias"] = blk.bn1.bias[part]
                d[f"blocks.{i}.conv2.weight"] = blk.conv2.weight[part]
                d[f"blocks.{i}.bn2.weight"] = blk.bn2.weight[part]
                d[f"blocks.{i}.bn2.bias"] = blk.bn2.bias[part]
            d["out.weight"] = self.out[g].t()
            out.append(d)
        return out

    def run_buffers(self) -> list[dict[str, torch.Tensor]]:
        """Each run's batch-norm running statistics, under the single network's names."""
        out = []
        for g in range(self.size):
            d = {}
            for i, blk in enumerate(self.blocks):
                part = slice(g * self._widths[i + 1], (g + 1) * self._widths[i + 1])
                for name in ("bn1", "bn2"):
                    bn = getattr(blk, name)
                    d[f"blocks.{i}.{name}.running_mean"] = bn.running_mean[part]
                    d[f"blocks.{i}.{name}.running_var"] = bn.running_var[part]
            out.append(d)
        return out
