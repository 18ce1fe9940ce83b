"""What is recorded beside a sampling run's images: the settings they were drawn with, as one typed
record. ``DDPM.generate`` builds it (``run.settings``); the npz and PNG writers and the ddpm-run
summary read it; :meth:`RunSettings.to_dict` is the one place its recorded form is made.

    run = ddpm.generate(8, ddpm.plan(sampler="ddim", steps=50), seed=3)
    run.settings.steps, run.settings.options["eta"]      # 50, 0.0
    json.dumps(run.settings.to_dict(), sort_keys=True)   # what the npz ``settings`` member holds

The recorded form is a flat JSON object whose keys files written by earlier versions already use
(ddpm-eval reads those back as they are), so the record's fields map onto it one to one, except
that the sampler's own options sit among the other keys rather than under one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DDPMError


@dataclass(frozen=True)
class RunSettings:
    """The settings of one sampling run.

    ``options`` are the sampler's own settings (``SamplingPlan.options``, e.g. ``eta`` and ``spacing``
    for DDIM), which differ from sampler to sampler. ``labels`` are the class labels sampled, one per
    image (None: an unconditional model); ``labels_drawn`` and ``guidance`` belong to them and are
    recorded only with them.
    """

    seed: int
    num_samples: int
    sampler: str
    steps: int
    timesteps: int  # the model's schedule length, of which ``steps`` are taken
    batch_size: int  # rows per network call
    engine: str  # "plain" or "iobinding"
    variance: str  # the model's ancestral-step variance: "beta" or "posterior"
    noise_at_last_step: bool
    provider: str
    model: str  # the ONNX file's name
    model_sha256: str  # the ONNX file's own sha256

    transform: str  # how the model's images reach 28x28 MNIST size for ddpm-eval's judge
    options: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[int, ...] | None = None
    labels_drawn: bool = False  # drawn from the class prior, not requested
    guidance: float | None = None
    checkpoint_sha256: str = ""  # the checkpoint it was exported from, as its metadata records it ("" when none)

    def __post_init__(self) -> None:
        # Copies, so that the record does not change with the plan's options or the caller's label array.
        object.__setattr__(self, "options", dict(self.options))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(int(label) for label in self.labels))
        # to_dict writes labels, labels_drawn and guidance together: guidance without labels would vanish
        # from the files, and labels without guidance would be written as a null guidance.
        if (self.labels is None) != (self.guidance is None) or (self.labels is None and self.labels_drawn):
            raise DDPMError("run settings: labels and guidance are recorded together (labels_drawn only with labels)")

    def to_dict(self) -> dict[str, Any]:
        """The recorded form, JSON-ready: the npz ``settings`` member and the PNG ``ddpm.settings`` text
        (both ``json.dumps(..., sort_keys=True)``), with the keys and values earlier versions wrote."""
        labelled = (
            {}
            if self.labels is None
            else {"labels": list(self.labels), "labels_drawn": self.labels_drawn, "guidance": self.guidance}
        )
        return {
            "seed": self.seed,
            "num_samples": self.num_samples,
            "sampler": self.sampler,
            "steps": self.steps,
            **self.options,
            "timesteps": self.timesteps,
            **labelled,
            "batch_size": self.batch_size,
            "engine": self.engine,
            "variance": self.variance,
            "noise_at_last_step": self.noise_at_last_step,
            "provider": self.provider,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "checkpoint_sha256": self.checkpoint_sha256,
            "transform": self.transform,
        }
