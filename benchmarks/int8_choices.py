"""Which parts of the U-Net to leave in float in the int8 copy: each choice's ε error and speed.

    python -m ddpm.benchmarks.int8_choices --onnx runtime/models/default.onnx --data-dir ../shared/data/mnist

Every variant is calibrated on the same noisy training digits as ``ddpm-export --int8`` and scored on
the same held-out ones: the relative RMS difference of its ε to the fp32 model's, and the time of one
network call at batch 16 on the CPU (fastest of 20, after 3 warm-up calls; run it on a quiet machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnx

from ..core.metadata import ModelInfo
from ..export import quantize as q
from ..runtime.session import cpu_session


def variants(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Name of the choice → nodes kept float (ddpm-export's choice first)."""
    nodes = [node for node in model.graph.node if node.name]
    convs = [node.name for node in nodes if node.op_type == "Conv"]
    stored = {tensor.name for tensor in model.graph.initializer}
    products = [node.name for node in nodes if node.op_type == "MatMul" and not set(node.input) & stored]
    return {
        "ddpm-export --int8 (first/last conv, attention products float)": q.float_nodes(model),
        "also the first and last convolutions in int8": products,
        "also attention's QK^T and softmax.V in int8": [convs[0], convs[-1]],
        "every Conv and MatMul in int8": [],
    }


def call_ms(blob: bytes, feed: dict, threads: int) -> float:
    session = cpu_session(blob, threads)
    for _ in range(3):
        session.run(None, feed)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="an fp32 ε export")
    parser.add_argument("--data-dir", type=Path, required=True, help="MNIST training files, for calibration")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads [default: ONNX Runtime's choice]")
    args = parser.parse_args()
    model = onnx.load(args.onnx)
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{index}"
    info = ModelInfo.from_metadata({p.key: p.value for p in model.metadata_props}, str(args.onnx))
    calibration, held_out, _, _ = q.calibration_data(info, args.data_dir)
    fp32 = model.SerializeToString()
    threads = args.threads
    print(f"fp32: {call_ms(fp32, held_out[0], threads):.2f} ms per call at batch 16")
    print("| kept in float | ε relative RMS difference | ms per call, batch 16 |\n|---|---:|---:|")
    for label, keep in variants(model).items():
        quantized = q.quantize(model, info, calibration, keep=keep).SerializeToString()
        error = q.relative_error(fp32, quantized, held_out)
        print(f"| {label} | {error:.4f} | {call_ms(quantized, held_out[0], threads):.2f} |")


if __name__ == "__main__":
    main()
