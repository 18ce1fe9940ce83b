"""Training throughput: images/s of one optimizer step (forward + backward + AdamW + EMA) per preset.

    python -m ddpm.benchmarks.train_throughput --presets small,labml --batch-size 64

Random inputs of the training shape (throughput does not depend on the data). Reports the
median over ``--steps`` timed steps after ``--warmup`` untimed ones, with min and max, and the
achieved GFLOP/s from PyTorch's FLOP counter over one full step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..core.schedule import make_schedule
from ..runtime.machine import cpu_name
from ..train.config import preset
from ..train.diffusion import Diffusion
from ..train.ema import EMA
from ..train.unet import UNet, count_parameters, forward_flops


def measure(name: str, batch_size: int, steps: int, warmup: int, precision: str, image_size: int = 32) -> dict:
    torch.manual_seed(0)
    model = UNet(preset(name))
    ema = EMA(model, 0.999, warmup=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    diffusion = Diffusion(make_schedule())
    x0 = torch.rand(batch_size, 1, image_size, image_size) * 2 - 1
    use_bf16 = precision == "bf16"

    def step(index: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = diffusion.random_loss(model, x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model, index)

    counter = FlopCounterMode(display=False)
    with counter:
        step(0)
    for index in range(1, warmup):
        step(index)
    times = []
    for index in range(steps):
        start = time.perf_counter()
        step(warmup + index)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    step_flops = counter.get_total_flops()
    return {
        "preset": name,
        "parameters": count_parameters(model),
        "gflop_per_forward": forward_flops(model, image_size) / 1e9,
        "batch_size": batch_size,
        "precision": precision,
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "images_per_s": batch_size / median,
        "achieved_gflops": step_flops / median / 1e9,
        "steps_timed": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,labml", help="comma-separated preset names")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (the first is FLOP-counted)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        measure(name, args.batch_size, args.steps, max(args.warmup, 1), args.precision)
        for name in args.presets.split(",")
    ]
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"training throughput on {machine}, batch {args.batch_size}, {args.precision}")
    print("| preset | parameters | GFLOP/forward | step median (min-max) | images/s | achieved GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['preset']} | {row['parameters']:,} | {row['gflop_per_forward']:.2f} | "
            f"{row['step_s_median']:.3f} s ({row['step_s_min']:.3f}-{row['step_s_max']:.3f}) | "
            f"{row['images_per_s']:.1f} | {row['achieved_gflops']:.0f} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
