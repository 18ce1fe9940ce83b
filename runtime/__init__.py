"""The deployment layer of ddpm-mnist: ONNX Runtime sessions around the shared core's schedule and
samplers, the sampling pipeline, and the ddpm-run and ddpm-eval commands. Torch-free.

Imports only NumPy, ONNX Runtime, imageio, click and the standard library.

    from ddpm.runtime import DDPM, write_gif
    ddpm = DDPM.load()                      # the embedded model; DDPM.load("unet.onnx") for another
    run = ddpm.generate(16, ddpm.plan(frames=40), seed=0)
    write_gif("out.gif", run.frames)
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "DDPM": ".pipeline",
    "SampleRun": ".pipeline",
    "default_model_path": ".pipeline",
    "write_gif": "..core.outputs",
    "write_png": "..core.outputs",
    "write_npz": "..core.outputs",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one runtime module (the session, for an export check) loads no more.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
