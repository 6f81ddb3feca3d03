"""The products behind influence: masked sums over the run axis, exact for 0/1 values.

Over the runs, the "in" sums of influence are one matrix product: ``A = V^T M`` (``V (R, T)``
test values, ``M (R, N)`` train mask). :class:`MaskedProduct` accumulates it block by block of
runs; :class:`HalfProducts` keeps the two halves of the runs apart (the split-half stability)
at no extra multiplication.

Precision: masks and 0/1 correctness are exact in small integer and floating-point formats.
For 0/1 values the default is the faster, on this CPU, of int8 products with int32
accumulation (exact for any number of runs) and float32 products (exact below 2^24 runs):
:func:`exact_binary_precision` measures both once per process. int8 wins by about 10x where
the CPU has int8 dot-product instructions (AVX-512 VNNI, AMX) and loses by about 60x where it
has not (AVX2 only; see docs/benchmarks.md). The 'bfloat16' option multiplies slices of at most 256 runs, whose integer results
bfloat16 holds exactly, and adds them into float32. bfloat16 products return bfloat16 on CPU,
so a longer product would round counts above 256; the slicing and the additions make that
option slower than int8 here (see docs/benchmarks.md). Non-binary values (``trueprob``,
``margin``) use float32 products, plus a second product of squared values for their standard
errors.
"""

from __future__ import annotations

import time

import numpy as np
import torch

EXACT_BF16_RUNS = 256  # integers up to 2^8 are exact in bfloat16
_FASTER_EXACT: str | None = None


def exact_binary_precision() -> str:
    """'int8' or 'float32', whichever multiplies 0/1 blocks faster on this CPU (both are exact
    for 0/1 values), from a probe of a few milliseconds the first time it is asked for."""
    global _FASTER_EXACT
    if _FASTER_EXACT is None:
        a = torch.randint(0, 2, (128, 1024), dtype=torch.int8)
        b = torch.randint(0, 2, (1024, 128), dtype=torch.int8)
        fa, fb = a.float(), b.float()

        def fastest(product) -> float:
            product()  # warm-up
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                product()
                times.append(time.perf_counter() - t0)
            return min(times)

        int8, float32 = fastest(lambda: torch._int_mm(a, b)), fastest(lambda: fa @ fb)
        _FASTER_EXACT = "int8" if int8 <= float32 else "float32"
    return _FASTER_EXACT


