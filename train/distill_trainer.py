"""Training a few-step student (train/distill.py): the U-Net trainer's loop, checkpoints, EMA, resume
and signals, with the teacher's ODE solves in place of MNIST and the consistency loss in place of
L_simple. One epoch is one pass over every (trajectory, student timestep) pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.files import make_dir
from ..core.images import to_uint8
from ..core.outputs import write_png
from ..core.samplers import ConsistencySampler, student_timesteps
from ..core.schedule import make_schedule
from .diffusion import sample
from .distill import StudentUNet, build_teacher, load_or_draw
from .ema import EMA
from .latent import latent_decoder
from .trainer import Trainer, epoch_order, seed_everything

PREVIEW_CALLS = 2


class DistillTrainer(Trainer):
    def _build_model(self) -> None:
        """The student: the teacher's EMA weights, read as v_θ, with its own EMA copy and optimizer."""
        config, record = self.config, self.settings.student
        self.schedule = make_schedule(**self.settings.schedule)
        seed_everything(config.seed)
        self.model = StudentUNet(self.model_config, self.schedule)
        self.model.load_state_dict(record["teacher_weights"])
        self.model = self.model.to(self.device, memory_format=self.memory_format)
        self.ema = EMA(self.model, config.ema_decay, config.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.timesteps = torch.tensor(record["timesteps"], dtype=torch.long, device=self.device)

    def _load_data(self) -> None:
        """The teacher's solves (drawn once per run, kept in OUT) and the run's length in steps."""
        record, batch_size = self.settings.student, self.config.batch_size
        shape = (self.model_config.image_channels, self.sample_size, self.sample_size)
        make_dir(self.options.out_dir)
        found = load_or_draw(
            self.options.out_dir,
            lambda: build_teacher(record, self.model_config, self.device),
            self.schedule,
            record,
            shape,
            self.config.seed,
            self.options.progress and self.dist.is_main,
            self.use_bf16,
        )
        self.data_fingerprint = found.fingerprint()
        self.states, self.targets = found.states.to(self.device), found.targets.to(self.device)
        self.labels = None if found.labels is None else found.labels.to(self.device)
        if self.settings.latent:
            self.decoder = latent_decoder(self.settings.autoencoder, self.device)
        pairs = self.states.shape[0] * self.states.shape[1]
        self.steps_per_epoch = max(pairs // batch_size, 1)
        total = self.config.epochs * self.steps_per_epoch
        self.total_steps = min(total, self.config.max_steps) if self.config.max_steps else total

    def batch_ids(self) -> torch.Tensor:
        """This step's (trajectory, timestep) pairs, as flat indices n·K + k into the epoch's order."""
        epoch, index = divmod(self.step, self.steps_per_epoch)
        order = epoch_order(self.config.seed, epoch, self.states.shape[0] * self.states.shape[1])
        return order[index * self.config.batch_size : (index + 1) * self.config.batch_size].to(self.device)

    def batch_loss(self, batch_ids: torch.Tensor) -> torch.Tensor:
        """‖f_θ(x_τ, τ, y) − x_0*‖² averaged over this process's share of the pairs."""
        share = batch_ids[self.dist.rank :: self.dist.world]
        trajectory, position = share // self.states.shape[1], share % self.states.shape[1]
        x = self.states[trajectory, position].contiguous(memory_format=self.memory_format)
        y = None if self.labels is None else self.labels[trajectory]
        predicted = self.train_module(x, self.timesteps[position], y, output="x0")
        return F.mse_loss(predicted.float(), self.targets[trajectory].float())

    @torch.no_grad()
    def write_samples(self, epoch: int) -> Path:
        """The EMA student's digits in 2 calls of consistency sampling (decoded for a latent student)."""
        classes, record = self.model_config.num_classes, self.settings.student
        calls = min(PREVIEW_CALLS, len(record["timesteps"]))
        sampler = ConsistencySampler(self.schedule, student_timesteps(record["timesteps"], calls))
        images = sample(
            self.ema.model,
            self.schedule,
            self.options.sample_count,
            self.sample_size,
            seed=self.config.seed,
            labels=np.arange(self.options.sample_count) % classes if classes else None,
            sampler=sampler,
        )
        if self.settings.latent:
            images = self.decoder(torch.from_numpy(images).to(self.device)).float().cpu().numpy()
        path = self.options.out_dir / f"samples-epoch{epoch:03d}.png"
        write_png(path, to_uint8(images, self.data_config.data_range), scale=2)
        return path
