"""OpenVINO's performance hints on this CPU: LATENCY (one request on every core, what the runtime
uses) against THROUGHPUT (the streams OpenVINO picks, the batch split over as many requests run at
once), for the embedded model at each of the backend's precisions. Calls interleaved, minimum of
the repeats, ms per image per network call.

    python -m ddpm.benchmarks.openvino_hints [--batches 16,32,64] [--repeats 7] [--out hints.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..runtime.machine import cpu_name, flag_line
from ..runtime.openvino_session import BF16_FLAGS, bf16_support, openvino_module, openvino_version
from ..runtime.pipeline import default_model_path


def compiled(ov, path: Path, precision: str, hint: str):
    return ov.Core().compile_model(
        ov.Core().read_model(str(path)), "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    )


def latency_call(model):
    request = model.create_infer_request()
    return lambda feeds: request.infer(feeds)


def throughput_call(model):
    """The batch split over OPTIMAL_NUMBER_OF_INFER_REQUESTS requests started together."""
    requests = [model.create_infer_request() for _ in range(model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))]

    def call(feeds):
        parts = np.array_split(np.arange(len(feeds["x"])), len(requests))
        for request, rows in zip(requests, parts):
            request.start_async({name: np.ascontiguousarray(value[rows]) for name, value in feeds.items()})
        for request in requests:
            request.wait()

    return call, len(requests)


def feeds_for(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((batch, 1, 32, 32), dtype=np.float32),
        "t": np.full(batch, 500, np.int64),
        "y": rng.integers(0, 10, batch).astype(np.int64),
    }


def measure(batches: list[int], repeats: int) -> tuple[list[str], dict[str, dict[int, float]]]:
    ov = openvino_module()
    paths = [("fp32", default_model_path(), "f32"), ("int8", default_model_path("int8"), "f32")]
    if bf16_support() is None:
        paths.insert(1, ("bf16", default_model_path(), "bf16"))
    calls, names = {}, []
    for label, path, precision in paths:
        calls[f"{label} LATENCY"] = latency_call(compiled(ov, path, precision, "LATENCY"))
        call, requests = throughput_call(compiled(ov, path, precision, "THROUGHPUT"))
        calls[f"{label} THROUGHPUT ({requests} requests)"] = call
    names = list(calls)
    found: dict[str, dict[int, float]] = {name: {} for name in names}
    for batch in batches:
        feeds = feeds_for(batch)
        best = {name: float("inf") for name in names}
        for call in calls.values():
            call(feeds)
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call(feeds)
                best[name] = min(best[name], time.perf_counter() - start)
        for name in names:
            found[name][batch] = best[name] / batch * 1e3
    return names, found


def report(batches: list[int], names: list[str], found: dict[str, dict[int, float]]) -> str:
    lines = [
        f"# OpenVINO {openvino_version()} performance hints, {cpu_name()}",
        "",
        f"Flags: {flag_line()}"
        f" (native bf16 needs {' or '.join(BF16_FLAGS)}). ms per image per network call, minimum of the repeats.",
        "",
        "| path and hint | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    lines += [f"| {name} | " + " | ".join(f"{found[name][b]:.2f}" for b in batches) + " |" for name in names]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="16,32,64", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    text = report(batches, *measure(batches, args.repeats))
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
