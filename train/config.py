"""Every setting of a training run, declared once as a dataclass field with its ``ddpm-train`` option.

UNetConfig, DataConfig, ScheduleConfig and TrainConfig make the Settings a checkpoint records, fixed for
the life of a run; RunOptions belong to one invocation. Torch-free, so that ``ddpm-train --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import click

from ..core.console import FiniteFloatRange, OutputPath
from ..core.schedule import SCHEDULE_KINDS
from .options import FRACTION, POSITIVE_FLOAT, POSITIVE_INT, Betas, BoolList, ChoiceOf, IntList, setting

WIDTH_RULES = ("compound", "base")
TRANSFORMS = ("pad", "resize")
DATA_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}
LR_SCHEDULES = ("constant", "cosine", "linear")
LOSS_WEIGHTINGS = ("none", "min-snr")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
MNIST_CLASSES = 10


@dataclass(frozen=True)
class UNetConfig:
    """Everything that decides the U-Net's architecture (and so its state-dict layout).

    ``width_rule`` "compound" multiplies the previous level's width (labml: 64·[1,2,2,4] →
    64/128/256/1024); "base" multiplies the base width (64/128/128/256).
    """

    image_channels: int = 1
    base_channels: int = setting(64, "Channels after the input projection. [preset]", POSITIVE_INT, preset=True)
    channel_mults: tuple[int, ...] = setting(
        (1, 2, 2, 4), "Channel multiplier per resolution level, e.g. 1,2,2,4. [preset]", IntList(), preset=True
    )
    attention: tuple[bool, ...] = setting(
        (False, False, True, True), "Self-attention per level as 1/0, e.g. 0,0,1,1. [preset]", BoolList(), preset=True
    )
    blocks_per_resolution: int = setting(
        2, "Residual blocks per resolution level. [preset]", POSITIVE_INT, flag="blocks", preset=True
    )
    norm_groups: int = setting(32, "GroupNorm groups in the blocks. [preset]", POSITIVE_INT, preset=True)
    final_norm_groups: int = setting(8, "GroupNorm groups before the output conv. [preset]", POSITIVE_INT, preset=True)
    dropout: float = setting(0.1, "Dropout in the residual blocks. [preset]", FRACTION, preset=True)
    width_rule: str = setting(
        "compound",
        "'compound': width = previous·mult (labml); 'base': width = base·mult. [preset]",
        click.Choice(WIDTH_RULES),
        preset=True,
    )
    # > 0: class-conditional, with one more "no class" index for guidance
    num_classes: int = setting(
        0,
        "Class-conditional model: a digit embedding added to the time embedding, plus a 'no class' index "
        "for classifier-free guidance (ddpm-run --digit, --guidance).",
        flag="conditional",
        preset=True,
        is_flag=True,
        flag_value=MNIST_CLASSES,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))

    @property
    def time_channels(self) -> int:
        return self.base_channels * 4

    def widths(self) -> list[int]:
        """Output channels of each resolution level, highest resolution first."""
        widths, width = [], self.base_channels
        for mult in self.channel_mults:
            width = width * mult if self.width_rule == "compound" else self.base_channels * mult
            widths.append(width)
        return widths

    def problems(self) -> list[str]:
        """Reasons this configuration cannot be built (empty when it can)."""
        found = []
        if self.image_channels < 1:
            found.append("image_channels must be >= 1")
        if self.base_channels < 1:
            found.append("base_channels must be >= 1")
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            found.append("channel_mults must be a non-empty list of integers >= 1")
        if len(self.attention) != len(self.channel_mults):
            found.append(
                f"attention has {len(self.attention)} entries but there are "
                f"{len(self.channel_mults)} resolution levels (one per channel multiplier)"
            )
        if self.blocks_per_resolution < 1:
            found.append("blocks_per_resolution must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            found.append("dropout must be in [0, 1)")
        if self.width_rule not in WIDTH_RULES:
            found.append(f"width_rule must be one of {WIDTH_RULES}")
        if self.num_classes < 0:
            found.append("num_classes must be >= 0")
        if self.norm_groups < 1 or self.final_norm_groups < 1:
            found.append("norm groups must be >= 1")
        if not found:
            for width in sorted({self.base_channels, *self.widths()}):
                if width % self.norm_groups:
                    found.append(f"channel width {width} is not divisible by norm_groups={self.norm_groups}")
            if self.base_channels % self.final_norm_groups:
                found.append(
                    f"base_channels {self.base_channels} is not divisible by final_norm_groups={self.final_norm_groups}"
                )
        return found

    def downsamplings(self) -> int:
        return len(self.channel_mults) - 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["channel_mults"] = list(self.channel_mults)
        data["attention"] = list(self.attention)
        if not self.num_classes:
            del data["num_classes"]  # unconditional configs read as before
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


PRESETS: dict[str, UNetConfig] = {
    # The seed's network, exactly: 168,896,705 parameters, labml's state-dict layout.
    "labml": UNetConfig(),
    # A few million parameters: clean digits from a 2-core CPU run of an hour or two.
    "small": UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention=(False, False, True),
        blocks_per_resolution=1,
        norm_groups=8,
        final_norm_groups=8,
        dropout=0.0,  # no dropout: measured better for CPU-length runs (benchmarks/results/recipe-ablation.md)
        width_rule="compound",
    ),
    # The U-Net of a latent model, for 8x8x4 latents: the small preset's widths at 1/16 of the positions
    # (about 34 MFLOP per call against the pixel model's 510); image channels come from the autoencoder.
    "latent": UNetConfig(
        base_channels=32,
        channel_mults=(1, 2, 2),
        attention=(False, True, True),
        blocks_per_resolution=1,
        norm_groups=8,
        final_norm_groups=8,
        dropout=0.0,
        width_rule="compound",
    ),
    # For tests: a forward pass in milliseconds.
    "tiny": UNetConfig(
        base_channels=8,
        channel_mults=(1, 2),
        attention=(False, True),
        blocks_per_resolution=1,
        norm_groups=4,
        final_norm_groups=4,
        dropout=0.0,
        width_rule="base",
    ),
}


def preset(name: str, **overrides: Any) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


@dataclass(frozen=True)
class AutoencoderConfig:
    """The autoencoder of a latent model: its architecture and the latent it makes (train/autoencoder.py).

    Each level after the first halves the resolution, so the latent is image_size / 2^(levels−1) on a side.
    """

    image_channels: int = 1
    latent_channels: int = setting(4, "Channels of the latent. [preset]", POSITIVE_INT, preset=True)
    widths: tuple[int, ...] = setting(
        (16, 32, 64),
        "Channels per level, the image's resolution first; each level after the first halves the size, "
        "e.g. 16,32,64 makes 32x32 digits 8x8 latents. [preset]",
        IntList(),
        preset=True,
    )
    blocks: int = setting(
        1, "Residual blocks per level, in the encoder and the decoder. [preset]", POSITIVE_INT, preset=True
    )
    norm_groups: int = setting(8, "GroupNorm groups. [preset]", POSITIVE_INT, preset=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(width) for width in self.widths))

    @property
    def factor(self) -> int:
        """Image size ÷ latent size."""
        return 2 ** (len(self.widths) - 1)

    def problems(self) -> list[str]:
        found = []
        if self.image_channels < 1 or self.latent_channels < 1 or self.blocks < 1:
            found.append("image_channels, latent_channels and blocks must be >= 1")
        if len(self.widths) < 2:
            found.append("widths needs at least two levels (one downsampling)")
        found += [
            f"width {width} is not a multiple of norm_groups={self.norm_groups}"
            for width in self.widths
            if self.norm_groups < 1 or width % self.norm_groups
        ]
        return found

    def downsamplings(self) -> int:
        return len(self.widths) - 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AutoencoderConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown autoencoder config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


AUTOENCODER_PRESETS: dict[str, AutoencoderConfig] = {
    # 32x32x1 -> 8x8x4 (f = 4): about 31 MFLOP per decoded digit
    "ae32": AutoencoderConfig(widths=(16, 32, 64)),
    # 64x64x1 -> 8x8x4 (f = 8): one more, narrow level, since it runs at 64x64
    "ae64": AutoencoderConfig(widths=(8, 16, 32, 64)),
    # For tests: milliseconds per batch.
    "ae-tiny": AutoencoderConfig(latent_channels=2, widths=(8, 8), norm_groups=4),
}
AUTOENCODER_TRAINING: dict[str, Any] = {
    "batch_size": 128,
    "lr": 1e-3,
    "epochs": 10,
    "lr_schedule": "cosine",
    "lr_warmup_steps": 200,
    "ema_decay": 0.999,
}
# Each autoencoder preset's data: the 64x64 one learns MNIST resized, as its latent U-Net's samples are compared with.
AUTOENCODER_DATA = {
    "ae32": {"image_size": 32, "transform": "pad"},
    "ae64": {"image_size": 64, "transform": "resize"},
    "ae-tiny": {"image_size": 32, "transform": "pad"},
}


# Training defaults per preset; `labml` follows the seed's own settings.
# `small` is the recipe measured fastest to clean digits on a CPU (benchmarks/results/recipe-ablation.md).
PLAIN_RECIPE = {"lr_schedule": "constant", "lr_warmup_steps": 0, "loss_weighting": "none", "ema_decay": 0.999}
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "small": {
        "batch_size": 128,
        "lr": 1e-3,
        "epochs": 20,
        "lr_schedule": "cosine",
        "lr_warmup_steps": 200,
        "loss_weighting": "min-snr",
        "ema_decay": 0.9995,
    },
    # half the small preset's peak lr: 1e-3 diverges on the 8x8x4 latents; 60 epochs (under 1.5 h on one
    # bf16 CPU thread): the latent U-Net keeps improving to there (docs/RESULTS.md, Latent models)
    "latent": {
        "batch_size": 128,
        "lr": 5e-4,
        "epochs": 60,
        "lr_schedule": "cosine",
        "lr_warmup_steps": 200,
        "loss_weighting": "min-snr",
        "ema_decay": 0.9995,
    },
    "labml": {"batch_size": 64, "lr": 2e-5, "epochs": 3, **PLAIN_RECIPE},
    "tiny": {"batch_size": 32, "lr": 1e-3, "epochs": 1, **PLAIN_RECIPE},
}


@dataclass(frozen=True)
class DataConfig:
    """How 28x28 uint8 digits become training images; recorded in every checkpoint.

    ``pad`` surrounds the digit with background up to ``image_size``; ``resize`` scales it
    (bilinear, antialiased). Pixel 0 maps to ``data_range[0]`` and 255 to ``data_range[1]``.
    """

    image_size: int = setting(32, "Training image size (MNIST is 28).", click.IntRange(min=8))
    transform: str = setting("pad", "How 28x28 digits reach --image-size.", click.Choice(TRANSFORMS))
    data_range: tuple[float, float] = setting(
        (-1.0, 1.0),
        "Pixel value range; '0,1' is labml's. Write --data-range=0,1.",
        ChoiceOf(DATA_RANGES),
        default="-1,1",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_range", tuple(float(v) for v in self.data_range))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["data_range"] = list(self.data_range)
        data["dataset"] = "mnist"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return cls(image_size=data["image_size"], transform=data["transform"], data_range=tuple(data["data_range"]))


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule a new run asks for; checkpoints record ``to_dict()``, make_schedule's arguments."""

    kind: str = setting(
        "linear",
        "Noise schedule: 'linear' β (Ho et al.) or 'cosine' ᾱ (Nichol & Dhariwal, s = 0.008, β ≤ 0.999).",
        click.Choice(SCHEDULE_KINDS),
        flag="schedule",
    )
    timesteps: int = setting(1000, "Diffusion steps T.", POSITIVE_INT)
    beta_start: float = setting(1e-4, "β_1 of the linear schedule.", POSITIVE_FLOAT)
    beta_end: float = setting(
        0.02, "β_T of the linear schedule.", FiniteFloatRange(min=0.0, max=1.0, min_open=True, max_open=True)
    )

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "cosine":
            return {"kind": "cosine", "timesteps": self.timesteps, "offset": 0.008, "max_beta": 0.999}
        return {"kind": "linear", "timesteps": self.timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a run; saved in the checkpoint and restored on resume."""

    preset: str = setting(
        "small",
        "Model preset: 'labml' is the seed's 169M network; 'small' a ~2M network for CPUs; "
        "'latent' a U-Net for 8x8 latents (with --autoencoder); 'tiny' for tests.",
        click.Choice(tuple(PRESET_TRAINING)),
    )
    epochs: int = setting(
        20, "Passes over the data. [default: small 20, labml 3, tiny 1]", POSITIVE_INT, preset=True, resumable=True
    )
    max_steps: int | None = setting(
        None, "Stop after this many optimizer steps in total (caps --epochs).", POSITIVE_INT, resumable=True
    )
    max_images: int | None = setting(None, "Train on the first N images only (quick runs).", POSITIVE_INT)
    batch_size: int = setting(
        128, "Images per step. [default: small 128, labml 64, tiny 32]", POSITIVE_INT, preset=True
    )
    lr: float = setting(
        2e-4, "AdamW peak learning rate. [default: small 1e-3, labml 2e-5, tiny 1e-3]", POSITIVE_FLOAT, preset=True
    )
    adam_betas: tuple[float, float] = setting((0.9, 0.999), "AdamW β1,β2.", Betas(), default="0.9,0.999")
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay.", FiniteFloatRange(min=0.0))
    grad_clip: float = setting(1.0, "Clip the gradient norm to this value (0 disables).", FiniteFloatRange(min=0.0))
    lr_warmup_steps: int = setting(
        0,
        "Ramp the learning rate linearly over this many steps. [default: small 200, others 0]",
        click.IntRange(min=0),
        preset=True,
    )
    lr_schedule: str = setting(
        "constant",
        "After warm-up: constant, or cosine/linear decay to 0 at the run's last step (--epochs/--max-steps). "
        "[default: small cosine, others constant]",
        click.Choice(LR_SCHEDULES),
        preset=True,
    )
    # Min-SNR-γ: Hang et al. 2023
    loss_weighting: str = setting(
        "none",
        "'min-snr': weight each timestep's loss by min(SNR, γ)/SNR (Min-SNR-γ); 'none': plain L_simple. "
        "[default: small min-snr, others none]",
        click.Choice(LOSS_WEIGHTINGS),
        preset=True,
    )
    min_snr_gamma: float = setting(5.0, "γ of --loss-weighting min-snr.", POSITIVE_FLOAT)
    ema_decay: float = setting(
        0.999,
        "EMA decay of the weights; keep 1/(1-decay) well below the run's step count. "
        "[default: small 0.9995, others 0.999]",
        FRACTION,
        preset=True,
    )
    ema_warmup: bool = setting(True, "Use decay min(d, (1+n)/(10+n)) for the first updates.", bool)
    label_dropout: float = setting(
        0.1, "--conditional: share of training labels replaced by 'no class', so one model learns both.", FRACTION
    )
    kl_weight: float = setting(
        1e-6,
        "ddpm-autoencoder: weight of KL(q(z|x) || N(0, I)) against the summed per-pixel L1 of each image.",
        FiniteFloatRange(min=0.0),
    )
    seed: int = setting(0, "Seed for torch, NumPy and Python.", click.IntRange(0, 2**63 - 1))
    precision: str = setting(
        "auto",
        "'auto': bf16 autocast on CUDA, fp32 on CPU; 'bf16' also speeds up CPUs with AVX-512 BF16.",
        click.Choice(PRECISIONS),
    )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**{**LEGACY_TRAIN_SETTINGS, **data, "adam_betas": tuple(data["adam_betas"])})


# What a checkpoint written before a setting existed was trained with: it resumes with these.
LEGACY_TRAIN_SETTINGS: dict[str, Any] = {"lr_schedule": "constant", "loss_weighting": "none", "min_snr_gamma": 5.0}


@dataclass(frozen=True)
class DistillConfig:
    """What a few-step student learns from its teacher (``ddpm-distill``); recorded in its checkpoints."""

    guidance: float = setting(
        1.0,
        "Classifier-free guidance w built into the student's digit rows: it learns the teacher's "
        "(1+w)·ε(y) − w·ε(∅) ODE, so a guided digit costs one row per call. 0 for an unconditional "
        "teacher.",
        FiniteFloatRange(min=0.0, max=50.0),
    )
    teacher_steps: int = setting(
        20, "DPM-Solver++ (2M) steps of the teacher's ODE that draw each target.", click.IntRange(2, 1000)
    )
    student_steps: int = setting(
        4,
        "The most calls the student learns to draw in: it learns at this many of the teacher "
        "solver's timesteps, evenly spaced from the noisiest.",
        click.IntRange(1, 64),
    )
    trajectories: int = setting(
        20_000, "Teacher ODE solves to learn from, each a target for every student timestep.", POSITIVE_INT
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A student's recipe: short, at the lr of fine-tuning, from the teacher's weights; 12 epochs over the
# solves (under half an hour on one CPU thread), where the 2-call FD reaches the teacher's loop's 1.15x
DISTILL_TRAINING: dict[str, Any] = {
    "batch_size": 128,
    "lr": 2e-4,
    "epochs": 12,
    "lr_schedule": "cosine",
    "lr_warmup_steps": 100,
    "ema_decay": 0.999,
}


@dataclass
class RunOptions:
    """Settings of this invocation only; free to change between a run and its resume."""

    data_dir: Path = setting(
        Path("data/mnist"),
        "Folder with the four MNIST IDX files (plain or .gz). Env: DDPM_DATA_DIR.",
        click.Path(path_type=Path),
        envvar="DDPM_DATA_DIR",
    )
    download: bool = setting(
        False,
        "Fetch the MNIST training files into --data-dir if it lacks them (standard library, "
        "each checked by SHA-256; other mirrors: env DDPM_MNIST_MIRROR).",
        is_flag=True,
    )
    out_dir: Path = setting(
        Path("runs/small"),
        "Output folder for model.pt (always the latest checkpoint), log.jsonl and sample grids. [default: runs/PRESET]",
        OutputPath(folder=True),
        flag="out",
        preset=True,
    )
    keep: int = setting(3, "Step checkpoints (ckpt-STEP.pt) kept beside model.pt.", POSITIVE_INT)
    max_bad_steps: int = setting(
        10,
        "Batches with a non-finite loss or gradient to skip (no update, one warning each) "
        "before stopping; 0 stops at the first.",
        click.IntRange(min=0),
    )
    device: str = setting("auto", "Where to train.", click.Choice(DEVICES))
    channels_last: bool | None = setting(
        None, "Channels-last memory layout for convolutions. [default: on for CUDA, off for CPU]", bool
    )
    compile: bool = setting(False, "torch.compile the U-Net (slower start, faster steps on GPUs).", is_flag=True)
    save_every: int = setting(1000, "Write OUT/model.pt every N steps (0: only at the end).", click.IntRange(min=0))
    log_every: int = setting(20, "Append the mean loss to OUT/log.jsonl every N steps.", POSITIVE_INT)
    sample_grid: bool = setting(True, "Write an EMA sample grid PNG at the end of each epoch.", bool, flag="samples")
    sample_count: int = setting(16, "Images in each sample grid.", POSITIVE_INT)
    sample_steps: int = setting(100, "Sampling steps for the grids (respaced ancestral).", POSITIVE_INT)
    progress: bool = setting(True, "Show a progress bar on stderr.", bool)
    replace_old: bool = False  # a new run in a folder with older checkpoints: drop them at the first save


@dataclass(frozen=True)
class Settings:
    """How a model is trained, one field per checkpoint section.

    ``model_config`` is a U-Net's (ddpm-train) or an autoencoder's (ddpm-autoencoder, which has no
    schedule). A latent U-Net carries its ``autoencoder``: the record :mod:`.latent` makes of the
    autoencoder checkpoint it learns the latents of (config, data, EMA weights, hash, latent scale).
    """

    model_config: UNetConfig | AutoencoderConfig
    data: DataConfig
    schedule: dict[str, Any]  # make_schedule's arguments
    train: TrainConfig
    autoencoder: dict[str, Any] | None = None
    student: dict[str, Any] | None = None  # a few-step student's: train/distill.py's record of its teacher

    @property
    def kind(self) -> str:
        if isinstance(self.model_config, AutoencoderConfig):
            return "autoencoder"
        return "student" if self.student is not None else "unet"

    @property
    def latent(self) -> bool:
        return self.autoencoder is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model_config": self.model_config.to_dict(),
            "data": self.data.to_dict(),
            "schedule": dict(self.schedule),
            "train": self.train.to_dict(),
        }
        if self.kind != "unet":
            data["kind"] = self.kind
        if self.autoencoder is not None:
            data["autoencoder"] = self.autoencoder
        if self.student is not None:
            data["student"] = self.student
        return data

    @classmethod
    def from_dict(cls, checkpoint: dict[str, Any]) -> Settings:
        config_class = AutoencoderConfig if checkpoint.get("kind") == "autoencoder" else UNetConfig
        return cls(
            config_class.from_dict(checkpoint["model_config"]),
            DataConfig.from_dict(checkpoint["data"]),
            dict(checkpoint["schedule"]),
            TrainConfig.from_dict(checkpoint["train"]),
            checkpoint.get("autoencoder"),
            checkpoint.get("student"),
        )


# The class whose options set each checkpoint section, per kind of model.
SECTIONS = {"model_config": UNetConfig, "data": DataConfig, "schedule": ScheduleConfig, "train": TrainConfig}
AUTOENCODER_SECTIONS = {"model_config": AutoencoderConfig, "data": DataConfig, "train": TrainConfig}
STUDENT_SECTIONS = {"train": TrainConfig, "student": DistillConfig}
