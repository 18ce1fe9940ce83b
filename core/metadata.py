"""What an exported ONNX file says about itself: the contract between exporter and runtime.

Every field is stored in the model's ``metadata_props`` under ``ddpm.<field>`` as a JSON value.
The runtime needs nothing but these and the graph to sample correctly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from .errors import DDPMError
from .schedule import Schedule, make_schedule

PREFIX = "ddpm."
FORMAT = "ddpm-mnist-onnx"
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

    def make_schedule(self) -> Schedule:
        return make_schedule(**self.schedule)

    def problems(self) -> list[str]:
        found = []
        steps = self.schedule.get("timesteps") if isinstance(self.schedule, dict) else None
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_TIMESTEPS:
            found.append(f"schedule timesteps {steps!r} is not an integer in 1..{MAX_TIMESTEPS}")  # checked before allocating
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
            found.append(f"data_range {list(self.data_range)} is not an increasing pair within ±{MAX_DATA_VALUE:g} "
                         "(wider ranges overflow the sampler's arithmetic)")
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
        props = {"format": FORMAT, "format_version": FORMAT_VERSION}
        for item in fields(self):
            value = getattr(self, item.name)
            props[item.name] = list(value) if isinstance(value, tuple) else value
        return {PREFIX + key: json.dumps(value, sort_keys=True) for key, value in props.items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], origin: str = "model") -> "ModelInfo":
        """Parse and check ``metadata_props``; a DDPMError names the first thing wrong."""
        values: dict[str, Any] = {}
        for key, text in props.items():
            if key.startswith(PREFIX):
                try:
                    values[key[len(PREFIX):]] = json.loads(text, parse_constant=_refuse_constant)
                except (TypeError, ValueError):
                    raise DDPMError(f"{origin}: metadata {key} is not valid JSON (NaN and Infinity are not JSON)") from None
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
                data_range=(float(data_range[0]), float(data_range[1])) if len(data_range) == 2 else (math.nan, math.nan),
            )
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise DDPMError(f"{origin}: metadata has values of the wrong type ({exc})") from None
        if not isinstance(info.schedule, dict):
            raise DDPMError(f"{origin}: metadata {PREFIX}schedule is not an object")
        problems = info.problems()
        if problems:
            raise DDPMError(f"{origin}: impossible metadata: {problems[0]}")
        return info
