"""Few-step students: a U-Net that draws in 1-4 calls what its teacher draws along the whole ODE.

The teacher (a ddpm-train checkpoint, pixel or latent) solves its probability-flow ODE with
DPM-Solver++ (2M) from ``trajectories`` noise samples, classifier-free guidance w built into each
digit's ε, and the states x_τ at the student's timesteps τ are kept with where the solve lands,
x_0*. The student starts from the teacher's weights and learns the consistency function on those
pairs,

    f(x_τ, τ, y) = √ᾱ_τ·x_τ − √(1−ᾱ_τ)·v_θ(x_τ, τ, y)  ≈  x_0*           (loss: mean squared error)

in v-parameterisation, so that the x̂_0 it predicts from near-pure noise is not ε's error magnified
by 1/√ᾱ (157x at t = 999 of the linear schedule). As a network it still answers ε,
ε = √(1−ᾱ_t)·x + √ᾱ_t·v, the contract every exported model keeps: the runtime's consistency
sampler recovers f from it as every sampler recovers x̂_0 (core/samplers/consistency.py).

The record a student's checkpoint carries (``Settings.student``)::

    {**DistillConfig.to_dict(), "teacher_sha256", "teacher_step", "teacher_weights" (its EMA state dict),
     "teacher_sampler": "dpm++2m", "timesteps": the student's timesteps, noisiest first}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import DDPMError
from ..core.files import atomic_write, file_sha256
from ..core.progress import Progress
from ..core.samplers import DPMSolverSampler, solver_step_limit, student_timesteps
from ..core.schedule import Schedule, make_schedule
from .config import DISTILL_TRAINING, DistillConfig, Settings, TrainConfig, UNetConfig
from .options import from_args
from .unet import UNet

TEACHER_SAMPLER = "dpm++2m"
TEACHER_SPACING = "logsnr"  # the runtime's dpm++2m default
TRAJECTORY_BATCH = 500
TRAJECTORY_FILE = "trajectories.pt"


class StudentUNet(UNet):
    """The teacher's U-Net read as v_θ: answers ε = σ_t·x + α_t·v_θ (α = √ᾱ, σ = √(1−ᾱ)) and
    predicts x̂_0 = α_t·x − σ_t·v_θ. Same weights, same state dict as a UNet."""

    def __init__(self, config: UNetConfig, schedule: Schedule) -> None:
        super().__init__(config)
        alpha_bars = torch.tensor(schedule.alpha_bars, dtype=torch.float64)
        self.register_buffer("alphas", alpha_bars.sqrt().float(), persistent=False)
        self.register_buffer("sigmas", (1.0 - alpha_bars).sqrt().float(), persistent=False)

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.alphas[t].to(like.dtype)[:, None, None, None], self.sigmas[t].to(like.dtype)[:, None, None, None]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, output: str = "eps"
    ) -> torch.Tensor:
        """ε (what an export answers), or with ``output="x0"`` the x̂_0 the training loss compares."""
        v = super().forward(x, t, y)
        alpha = self.alphas[t].to(v.dtype)[:, None, None, None]
        sigma = self.sigmas[t].to(v.dtype)[:, None, None, None]
        return alpha * x - sigma * v if output == "x0" else sigma * x + alpha * v


def student_settings(path: Path, config: DistillConfig, values: dict[str, Any]) -> Settings:
    """A new student's settings: the teacher's model, data, schedule (and autoencoder), the distillation
    recipe (``DISTILL_TRAINING`` under the options given in ``values``) and the record of the teacher."""
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    record = teacher_record(checkpoint, path, config, make_schedule(**checkpoint["schedule"]))
    teacher = Settings.from_dict(checkpoint)
    train = from_args(TrainConfig(preset=teacher.train.preset, **DISTILL_TRAINING), values)
    return replace(teacher, train=train, student=record)


def teacher_record(checkpoint: dict[str, Any], path: Path, config: DistillConfig, schedule: Schedule) -> dict[str, Any]:
    """The student record of a new run from the teacher ``checkpoint`` read from ``path``, refused in one
    line when it is no U-Net a student can learn from."""
    kind = checkpoint.get("kind", "unet")
    if kind == "autoencoder":
        raise DDPMError(f"--teacher {path} is an autoencoder; give the latent U-Net trained on it")
    if kind == "student" or checkpoint.get("student") is not None:
        raise DDPMError(f"--teacher {path} is a few-step student itself; distil from the U-Net it learned from")
    if config.guidance and not checkpoint["model_config"].get("num_classes"):
        raise DDPMError(f"--teacher {path} is unconditional: it has no guidance to build in; pass --guidance 0")
    if config.teacher_steps > (limit := solver_step_limit(schedule)):
        raise DDPMError(
            f"--teacher-steps {config.teacher_steps} exceeds the {limit} steps the teacher's schedule has "
            "for an ODE solver"
        )
    solver = DPMSolverSampler(schedule, config.teacher_steps, spacing=TEACHER_SPACING)
    if config.student_steps > config.teacher_steps:
        raise DDPMError(
            f"--student-steps {config.student_steps} exceeds --teacher-steps {config.teacher_steps}: "
            "the student learns at the teacher solver's timesteps"
        )
    timesteps = student_timesteps(solver.model_timesteps, config.student_steps)
    return {
        **config.to_dict(),
        "teacher_sha256": file_sha256(path),
        "teacher_step": int(checkpoint["progress"]["step"]),
        "teacher_weights": checkpoint["ema"],
        "teacher_sampler": TEACHER_SAMPLER,
        "timesteps": [int(t) for t in timesteps],
    }


def build_teacher(record: dict[str, Any], config: UNetConfig, device: torch.device | str = "cpu") -> UNet:
    """The teacher's U-Net with its EMA weights, frozen."""
    teacher = UNet(config)
    teacher.load_state_dict(record["teacher_weights"])
    return teacher.to(device).eval().requires_grad_(False)


