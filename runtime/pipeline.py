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

from . import cpu_batch
from ..core.errors import DDPMError
from ..core.images import to_uint8
from ..core.metadata import ModelInfo
from ..core.sampler import SPACINGS, AncestralSampler, DDIMSampler, DPMSolverSampler, predict_x0
from .session import BoundEps, BoundStep, UNetSession

ENGINES = ("plain", "iobinding")
ENGINE_CHOICES = ("auto", "plain", "iobinding", "cudagraph")
SAMPLERS = ("ancestral", "ddim", "dpm++2m", "dpm++2m-sde")
SOLVERS = {"dpm++2m": False, "dpm++2m-sde": True}  # DPM-Solver++ (2M): stochastic or not
SHOW = ("xt", "x0", "both")  # what the animation frames hold
MAX_DIGIT_LIST = 1000  # a --digit list longer than this is a mistake (lists are cycled over the samples)
# Timestep spacing when none is asked for: the second-order solvers are second order in λ, so they
# step evenly in it (uniform-in-t steps leave a last step 5x longer in λ than the one before).
DEFAULT_SPACING = {"ancestral": "uniform", "ddim": "uniform", "dpm++2m": "logsnr", "dpm++2m-sde": "logsnr"}


def resolve_engine(choice: str, provider: str, fixed_batch: int | None) -> str:
    """The loop engine for an ``--engine`` choice once the provider is known.

    "auto" binds device buffers (IOBinding) on a GPU and calls ``session.run`` on the CPU, where
    binding gains nothing. "cudagraph" is IOBinding on a session that captured a CUDA graph; it
    needs the CUDA provider and a fixed-batch model.
    """
    if choice not in ENGINE_CHOICES:
        raise DDPMError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, got {choice!r}")
    if choice == "cudagraph":
        if provider != "CUDAExecutionProvider":
            raise DDPMError(f"--engine cudagraph needs the CUDA provider; this session runs on {provider}")
        if fixed_batch is None:
            raise DDPMError("--engine cudagraph needs a fixed-batch model (ddpm-export --fixed-batch N)")
        return "iobinding"
    if choice == "auto":
        return "plain" if provider == "CPUExecutionProvider" else "iobinding"
    return choice

DEFAULT_MODEL = "default.onnx"  # class-conditional: ddpm-run with and without --digit


MAX_GUIDANCE = 50.0  # (1+w)·ε − w·ε(∅): the shipped model already draws near-identical digits at w = 3 (README, Quality)
LABEL_STREAM = 0x1ABE1  # the labels' random stream, apart from the images' noise


def class_prior_labels(n: int, classes: int, seed: int) -> np.ndarray:
    """Labels for sampling a class-conditional model without a requested digit: every class
    equally often (the remainder to classes drawn at random), in an order drawn from ``seed``.

    Sampling p(x | y) with y from this prior samples the whole distribution. The model's "no
    class" index does the same in principle, but it learned from only the label-dropout share of
    the batches and draws worse digits (an H100-trained model at 2,000 steps: FD 213 and judge
    confidence 0.708 with the index, FD 20.6 and 0.955 with these labels; benchmarks/results/gpu-h100.md).
    The stream is separate from the images' noise, so the noise is the same as with given labels.
    """
    rng = np.random.default_rng([seed, LABEL_STREAM])
    order = rng.permutation(classes)
    return rng.permutation(order[np.arange(n) % classes]).astype(np.int64)


def default_model_path(precision: str = "fp32") -> Path:
    """The model shipped inside the package (the ``small`` preset, EMA weights, class-conditional),
    sampled when no model is named, with or without requested digits; ``precision`` "int8" names its
    int8 copy for CPUs, when the package ships one."""
    name = DEFAULT_MODEL if precision == "fp32" else DEFAULT_MODEL.replace(".onnx", f".{precision}.onnx")
    path = Path(str(resources.files("ddpm.runtime") / "models" / name))
    if not path.is_file():
        raise DDPMError(f"the embedded {precision} model is missing from this installation ({path})")
    return path


