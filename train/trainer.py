"""The training loop: L_simple, AdamW, gradient clipping, EMA, checkpoints and preview grids."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import DDPMError
from ..core.files import atomic_write, make_dir
from ..core.images import to_uint8
from ..core.outputs import write_png
from ..core.progress import Progress
from ..core.schedule import make_schedule

from .checkpoint import (
    LATEST,
    capture_rng_state,
    prune_checkpoints,
    publish_latest,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
    step_file_name,
)
from .config import RunOptions, Settings, TrainConfig
from .data import load_training_set
from .diffusion import Diffusion, sample
from .unet import UNet

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


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up over ``lr_warmup_steps``, then constant or decaying to 0 at ``total_steps``."""
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    decay_steps = max(total_steps - config.lr_warmup_steps, 1)
    progress = min(max(step - config.lr_warmup_steps, 0) / decay_steps, 1.0)
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * (1.0 - progress)


def step_seed(*keys: int) -> int:
    """A 63-bit seed for one (seed, step[, rank]) key, independent of everything that ran before."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (world 1 when run directly)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Distributed:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local_rank)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Trainer:
    def __init__(self, settings: Settings, options: RunOptions, resume: dict[str, Any] | None = None) -> None:
        self.settings, self.options = settings, options
        self.model_config, self.data_config, self.config = settings.model_config, settings.data, settings.train
        model_config, data_config, train_config = self.model_config, self.data_config, self.config
        self.dist = setup_distributed(options.device)
        self.device = resolve_device(options.device)
        if self.device.type == "cuda" and self.dist.world > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
        if train_config.batch_size % self.dist.world:
            raise DDPMError(f"--batch-size {train_config.batch_size} (the global batch) must be divisible by the "
                            f"{self.dist.world} processes")
        self.use_bf16 = train_config.precision == "bf16" or (train_config.precision == "auto" and self.device.type == "cuda")
        channels_last = options.channels_last if options.channels_last is not None else self.device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.schedule = make_schedule(**settings.schedule)
        gamma = train_config.min_snr_gamma if train_config.loss_weighting == "min-snr" else None
        self.diffusion = Diffusion(self.schedule, self.device, min_snr_gamma=gamma)

        seed_everything(train_config.seed)
        self.model = UNet(model_config).to(self.device, memory_format=self.memory_format)
        self.ema = EMA(self.model, train_config.ema_decay, train_config.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_config.lr,
            betas=train_config.adam_betas,
            weight_decay=train_config.weight_decay,
            fused=self.device.type == "cuda",
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

        # The module that runs the forward pass: DDP averages gradients over the processes.
        self.train_module: nn.Module = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = DistributedDataParallel(self.model, device_ids=ids)
        if options.compile:
            self.train_module = torch.compile(self.train_module)

        # The whole (small) dataset lives on the training device.
        images, labels = load_training_set(options.data_dir, data_config, options.download, train_config.max_images)
        if self.device.type == "cuda":
            images = images.pin_memory()
        self.images = images.to(self.device, non_blocking=True)
        self.labels = labels.to(self.device) if model_config.num_classes else None
        if len(self.images) < train_config.batch_size:
            raise DDPMError(
                f"the training set ({len(self.images)} images) is smaller than one batch ({train_config.batch_size}); "
                "lower --batch-size or raise --max-images"
            )
        # Full batches only: every process gets the same share of every step.
        self.steps_per_epoch = len(self.images) // train_config.batch_size
        total = train_config.epochs * self.steps_per_epoch
        self.total_steps = min(total, train_config.max_steps) if train_config.max_steps else total

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        return {
            **self.settings.to_dict(),
            "sampling": {"prediction": "eps", "variance": "beta", "noise_at_last_step": False},
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "progress": {
                "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "elapsed_s": self.elapsed(),
                "processes": self.dist.world,
            },
            "rng": capture_rng_state(),
        }

    def elapsed(self) -> float:
        """Training wall time of this checkpoint, earlier runs included."""
        running = time.perf_counter() - self._started if self._started is not None else 0.0
        return self.elapsed_before + running

    def save(self) -> Path:
        """ckpt-<step>.pt, written atomically, then model.pt pointed at it; older ones beyond --keep go."""
        out_dir = self.options.out_dir
        path = out_dir / step_file_name(self.step)
        if self.options.replace_old:
            prune_checkpoints(out_dir, 0)  # the earlier run's; this run's first is written next
            self.options.replace_old = False
        save_checkpoint(path, self.checkpoint())
        publish_latest(path, out_dir / LATEST)
        prune_checkpoints(out_dir, self.options.keep)
        return path

    def write_samples(self, epoch: int) -> Path:
        images = sample(
            self.ema.model,
            self.schedule,
            self.options.sample_count,
            self.data_config.image_size,
            seed=self.config.seed,
            steps=min(self.options.sample_steps, self.schedule.timesteps),
            labels=np.arange(self.options.sample_count) % self.model_config.num_classes if self.model_config.num_classes else None,
        )
        path = self.options.out_dir / f"samples-epoch{epoch:03d}.png"
        write_png(path, to_uint8(images, self.data_config.data_range), scale=2)
        return path

    # -- the loop ----------------------------------------------------------------------------

    def step_noise(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """t, ε and (conditional models) the label-dropout mask of the whole global batch for this
        step, from a generator keyed by (seed, step).

        Every process draws the same global batch and takes its share, so the result does not depend
        on the number of processes, and a resumed run needs no generator state.
        """
        generator = torch.Generator(self.device).manual_seed(step_seed(self.config.seed, self.step))
        shape = (batch, self.model_config.image_channels, self.data_config.image_size, self.data_config.image_size)
        t = torch.randint(0, self.schedule.timesteps, (batch,), device=self.device, generator=generator)
        noise = torch.randn(shape, device=self.device, generator=generator)
        drop = None
        if self.labels is not None:
            drop = torch.rand(batch, device=self.device, generator=generator) < self.config.label_dropout
        return t, noise, drop

    def train_step(self, batch_ids: torch.Tensor, stop_requested: bool = False) -> tuple[float, bool]:
        """One optimizer step on this process's share of the global batch ``batch_ids``.

        Returns the loss (mean over all processes) and whether any process asked to stop. A
        non-finite loss or gradient norm on any process skips the update everywhere.
        """
        share = slice(self.dist.rank, None, self.dist.world)
        t, noise, drop = self.step_noise(len(batch_ids))
        x0 = self.images[batch_ids[share]].contiguous(memory_format=self.memory_format)
        y = None
        if self.labels is not None:
            y = torch.where(drop[share], self.model_config.num_classes, self.labels[batch_ids[share]])
        torch.manual_seed(step_seed(self.config.seed, self.step, self.dist.rank))  # dropout
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.total_steps)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss = self.diffusion.loss(self.train_module, x0, t[share], noise[share], y)
        self.optimizer.zero_grad(set_to_none=True)
        status = torch.stack([loss.detach().float(), torch.tensor(float(stop_requested), device=self.device)])
        if self.dist.world > 1:
            import torch.distributed as dist

            status[0] = torch.nan_to_num(status[0], nan=float("inf"))  # NaN would not survive the sum
            dist.all_reduce(status)
            status[0] /= self.dist.world
        loss_value, stop = float(status[0]), bool(status[1] > 0)
        healthy = math.isfinite(loss_value)
        if healthy:
            loss.backward()
            if self.config.grad_clip > 0:
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                healthy = bool(torch.isfinite(norm))
                if not healthy:
                    loss_value = float("nan")
        if healthy:
            self.optimizer.step()
            if self.dist.is_main:
                self.ema.update(self.model, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_value, stop

    def run(self, warn=None) -> Path:
        """Train to ``total_steps``. SIGINT/SIGTERM end the run after the current step with a checkpoint.

        Under torchrun every process trains; only rank 0 logs, saves and draws sample grids.
        """
        try:
            return self._run(warn or (lambda message: None))
        finally:
            shutdown_distributed()

    def _run(self, warn) -> Path:
        options, config, main = self.options, self.config, self.dist.is_main
        if main:
            make_dir(options.out_dir)
            remove_stale_temporaries(options.out_dir)
            trim_log(options.out_dir / "log.jsonl", self.step)
        self.train_module.train()
        self._started = time.perf_counter()
        window_loss, window_steps, window_images, window_start = 0.0, 0, 0, time.perf_counter()
        bad_steps = 0
        progress = Progress(self.total_steps, "train", unit="step", start=self.step, enabled=options.progress and main)
        log = open(options.out_dir / "log.jsonl", "a", encoding="utf-8") if main else None
        try:
            with progress, StopSignals() as signals:
                while self.step < self.total_steps:
                    epoch, index = divmod(self.step, self.steps_per_epoch)
                    order = epoch_order(config.seed, epoch, len(self.images))
                    batch_ids = order[index * config.batch_size : (index + 1) * config.batch_size].to(self.device)
                    loss, stop = self.train_step(batch_ids, bool(signals.received))
                    if not math.isfinite(loss):
                        bad_steps += 1
                        latest = options.out_dir / LATEST
                        kept = f"{latest} is intact" if latest.exists() else "no checkpoint was written yet"
                        if bad_steps > options.max_bad_steps:
                            raise DDPMError(
                                f"non-finite loss or gradient ({loss}) at step {self.step}"
                                f"{f' after skipping {bad_steps - 1} such batches' if bad_steps > 1 else ''}; stopped, {kept} "
                                "(--max-bad-steps skips a few such batches)"
                            )
                        if main:
                            warn(f"skipped the update of step {self.step}: non-finite loss or gradient "
                                 f"({bad_steps}/{options.max_bad_steps})")
                    else:
                        window_loss += loss
                        window_steps += 1
                    window_images += len(batch_ids)

                    end_of_epoch = self.step % self.steps_per_epoch == 0
                    finished = self.step >= self.total_steps
                    saving = finished or stop or (options.save_every and self.step % options.save_every == 0)
                    if main and window_steps and (window_steps >= options.log_every or saving or end_of_epoch):
                        mean_loss = window_loss / window_steps
                        rate = window_images / max(time.perf_counter() - window_start, 1e-9)
                        record = {
                            "step": self.step,
                            "epoch": self.step / self.steps_per_epoch,
                            "loss": mean_loss,
                            "images_per_s": rate,
                            "elapsed_s": self.elapsed(),
                        }
                        if self.device.type == "cuda":
                            record["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        window_loss, window_steps, window_images, window_start = 0.0, 0, 0, time.perf_counter()
                        progress.status = f"epoch {self.step / self.steps_per_epoch:.2f}  loss {mean_loss:.4f}  {rate:.1f} img/s"
                    progress.update(1)
                    if main and saving:
                        self.save()
                    if main and end_of_epoch and options.sample_grid and not stop:
                        try:
                            self.write_samples(self.step // self.steps_per_epoch)
                        except OSError as exc:  # a preview is not worth the run; the checkpoints say if the disk is full
                            warn(f"could not write the epoch {self.step // self.steps_per_epoch} sample grid "
                                 f"({exc.strerror or exc}); training goes on")
                    if stop:
                        raise Interrupted(signals.received or signal.SIGTERM, self.step, options.out_dir / LATEST)
        finally:
            if log is not None:
                log.close()
        return options.out_dir / LATEST


class Interrupted(DDPMError):
    """SIGINT or SIGTERM ended training after a checkpoint was saved."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: saved {path}; continue with --resume auto --out {path.parent}")
        self.exit_code = 128 + signum


class StopSignals:
    """While active, SIGINT and SIGTERM only set ``received``: the loop finishes its step and saves."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def trim_log(path: Path, step: int) -> None:
    """Drop log records past ``step`` (a killed run logged steps that the resumed run repeats)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) != len(lines):
        with atomic_write(path) as handle:
            handle.write("".join(f"{line}\n" for line in kept).encode("utf-8"))