class MaskedProduct:
    """Accumulates ``sums (T, W) += values^T @ mask`` over blocks of runs.

    ``values (b, T)``: per-run values on the rows (test examples); ``mask (b, W) bool``: which
    of the ``W`` columns (train examples) each run trained on. With ``squares`` a second
    accumulator holds the products of the squared values (for standard errors of non-binary
    values). ``precision``:

    * 'int8' (0/1 values only): int8 products with int32 accumulation, exact for any number of
      runs below 2^31;
    * 'bfloat16' (0/1 values only): bfloat16 products over slices of at most 256 runs, whose
      integer results bfloat16 holds exactly, added into float32 (exact below 2^24 runs);
    * 'float32': float32 products (any values).

    ``row_tile`` x ``col_tile``: the output tile of one product call (and of the temporary
    buffer it is written to before being added). ``storage``: optional flat tensors (int32 or
    float32 as the precision needs; one per accumulator) to hold the accumulators, so that
    successive column blocks reuse memory that is already mapped.
    """

    def __init__(
        self, rows: int, cols: int, precision: str = "int8", squares: bool = False, row_tile: int = 512, col_tile: int = 2048,
        storage: tuple[torch.Tensor, ...] | None = None,
    ):
        if precision not in ("int8", "bfloat16", "float32"):
            raise ValueError(f"precision must be 'int8', 'bfloat16' or 'float32', got {precision!r}")
        if squares and precision != "float32":
            raise ValueError("sums of squares are for non-binary values, which need precision 'float32'")
        self.precision = precision
        dtype = torch.int32 if precision == "int8" else torch.float32
        if storage is None:
            storage = tuple(torch.empty(rows * cols, dtype=dtype) for _ in range(2 if squares else 1))
        self._acc = storage[0][: rows * cols].view(rows, cols)
        if precision != "int8":  # the int8 path's first block writes the accumulator directly
            self._acc.zero_()
        self.square_sums = storage[1][: rows * cols].view(rows, cols).zero_() if squares else None
        self.row_tile = row_tile
        self.col_tile = col_tile
        self._buffer: torch.Tensor | None = None
        self._empty = True
        self._finished = False

    @staticmethod
    def storage_for(rows: int, cols: int, precision: str, squares: bool = False) -> tuple[torch.Tensor, ...]:
        """Flat tensors for the accumulators of products of up to ``rows x cols``."""
        dtype = torch.int32 if precision == "int8" else torch.float32
        return tuple(torch.empty(rows * cols, dtype=dtype) for _ in range(2 if squares else 1))

    @property
    def raw(self) -> torch.Tensor:
        """``(T, W)``: the accumulated sums as accumulated (int32 for 'int8', else float32)."""
        if self._empty and self.precision == "int8":
            self._acc.zero_()  # no block was added
            self._empty = False
        return self._acc

    @property
    def sums(self) -> torch.Tensor:
        """``(T, W) float32``: the accumulated sums (no more blocks can be added after reading)."""
        self.raw
        if self.precision == "int8" and not self._finished:
            # convert in place, one row tile at a time, into the same memory viewed as float32
            as_float = self._acc.view(torch.float32)
            for r0 in range(0, self._acc.shape[0], self.row_tile):
                as_float[r0 : r0 + self.row_tile] = self._acc[r0 : r0 + self.row_tile].to(torch.float32)
            self._acc = as_float
        self._finished = True
        return self._acc

    def add(self, values: np.ndarray, mask: np.ndarray) -> None:
        if self._finished:
            raise RuntimeError("sums were read already; start a new MaskedProduct")
        if values.shape[0] == 0:
            return
        if self.precision != "float32" and values.dtype != bool:
            raise ValueError(f"{self.precision} products are exact only for 0/1 values; use precision 'float32'")
        if self.precision == "int8":
            self._add_int8(values, mask)
        elif self.precision == "bfloat16":
            self._add_bf16(values, mask)
        else:
            v = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
            m = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)
            self._acc.addmm_(v.T, m)
            if self.square_sums is not None:
                self.square_sums.addmm_(v.square().T, m)

    def _add_int8(self, values: np.ndarray, mask: np.ndarray) -> None:
        # numpy bools are bytes holding 0 or 1: viewed as int8 without a copy
        vt = torch.from_numpy(np.ascontiguousarray(values.T).view(np.int8))  # (T, b)
        m = torch.from_numpy(np.ascontiguousarray(mask).view(np.int8))  # (b, W)
        rows, cols = self._acc.shape
        rt, ct = min(self.row_tile, rows), min(self.col_tile, cols)
        if self._empty:  # the first block writes the accumulator directly
            for r0 in range(0, rows, rt):
                torch._int_mm(vt[r0 : r0 + rt], m, out=self._acc[r0 : r0 + rt])
            self._empty = False
            return
        if self._buffer is None or self._buffer.numel() != rt * ct:
            self._buffer = torch.empty(rt * ct, dtype=torch.int32)
        # later blocks: products of cache-sized tiles, each added to the accumulator at once
        for r0 in range(0, rows, rt):
            r1 = min(r0 + rt, rows)
            for c0 in range(0, cols, ct):
                c1 = min(c0 + ct, cols)
                out = self._buffer[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
                torch._int_mm(vt[r0:r1], m[:, c0:c1], out=out)
                self._acc[r0:r1, c0:c1].add_(out)

    def _add_bf16(self, values: np.ndarray, mask: np.ndarray) -> None:
        vt = torch.from_numpy(np.ascontiguousarray(values.T)).to(torch.bfloat16)  # (T, b)
        m = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.bfloat16)  # (b, W)
        b = m.shape[0]
        rows, cols = self._acc.shape
        rt, ct = min(self.row_tile, rows), min(self.col_tile, cols)
        if self._buffer is None or self._buffer.shape != (rt, ct):
            self._buffer = torch.empty(rt, ct, dtype=torch.bfloat16)
            self._wide = torch.empty(rt, ct, dtype=torch.float32)
        # Each output tile stays in cache while the partial products of all 256-run slices of
        # this block are added to it.
        for r0 in range(0, rows, rt):
            r1 = min(r0 + rt, rows)
            for c0 in range(0, cols, ct):
                c1 = min(c0 + ct, cols)
                tile = self._acc[r0:r1, c0:c1]
                out = self._buffer[: r1 - r0, : c1 - c0]
                wide = self._wide[: r1 - r0, : c1 - c0]
                for k0 in range(0, b, EXACT_BF16_RUNS):
                    k1 = min(k0 + EXACT_BF16_RUNS, b)
                    torch.mm(vt[r0:r1, k0:k1], m[k0:k1, c0:c1], out=out)
                    tile.add_(wide.copy_(out))


class HalfProducts:
    """Masked products of the two halves of the runs (``split``), or one product of all runs.

    ``parts``: one :class:`MaskedProduct` per half (``rows x cols``); the sums over all runs are
    the sum of the parts. Keeping the halves apart doubles the accumulators' memory and adds no
    multiplications. ``storage``: from :meth:`storage_for`, reused across column blocks.
    """

    def __init__(self, rows: int, cols: int, precision: str, squares: bool, split: bool, storage: list[tuple[torch.Tensor, ...]]):
        self.parts = [MaskedProduct(rows, cols, precision, squares, storage=s) for s in storage[: 2 if split else 1]]

    @staticmethod
    def storage_for(rows: int, cols: int, precision: str, squares: bool, split: bool) -> list[tuple[torch.Tensor, ...]]:
        return [MaskedProduct.storage_for(rows, cols, precision, squares) for _ in range(2 if split else 1)]

    def add(self, values: np.ndarray, mask: np.ndarray, in_a: np.ndarray) -> None:
        """Add ``values (b, rows)`` and ``mask (b, cols)`` of a block of runs; ``in_a (b,) bool``:
        the runs of the first half."""
        if len(self.parts) == 1 or in_a.all():
            self.parts[0].add(values, mask)
        elif not in_a.any():
            self.parts[1].add(values, mask)
        else:
            self.parts[0].add(values[in_a], mask[in_a])
            self.parts[1].add(values[~in_a], mask[~in_a])
