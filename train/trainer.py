"""The training loop: L_simple, AdamW, gradient clipping, EMA, checkpoints and preview grids."""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from ..core.errors import DDPMError
from ..core.files import make_dir
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
from .config import RunOptions, Settings
from .data import load_training_set
from .diffusion import Diffusion, sample
from .distributed import resolve_device, setup_distributed, shutdown_distributed
from .ema import EMA
from .latent import build_autoencoder, encode, latent_decoder, latent_size, scale_factor
from .logs import LossWindow, trim_log
from .lr_schedule import learning_rate
from .signals import Interrupted, StopSignals
from .unet import UNet


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The shuffled image order of one epoch, a pure function of (seed, epoch): resumable mid-epoch."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(count))


def step_seed(*keys: int) -> int:
    """A 63-bit seed for one (seed, step[, rank]) key, independent of everything that ran before."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class Trainer:
    def __init__(self, settings: Settings, options: RunOptions, resume: dict[str, Any] | None = None) -> None:
        self.settings, self.options = settings, options
        self.model_config, self.data_config, self.config = settings.model_config, settings.data, settings.train
        self._choose_device()
        self._build_model()
        self.step = 0
        self.elapsed_before = 0.0  # training seconds of earlier runs of this checkpoint
        self._started: float | None = None
        if resume is not None:
            self._restore(resume)
        self.train_module = self._wrap_model()
        self._load_data()

    # -- setting up --------------------------------------------------------------------------

    def _choose_device(self) -> None:
        """This process's device and place in a torchrun job, and the precision and memory layout it trains in."""
        self.dist = setup_distributed(self.options.device)
        self.device = resolve_device(self.options.device)
        if self.device.type == "cuda" and self.dist.world > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.config.batch_size % self.dist.world:
            raise DDPMError(
                f"--batch-size {self.config.batch_size} (the global batch) must be divisible by the "
                f"{self.dist.world} processes"
            )
        precision, on_cuda = self.config.precision, self.device.type == "cuda"
        self.use_bf16 = precision == "bf16" or (precision == "auto" and on_cuda)
        channels_last = self.options.channels_last if self.options.channels_last is not None else on_cuda
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def _build_model(self) -> None:
        """The schedule and loss, and a freshly seeded U-Net with its EMA copy and optimizer."""
        config = self.config
        self.schedule = make_schedule(**self.settings.schedule)
        gamma = config.min_snr_gamma if config.loss_weighting == "min-snr" else None
        self.diffusion = Diffusion(self.schedule, self.device, min_snr_gamma=gamma)
        seed_everything(config.seed)
        self.model = UNet(self.model_config).to(self.device, memory_format=self.memory_format)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",
        )

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Weights, optimizer state, progress and random state of the checkpoint this run continues."""
        self.model.load_state_dict(checkpoint["model"])
        self.ema.model.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step = int(checkpoint["progress"]["step"])
        self.elapsed_before = float(checkpoint["progress"].get("elapsed_s", 0.0))
        restore_rng_state(checkpoint["rng"])

    def _wrap_model(self) -> nn.Module:
        """The module that runs the forward pass: DDP averages gradients over the processes."""
        module: nn.Module = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return torch.compile(module) if self.options.compile else module

    @property
    def labelled(self) -> bool:
        """Whether the model learns the labels (a class-conditional U-Net)."""
        return bool(self.model_config.num_classes)

    @property
    def sample_size(self) -> int:
        """The side of what the network learns: the image, or a latent model's latent."""
        return latent_size(self.settings.autoencoder) if self.settings.latent else self.data_config.image_size

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """A latent run's training set: the autoencoder's latents, scaled to unit variance (the scale is
        measured on the first run and kept in the checkpoint, so a resumed run sees the same latents)."""
        record = self.settings.autoencoder
        latents = encode(build_autoencoder(record, self.device), images)
        if record["scale_factor"] is None:
            self.settings = replace(self.settings, autoencoder={**record, "scale_factor": scale_factor(latents)})
        self.decoder = latent_decoder(self.settings.autoencoder, self.device)  # for the previews
        return latents * self.settings.autoencoder["scale_factor"]

    def _load_data(self) -> None:
        """The whole (small) dataset, on the training device, and the run's length in steps."""
        batch_size = self.config.batch_size
        images, labels, self.data_fingerprint = load_training_set(
            self.options.data_dir, self.data_config, self.options.download, self.config.max_images
        )
        if self.device.type == "cuda":
            images = images.pin_memory()
        self.images = images.to(self.device, non_blocking=True)
        if self.settings.latent:
            self.images = self._encode(self.images)
        self.labels = labels.to(self.device) if self.labelled else None
        if len(self.images) < batch_size:
            raise DDPMError(
                f"the training set ({len(self.images)} images) is smaller than one batch ({batch_size}); "
                "lower --batch-size or raise --max-images"
            )
        # Full batches only: every process gets the same share of every step.
        self.steps_per_epoch = len(self.images) // batch_size
        total = self.config.epochs * self.steps_per_epoch
        self.total_steps = min(total, self.config.max_steps) if self.config.max_steps else total

    # -- checkpoints and outputs -------------------------------------------------------------

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
            "data_fingerprint": self.data_fingerprint,
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
        classes = self.model_config.num_classes
        images = sample(
            self.ema.model,
            self.schedule,
            self.options.sample_count,
            self.sample_size,
            seed=self.config.seed,
            steps=min(self.options.sample_steps, self.schedule.timesteps),
            labels=np.arange(self.options.sample_count) % classes if classes else None,
        )
        if self.settings.latent:
            with torch.no_grad():
                images = self.decoder(torch.from_numpy(images).to(self.device)).float().cpu().numpy()
        path = self.options.out_dir / f"samples-epoch{epoch:03d}.png"
        write_png(path, to_uint8(images, self.data_config.data_range), scale=2)
        return path

    def _log(self, log: IO[str], window: LossWindow) -> str:
        """Append the window's mean loss and speed to OUT/log.jsonl and start a new window;
        returns the progress status."""
        mean_loss = window.loss / window.steps
        rate = window.images / max(time.perf_counter() - window.start, 1e-9)
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
        window.reset()
        return f"epoch {self.step / self.steps_per_epoch:.2f}  loss {mean_loss:.4f}  {rate:.1f} img/s"

    def _save_outputs(self, saving: bool, epoch_grid: bool, warn) -> None:
        if saving:
            self.save()
        if epoch_grid:
            epoch = self.step // self.steps_per_epoch
            try:
                self.write_samples(epoch)
            except OSError as exc:  # a preview is not worth the run; the checkpoints say if the disk is full
                warn(f"could not write the epoch {epoch} sample grid ({exc.strerror or exc}); training goes on")

    # -- one step ----------------------------------------------------------------------------

    def batch_ids(self) -> torch.Tensor:
        """This step's global batch: its slice of the epoch's shuffled order."""
        epoch, index = divmod(self.step, self.steps_per_epoch)
        order = epoch_order(self.config.seed, epoch, len(self.images))
        return order[index * self.config.batch_size : (index + 1) * self.config.batch_size].to(self.device)

    def step_noise(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """t, ε and (conditional models) the label-dropout mask of the whole global batch for this
        step, from a generator keyed by (seed, step).

        Every process draws the same global batch and takes its share, so the result does not depend
        on the number of processes, and a resumed run needs no generator state.
        """
        generator = torch.Generator(self.device).manual_seed(step_seed(self.config.seed, self.step))
        shape = (batch, self.model_config.image_channels, self.sample_size, self.sample_size)
        t = torch.randint(0, self.schedule.timesteps, (batch,), device=self.device, generator=generator)
        noise = torch.randn(shape, device=self.device, generator=generator)
        drop = None
        if self.labels is not None:
            drop = torch.rand(batch, device=self.device, generator=generator) < self.config.label_dropout
        return t, noise, drop

    def step_inputs(
        self, batch_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x0, t, ε and (conditional models) the labels of this process's share of the global batch."""
        share = slice(self.dist.rank, None, self.dist.world)
        t, noise, drop = self.step_noise(len(batch_ids))
        x0 = self.images[batch_ids[share]].contiguous(memory_format=self.memory_format)
        y = None
        if self.labels is not None:
            y = torch.where(drop[share], self.model_config.num_classes, self.labels[batch_ids[share]])
        return x0, t[share], noise[share], y

    def batch_loss(self, batch_ids: torch.Tensor) -> torch.Tensor:
        """This process's loss on its share of the global batch: L_simple (or its Min-SNR weighting)."""
        x0, t, noise, y = self.step_inputs(batch_ids)
        return self.diffusion.loss(self.train_module, x0, t, noise, y)

    def train_step(self, batch_ids: torch.Tensor, stop_requested: bool = False) -> tuple[float, bool]:
        """One optimizer step on this process's share of the global batch ``batch_ids``.

        Returns the loss (mean over all processes) and whether any process asked to stop. A
        non-finite loss or gradient norm on any process skips the update everywhere.
        """
        torch.manual_seed(step_seed(self.config.seed, self.step, self.dist.rank))  # dropout
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.total_steps)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss = self.batch_loss(batch_ids)
        self.optimizer.zero_grad(set_to_none=True)
        loss_value, stop = self._gather(loss, stop_requested)
        if math.isfinite(loss_value) and not self._update(loss):
            loss_value = float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_value, stop

    def _gather(self, loss: torch.Tensor, stop_requested: bool) -> tuple[float, bool]:
        """The loss averaged over the processes (non-finite if it is on any), and whether any asked to stop."""
        status = torch.stack([loss.detach().float(), torch.tensor(float(stop_requested), device=self.device)])
        if self.dist.world > 1:
            import torch.distributed as dist

            status[0] = torch.nan_to_num(status[0], nan=float("inf"))  # NaN would not survive the sum
            dist.all_reduce(status)
            status[0] /= self.dist.world
        return float(status[0]), bool(status[1] > 0)

    def _update(self, loss: torch.Tensor) -> bool:
        """Backward, clip, step and EMA; False, with no step taken, when the gradient norm is not finite."""
        loss.backward()
        if self.config.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            if not torch.isfinite(norm):
                return False
        self.optimizer.step()
        if self.dist.is_main:
            self.ema.update(self.model, self.step)
        return True

    # -- the loop ----------------------------------------------------------------------------

    def run(self, warn=None) -> Path:
        """Train to ``total_steps``. SIGINT/SIGTERM end the run after the current step with a checkpoint.

        Under torchrun every process trains; only rank 0 logs, saves and draws sample grids.
        """
        try:
            return self._run(warn or (lambda message: None))
        finally:
            shutdown_distributed()

    def _run(self, warn) -> Path:
        options, main = self.options, self.dist.is_main
        if main:
            make_dir(options.out_dir)
            remove_stale_temporaries(options.out_dir)
            trim_log(options.out_dir / "log.jsonl", self.step)
        self.train_module.train()
        self._started = time.perf_counter()
        window, bad_steps = LossWindow(), 0
        progress = Progress(self.total_steps, "train", unit="step", start=self.step, enabled=options.progress and main)
        log_file = open(options.out_dir / "log.jsonl", "a", encoding="utf-8") if main else contextlib.nullcontext()
        with log_file as log, progress, StopSignals() as signals:
            while self.step < self.total_steps:
                batch_ids = self.batch_ids()
                loss, stop = self.train_step(batch_ids, bool(signals.received))
                if not math.isfinite(loss):
                    bad_steps += 1
                    self._skip_bad_step(loss, bad_steps, warn)
                window.add(loss, len(batch_ids))
                end_of_epoch = self.step % self.steps_per_epoch == 0
                saving = (
                    self.step >= self.total_steps
                    or stop
                    or (options.save_every and self.step % options.save_every == 0)
                )
                if main and window.steps and (window.steps >= options.log_every or saving or end_of_epoch):
                    progress.status = self._log(log, window)
                progress.update(1)
                if main:
                    self._save_outputs(saving, end_of_epoch and options.sample_grid and not stop, warn)
                if stop:
                    raise Interrupted(signals.received or signal.SIGTERM, self.step, options.out_dir / LATEST)
        return options.out_dir / LATEST

    def _skip_bad_step(self, loss: float, bad_steps: int, warn) -> None:
        """Warn that this step's update was skipped, or stop once more than --max-bad-steps were."""
        limit = self.options.max_bad_steps
        if bad_steps > limit:
            latest = self.options.out_dir / LATEST
            kept = f"{latest} is intact" if latest.exists() else "no checkpoint was written yet"
            raise DDPMError(
                f"non-finite loss or gradient ({loss}) at step {self.step}"
                f"{f' after skipping {bad_steps - 1} such batches' if bad_steps > 1 else ''}; stopped, {kept} "
                "(--max-bad-steps skips a few such batches)"
            )
        if self.dist.is_main:
            warn(f"skipped the update of step {self.step}: non-finite loss or gradient ({bad_steps}/{limit})")
