"""The learning rate at each optimizer step: warm-up, then constant, linear or cosine decay."""

from __future__ import annotations

import math

from .config import TrainConfig


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
