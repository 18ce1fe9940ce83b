"""What an exported ONNX file says about itself: the contract between exporter and runtime.

Every field is stored in the model's ``metadata_props`` under ``ddpm.<field>`` as a JSON value.
The runtime needs nothing but these and the graph to sample correctly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import DDPMError
from .schedule import Schedule, make_schedule

PREFIX = "ddpm."
FORMAT = "ddpm-mnist-onnx"
DECODER_FORMAT = "ddpm-mnist-decoder"
FORMAT_VERSION = 1
PREDICTIONS = ("eps",)
GRAPHS = ("eps", "fused-step")  # ε(x, t), or one whole sampling step x_t, t, noise → x_{t−1}
VARIANCES = ("beta", "posterior")  # σ²_t of the ancestral step: β_t, or the posterior β̃_t
PRECISIONS = ("fp32", "fp16", "int8")  # int8: a QDQ copy with float32 inputs and outputs


MAX_TIMESTEPS = 100_000  # diffusion steps a model may declare (1000 is usual)
MAX_CLASSES = 100_000
MAX_DATA_VALUE = 1e6  # pixel values are scaled to about [-1, 1]; noise of that size overflows nothing


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _integer(value: object) -> bool:
    """An int that is not a bool (JSON's true would otherwise count as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelInfo:
    schedule: dict[str, Any]
    image_size: int
    image_channels: int
    data_range: tuple[float, float]
    prediction: str = "eps"
    variance: str = "beta"
    noise_at_last_step: bool = False
    num_classes: int = 0
    fixed_batch: int | None = None
    graph: str = "eps"
    precision: str = "fp32"
    model_config: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    # A latent model: image_size and image_channels above are the latent's; this says what its decoder
    # makes of it (image_size, image_channels, scale_factor) and names the decoder (decoder_file, a name
    # beside this file, and decoder_sha256), with the autoencoder's checkpoint hash (autoencoder_sha256).
    latent: dict[str, Any] | None = None
    # A few-step student (ddpm-distill): the teacher it learned from (teacher_sha256, its checkpoint's
    # hash), the timesteps it was trained at (noisiest first; the consistency sampler's), the
    # classifier-free guidance built into its class rows, and how the teacher's targets were drawn
    # (teacher_sampler, teacher_steps).
    student: dict[str, Any] | None = None

    def make_schedule(self) -> Schedule:
        return make_schedule(**self.schedule)

    @property
    def output_size(self) -> int:
        """The side of the images a sample ends as: the image, or a latent model's decoded image."""
        return self.latent["image_size"] if self.latent is not None else self.image_size

    @property
    def output_channels(self) -> int:
        return self.latent["image_channels"] if self.latent is not None else self.image_channels

    def problems(self) -> list[str]:
        found = []
        steps = self.schedule.get("timesteps") if isinstance(self.schedule, dict) else None
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_TIMESTEPS:
            found.append(
                f"schedule timesteps {steps!r} is not an integer in 1..{MAX_TIMESTEPS}"
            )  # checked before allocating
        else:
            try:
                self.make_schedule()
            except (TypeError, ValueError) as exc:
                found.append(f"schedule {self.schedule}: {exc}")
        if not _integer(self.image_size) or not 1 <= self.image_size <= 4096:
            found.append(f"image_size {self.image_size!r} is not an integer in 1..4096")
        if not _integer(self.image_channels) or not 1 <= self.image_channels <= 4:
            found.append(f"image_channels {self.image_channels!r} is not an integer in 1..4")
        low, high = self.data_range
        if not (-MAX_DATA_VALUE <= low < high <= MAX_DATA_VALUE):
            found.append(
                f"data_range {list(self.data_range)} is not an increasing pair within ±{MAX_DATA_VALUE:g} "
                "(wider ranges overflow the sampler's arithmetic)"
            )
        if self.graph not in GRAPHS:
            found.append(f"graph {self.graph!r} is not one of {GRAPHS}")
        if self.precision not in PRECISIONS:
            found.append(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.prediction not in PREDICTIONS:
            found.append(f"prediction {self.prediction!r} is not one of {PREDICTIONS}")
        if self.variance not in VARIANCES:
            found.append(f"variance {self.variance!r} is not one of {VARIANCES}")
        if not _integer(self.num_classes) or not 0 <= self.num_classes <= MAX_CLASSES:
            found.append(f"num_classes {self.num_classes!r} is not an integer in 0..{MAX_CLASSES}")
        if self.fixed_batch is not None and (not _integer(self.fixed_batch) or self.fixed_batch < 1):
            found.append(f"fixed_batch {self.fixed_batch!r} is not a positive integer")
        if not isinstance(self.noise_at_last_step, bool):
            found.append(f"noise_at_last_step {self.noise_at_last_step!r} is not true or false")
        for name in ("model_config", "source", "versions"):
            if not isinstance(getattr(self, name), dict):
                found.append(f"{name} {getattr(self, name)!r} is not an object")
        for name in ("sha256", "transform"):
            if isinstance(self.source, dict) and not isinstance(self.source.get(name, ""), str):
                found.append(f"source.{name} {self.source[name]!r} is not a string")
        if self.latent is not None:
            found += latent_problems(self.latent)
        if self.student is not None:
            found += student_problems(
                self.student, self.schedule.get("timesteps") if isinstance(self.schedule, dict) else None
            )
        return found

    def io_contract(self) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[str, int]]]:
        """Graph inputs and outputs as name → (element type, rank); B may be fixed or dynamic."""
        inputs = {"x": ("float32", 4), "t": ("int64", 1)}
        if self.num_classes:
            inputs["y"] = ("int64", 1)
        if self.graph == "fused-step":
            inputs["noise"] = ("float32", 4)
            return inputs, {"x_prev": ("float32", 4)}
        return inputs, {"eps": ("float32", 4)}

    def to_metadata(self) -> dict[str, str]:
        return metadata_props(self, FORMAT)

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], origin: str = "model") -> ModelInfo:
        """Parse and check ``metadata_props``; a DDPMError names the first thing wrong."""
        values = read_values(props, origin)
        if values.get("format") == DECODER_FORMAT:
            raise DDPMError(f"{origin} is a latent model's decoder, not a U-Net; give the latent U-Net it names")
        if values.get("format") != FORMAT:
            raise DDPMError(
                f"{origin} is not a ddpm-mnist export (its metadata lacks {PREFIX}format={FORMAT}); "
                "export a checkpoint with ddpm-export"
            )
        if values.get("format_version") != FORMAT_VERSION:
            raise DDPMError(f"{origin}: export format version {values.get('format_version')!r} is not supported")
        names = {item.name for item in fields(cls)}
        required = {"schedule", "image_size", "image_channels", "data_range"}
        missing = sorted(required - set(values))
        if missing:
            raise DDPMError(f"{origin}: metadata lacks {', '.join(PREFIX + m for m in missing)}")
        try:
            data_range = values["data_range"]
            info = cls(
                **{k: v for k, v in values.items() if k in names and k != "data_range"},
                data_range=(float(data_range[0]), float(data_range[1]))
                if len(data_range) == 2
                else (math.nan, math.nan),
            )
        except (
            TypeError,
            ValueError,
            OverflowError,
            IndexError,
            KeyError,
        ) as exc:  # OverflowError: an int beyond float
            raise DDPMError(f"{origin}: metadata has values of the wrong type ({exc})") from None
        if not isinstance(info.schedule, dict):
            raise DDPMError(f"{origin}: metadata {PREFIX}schedule is not an object")
        problems = info.problems()
        if problems:
            raise DDPMError(f"{origin}: impossible metadata: {problems[0]}")
        return info


