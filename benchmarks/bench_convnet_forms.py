"""How to run the fast convnet on this machine's CPU: memory layout, precision, and population form.

One training step (forward, loss, backward, SGD with momentum) on a batch of CIFAR-sized
random images, with one intra-op thread as the training workers use, best of ``--reps``:

* the single network in NCHW (PyTorch's default) against channels-last (NHWC), each in float32
  and under bfloat16 autocast;
* ``G`` networks per step: the per-model loop (the engine's default on CPU) against the grouped
  form (one network of grouped convolutions, :mod:`manyruns.models.grouped`), per run.

Each line also gives the achieved rate (three times the forward FLOPs per example, times the
batch, over the step time) and, as the floor, the step time at the float32 matrix-product rate
measured here with one thread.

    python benchmarks/bench_convnet_forms.py [--batch 256 --groups 4 --reps 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, gemm_rate, machine  # noqa: E402

from manyruns.models.architectures import FastCNN, forward_flops  # noqa: E402
from manyruns.models.grouped import GroupedFastCNN  # noqa: E402
from manyruns.models.population import LoopPopulation  # noqa: E402

NETS = {
    "16-32-64": dict(stem=12, widths=[16, 32, 64]),
    "32-64-128": dict(stem=16, widths=[32, 64, 128]),
    "64-256-256": dict(stem=24, widths=[64, 256, 256]),
}


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int, channels_last: bool = False, bf16: bool = False) -> float:
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(reps + 1):  # the first step warms up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--nets", default="16-32-64,32-64-128")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "convnet_forms.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rate = gemm_rate(torch.float32, n=2048, threads=1)
    print(f"float32 matrix products, 1 thread: {rate / 1e9:.1f} GFLOP/s", flush=True)
    out = {"machine": machine(), "batch": args.batch, "groups": args.groups, "gemm_gflops_1_thread": rate / 1e9, "nets": {}}
    b, g = args.batch, args.groups
    for name in args.nets.split(","):
        cfg = NETS[name]
        net = FastCNN(3, 10, **cfg)
        flops = 3 * forward_flops(net, (3, 32, 32)) * b
        floor = flops / rate
        x, y = torch.randn(b, 3, 32, 32), torch.randint(0, 10, (b,))
        rows = {}
        for channels_last in (False, True):
            for bf16 in (False, True):
                s = step_seconds(copy.deepcopy(net), x, y, args.reps, channels_last, bf16)
                key = f"{'channels_last' if channels_last else 'nchw'}/{'bfloat16' if bf16 else 'float32'}"
                rows[key] = s
                print(f"{name} {key}: {s * 1e3:.0f} ms/step ({flops / s / 1e9:.1f} GFLOP/s; floor {floor * 1e3:.0f} ms)", flush=True)
        nets = [FastCNN(3, 10, **cfg) for _ in range(g)]
        xg, yg = torch.randn(g, b, 3, 32, 32), torch.randint(0, 10, (g, b))
        loop = LoopPopulation(copy.deepcopy(nets))
        loop.use_channels_last()
        for form, pop in (("loop (channels-last)", loop), ("grouped", GroupedFastCNN(copy.deepcopy(nets)))):
            s = step_seconds(pop, xg, yg, args.reps) / g
            rows[form] = s
            print(f"{name} {form}, G={g}: {s * 1e3:.0f} ms/step per run ({flops / s / 1e9:.1f} GFLOP/s)", flush=True)
        out["nets"][name] = {"config": cfg, "train_flops_per_step": flops, "floor_s": floor, "step_s": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
