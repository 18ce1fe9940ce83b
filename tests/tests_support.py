"""Helpers shared by test modules (fixtures that outlive one test cannot use the invoke fixture)."""

from __future__ import annotations

import dataclasses
import struct
import sys
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from ddpm.core.metadata import ModelInfo
from ddpm.core.plan import SamplingPlan


def run_main(main: Callable[[], None], *args: object) -> int:
    saved = sys.argv
    sys.argv = ["prog", *map(str, args)]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def train_args(data_dir, out, *extra):
    """ddpm-train's arguments for a short tiny run on 64 images in one thread, as command-line strings."""
    return [
        "--preset",
        "tiny",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--no-progress",
        "--no-samples",
        "--max-images",
        "64",
        "--batch-size",
        "16",
        "--epochs",
        "100",
        "--threads",
        "1",
        *map(str, extra),
    ]


def session(path):
    """An ONNX Runtime session on the CPU, without the project's runtime in between."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# The labml U-Net's layout at a width small enough to build and export in a test.
LABML_SMALL = dict(base_channels=32, channel_mults=(1, 2, 1, 2), attention=(False, False, True, True))

# Models the sampling plan is built for, without a file behind them.
UNCONDITIONAL = ModelInfo(
    schedule={"kind": "linear", "timesteps": 1000}, image_size=32, image_channels=1, data_range=(-1.0, 1.0)
)
CONDITIONAL = dataclasses.replace(UNCONDITIONAL, num_classes=10)
# A few-step student of a conditional teacher, as ddpm-export describes one.
STUDENT = dataclasses.replace(
    CONDITIONAL,
    student={
        "teacher_sha256": "ab" * 32,
        "timesteps": [999, 742, 474, 226],
        "guidance": 1.0,
        "teacher_sampler": "dpm++2m",
        "teacher_steps": 20,
    },
)


def build(info=CONDITIONAL, **settings) -> SamplingPlan:
    return SamplingPlan.build(info, info.make_schedule(), **settings)


def assert_usage_error(result, fragment: str) -> None:
    """Exit code 2 (a usage error), one line on stderr holding ``fragment``, no traceback."""
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2, result
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert fragment in lines[0], lines[0]


def idx_bytes(array) -> bytes:
    """``array`` as the content of an unsigned-byte IDX file (MNIST's format)."""
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def fake_run(session, calls: int, batch: int, per_image_ms: float) -> None:
    """``session`` as a real run of ``calls`` network calls of ``batch`` rows leaves it, at ``per_image_ms``."""
    session.run_calls, session.run_rows = calls, calls * batch
    session.run_seconds = per_image_ms * calls * batch / 1e3


LATENT_FILES = ("unet.onnx", "unet.decoder.onnx")  # a latent model: the U-Net, and the decoder its metadata names


def copy_latent(source, folder):
    """A latent export's U-Net and decoder copied into ``folder`` (made here), to be damaged there; the U-Net's path."""
    import shutil

    folder.mkdir(parents=True)
    for name in LATENT_FILES:
        shutil.copy(source / name, folder / name)
    return folder / LATENT_FILES[0]


def edit_onnx_metadata(path, key, change) -> None:
    """Rewrite one ddpm.<key> metadata value of an ONNX file: ``change`` maps its JSON value to the new one."""
    import json

    import onnx

    model = onnx.load(str(path))
    prop = next(prop for prop in model.metadata_props if prop.key == f"ddpm.{key}")
    prop.value = json.dumps(change(json.loads(prop.value)), sort_keys=True)
    onnx.save(model, str(path))
