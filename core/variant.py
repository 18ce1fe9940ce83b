"""Which copy of a U-Net an ONNX file holds, and the one rule that names the file.

The exporter writes the copies, the runtime finds its embedded int8 copy and the benchmarks make
theirs by this rule, so a name never has to be parsed back into settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

import numpy as np

from .errors import DDPMError

PRECISIONS = ("fp32", "fp16", "int8")
# Relative RMS of a faster copy's ε to fp32's on held-out noisy digits: the bound an int8 export passes,
# and a bf16 or int8 path at load.
INT8_TOLERANCE = 0.05
# Mean |image_int8 − image_fp32| of a latent model's int8 decoder, in grey levels of 255: the bound its
# export passes (on held-out latents of training digits), and the int8 decoder at load (on check latents).
DECODER_INT8_TOLERANCE = 2.0


def grey_level_difference(images: np.ndarray, reference: np.ndarray, data_range: tuple[float, float]) -> float:
    """Mean |images − reference| in grey levels of 255, for images in ``data_range``: the unit of
    :data:`DECODER_INT8_TOLERANCE`."""
    low, high = data_range
    return float(np.abs(images.astype(np.float64) - reference).mean()) * 255.0 / (high - low)


@dataclass(frozen=True)
class Variant:
    """One ONNX copy of a U-Net: its precision, the ε graph (x, t → ε) or the fused step (x, t,
    noise → x_prev), and a dynamic batch (None) or a fixed one. The default is the plain copy."""

    precision: str = "fp32"
    fused_step: bool = False
    fixed_batch: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DDPMError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        batch = self.fixed_batch
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise DDPMError(f"fixed batch {batch!r} is not a positive integer")

    @property
    def graph(self) -> str:
        """The exporter's name for the graph: "eps" or "fused-step"."""
        return "fused-step" if self.fused_step else "eps"

    def file_name(self, plain: str = "unet.onnx") -> str:
        """This copy's file name, given the plain copy's (a name, no folder): tags before the
        extension, in the order step, precision, batch (unet.onnx, unet.int8.onnx, unet.step.fp16.b16.onnx)."""
        name = PurePath(plain)
        tags = (".step" if self.fused_step else "") + ("" if self.precision == "fp32" else f".{self.precision}")
        tags += f".b{self.fixed_batch}" if self.fixed_batch is not None else ""
        return f"{name.stem}{tags}{name.suffix}"
