"""The files ``ddpm-run`` writes: checked before any work, then written together at the end."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.errors import DDPMError
from ..core.files import StagedFiles, check_distinct_paths, output_target
from ..core.outputs import VIDEO_CODECS, gif_bytes, npz_bytes, png_bytes, video_available, write_video
from .installed import installed_inputs
from .pipeline import SampleRun


def output_targets(
    gif: Path | None,
    video: Path | None,
    png: Path | None,
    npz: Path | None,
    show: str,
    show_info: bool,
    onnx_path: Path | None,
) -> dict[str, Path | None]:
    """The files to write, checked before any work: something to write, writable names, none a file this
    command reads, a known video format, and no extension of another format (--gif x.png)."""
    targets = {
        "gif": output_target(gif, "--gif"),
        "video": output_target(video, "--video"),
        "png": output_target(png, "--png"),
        "npz": output_target(npz, "--npz"),
    }
    if not show_info and not any(targets.values()):
        raise click.UsageError("nothing to write: give --gif, --video, --png and/or --npz")
    if video is not None:
        if video.suffix.lower() not in VIDEO_CODECS:
            raise click.BadParameter(f"{video.name}: give a .mp4 or .webm file name", param_hint="'--video'")
        if not video_available():
            raise DDPMError('--video needs ffmpeg through imageio-ffmpeg: pip install "ddpm-mnist[video]"')
    if show != "xt" and gif is None and video is None:
        raise click.BadParameter("chooses what the animation shows; add --gif or --video", param_hint="'--show'")
    check_distinct_paths(
        {"--gif": gif, "--video": video, "--png": png, "--npz": npz}, {"--onnx": onnx_path, **installed_inputs()}
    )
    for option, path, suffix in (("--gif", gif, ".gif"), ("--png", png, ".png"), ("--npz", npz, ".npz")):
        if path is not None and path.suffix and path.suffix.lower() != suffix:
            raise click.BadParameter(
                f"{path.name}: {option} writes {suffix[1:].upper()} data; give a {suffix} name",
                param_hint=f"'{option}'",
            )
    return targets


def write_outputs(
    run: SampleRun, targets: dict[str, Path | None], columns: int | None, fps: float, hold: float, scale: int
) -> dict[str, int]:
    """Every requested file, written together under temporary names and renamed at the end; their sizes."""
    payloads = {}
    if targets["gif"]:
        payloads["gif"] = gif_bytes(run.frames, fps=fps, hold=hold, scale=scale, columns=columns)
    if targets["png"]:
        payloads["png"] = png_bytes(run.images, scale=scale, columns=columns, settings=run.settings)
    if targets["npz"]:
        payloads["npz"] = npz_bytes(run.images, run.settings)
    sizes = {name: len(data) for name, data in payloads.items()}
    with StagedFiles() as staged:
        for name, data in payloads.items():
            staged.stage(targets[name]).write_bytes(data)
        video = targets["video"]
        if video is not None:
            temporary = staged.stage(video)
            write_video(temporary, video.suffix.lower(), run.frames, fps=fps, hold=hold, scale=scale, columns=columns)
            sizes["video"] = temporary.stat().st_size
        staged.commit()
    return sizes
