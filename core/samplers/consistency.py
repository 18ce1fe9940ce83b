"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) for a few-step student.

A student (``ddpm-distill``) keeps the ε output of its teacher, so its consistency function is the
x̂_0 that ε implies, f(x_t, t) = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t, trained to land where the teacher's ODE
from x_t lands. Sampling alternates f with fresh noise at the next, smaller timestep::

    x̂_0 = f(x_{τ_i}, τ_i)
    x_{τ_{i+1}} = √ᾱ_{τ_{i+1}}·x̂_0 + √(1−ᾱ_{τ_{i+1}})·z        (the last call returns x̂_0)

The timesteps τ are the student's own (its metadata lists those it was trained at, noisiest first);
n calls take n of them, evenly spread over that list from its first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..schedule import Schedule
from .base import Sampler
from .spec import SamplerSpec

if TYPE_CHECKING:
    from ..metadata import ModelInfo


def student_timesteps(trained: Sequence[int], calls: int) -> np.ndarray:
    """``calls`` of the student's ``trained`` timesteps (noisiest first): the first, then evenly spaced
    positions in the list, so 2 calls of [999, 785, 562, 352] take 999 and 562."""
    positions = (np.arange(calls) * len(trained)) // calls
    return np.asarray(trained, dtype=np.int64)[positions]


class ConsistencySampler(Sampler):
    """Multistep consistency sampling on the descending ``timesteps``: σ_i = √(1−ᾱ) of the next
    timestep (0 after the last), so position i's noise re-noises x̂_0 to that timestep."""

    def __init__(self, schedule: Schedule, timesteps: Sequence[int]) -> None:
        self.model_timesteps: np.ndarray = np.asarray(timesteps, dtype=np.int64).copy()
        self._alpha_bars = schedule.alpha_bars[self.model_timesteps]
        alpha_bars_next = np.append(self._alpha_bars[1:], 1.0)
        self._alpha_bars_next = alpha_bars_next
        self._sigmas = np.sqrt(1.0 - alpha_bars_next)

    def step(self, x: np.ndarray, i: int, eps: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        return self._finish(np.sqrt(self._alpha_bars_next[i]) * self.predict_x0(x, i, eps), i, noise)


def _build(schedule: Schedule, info: ModelInfo, steps: int) -> ConsistencySampler:
    return ConsistencySampler(schedule, student_timesteps(info.student["timesteps"], steps))


SPEC = SamplerSpec(
    name="consistency",
    summary="multistep consistency sampling, for few-step students (ddpm-distill) only",
    build=_build,
    steps=2,
    student=True,
)
