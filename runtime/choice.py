"""What a request to open a model names, checked against the one set of rules: which model (an
embedded one by name, or a file), on which provider, in which arithmetic; and the backend session
that each such choice runs on.

The rules are written here and nowhere else: :func:`~ddpm.runtime.pipeline.open_model` checks every
request with :func:`choose_model`, and a command line calls it before it opens anything, to turn a
refusal into a usage error in its own flags (:attr:`ChoiceError.flags`).

    choice = choose_model(None, provider="cpu", precision="int8")   # the embedded model's int8 copy
    choose_model("unet.onnx", precision="int8")   # ChoiceError: a named file has its own precision
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DDPMError
from .openvino_session import OpenVINOSession
from .session import PROVIDERS as ONNXRUNTIME_PROVIDERS
from .session import EpsCalls, UNetSession

# the models shipped in the package, name → file
EMBEDDED = {
    "pixel": "default.onnx",
    "latent": "latent.onnx",
    "latent64": "latent64.onnx",
    "latent-student": "latent-student.onnx",
    "pixel-student": "pixel-student.onnx",
}
DESCRIPTIONS = {  # one line each, for --model's help
    "pixel": "the class-conditional U-Net on 32x32 pixels (small preset)",
    "latent": "a class-conditional U-Net on 8x8x4 latents with its decoder, about 10x less time per digit",
    "latent64": "64x64 digits (MNIST resized) from the same 8x8x4 latents: a larger decoder, the same U-Net calls",
    "latent-student": "the latent model distilled into a few-step student: a digit in 1 to 4 calls (2 by default)",
    "pixel-student": "the pixel model distilled into a few-step student: a digit in 1 to 4 calls (2 by default)",
}
DEFAULT_EMBEDDED = "pixel"  # the one sampled when no model is named
# the default model's student: sampled when no model is named and the consistency sampler is asked for
EMBEDDED_STUDENT = "pixel-student"
PRECISIONS = ("auto", "fp32", "int8", "bf16")
PROVIDERS = ("auto", *ONNXRUNTIME_PROVIDERS, "openvino")  # "openvino": OpenVINO's CPU backend


class ChoiceError(DDPMError):
    """A model, provider and precision that cannot go together, in one line; ``flags`` says the same
    in the command line's flags."""

    def __init__(self, message: str, flags: str) -> None:
        super().__init__(message)
        self.flags = flags


@dataclass(frozen=True)
class ModelChoice:
    """A request that the rules allow: the embedded model or the file named, and how it runs."""

    embedded: str | None  # an embedded model's name (see EMBEDDED); None where a file is named
    path: Path | None  # the file named; None for an embedded model
    provider: str  # one of PROVIDERS
    precision: str  # one of PRECISIONS: "fp32" runs a named file as it is, "auto" lets timing choose
    cuda_graph: bool = False

    @property
    def session_provider(self) -> str:
        """The provider of the session opened first: OpenVINO for bf16, else the one asked for."""
        return "openvino" if self.precision == "bf16" else self.provider


def choose_model(
    model: str | Path | None = None, provider: str = "auto", precision: str = "fp32", cuda_graph: bool = False
) -> ModelChoice:
    """The request checked against the rules, before anything is opened; what cannot work is a one-line
    :class:`ChoiceError`. ``model``: None (the default embedded model), an embedded model's name from
    :data:`EMBEDDED`, or an exported file's path."""
    if precision not in PRECISIONS:
        raise ChoiceError(
            f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}",
            f"--precision {precision}: expected one of {', '.join(PRECISIONS)}",
        )
    if provider not in PROVIDERS:
        raise ChoiceError(
            f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}",
            f"--provider {provider}: expected one of {', '.join(PROVIDERS)}",
        )
    embedded = DEFAULT_EMBEDDED if model is None else model if isinstance(model, str) and model in EMBEDDED else None
    if embedded is None and precision == "int8":
        raise ChoiceError(
            "precision 'int8' picks a copy of the embedded model; a named file has its own",
            "--precision int8 picks a copy of the embedded model; with --onnx give fp32, auto or bf16",
        )
    if precision == "bf16" and provider not in ("auto", "openvino"):
        raise ChoiceError(
            f"bf16 runs on the OpenVINO backend; use provider 'openvino' (or 'auto'), not {provider!r}",
            f"--precision bf16 runs on the OpenVINO backend; use --provider openvino (or auto), not {provider}",
        )
    choice = ModelChoice(embedded, None if embedded else Path(model), provider, precision, cuda_graph)
    if cuda_graph and choice.session_provider == "openvino":
        raise ChoiceError(
            "a CUDA graph runs on the CUDA provider, not on the OpenVINO backend",
            "--engine cudagraph runs on the CUDA provider, not on the OpenVINO backend",
        )
    return choice


def open_session(
    file: Path,
    provider: str,
    bf16: bool = False,
    threads: int | None = None,
    device_id: int = 0,
    cuda_graph: bool = False,
) -> EpsCalls:
    """The backend session that runs ``file``: OpenVINO's CPU backend for provider "openvino" (its float
    layers in bfloat16 where ``bf16``), else ONNX Runtime on ``provider``."""
    if provider == "openvino":
        return OpenVINOSession(file, precision="bf16" if bf16 else "fp32", threads=threads)
    return UNetSession(file, provider=provider, threads=threads, cuda_graph=cuda_graph, device_id=device_id)
