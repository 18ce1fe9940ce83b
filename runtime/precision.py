"""Which copy of a model samples: the file named, or a copy of the embedded model, whose int8 copy
(where the package ships one) is taken on a CPU where it measures faster per image than fp32.

    from ddpm.runtime.precision import load_model
    ddpm, note = load_model(precision="auto", session_options={"provider": "cpu"})   # note: why this copy

int8 is not faster on every CPU (it depends on the int8 kernels the CPU has), so ``auto`` measures
both copies at their own best batch, once per machine, and remembers the result (:mod:`cpu_batch`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..core.errors import DDPMError
from . import cpu_batch
from .pipeline import DDPM, default_model_path
from .session import CPU_PROVIDER, UNetSession

PRECISIONS = ("auto", "fp32", "int8")


def load_model(onnx_path: Path | None = None, precision: str = "auto", session_options: dict | None = None,
               on_measure: Callable[[], None] | None = None) -> tuple[DDPM, str | None]:
    """The model to sample and a note on which copy was chosen and why (None: nothing to say).

    ``session_options`` are :meth:`DDPM.load`'s keywords; ``on_measure`` is called before the CPU is
    timed. ddpm-run takes the two steps apart (:func:`open_copy`, then :func:`faster_copy` where
    :func:`speed_decides`), so that its request is checked before anything is timed.
    """
    ddpm, note = open_copy(onnx_path, precision, session_options)
    if speed_decides(onnx_path, precision):
        return faster_copy(ddpm, session_options, on_measure)
    return ddpm, note


def open_copy(onnx_path: Path | None, precision: str, session_options: dict | None = None) -> tuple[DDPM, str | None]:
    """The model named, or the embedded copy asked for (fp32 while ``auto`` has not chosen yet)."""
    if precision not in PRECISIONS:
        raise DDPMError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if onnx_path is not None and precision != "auto":
        raise DDPMError(f"precision {precision!r} picks a copy of the embedded model; a named file has its own")
    if precision == "int8":
        return DDPM.load(default_model_path("int8"), **(session_options or {})), "int8, as asked"
    return DDPM.load(onnx_path, **(session_options or {})), None


def speed_decides(onnx_path: Path | None, precision: str) -> bool:
    """Whether the measured speed picks the copy: ``auto`` on the embedded model."""
    return onnx_path is None and precision == "auto"


def faster_copy(ddpm: DDPM, session_options: dict | None, on_measure: Callable[[], None] | None) -> tuple[DDPM, str | None]:
    """For ``auto`` on the embedded model: its int8 copy where that measures faster per image on this
    CPU (timed once, cached), and why."""
    if ddpm.provider != CPU_PROVIDER:
        return ddpm, None
    try:
        int8 = DDPM.load(default_model_path("int8"), **(session_options or {}))
    except DDPMError:  # this package ships no int8 copy
        return ddpm, None
    faster, ratio = int8_is_faster(ddpm.session, int8.session, on_measure)
    if not faster:
        return ddpm, f"fp32: int8 measured {ratio:.2f}x its speed on this CPU"
    return int8, f"int8: {ratio:.2f}x the speed of fp32 on this CPU; --precision fp32 for the other"


def int8_is_faster(fp32: UNetSession, int8: UNetSession, on_measure: Callable[[], None] | None = None) -> tuple[bool, float]:
    """Whether the int8 copy samples faster per image than fp32 on this CPU, each at its own best
    batch (measured once per machine and cached), and the speed ratio fp32 / int8."""
    fast, slow = cpu_batch.choose(int8, on_measure), cpu_batch.choose(fp32, on_measure)
    if not fast.per_image_ms or not slow.per_image_ms:
        return False, 1.0
    ratio = min(slow.per_image_ms.values()) / min(fast.per_image_ms.values())
    return ratio > 1.0, ratio
