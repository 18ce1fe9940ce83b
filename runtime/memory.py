"""Whether a sampling run fits in memory: its peak estimated from the request, against what this
machine has free, checked before any sampling so that a run too large fails in one line instead
of swapping or being killed at its end."""

from __future__ import annotations

from ..core.errors import DDPMError
from ..core.metadata import ModelInfo
from ..core.plan import SamplingPlan
from .machine import available_memory


def check_memory(n: int, info: ModelInfo, plan: SamplingPlan, scale: int) -> None:
    """Refuse, before sampling, a run of ``n`` samples by ``plan`` whose outputs cannot fit in the
    memory this machine has free; ``scale``: the grids' pixel upscaling, 0 where no picture is drawn."""
    frames = plan.frames * (2 if plan.show == "both" else 1)  # "both": x_t and x̂_0 side by side
    available = available_memory()
    needed = memory_needed(n, info.output_size, info.output_channels, frames, scale)  # a latent's images: decoded
    if available is not None and needed > available:
        raise DDPMError(
            f"-n {n} needs about {needed / 1e9:.1f} GB of memory for its samples and pictures, and "
            f"{available / 1e9:.1f} GB is free: draw fewer per run (or fewer --frames, a smaller --scale)"
        )


def memory_needed(n: int, size: int, channels: int, frames: int, scale: int) -> int:
    """About how many bytes a run of ``n`` samples holds at its peak: the float32 state of every sample
    (x, ε and the next x), the animation frames as uint8, and the upscaled grids (twice: the pictures
    and the encoder's copy)."""
    pixels = n * size * size
    state = 3 * 4 * pixels * channels
    animation = frames * pixels * channels
    grids = 2 * (frames + 1) * n * (size + 2) ** 2 * scale**2 * channels if scale else 0
    return state + animation + grids
