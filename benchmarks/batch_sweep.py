"""Time per image of one U-Net call at several batch sizes (ONNX Runtime), to pick the sub-batch size.

    python -m ddpm.benchmarks.batch_sweep --onnx unet.onnx --batches 1,4,8,16,32,64,128

Median of repeated calls after two warm-up calls; no PyTorch needed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ..runtime.pipeline import DDPM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", default=None, help="model (default: the embedded one)")
    parser.add_argument("--batches", default="1,4,8,16,32,64,128")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--images", type=int, default=64, help="images timed per batch size (at least 3 calls)")
    args = parser.parse_args()
    ddpm = DDPM.load(args.onnx, provider=args.provider, threads=args.threads)
    info = ddpm.info
    print(f"{ddpm.session.path.name} on {ddpm.provider}")
    print("| batch | ms per call (min-max) | ms per image |")
    print("|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for batch in map(int, args.batches.split(",")):
        x = rng.standard_normal((batch, info.image_channels, info.image_size, info.image_size), dtype=np.float32)
        t = np.full(batch, info.make_schedule().timesteps // 2, dtype=np.int64)
        for _ in range(2):
            ddpm.session.eps(x, t)
        times = []
        for _ in range(max(3, args.images // batch)):
            start = time.perf_counter()
            ddpm.session.eps(x, t)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(
            f"| {batch} | {median * 1e3:.2f} ({min(times) * 1e3:.2f}-{max(times) * 1e3:.2f}) "
            f"| {median / batch * 1e3:.2f} |"
        )


if __name__ == "__main__":
    main()