def int8_is_faster(fp32: UNetSession, int8: UNetSession, on_measure: Callable[[], None] | None = None) -> tuple[bool, float]:
    """Whether the int8 copy samples faster per image than fp32 on this CPU, each at its own best
    batch (measured once per machine and cached), and the speed ratio fp32 / int8."""
    fast, slow = cpu_batch.choose(int8, on_measure), cpu_batch.choose(fp32, on_measure)
    if not fast.per_image_ms or not slow.per_image_ms:
        return False, 1.0
    ratio = min(slow.per_image_ms.values()) / min(fast.per_image_ms.values())
    return ratio > 1.0, ratio


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
        self._cpu_batch: cpu_batch.BatchChoice | None = None

    @classmethod
    def load(
        cls, onnx_path: str | Path | None = None, provider: str = "auto", threads: int | None = None, cuda_graph: bool = False,
        device_id: int = 0,
    ) -> "DDPM":
        """Open an exported model; without a path, the embedded one. ``device_id`` picks the GPU on a
        machine with several."""
        path = Path(onnx_path) if onnx_path is not None else default_model_path()
        return cls(UNetSession(path, provider=provider, threads=threads, cuda_graph=cuda_graph, device_id=device_id))

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def timesteps(self) -> int:
        return self.schedule.timesteps

    def default_batch_size(self) -> int:
        """Sub-batch size when none is given: one batch on a GPU; on a CPU the size fastest per image on
        this machine, measured once and cached (see :mod:`cpu_batch`)."""
        if self.provider != "CPUExecutionProvider":
            return 256
        if self._cpu_batch is None:
            self._cpu_batch = cpu_batch.choose(self.session)
        return self._cpu_batch.batch

    def sampler(self, steps: int | None = None, kind: str = "ancestral", eta: float = 0.0,
                spacing: str | None = None) -> AncestralSampler | DDIMSampler | DPMSolverSampler:
        """The ancestral sampler with the model's variance rule (respaced when ``steps`` < T), DDIM, or
        DPM-Solver++ (2M) as an ODE or SDE solver. ``spacing`` None: the kind's default."""
        spacing = spacing or DEFAULT_SPACING[kind]
        if kind == "ddim":
            return DDIMSampler(self.schedule, steps=steps, eta=eta, spacing=spacing)
        if kind in SOLVERS:
            try:
                return DPMSolverSampler(self.schedule, steps=steps, spacing=spacing, stochastic=SOLVERS[kind])
            except ValueError as exc:
                raise DDPMError(f"{kind}: {exc}") from None
        if spacing != "uniform":
            raise DDPMError(f"{spacing} spacing is for DDIM and DPM-Solver++; the ancestral sampler respaces uniformly")
        return AncestralSampler(
            self.schedule, steps=steps, variance=self.info.variance, noise_at_last_step=self.info.noise_at_last_step
        )

    def digit_choices(self, digits: str) -> list[int]:
        """The classes a ``--digit`` value names: "D", "D,E,..." or "all" (0, 1, ..., K−1)."""
        classes = self.info.num_classes
        if not classes:
            raise DDPMError("this model is unconditional: --digit needs a class-conditional export")
        text = digits.strip().lower()
        if text == "all":
            return list(range(classes))
        try:
            parts = text.split(",")
            if len(parts) > MAX_DIGIT_LIST:
                raise DDPMError(f"--digit lists at most {MAX_DIGIT_LIST} digits (they are cycled over the samples)")
            chosen = [int(part) for part in parts]
        except ValueError:
            raise DDPMError(f"--digit takes a digit, a comma-separated list or 'all', got {digits!r}") from None
        bad = [d for d in chosen if not 0 <= d < classes]
        if bad:
            raise DDPMError(f"--digit {bad[0]} is out of range: this model knows classes 0-{classes - 1}")
        return chosen

    def labels_for(self, digits: str | None, n: int) -> np.ndarray | None:
        """Class labels for ``n`` samples from a ``--digit`` value, its classes cycled; None leaves
        the choice to ``generate`` (every class equally often, see ``class_prior_labels``)."""
        if digits is None:
            return None
        return np.resize(np.asarray(self.digit_choices(digits), dtype=np.int64), n)

    def generate(
        self,
        n: int,
        seed: int = 0,
        batch_size: int | None = None,
        steps: int | None = None,
        frames: int = 0,
        on_step: Callable[[int, int], None] | None = None,
        engine: str = "plain",
        sampler: str = "ancestral",
        eta: float = 0.0,
        spacing: str | None = None,
        labels: np.ndarray | None = None,
        guidance: float = 0.0,
        show: str = "xt",
    ) -> SampleRun:
        """Run the sampling loop for ``n`` samples; keep ``frames`` snapshots of the whole batch.

        ``engine`` "plain" calls ``session.run`` with NumPy arrays; "iobinding" keeps bound
        input and output buffers per sub-batch size (required for CUDA graphs). ``sampler`` is
        "ancestral" (DDPM), "ddim" (with ``eta``), "dpm++2m" or "dpm++2m-sde"; ``spacing`` places the
        timesteps of the last three (None: uniform for DDIM, logsnr for DPM-Solver++). A class-conditional model
        takes ``labels`` [n] (none: every class equally often in an order drawn from the seed, which
        samples all digits; see ``class_prior_labels``) and classifier-free ``guidance`` w:
        ε = (1+w)·ε(x, y) − w·ε(x, ∅), both halves in one network batch. ``show`` chooses what the
        frames hold: x_t ("xt"), the predicted clean image x̂_0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t ("x0"), or
        the two side by side ("both", each image twice as wide).
        """
        if show not in SHOW:
            raise DDPMError(f"show must be one of {SHOW}, got {show!r}")
        if sampler not in SAMPLERS:
            raise DDPMError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        spacing = spacing or DEFAULT_SPACING[sampler]
        if spacing not in SPACINGS:
            raise DDPMError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
        if not 0 <= eta <= 1:
            raise DDPMError(f"eta must be between 0 (deterministic) and 1 (as noisy as the ancestral sampler), got {eta}")
        if not 0 <= guidance <= MAX_GUIDANCE:
            raise DDPMError(f"guidance must be between 0 and {MAX_GUIDANCE:g} (beyond, (1+w)·ε only saturates the pixels), "
                            f"got {guidance}")
        classes = self.info.num_classes
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if not classes:
                raise DDPMError("this model is unconditional: class labels need a class-conditional export")
            if labels.shape != (n,) or labels.min() < 0 or labels.max() >= classes:
                raise DDPMError(f"labels must be {n} integers in 0-{classes - 1}")
        if guidance > 0 and labels is None:
            raise DDPMError("guidance needs class labels (--digit) on a class-conditional model")
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
        fused = self.info.graph == "fused-step"
        if fused and sampler != "ancestral":
            raise DDPMError(f"a fused-step model has the ancestral update built in; use the plain export for {sampler}")
        if fused and show != "xt" and frames:
            raise DDPMError("a fused-step model keeps ε inside its graph, so x̂_0 cannot be shown; use the plain export")
        if fused and steps not in (None, self.timesteps):
            raise DDPMError(f"a fused-step model has its {self.timesteps}-step update built in; it cannot respace to {steps} steps")
        if batch_size is not None and batch_size < 1:
            raise DDPMError(f"the batch size must be >= 1, got {batch_size}")
        fixed = self.session.fixed_batch
        batch_size = fixed if fixed is not None else min(batch_size or self.default_batch_size(), n)
        method = sampler
        sampler = self.sampler(steps, method, eta, spacing)
        info = self.info
        drawn = bool(classes) and labels is None
        if drawn:
            labels = class_prior_labels(n, classes, seed)
        y = labels
        shape = (n, info.image_channels, info.image_size, info.image_size)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(shape, dtype=np.float32)
        keep = set(frame_positions(len(sampler), frames))
        run = SampleRun(samples=x, images=np.empty(0, np.uint8), provider=self.provider)
        if frames:
            run.frames.append(self._frame(x, None, show))  # pure noise: x̂_0 not predicted yet
            run.frame_timesteps.append(-1)
        bound: dict[int, BoundEps] = {}
        steppers: list[BoundStep] = []
        self.session.run_seconds = 0.0
        start = time.perf_counter()
        last = len(sampler) - 1
        for i, t in enumerate(sampler.model_timesteps):
            noise = rng.standard_normal(shape, dtype=np.float32) if sampler.needs_noise(i) else None
            if fused:
                x = self._fused_step(x, int(t), noise, batch_size, steppers if engine == "iobinding" else None,
                                     fetch=i in keep or i == last)
            else:
                eps = self._guided_eps(x, int(t), y, guidance, batch_size, bound if engine == "iobinding" else None)
                x0 = predict_x0(x, eps, self.schedule.alpha_bars[t]) if i in keep and show != "xt" else None
                x = sampler.step(x, i, eps, noise)
            if (not fused or engine != "iobinding" or i in keep or i == last) and not np.isfinite(x).all():
                raise DDPMError(f"the samples became NaN or infinite at step {i + 1} of {len(sampler)} (t = {int(t)}): "
                                "the model's ε or the sampler's settings are out of range")
            if i in keep:
                run.frames.append(self._frame(x, None if fused else x0, show))
                run.frame_timesteps.append(int(t))
            if on_step is not None:
                on_step(i + 1, len(sampler))
        run.seconds = time.perf_counter() - start
        run.run_seconds = self.session.run_seconds
        run.samples = x
        run.images = to_uint8(x, info.data_range)
        run.settings = {
            "seed": seed, "num_samples": n, "sampler": method, "steps": len(sampler), "timesteps": self.timesteps,
            **({"eta": float(eta)} if method == "ddim" else {}),
            **({"spacing": spacing} if method != "ancestral" else {}),
            **({"labels": labels.tolist(), "labels_drawn": drawn, "guidance": float(guidance)} if labels is not None else {}),
            "batch_size": batch_size, "engine": engine, "variance": info.variance, "noise_at_last_step": info.noise_at_last_step,
            "provider": self.provider, "model": str(self.session.path), "model_sha256": info.source.get("sha256", ""),
            "transform": info.source.get("transform", "pad"),
        }
        return run

    def _frame(self, x: np.ndarray, x0: np.ndarray | None, show: str) -> np.ndarray:
        """One frame of uint8 images: x_t, x̂_0 (mid-grey before the first prediction), or both side by side."""
        data_range = self.info.data_range
        if show == "xt":
            return to_uint8(x, data_range)
        predicted = to_uint8(x0 if x0 is not None else np.full_like(x, sum(data_range) / 2), data_range)
        return predicted if show == "x0" else np.concatenate([to_uint8(x, data_range), predicted], axis=-1)

    def _chunks(self, n: int, batch_size: int):
        """(start, count, padded size) of each sub-batch; a fixed-batch model pads the last one."""
        for start in range(0, n, batch_size):
            count = min(batch_size, n - start)
            yield start, count, batch_size if self.session.fixed_batch is not None else count

    @staticmethod
    def _pad(array: np.ndarray, size: int) -> np.ndarray:
        if len(array) == size:
            return np.ascontiguousarray(array)
        return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])

    def _fused_step(self, x: np.ndarray, t: int, noise: np.ndarray | None, batch_size: int,
                    steppers: list[BoundStep] | None, fetch: bool) -> np.ndarray:
        """Advance x one step with a fused-step graph. With IOBinding x stays on the device and the
        returned host array is current only when ``fetch`` is set."""
        noise = np.zeros_like(x) if noise is None else noise  # σ = 0 there anyway
        result = x if steppers is not None and not fetch else np.empty_like(x)
        for index, (start, count, size) in enumerate(self._chunks(len(x), batch_size)):
            t_batch = np.full(size, t, dtype=np.int64)
            chunk_noise = self._pad(noise[start : start + count], size)
            if steppers is None:
                feeds = {"x": self._pad(x[start : start + count], size), "t": t_batch, "noise": chunk_noise}
                begin = time.perf_counter()
                out = self.session.session.run(["x_prev"], feeds)[0]
                self.session.run_seconds += time.perf_counter() - begin
                result[start : start + count] = out[:count]
                continue
            if index == len(steppers):
                steppers.append(BoundStep(self.session, self._pad(x[start : start + count], size), slot=index))
            steppers[index](t_batch, chunk_noise)
            if fetch:
                result[start : start + count] = steppers[index].fetch()[:count]
        return result

    def _guided_eps(self, x: np.ndarray, t: int, y: np.ndarray | None, guidance: float, batch_size: int,
                    bound: dict[int, BoundEps] | None) -> np.ndarray:
        if guidance == 0:
            return self._eps(x, t, y, batch_size, bound)
        null = np.full(len(x), self.info.num_classes, dtype=np.int64)
        both = self._eps(np.concatenate([x, x]), t, np.concatenate([y, null]), batch_size, bound)
        conditional, unconditional = both[: len(x)], both[len(x):]
        return (1.0 + guidance) * conditional - guidance * unconditional

    def _eps(self, x: np.ndarray, t: int, y: np.ndarray | None, batch_size: int,
             bound: dict[int, BoundEps] | None) -> np.ndarray:
        eps = np.empty_like(x)
        for start, count, size in self._chunks(len(x), batch_size):
            chunk = self._pad(x[start : start + count], size)
            labels = None if y is None else self._pad(y[start : start + count], size)
            t_batch = np.full(size, t, dtype=np.int64)
            if bound is None:
                result = self.session.eps(chunk, t_batch, labels)
            else:
                if size not in bound:
                    bound[size] = BoundEps(self.session, size)
                result = bound[size](chunk, t_batch, labels)
            eps[start : start + count] = result[:count]
        return eps

    def sample(self, n: int, seed: int = 0, batch_size: int | None = None, steps: int | None = None) -> np.ndarray:
        """``n`` finished samples as uint8 images."""
        return self.generate(n, seed=seed, batch_size=batch_size, steps=steps).images

    def animation(self, n: int, seed: int = 0, frames: int = 40, batch_size: int | None = None, steps: int | None = None) -> list[np.ndarray]:
        """The denoising as a list of uint8 image batches, pure noise first and the samples last."""
        return self.generate(n, seed=seed, batch_size=batch_size, steps=steps, frames=frames).frames
