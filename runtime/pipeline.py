"""The Python API: load an exported model (or the embedded default) and sample digits.

    from ddpm.runtime import DDPM
    ddpm = DDPM.load()                       # embedded model; DDPM.load("unet.onnx") for another
    images = ddpm.sample(16, seed=0)         # uint8 [16, 32, 32]
    run = ddpm.generate(16, seed=0, frames=40)
    write_gif("out.gif", run.frames)

Same seed, same samples: x_T and every step's noise come from one ``numpy.random.Generator``
and are drawn for the whole request at once, so neither the batch size nor the provider changes
which noise a sample gets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DDPMError
from .images import to_uint8
from .metadata import ModelInfo
from .sampler import AncestralSampler
from .session import BoundEps, UNetSession

ENGINES = ("plain", "iobinding")

DEFAULT_MODEL = "default.onnx"
# Per-image time of the small model on a 2-core CPU is flat from 16 to 32 and rises beyond
# (benchmarks/README.md, batch sweep); 16 keeps memory and first-result latency low.
CPU_BATCH_SIZE = 16


def default_model_path() -> Path:
    """The model shipped inside the package (the ``small`` preset, EMA weights)."""
    path = Path(str(resources.files("ddpm.runtime") / "models" / DEFAULT_MODEL))
    if not path.is_file():
        raise DDPMError(f"the embedded model is missing from this installation ({path})")
    return path


def frame_positions(steps: int, frames: int) -> list[int]:
    """Loop positions (0 = first update) after which a frame is kept, denser towards the end.

    The picture changes most in the last steps, so positions follow (k/K)^2 backwards from the
    final step; the last position is always the finished sample.
    """
    if frames < 1:
        return []
    last = steps - 1
    positions = {last - int(round(last * (k / frames) ** 2)) for k in range(frames)}
    return sorted(positions)


@dataclass
class SampleRun:
    """The result of one sampling request."""

    samples: np.ndarray  # float32 [N, C, H, W] in the model's data range
    images: np.ndarray  # uint8 [N, H, W] (or [N, H, W, C] for colour)
    frames: list[np.ndarray] = field(default_factory=list)  # uint8 images, noise first, final last
    frame_timesteps: list[int] = field(default_factory=list)  # model timestep after each frame (-1: x_T)
    seconds: float = 0.0
    run_seconds: float = 0.0
    provider: str = ""
    settings: dict = field(default_factory=dict)


class DDPM:
    """An exported DDPM U-Net with its sampler."""

    def __init__(self, session: UNetSession) -> None:
        self.session = session
        self.info: ModelInfo = session.info
        self.schedule = self.info.make_schedule()

    @classmethod
    def load(
        cls, onnx_path: str | Path | None = None, provider: str = "auto", threads: int | None = None, cuda_graph: bool = False
    ) -> "DDPM":
        path = Path(onnx_path) if onnx_path is not None else default_model_path()
        return cls(UNetSession(path, provider=provider, threads=threads, cuda_graph=cuda_graph))

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def default_batch_size(self) -> int:
        """Sub-batch size when none is given: one batch on a GPU; on a CPU the size that was fastest per image."""
        return 256 if self.provider != "CPUExecutionProvider" else CPU_BATCH_SIZE

    def sampler(self, steps: int | None = None) -> AncestralSampler:
        return AncestralSampler(
            self.schedule, steps=steps, variance=self.info.variance, noise_at_last_step=self.info.noise_at_last_step
        )

    def generate(
        self,
        n: int,
        seed: int = 0,
        batch_size: int | None = None,
        steps: int | None = None,
        frames: int = 0,
        on_step: Callable[[int, int], None] | None = None,
        engine: str = "plain",
    ) -> SampleRun:
        """Run the ancestral loop for ``n`` samples; keep ``frames`` snapshots of the whole batch.

        ``engine`` "plain" calls ``session.run`` with NumPy arrays; "iobinding" keeps bound
        input and output buffers per sub-batch size (required for CUDA graphs).
        """
        if engine not in ENGINES:
            raise DDPMError(f"engine must be one of {ENGINES}, got {engine!r}")
        if self.session.cuda_graph and engine != "iobinding":
            raise DDPMError("a CUDA-graph session runs through IOBinding: use engine='iobinding'")
        if n < 1:
            raise DDPMError(f"the number of samples must be >= 1, got {n}")
        if seed < 0:
            raise DDPMError(f"the seed must be >= 0, got {seed}")
        if steps is not None and not 1 <= steps <= self.timesteps:
            raise DDPMError(f"steps must be between 1 and {self.timesteps} (the model's T), got {steps}")
        if batch_size is not None and batch_size < 1:
            raise DDPMError(f"the batch size must be >= 1, got {batch_size}")
        fixed = self.session.fixed_batch
        batch_size = fixed if fixed is not None else min(batch_size or self.default_batch_size(), n)
        sampler = self.sampler(steps)
        info = self.info
        shape = (n, info.image_channels, info.image_size, info.image_size)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(shape, dtype=np.float32)
        keep = set(frame_positions(len(sampler), frames))
        run = SampleRun(samples=x, images=np.empty(0, np.uint8), provider=self.provider)
        if frames:
            run.frames.append(to_uint8(x, info.data_range))
            run.frame_timesteps.append(-1)
        bound: dict[int, BoundEps] = {}
        self.session.run_seconds = 0.0
        start = time.perf_counter()
        for i, t in enumerate(sampler.model_timesteps):
            noise = rng.standard_normal(shape, dtype=np.float32) if sampler.needs_noise(i) else None
            eps = self._eps(x, int(t), batch_size, bound if engine == "iobinding" else None)
            x = sampler.step(x, i, eps, noise)
            if i in keep:
                run.frames.append(to_uint8(x, info.data_range))
                run.frame_timesteps.append(int(t))
            if on_step is not None:
                on_step(i + 1, len(sampler))
        run.seconds = time.perf_counter() - start
        run.run_seconds = self.session.run_seconds
        run.samples = x
        run.images = to_uint8(x, info.data_range)
        run.settings = {
            "seed": seed, "num_samples": n, "steps": len(sampler), "timesteps": self.timesteps,
            "batch_size": batch_size, "engine": engine, "variance": info.variance, "noise_at_last_step": info.noise_at_last_step,
            "provider": self.provider, "model": str(self.session.path), "model_sha256": info.source.get("sha256", ""),
            "transform": info.source.get("transform", "pad"),
        }
        return run

    def _eps(self, x: np.ndarray, t: int, batch_size: int, bound: dict[int, BoundEps] | None) -> np.ndarray:
        n = len(x)
        eps = np.empty_like(x)
        for start in range(0, n, batch_size):
            chunk = x[start : start + batch_size]
            count = len(chunk)
            if count < batch_size and self.session.fixed_batch is not None:
                chunk = np.concatenate([chunk, np.zeros((batch_size - count, *chunk.shape[1:]), np.float32)])
            t_batch = np.full(len(chunk), t, dtype=np.int64)
            if bound is None:
                result = self.session.eps(np.ascontiguousarray(chunk), t_batch)
            else:
                if len(chunk) not in bound:
                    bound[len(chunk)] = BoundEps(self.session, len(chunk))
                result = bound[len(chunk)](chunk, t_batch)
            eps[start : start + count] = result[:count]
        return eps

    def sample(self, n: int, seed: int = 0, batch_size: int | None = None, steps: int | None = None) -> np.ndarray:
        """``n`` finished samples as uint8 images."""
        return self.generate(n, seed=seed, batch_size=batch_size, steps=steps).images

    def animation(self, n: int, seed: int = 0, frames: int = 40, batch_size: int | None = None, steps: int | None = None) -> list[np.ndarray]:
        """The denoising as a list of uint8 image batches, pure noise first and the samples last."""
        return self.generate(n, seed=seed, batch_size=batch_size, steps=steps, frames=frames).frames
