"""An exported U-Net in an ONNX Runtime session: provider choice, checks, and ε(x, t)."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import hashlib
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..core.errors import DDPMError, summary
from ..core.files import input_problem
from ..core.metadata import ModelInfo
from .onnx_check import check_contract, read_outline

# ONNX Runtime's provider names, spelled here only; PROVIDERS maps the --provider aliases to them.
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
PROVIDERS = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER}
MAX_MODEL_BYTES = 2 << 30  # a single-file ONNX model cannot exceed protobuf's 2 GiB
# ONNX Runtime's own log goes to stderr, coloured, before the one-line error that says the same: errors only
# through the exception, so the process-wide logger stays quiet below fatal.
ort.set_default_logger_severity(4)


def _cuda_driver() -> ctypes.CDLL | None:
    """The NVIDIA driver library, or None where none is loadable."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def gpu_present() -> bool:
    """Whether an NVIDIA driver is loadable; checked before asking ONNX Runtime for CUDA."""
    return _cuda_driver() is not None


# What the CUDA provider of onnxruntime-gpu loads (CUDA 13, cuDNN 9); the `cuda` extra installs them.
CUDA_LIBRARIES = {
    "linux": (
        "libcudart.so.13",
        "libcublas.so.13",
        "libcublasLt.so.13",
        "libcufft.so.12",
        "libcurand.so.10",
        "libcudnn.so.9",
    ),
    "win32": (
        "cudart64_13.dll",
        "cublas64_13.dll",
        "cublasLt64_13.dll",
        "cufft64_12.dll",
        "curand64_10.dll",
        "cudnn64_9.dll",
    ),
}
CUDA_EXTRA = 'pip install "ddpm-mnist[cuda]"'


class ProviderWarning(RuntimeWarning):
    """A machine with an NVIDIA driver fell back to the CPU, or the ONNX Runtime install is inconsistent."""


def cuda_device_count() -> int:
    """CUDA devices the NVIDIA driver reports (0 without a driver), asked through the driver API."""
    driver = _cuda_driver()
    count = ctypes.c_int(0)
    if driver is None or driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def missing_cuda_libraries() -> list[str]:
    """The CUDA and cuDNN libraries that cannot be loaded here (after ``preload_dlls``)."""
    missing = []
    for name in CUDA_LIBRARIES.get(sys.platform, CUDA_LIBRARIES["linux"]):
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    return missing


def conflicting_runtimes() -> str | None:
    """A note when both onnxruntime and onnxruntime-gpu are installed: they share one module, and
    whichever was installed last wins (often the CPU-only one)."""
    installed = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.distribution(name)
            installed.append(name)
        except metadata.PackageNotFoundError:
            continue
    if len(installed) < 2:
        return None
    return (
        "onnxruntime and onnxruntime-gpu are both installed and share one module; keep one: "
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (or onnxruntime without a GPU)"
    )


def cpu_session(model: bytes | str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU provider with this project's options (the judge, export
    checks, int8 checks); ``model`` is the file's bytes or its path."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads), providers=[CPU_PROVIDER])


_SPIN = contextvars.ContextVar("ddpm_ort_spin", default=True)


@contextlib.contextmanager
def cores_shared() -> Iterator[None]:
    """ONNX Runtime sessions opened inside do not spin at all: their threads sleep whenever they wait,
    inside a call too. For a process whose other threads need the same cores while calls run
    (ddpm-serve's HTTP front and PNG renders beside its engine)."""
    token = _SPIN.set(False)
    try:
        yield
    finally:
        _SPIN.reset(token)


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Every session's options: all graph optimizations, ONNX Runtime's own log quiet, ``threads`` CPU
    threads, and their spinning stopped when a call returns. A sampling loop runs NumPy between its
    network calls, and a latent model's decoder session between its U-Net's: threads spinning for the
    next call would take the cores that work needs. Inside :func:`cores_shared` they do not spin at all."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if not _SPIN.get():
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@dataclass(frozen=True)
class ModelFile:
    """A model file's bytes, their SHA-256 (recorded with the samples) and its checked metadata."""

    path: Path
    data: bytes
    sha256: str
    info: ModelInfo


def read_model_file(path: Path) -> ModelFile:
    """Read and check a model file before any backend parses it: a regular file of a possible size,
    a well-formed ONNX outline, metadata the runtime understands, and the graph contract."""
    problem = input_problem(path)
    if problem:
        raise DDPMError(f"model {path} {problem}")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise DDPMError(f"model {path} is {size / 2**30:.1f} GiB, larger than any single-file ONNX model can be")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DDPMError(f"cannot read model {path}: {exc.strerror or exc}") from None
    outline = read_outline(data, str(path))
    info = ModelInfo.from_metadata(outline.metadata, str(path))
    check_contract(outline, info, str(path))
    return ModelFile(path, data, hashlib.sha256(data).hexdigest(), info)


