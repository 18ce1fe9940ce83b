"""The training loop: L_simple, AdamW, gradient clipping, EMA, checkpoints and preview grids."""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpm.runtime.errors import DDPMError
from ddpm.runtime.images import to_uint8
from ddpm.runtime.outputs import write_png
from ddpm.runtime.progress import Progress
from ddpm.runtime.schedule import make_schedule

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import UNetConfig
from .data import DataConfig, load_training_images
from .diffusion import Diffusion, sample
from .unet import UNet

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a run; saved in the checkpoint and restored on resume."""

    preset: str = "small"
    batch_size: int = 128
    lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_warmup_steps: int = 0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    epochs: int = 20
    max_steps: int | None = None
    max_images: int | None = None
    seed: int = 0
    precision: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**{**data, "adam_betas": tuple(data["adam_betas"])})


@dataclass
class RunOptions:
    """Settings of this invocation only; free to change between a run and its resume."""

    out_dir: Path = Path("runs/small")
    device: str = "auto"
    save_every: int = 1000
    log_every: int = 20
    sample_grid: bool = True
    sample_count: int = 16
    sample_steps: int = 100
    progress: bool = True
    data_dir: Path = Path("data/mnist")
    download: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DDPMError("--device cuda was asked for but PyTorch sees no CUDA GPU")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The shuffled image order of one epoch, a pure function of (seed, epoch): resumable mid-epoch."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(count))


class EMA:
    """Exponential moving average of the weights, θ_ema ← d·θ_ema + (1−d)·θ.

    With warm-up the decay is min(d, (1+n)/(10+n)) after n updates, so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self, updates: int) -> float:
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        weight = 1.0 - self.current_decay(updates)
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], weight)


def learning_rate(config: TrainConfig, step: int) -> float:
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    return config.lr


class Trainer:
    def __init__(
        self,
        model_config: UNetConfig,
        data_config: DataConfig,
        schedule: dict[str, Any],
        train_config: TrainConfig,
        options: RunOptions,
        resume: dict[str, Any] | None = None,
    ) -> None:
        self.model_config, self.data_config, self.schedule_spec = model_config, data_config, schedule
        self.config, self.options = train_config, options
        self.device = resolve_device(options.device)
        self.use_bf16 = train_config.precision == "bf16" or (train_config.precision == "auto" and self.device.type == "cuda")
        self.schedule = make_schedule(**schedule)
        self.diffusion = Diffusion(self.schedule, self.device)

        seed_everything(train_config.seed)
        self.model = UNet(model_config).to(self.device)
        self.ema = EMA(self.model, train_config.ema_decay, train_config.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_config.lr,
            betas=train_config.adam_betas,
            weight_decay=train_config.weight_decay,
        )
        self.step = 0
        self.elapsed_before = 0.0  # training seconds of earlier runs of this checkpoint
        self._started: float | None = None
        if resume is not None:
            self.model.load_state_dict(resume["model"])
            self.ema.model.load_state_dict(resume["ema"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.step = int(resume["progress"]["step"])
            self.elapsed_before = float(resume["progress"].get("elapsed_s", 0.0))
            restore_rng_state(resume["rng"])

        self.images = load_training_images(options.data_dir, data_config, options.download, train_config.max_images).to(self.device)
        if len(self.images) == 0:
            raise DDPMError("the training set is empty (check --max-images)")
        self.steps_per_epoch = math.ceil(len(self.images) / train_config.batch_size)
        total = train_config.epochs * self.steps_per_epoch
        self.total_steps = min(total, train_config.max_steps) if train_config.max_steps else total

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config.to_dict(),
            "schedule": dict(self.schedule_spec),
            "data": self.data_config.to_dict(),
            "sampling": {"prediction": "eps", "variance": "beta", "noise_at_last_step": False},
            "train": self.config.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": {
                "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "elapsed_s": self.elapsed(),
            },
            "rng": capture_rng_state(),
        }

    def elapsed(self) -> float:
        """Training wall time of this checkpoint, earlier runs included."""
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.elapsed_before + running

    def save(self) -> Path:
        path = self.options.out_dir / "model.pt"
        save_checkpoint(path, self.checkpoint())
        return path

    def write_samples(self, epoch: int) -> Path:
        images = sample(
            self.ema.model,
            self.schedule,
            self.options.sample_count,
            self.data_config.image_size,
            seed=self.config.seed,
            steps=self.options.sample_steps,
        )
        path = self.options.out_dir / f"samples-epoch{epoch:03d}.png"
        write_png(path, to_uint8(images, self.data_config.data_range), scale=2)
        return path

    # -- the loop ----------------------------------------------------------------------------

    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss = self.diffusion.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        return loss.detach()

    def run(self) -> Path:
        options, config = self.options, self.config
        log_path = options.out_dir / "log.jsonl"
        self.model.train()
        self._started = time.perf_counter()
        window_loss = torch.zeros((), device=self.device)
        window_steps, window_images, window_start = 0, 0, time.perf_counter()
        progress = Progress(self.total_steps, "train", unit="step", start=self.step, enabled=options.progress)
        with progress, open(log_path, "a", encoding="utf-8") as log:
            while self.step < self.total_steps:
                epoch, index = divmod(self.step, self.steps_per_epoch)
                order = epoch_order(config.seed, epoch, len(self.images))
                batch_ids = order[index * config.batch_size : (index + 1) * config.batch_size].to(self.device)
                loss = self.train_step(self.images[batch_ids])
                window_loss += loss
                window_steps += 1
                window_images += len(batch_ids)

                end_of_epoch = self.step % self.steps_per_epoch == 0
                finished = self.step >= self.total_steps
                saving = finished or (options.save_every and self.step % options.save_every == 0)
                if window_steps == options.log_every or saving or end_of_epoch:
                    mean_loss = window_loss.item() / window_steps
                    if not math.isfinite(mean_loss):
                        raise DDPMError(
                            f"loss became {mean_loss} by step {self.step}; stopped without saving "
                            f"(the last checkpoint in {options.out_dir} is intact)"
                        )
                    rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                    record = {
                        "step": self.step,
                        "epoch": self.step / self.steps_per_epoch,
                        "loss": mean_loss,
                        "images_per_s": rate,
                        "elapsed_s": self.elapsed(),
                    }
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    window_loss.zero_()
                    window_steps, window_images, window_start = 0, 0, time.perf_counter()
                    progress.status = f"epoch {self.step / self.steps_per_epoch:.2f}  loss {mean_loss:.4f}  {rate:.1f} img/s"
                progress.update(1)
                if saving:
                    self.save()
                if end_of_epoch and options.sample_grid:
                    self.write_samples(self.step // self.steps_per_epoch)
        return options.out_dir / "model.pt"

