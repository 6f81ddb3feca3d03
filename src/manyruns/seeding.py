"""Independent random streams per run and purpose.

Everything random about run ``r`` derives from ``(recipe seed, r, purpose)`` through
``numpy.random.SeedSequence`` spawn keys, so a run's draws depend on nothing else: not on the
other runs of its group, not on the order of training, not on resumption. Each purpose
(initialization, data order, subset, label noise, sweep, dropout, augmentation) has its own
stream; one generator is never reused for two purposes. Streams that are shared by the whole
population (dataset-scope label noise, input randomization) live under a separate scope key.
"""

from __future__ import annotations

import zlib
from enum import IntEnum

import numpy as np


class Purpose(IntEnum):
    INIT = 0
    ORDER = 1
    SUBSET = 2
    NOISE = 3
    SWEEP = 4
    DROPOUT = 5
    AUGMENT = 6
    INPUTS = 7


_RUN_SCOPE = 0
_DATASET_SCOPE = 1


def key_of(value: float | str) -> int:
    """A stable non-negative integer for a level (a probability, a name) in a spawn key."""
    if isinstance(value, str):
        return zlib.crc32(value.encode())
    return int(round(float(value) * 1_000_000_000))


def run_stream(seed: int, run: int, purpose: Purpose, *extra: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(_RUN_SCOPE, int(run), int(purpose), *extra))


def dataset_stream(seed: int, purpose: Purpose, *extra: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(_DATASET_SCOPE, int(purpose), *extra))


def generator(stream: np.random.SeedSequence) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(stream))


def torch_seed(stream: np.random.SeedSequence) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed`` drawn from a stream."""
    return int(stream.generate_state(1, np.uint64)[0] >> np.uint64(1))


def run_seed(seed: int, run: int) -> int:
    """A 32-bit number identifying run ``r``'s streams (shown in the runs table)."""
    return int(np.random.SeedSequence(seed, spawn_key=(_RUN_SCOPE, int(run))).generate_state(1)[0])
