"""Writers for a sampling run: animated GIF, PNG grid, NumPy archive. Each writes atomically."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np

from .errors import DDPMError, summary
from .files import atomic_write
from .images import make_grid
from .record import RunSettings

# What the PNG and npz writers record: a run's settings (``SampleRun.settings``) or a plain mapping.
Recorded = RunSettings | Mapping[str, Any]


def gif_bytes(
    frames: list[np.ndarray], fps: float = 12.0, hold: float = 2.0, scale: int = 3, columns: int | None = None
) -> bytes:
    """An endlessly looping GIF of the frames as grids; the last frame stays ``hold`` seconds."""
    pictures = [make_grid(frame, columns=columns, scale=scale) for frame in frames]
    durations = [1000.0 / fps] * len(pictures)
    durations[-1] = max(durations[-1], hold * 1000.0)
    buffer = io.BytesIO()
    iio.imwrite(buffer, np.stack(pictures), extension=".gif", duration=durations, loop=0)
    return buffer.getvalue()


VIDEO_CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9"}


def video_available() -> bool:
    """Whether imageio can reach ffmpeg (the ``video`` extra installs imageio-ffmpeg, which ships it)."""
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None


def write_video(
    path: Path,
    suffix: str,
    frames: list[np.ndarray],
    fps: float = 12.0,
    hold: float = 2.0,
    scale: int = 3,
    columns: int | None = None,
) -> None:
    """The frames as an MP4 (H.264) or WebM (VP9) video at ``path``; ``suffix`` picks the format (the
    path may be a temporary name). The last frame is repeated for ``hold`` seconds."""
    pictures = [make_grid(frame, columns=columns, scale=scale) for frame in frames]
    pictures += [pictures[-1]] * int(round(hold * fps))
    # H.264 and VP9 want even sizes; pad with black rather than let ffmpeg rescale the pixels.
    height, width = pictures[0].shape[:2]
    padded = [np.pad(p, ((0, height % 2), (0, width % 2))) for p in pictures]
    try:
        iio.imwrite(
            path,
            np.stack(padded),
            extension=suffix,
            plugin="FFMPEG",
            fps=fps,
            codec=VIDEO_CODECS[suffix],
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-f", suffix[1:]],
        )
    except (OSError, RuntimeError) as exc:  # ffmpeg's failures arrive as broken pipes or its own messages
        raise DDPMError(f"ffmpeg could not write the {suffix[1:]} video: {summary(exc, 160)}") from None


def png_bytes(
    images: np.ndarray, scale: int = 3, columns: int | None = None, settings: Recorded | None = None
) -> bytes:
    """A PNG grid; ``settings`` go into text chunks (``ddpm.seed``, ``ddpm.settings`` as JSON).

    Written by Pillow directly: imageio's plugin lookup costs more than the encoding of a small grid,
    and under ddpm-serve's render threads it serialises them on Python's import lock."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = None
    if settings:
        recorded = _recorded(settings)
        info = PngInfo()
        info.add_text("ddpm.seed", str(recorded.get("seed", "")))
        info.add_text("ddpm.settings", json.dumps(recorded, sort_keys=True))
    buffer = io.BytesIO()
    Image.fromarray(make_grid(images, columns=columns, scale=scale)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def npz_bytes(images: np.ndarray, settings: Recorded) -> bytes:
    """uint8 ``images`` [N, H, W], the seed, and every setting as JSON."""
    recorded = _recorded(settings)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        images=images,
        seed=np.int64(recorded.get("seed", -1)),
        settings=np.array(json.dumps(recorded, sort_keys=True)),
    )
    return buffer.getvalue()


def _recorded(settings: Recorded) -> Mapping[str, Any]:
    """The form the files store: a run's record as :meth:`RunSettings.to_dict` writes it, or a mapping
    a caller built itself (the writers took plain dicts before the record existed)."""
    return settings.to_dict() if isinstance(settings, RunSettings) else dict(settings)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


def write_gif(path: str | Path, frames: list[np.ndarray], fps: float = 12.0, hold: float = 2.0, scale: int = 3) -> None:
    write_bytes(path, gif_bytes(frames, fps, hold, scale))


def write_png(path: str | Path, images: np.ndarray, scale: int = 3) -> None:
    write_bytes(path, png_bytes(images, scale))


def write_npz(path: str | Path, images: np.ndarray, settings: Recorded) -> None:
    write_bytes(path, npz_bytes(images, settings))
