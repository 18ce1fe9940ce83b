"""An exported U-Net in an OpenVINO compiled model on the CPU: ε(x, t) behind the interface of
:class:`~ddpm.runtime.session.UNetSession`, at f32 or bf16 inference precision.

OpenVINO reads the same .onnx files (the int8 QDQ copy too). bf16 runs the float layers in
bfloat16 on CPUs with AMX or AVX512-BF16, which OpenVINO executes natively; elsewhere it would
only emulate it, so it is refused. Threads and streams come from OpenVINO's own LATENCY hint (one
request uses every core); ``threads`` caps them. The optional ``openvino`` package is the
``[openvino]`` extra; ``onnxruntime-openvino`` is not used, as it replaces the onnxruntime module.

    session = OpenVINOSession(default_model_path(), precision="bf16")
    eps = session.eps(x, t, y)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.errors import DDPMError, summary
from .machine import cpu_flags, cpu_name
from .session import EpsCalls, read_model_file

OPENVINO_PROVIDER = "OpenVINO CPU"  # what ``provider`` says, beside ONNX Runtime's provider names
OPENVINO_EXTRA = 'pip install "ddpm-mnist[openvino]"'
PRECISIONS = ("fp32", "bf16")  # inference precision of the float layers
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_module():
    """The ``openvino`` module, or a one-line error naming the extra that installs it."""
    try:
        import openvino
    except ImportError:
        raise DDPMError(f"--provider openvino needs the openvino package: {OPENVINO_EXTRA}") from None
    return openvino


def openvino_version() -> str | None:
    """The installed OpenVINO's version, None where it is not installed (nothing imported then)."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def bf16_support() -> str | None:
    """Why this CPU cannot run bf16 natively, or None where it can (AMX or AVX512-BF16)."""
    flags = cpu_flags()
    if flags is None:  # no /proc/cpuinfo: OpenVINO's own view of the CPU decides
        capabilities = openvino_module().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return None if "BF16" in capabilities else f"OpenVINO reports no bf16 support on {cpu_name()}"
    if any(flag in flags for flag in BF16_FLAGS):
        return None
    return (
        f"bf16 needs a CPU with AMX or AVX512-BF16; {cpu_name()} has neither ({' and '.join(BF16_FLAGS)} are missing)"
    )


class OpenVINOSession(EpsCalls):
    """ε_θ(x_t, t) through an OpenVINO CPU compiled model, with the model's metadata.

    ``precision`` is the float layers' inference precision: "fp32" (the same ε as ONNX Runtime to
    float round-off) or "bf16". An int8 copy runs its quantized layers in int8 and the rest at f32.
    """

    backend = "openvino"
    on_cpu = True
    cuda_graph = False
    device_id = 0

    def __init__(self, model_path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise DDPMError(f"OpenVINO precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.path = Path(model_path)
        self.threads = threads
        self.notes: list[str] = []
        self.problems: list[str] = []
        ov = openvino_module()
        model = read_model_file(self.path)
        model_bytes, self.file_sha256, self.info = model.data, model.sha256, model.info
        if precision == "bf16":
            if self.info.precision != "fp32":
                raise DDPMError(f"{self.path} is an {self.info.precision} copy; bf16 inference runs the fp32 model")
            refusal = bf16_support()
            if refusal:
                raise DDPMError(refusal)
        self.precision = precision if self.info.precision == "fp32" else self.info.precision
        self.provider = f"{OPENVINO_PROVIDER} {self.precision}"  # said in summaries and recorded with the samples
        self.version = openvino_version() or ov.__version__
        self.compiled = self._compile(ov, model_bytes, precision, threads)
        self.request = self.compiled.create_infer_request()
        self._check_signature()
        self.run_seconds = 0.0
        self.run_calls = 0
        self.run_rows = 0

    def _compile(self, ov, model_bytes: bytes, precision: str, threads: int | None):
        core = ov.Core()
        try:
            model = core.read_model(model_bytes)
        except Exception as exc:  # OpenVINO's front ends raise their own types
            raise DDPMError(f"{self.path}: OpenVINO cannot read it: {summary(exc)}") from None
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _HINTS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise DDPMError(f"{self.path}: OpenVINO cannot compile it for the CPU: {summary(exc)}") from None
        ran = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "bf16" and "bf16" not in ran and "bfloat16" not in ran:
            raise DDPMError(f"OpenVINO {ov.__version__} does not run bf16 on {cpu_name()} (it chose {ran})")
        return compiled

    def _check_signature(self) -> None:
        """The compiled model's inputs and outputs against the contract (ranks and names)."""
        expected_inputs, expected_outputs = self.info.io_contract()
        for kind, ports, expected in (
            ("inputs", self.compiled.inputs, expected_inputs),
            ("outputs", self.compiled.outputs, expected_outputs),
        ):
            names = {port.get_any_name() for port in ports}
            if names != set(expected):
                raise DDPMError(f"{self.path}: OpenVINO sees {kind} {sorted(names)}, expected {sorted(expected)}")
        self.output_name = next(iter(expected_outputs))
        shape = next(port for port in self.compiled.inputs if port.get_any_name() == "x").get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None

    def run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One inference for ``output``, timed; an OpenVINO failure is a one-line error."""
        start = time.perf_counter()
        try:
            result = self.request.infer(feeds)[self.compiled.output(output)]
        except Exception as exc:
            raise DDPMError(f"{self.path}: OpenVINO failed while running the model: {summary(exc)}") from None
        self.run_seconds += time.perf_counter() - start
        self.run_calls += 1
        self.run_rows += len(feeds["x"])
        return np.array(result, dtype=np.float32, copy=True)  # the request reuses its output buffer