def metadata_props(info: Any, format_name: str) -> dict[str, str]:
    """A metadata dataclass as ``metadata_props``: its format, then every field, each ``ddpm.<name>`` → JSON."""
    props = {"format": format_name, "format_version": FORMAT_VERSION}
    for item in fields(info):
        value = getattr(info, item.name)
        props[item.name] = list(value) if isinstance(value, tuple) else value
    return {PREFIX + key: json.dumps(value, sort_keys=True) for key, value in props.items()}


def read_values(props: Mapping[str, str], origin: str) -> dict[str, Any]:
    """The ``ddpm.*`` metadata as JSON values, refused in one line where one is not JSON."""
    values: dict[str, Any] = {}
    for key, text in props.items():
        if key.startswith(PREFIX):
            try:
                values[key[len(PREFIX) :]] = json.loads(text, parse_constant=_refuse_constant)
            except (TypeError, ValueError):
                raise DDPMError(f"{origin}: metadata {key} is not valid JSON (NaN and Infinity are not JSON)") from None
    return values


def _sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _scale(value: object) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6
    )  # compared, never float(): an int beyond float's range is JSON too


def latent_problems(latent: object) -> list[str]:
    """What is impossible in a latent model's ``latent`` metadata."""
    if not isinstance(latent, dict):
        return [f"latent {latent!r} is not an object"]
    found = []
    size, channels, file = latent.get("image_size"), latent.get("image_channels"), latent.get("decoder_file")
    if not _integer(size) or not 1 <= size <= 4096:
        found.append(f"latent.image_size {size!r} is not an integer in 1..4096")
    if not _integer(channels) or not 1 <= channels <= 4:
        found.append(f"latent.image_channels {channels!r} is not an integer in 1..4")
    if not _scale(latent.get("scale_factor")):
        found.append(f"latent.scale_factor {latent.get('scale_factor')!r} is not a positive number")
    if not isinstance(file, str) or not file or "/" in file or "\\" in file or file in (".", ".."):
        found.append(f"latent.decoder_file {file!r} is not a file name (the decoder lies beside the U-Net)")
    for name in ("decoder_sha256", "autoencoder_sha256"):
        if not _sha256(latent.get(name)):
            found.append(f"latent.{name} {latent.get(name)!r} is not a SHA-256 in hex")
    return found