class EpsCalls:
    """ε(x, t, y) for a batch on top of a session's ``run(output, feeds)``, shared by the backends."""

    info: ModelInfo
    path: Path
    output_name: str

    def run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def feeds(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Graph inputs; a class-conditional model without labels gets the "no class" index."""
        feeds = {"x": x, "t": t}
        if self.info.num_classes:
            feeds["y"] = (
                np.full(len(x), self.info.num_classes, dtype=np.int64) if y is None else np.asarray(y, np.int64)
            )
        return feeds

    def eps(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """ε for a batch; a failure of the backend or an ε of another shape or type is a one-line error."""
        result = self.run(self.output_name, self.feeds(x, t, y))
        if result.shape != x.shape or result.dtype != np.float32:
            raise DDPMError(
                f"{self.path}: the model returned ε of shape {list(result.shape)} ({result.dtype}) for x of "
                f"shape {list(x.shape)}; it must match x, float32"
            )
        return result


class UNetSession(EpsCalls):
    """ε_θ(x_t, t) through ONNX Runtime, with the model's metadata.

    ``provider`` is "auto" (CUDA when a GPU and the CUDA provider are present, else CPU), "cpu",
    "cuda" or "tensorrt". The provider that really runs is in ``self.provider``; ``self.notes``
    says why it differs from the one asked for.
    """

    def __init__(
        self,
        model_path: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        cuda_graph: bool = False,
        device_id: int = 0,
    ) -> None:
        self.path = Path(model_path)
        if device_id < 0:
            raise DDPMError(f"the CUDA device index must be >= 0, got {device_id}")
        if device_id > 0 and provider != "cpu" and device_id >= (count := cuda_device_count()):
            raise DDPMError(
                f"CUDA device {device_id} does not exist: "
                + (f"this machine has {count} (0-{count - 1})" if count else "this machine has no CUDA device")
            )
        self.device_id = device_id
        self.notes: list[str] = []  # why the provider differs from the one asked for
        self.problems: list[str] = []  # the notes that are also warned about (see ProviderWarning)
        self.cuda_graph = cuda_graph
        self.threads = threads
        model = read_model_file(self.path)  # everything about the file is checked before ONNX Runtime parses it
        model_bytes, self.file_sha256, self.info = model.data, model.sha256, model.info
        if (
            self.info.precision == "int8"
        ):  # QDQ int8 kernels are the CPU provider's; on a GPU it would run slower than fp32
            if provider in ("cuda", "tensorrt"):
                raise DDPMError(f"{self.path} is an int8 copy for CPUs; provider {provider!r} needs the fp32 model")
            if provider == "auto":
                if CUDA_PROVIDER in ort.get_available_providers() and gpu_present():
                    self.notes.append("an int8 model runs on the CPU, not on this machine's GPU")
                provider = "cpu"
        options = session_options(threads)
        self.session = self._open(model_bytes, options, provider)
        self.provider = self.session.get_providers()[0]
        conflict = conflicting_runtimes()
        if conflict:
            self.problems.append(conflict)
        for problem in self.problems:  # a GPU that should have run, or a broken install: the API warns too
            self.notes.append(problem)
            warnings.warn(problem, ProviderWarning, stacklevel=3)
        self._check_signature()
        if cuda_graph and self.fixed_batch is None:
            raise DDPMError("a CUDA graph needs a fixed-batch model (one exported with a fixed batch)")
        if cuda_graph and self.provider != CUDA_PROVIDER:
            raise DDPMError(f"a CUDA graph needs the CUDA provider; this session runs on {self.provider}")
        self.run_seconds = 0.0
        self.run_calls = 0
        self.run_rows = 0  # images through the plain run(): the per-image time of a real run

    backend = "onnxruntime"
    version = ort.__version__

    @property
    def precision(self) -> str:
        """The arithmetic of the file's layers: its metadata's precision (fp32, fp16, int8)."""
        return self.info.precision

    @property
    def on_cpu(self) -> bool:
        return self.provider == CPU_PROVIDER

    def _open(self, model: bytes, options: ort.SessionOptions, provider: str) -> ort.InferenceSession:
        available = ort.get_available_providers()
        if provider == "cpu":
            return self._load(model, options, [CPU_PROVIDER])
        if provider == "auto":
            if CUDA_PROVIDER not in available:
                self.notes.append("this ONNX Runtime build has no CUDA provider; running on the CPU")
            elif not gpu_present():
                self.notes.append("no NVIDIA GPU driver found; running on the CPU")
            else:
                try:
                    session = self._load(model, options, self._gpu_providers("cuda"))
                    if session.get_providers()[0] == CUDA_PROVIDER:
                        return session
                    self.problems.append(self._cuda_failure_note())
                except DDPMError as exc:
                    self.problems.append(f"the CUDA provider failed ({exc}); running on the CPU")
            return self._load(model, options, [CPU_PROVIDER])
        name = PROVIDERS[provider]
        if name not in available:
            raise DDPMError(
                f"provider {provider!r}: this ONNX Runtime build has no {name} (available: {', '.join(available)})"
            )
        if not gpu_present():
            raise DDPMError(f"provider {provider!r}: no NVIDIA GPU driver found on this machine")
        session = self._load(model, options, self._gpu_providers(provider))
        if session.get_providers()[0] != name:
            missing = missing_cuda_libraries()
            reason = (
                f"cannot load {', '.join(missing)}; {CUDA_EXTRA} installs them" if missing else "see ONNX Runtime's log"
            )
            raise DDPMError(f"provider {provider!r}: ONNX Runtime could not start {name} ({reason})")
        return session

    @staticmethod
    def _cuda_failure_note() -> str:
        missing = missing_cuda_libraries()
        if missing:
            return (
                f"the CUDA provider could not start: cannot load {', '.join(missing)} "
                f"({CUDA_EXTRA} installs CUDA and cuDNN); running on the CPU"
            )
        return "the CUDA provider could not start although its libraries load; running on the CPU"

    def _gpu_providers(self, provider: str) -> list:
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, when installed
            except Exception:
                pass
        cuda_options = {"cudnn_conv_algo_search": "EXHAUSTIVE", "device_id": str(self.device_id)}
        if self.cuda_graph:
            cuda_options["enable_cuda_graph"] = "1"
        chain = [(CUDA_PROVIDER, cuda_options), CPU_PROVIDER]
        return [TENSORRT_PROVIDER, *chain] if provider == "tensorrt" else chain

    def _load(self, model: bytes, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # ONNX Runtime raises its own exception types for bad files
            reason = summary(exc)
            raise DDPMError(f"{self.path} is not a loadable ONNX model: {reason}") from None

    def _check_signature(self) -> None:
        """What ONNX Runtime reports must match the contract too (names and types are never assumed)."""
        info = self.info
        ort_types = {"float32": "tensor(float)", "int64": "tensor(int64)"}
        expected_inputs, expected_outputs = info.io_contract()
        for kind, found, expected in (
            ("inputs", self.session.get_inputs(), expected_inputs),
            ("outputs", self.session.get_outputs(), expected_outputs),
        ):
            by_name = {value.name: value for value in found}
            if set(by_name) != set(expected):
                raise DDPMError(f"{self.path}: {kind} are {sorted(by_name)}, expected {sorted(expected)}")
            for name, (elem_type, rank) in expected.items():
                if by_name[name].type != ort_types[elem_type] or len(by_name[name].shape) != rank:
                    raise DDPMError(
                        f"{self.path}: {name} is {by_name[name].type} of rank {len(by_name[name].shape)}, "
                        f"expected {ort_types[elem_type]} of rank {rank}"
                    )
        self.output_name = next(iter(expected_outputs))
        shape = {value.name: value.shape for value in self.session.get_inputs()}["x"]
        image = (info.image_channels, info.image_size, info.image_size)
        if any(isinstance(d, int) and d != e for d, e in zip(shape[1:], image)):
            raise DDPMError(f"{self.path}: input x has shape {shape}, but its metadata says images are {image}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One ``session.run`` for ``output``, timed; an ONNX Runtime failure is a one-line error."""
        start = time.perf_counter()
        try:
            result = self.session.run([output], feeds)[0]
        except Exception as exc:  # ONNX Runtime's own exception types
            raise DDPMError(f"{self.path}: ONNX Runtime failed while running the model: {summary(exc)}") from None
        self.run_seconds += time.perf_counter() - start
        self.run_calls += 1
        self.run_rows += len(feeds["x"])
        return result


def check_binding(session: UNetSession, batch: int) -> None:
    """Refuse a binding for a batch other than the model's fixed one."""
    if session.fixed_batch is not None and session.fixed_batch != batch:
        raise DDPMError(f"{session.path} has a fixed batch of {session.fixed_batch}, not {batch}")


def _device(session: UNetSession) -> str:
    return "cpu" if session.provider == CPU_PROVIDER else "cuda"


def _index(session: UNetSession) -> int:
    return 0 if session.provider == CPU_PROVIDER else session.device_id


class BoundEps:
    """ε through IOBinding: x and t in device buffers refreshed in place, ε written to a bound buffer.

    With a session made with ``cuda_graph=True`` (fixed-batch model, CUDA provider) the first call
    captures the graph and later calls replay it; the buffers' addresses never change.
    """

    def __init__(self, session: UNetSession, batch: int) -> None:
        check_binding(session, batch)
        info = session.info
        device = _device(session)
        shape = (batch, info.image_channels, info.image_size, info.image_size)
        self.session = session
        self.x = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), device, _index(session))
        self.t = ort.OrtValue.ortvalue_from_numpy(np.zeros(batch, np.int64), device, _index(session))
        self.out = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, _index(session))
        self.binding = session.session.io_binding()
        self.binding.bind_ortvalue_input("x", self.x)
        self.binding.bind_ortvalue_input("t", self.t)
        self.binding.bind_ortvalue_output(session.output_name, self.out)
        self.y = None
        if info.num_classes:
            self.y = ort.OrtValue.ortvalue_from_numpy(np.zeros(batch, np.int64), device, _index(session))
            self.binding.bind_ortvalue_input("y", self.y)

    def __call__(self, x: np.ndarray, t: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        start = time.perf_counter()
        self.x.update_inplace(np.ascontiguousarray(x, dtype=np.float32))
        self.t.update_inplace(np.ascontiguousarray(t, dtype=np.int64))
        if self.y is not None:
            self.y.update_inplace(self.session.feeds(x, t, y)["y"])
        self.session.session.run_with_iobinding(self.binding)
        result = self.out.numpy()
        self.session.run_seconds += time.perf_counter() - start
        self.session.run_calls += 1
        return result


def step_graph_ids(slot: int) -> tuple[int, int]:
    """CUDA-graph ids of a fused stepper's two directions; distinct for every slot (0 is left to BoundEps)."""
    return 2 * slot + 1, 2 * slot + 2


class BoundStep:
    """A fused-step graph (x, t, noise → x_prev) through IOBinding, with x kept on the device.

    Two device buffers take turns as input and output, so only t and the noise travel each step
    and x comes back to the host only when ``fetch`` is called. Each direction has its own
    binding; under CUDA graphs each is captured as its own graph, as a captured graph replays
    with the addresses it saw. ``slot`` numbers the steppers that share one session (one per
    sub-batch): each slot's two graphs get ids of their own (``step_graph_ids``).
    """

    def __init__(self, session: UNetSession, x0: np.ndarray, slot: int = 0) -> None:
        check_binding(session, len(x0))
        device = _device(session)
        self.session = session
        buffers = [
            ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x0, dtype=np.float32), device, _index(session)),
            ort.OrtValue.ortvalue_from_shape_and_type(x0.shape, np.float32, device, _index(session)),
        ]
        self.t = ort.OrtValue.ortvalue_from_numpy(np.zeros(len(x0), np.int64), device, _index(session))
        self.noise = ort.OrtValue.ortvalue_from_numpy(np.zeros(x0.shape, np.float32), device, _index(session))
        self.buffers = buffers
        self.bindings = []
        self.run_options = []
        for direction in (0, 1):
            binding = session.session.io_binding()
            binding.bind_ortvalue_input("x", buffers[direction])
            binding.bind_ortvalue_input("t", self.t)
            binding.bind_ortvalue_input("noise", self.noise)
            binding.bind_ortvalue_output("x_prev", buffers[1 - direction])
            options = ort.RunOptions()
            if session.cuda_graph:
                options.add_run_config_entry("gpu_graph_id", str(step_graph_ids(slot)[direction]))
            self.bindings.append(binding)
            self.run_options.append(options)
        self.current = 0  # index of the buffer holding the latest x

    def __call__(self, t: np.ndarray, noise: np.ndarray) -> None:
        start = time.perf_counter()
        self.t.update_inplace(np.ascontiguousarray(t, dtype=np.int64))
        self.noise.update_inplace(np.ascontiguousarray(noise, dtype=np.float32))
        self.session.session.run_with_iobinding(self.bindings[self.current], self.run_options[self.current])
        self.current = 1 - self.current
        self.session.run_seconds += time.perf_counter() - start
        self.session.run_calls += 1

    def fetch(self) -> np.ndarray:
        return self.buffers[self.current].numpy()

    def run(self, x: np.ndarray, t: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """One step from host rows x (copied into the buffer in place, so a captured graph's addresses
        hold): the rows of a batching tick change between calls, so x travels every step."""
        self.buffers[self.current].update_inplace(np.ascontiguousarray(x, dtype=np.float32))
        self(t, noise)
        return self.fetch()