@dataclass
class Trajectories:
    """Teacher ODE solves: ``states`` [N, K, C, H, W] at the student's K timesteps, where each landed
    ``targets`` [N, C, H, W], and the labels [N] they were drawn with (None: unconditional)."""

    states: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor | None

    def fingerprint(self) -> dict[str, Any]:
        """As MNIST's (train/data.py): the count and a SHA-256 of the contents."""
        digest = hashlib.sha256()
        for tensor in (self.states, self.targets, self.labels):
            if tensor is not None:
                digest.update(tensor.contiguous().numpy().tobytes())
        return {"images": len(self.targets), "sha256": digest.hexdigest()}


def guided_eps(
    teacher: UNet, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, guidance: float
) -> torch.Tensor:
    """(1+w)·ε(x, y) − w·ε(x, ∅) in one call of 2B rows; ε(x) alone without labels or guidance."""
    if y is None or not guidance:
        return teacher(x, t, y)
    null = torch.full_like(y, teacher.config.num_classes)
    conditional, unconditional = teacher(torch.cat((x, x)), torch.cat((t, t)), torch.cat((y, null))).chunk(2)
    return (1.0 + guidance) * conditional - guidance * unconditional


@torch.no_grad()
def solve(
    teacher: UNet,
    schedule: Schedule,
    record: dict[str, Any],
    noise: np.ndarray,
    labels: np.ndarray | None,
    bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One batch of teacher solves from ``noise`` [B, C, H, W]: the states at the student's timesteps
    [B, K, C, H, W] and the landing points [B, C, H, W]. ``bf16``: the teacher's calls under bf16
    autocast (the solver's own arithmetic stays fp32)."""
    device = next(teacher.parameters()).device
    solver = DPMSolverSampler(schedule, record["teacher_steps"], spacing=TEACHER_SPACING)
    keep = {int(t): k for k, t in enumerate(record["timesteps"])}
    states = np.empty((len(noise), len(keep), *noise.shape[1:]), dtype=np.float32)
    y = None if labels is None else torch.from_numpy(labels).to(device)
    x = noise
    for i, t in enumerate(solver.model_timesteps):
        if int(t) in keep:
            states[:, keep[int(t)]] = x
        t_batch = torch.full((len(x),), int(t), dtype=torch.long, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            eps = guided_eps(teacher, torch.from_numpy(x).to(device), t_batch, y, record["guidance"])
        eps = eps.float().cpu().numpy()
        x = solver.step(x, i, eps, None)
    return states, x


def draw_trajectories(
    teacher: UNet,
    schedule: Schedule,
    record: dict[str, Any],
    shape: tuple[int, int, int],
    seed: int,
    progress: bool = True,
    bf16: bool = False,
) -> Trajectories:
    """``record["trajectories"]`` teacher solves from noise keyed by ``seed``, digits drawn evenly over
    the classes of a conditional teacher."""
    count, classes = record["trajectories"], teacher.config.num_classes
    rng = np.random.default_rng([seed, 0x7EAC])
    states = torch.empty((count, len(record["timesteps"]), *shape))
    targets = torch.empty((count, *shape))
    labels = torch.from_numpy(rng.permutation(np.arange(count) % classes)) if classes else None
    with Progress(count, "teacher", unit="solve", enabled=progress) as bar:
        for start in range(0, count, TRAJECTORY_BATCH):
            size = min(TRAJECTORY_BATCH, count - start)
            noise = rng.standard_normal((size, *shape), dtype=np.float32)
            batch_labels = None if labels is None else labels[start : start + size].numpy()
            kept, landed = solve(teacher, schedule, record, noise, batch_labels, bf16)
            states[start : start + size], targets[start : start + size] = (
                torch.from_numpy(kept),
                torch.from_numpy(landed),
            )
            bar.update(size)
    return Trajectories(states, targets, labels)


def trajectory_key(record: dict[str, Any], seed: int) -> dict[str, Any]:
    """What decides a trajectory set: a cached set is reused only when all of it matches."""
    return {
        "teacher_sha256": record["teacher_sha256"],
        "seed": seed,
        **{name: record[name] for name in ("guidance", "teacher_steps", "trajectories", "timesteps")},
    }


def load_or_draw(
    out_dir: Path,
    teacher_fn,
    schedule: Schedule,
    record: dict[str, Any],
    shape: tuple[int, int, int],
    seed: int,
    progress: bool = True,
    bf16: bool = False,
) -> Trajectories:
    """OUT/trajectories.pt when it holds this run's set (a resumed run does not solve again), else a
    fresh set, written there atomically. A set solved under the other precision is the same set up to
    round-off, so precision is not part of its key."""
    path, key = out_dir / TRAJECTORY_FILE, trajectory_key(record, seed)
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == key:
                return Trajectories(cached["states"], cached["targets"], cached["labels"])
        except Exception:  # unreadable or foreign: solved again below and replaced
            pass
    found = draw_trajectories(teacher_fn(), schedule, record, shape, seed, progress, bf16)
    try:
        with atomic_write(path) as handle:
            torch.save({"key": key, "states": found.states, "targets": found.targets, "labels": found.labels}, handle)
    except OSError as exc:
        raise DDPMError(f"cannot write {path}: {exc.strerror or exc}") from None
    return found