MAX_STUDENT_GUIDANCE = 1000.0


def student_problems(student: object, total: object) -> list[str]:
    """What is impossible in a few-step student's ``student`` metadata, for a schedule of ``total`` steps."""
    if not isinstance(student, dict):
        return [f"student {student!r} is not an object"]
    found = []
    if not _sha256(student.get("teacher_sha256")):
        found.append(f"student.teacher_sha256 {student.get('teacher_sha256')!r} is not a SHA-256 in hex")
    timesteps = student.get("timesteps")
    if (
        not isinstance(timesteps, list)
        or not 1 <= len(timesteps) <= 64
        or not all(_integer(t) for t in timesteps)
        or not _integer(total)
        or not all(0 <= t < total for t in timesteps)
        or any(a <= b for a, b in zip(timesteps, timesteps[1:]))
    ):
        found.append(f"student.timesteps {timesteps!r} is not 1 to 64 decreasing model timesteps")
    guidance = student.get("guidance")
    if (
        not isinstance(guidance, (int, float))
        or isinstance(guidance, bool)
        or not 0 <= guidance <= MAX_STUDENT_GUIDANCE
    ):
        found.append(f"student.guidance {guidance!r} is not a number in 0..{MAX_STUDENT_GUIDANCE:g}")
    return found


@dataclass(frozen=True)
class DecoderInfo:
    """What a latent model's decoder file says about itself: z [B, latent_channels, latent_size,
    latent_size] as the U-Net samples it (scaled) → image [B, image_channels, image_size, image_size]
    in ``data_range``; the graph divides by ``scale_factor`` itself."""

    latent_channels: int
    latent_size: int
    image_size: int
    image_channels: int
    data_range: tuple[float, float]
    scale_factor: float
    autoencoder_sha256: str
    model_config: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        for name in ("latent_channels", "image_channels"):
            if not _integer(getattr(self, name)) or not 1 <= getattr(self, name) <= 4:
                found.append(f"{name} {getattr(self, name)!r} is not an integer in 1..4")
        for name in ("latent_size", "image_size"):
            if not _integer(getattr(self, name)) or not 1 <= getattr(self, name) <= 4096:
                found.append(f"{name} {getattr(self, name)!r} is not an integer in 1..4096")
        low, high = self.data_range
        if not (-MAX_DATA_VALUE <= low < high <= MAX_DATA_VALUE):
            found.append(f"data_range {list(self.data_range)} is not an increasing pair within ±{MAX_DATA_VALUE:g}")
        if not _scale(self.scale_factor):
            found.append(f"scale_factor {self.scale_factor!r} is not a positive number")
        if not _sha256(self.autoencoder_sha256):
            found.append(f"autoencoder_sha256 {self.autoencoder_sha256!r} is not a SHA-256 in hex")
        return found

    def to_metadata(self) -> dict[str, str]:
        return metadata_props(self, DECODER_FORMAT)

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], origin: str = "decoder") -> DecoderInfo:
        values = read_values(props, origin)
        if values.get("format") == FORMAT:
            raise DDPMError(f"{origin} is a U-Net, not a latent model's decoder")
        if values.get("format") != DECODER_FORMAT or values.get("format_version") != FORMAT_VERSION:
            raise DDPMError(
                f"{origin} is not a ddpm-mnist decoder (its metadata lacks {PREFIX}format={DECODER_FORMAT})"
            )
        names = {item.name for item in fields(cls)}
        try:
            low, high = values["data_range"]
            info = cls(
                **{k: v for k, v in values.items() if k in names and k != "data_range"},
                data_range=(float(low), float(high)),
            )
        except (TypeError, ValueError, OverflowError, KeyError) as exc:  # OverflowError: an int beyond float
            raise DDPMError(f"{origin}: decoder metadata is missing or of the wrong type ({exc})") from None
        problems = info.problems()
        if problems:
            raise DDPMError(f"{origin}: impossible decoder metadata: {problems[0]}")
        return info


def int8_decoder_metadata(props: Mapping[str, str], fp32_sha256: str) -> dict[str, str]:
    """An int8 decoder copy's metadata: its fp32 decoder's, and two entries of its own, the precision and
    the SHA-256 of the fp32 file it was quantized from (an fp32 decoder carries neither)."""
    return {**props, PREFIX + "precision": json.dumps("int8"), PREFIX + "fp32_sha256": json.dumps(fp32_sha256)}


def int8_decoder_source(props: Mapping[str, str], origin: str) -> str:
    """The SHA-256 of the fp32 decoder that an int8 decoder copy (``props``) was quantized from; a file
    that is no int8 decoder copy is refused in one line."""
    values = read_values(props, origin)
    if values.get("precision") != "int8" or not _sha256(values.get("fp32_sha256")):
        raise DDPMError(f"{origin} is not an int8 copy of a decoder (its metadata lacks {PREFIX}precision=int8)")
    return values["fp32_sha256"]
