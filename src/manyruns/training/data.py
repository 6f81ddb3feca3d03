"""Training data held on the device as tensors, batches gathered by index, and augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.base import Dataset
from ..plan import realize_inputs
from ..recipe import Recipe


@dataclass
class DeviceData:
    """A dataset scaled to float32 and placed on one device.

    ``x_train (N, C, H, W)``, ``x_test (T, C, H, W)`` float32; ``y_test (T,)`` int64.
    (Training labels are per run: the engine receives them with each run.)
    """

    x_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    _casts: dict = field(default_factory=dict, repr=False)

    def train_inputs(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``x_train`` in ``dtype`` (a cast copy is made once and kept)."""
        if dtype == self.x_train.dtype:
            return self.x_train
        if dtype not in self._casts:
            self._casts[dtype] = self.x_train.to(dtype)
        return self._casts[dtype]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def scale(x: np.ndarray, normalize: str, stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """``(N, C, H, W)`` pixels in [0, 255] units (uint8, or float32 for gaussian inputs) to
    float32: unit ``x / 255`` ([0, 1] for uint8), symmetric ``x / 127.5 - 1`` ([-1, 1] for uint8),
    or standard (per-channel ``(x - mean) / std`` with ``stats`` in [0, 255] units)."""
    x = x.astype(np.float32)
    if normalize == "unit":
        return x / np.float32(255.0)
    if normalize == "symmetric":
        return x / np.float32(127.5) - np.float32(1.0)
    mean, std = stats
    mean = mean.astype(np.float32)[None, :, None, None]
    std = np.maximum(std, 1e-6).astype(np.float32)[None, :, None, None]
    return (x - mean) / std


def prepare(dataset: Dataset, recipe: Recipe, inputs: str, device: torch.device) -> DeviceData:
    """Randomize (per ``inputs``), scale and move a dataset to ``device``. 'standard' uses the
    per-channel mean and std of the training images after randomization (for gaussian inputs,
    those of the drawn values), so the network sees mean 0 and std 1 whatever the randomization."""
    x_train, x_test = realize_inputs(recipe, inputs, dataset)
    stats = None
    if recipe.data.normalize == "standard":
        xf = x_train.astype(np.float64)
        stats = (xf.mean(axis=(0, 2, 3)), xf.std(axis=(0, 2, 3)))
    return DeviceData(
        x_train=torch.from_numpy(scale(x_train, recipe.data.normalize, stats)).to(device),
        x_test=torch.from_numpy(scale(x_test, recipe.data.normalize, stats)).to(device),
        y_test=torch.from_numpy(dataset.y_test.astype(np.int64)).to(device),
        num_classes=dataset.num_classes,
    )


def augment(x: torch.Tensor, flips: torch.Tensor | None, offsets: torch.Tensor | None, pad: int) -> torch.Tensor:
    """Flip and crop a batch ``(M, C, H, W)``.

    ``flips (M,) bool``: mirror horizontally. ``offsets (M, 2) int64`` in ``[0, 2 * pad]``: the
    top-left corner of the ``H x W`` crop taken from the image zero-padded by ``pad``.
    """
    if flips is not None:
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    if offsets is not None and pad > 0:
        m, c, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (M, H)
        cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (M, W)
        batch = torch.arange(m, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x
