"""Torch-free side of ddpm-mnist: schedule, sampler, ONNX Runtime sessions, MNIST reader, image output.

Imports only NumPy, ONNX Runtime, imageio, click and the standard library.

    from ddpm.runtime import DDPM, write_gif
    ddpm = DDPM.load()                      # the embedded model; DDPM.load("unet.onnx") for another
    run = ddpm.generate(16, seed=0, frames=40)
    write_gif("out.gif", run.frames)
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DDPM": "pipeline",
    "SampleRun": "pipeline",
    "default_model_path": "pipeline",
    "write_gif": "outputs",
    "write_png": "outputs",
    "write_npz": "outputs",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy, so that the trainer can use the schedule without starting ONNX Runtime.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
