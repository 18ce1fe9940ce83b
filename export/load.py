"""Reading a checkpoint for export: this project's checkpoints and bare labml.ai state dicts.

A labml checkpoint is ``torch.save(unet.state_dict())`` from the labml.ai DDPM U-Net. Its
architecture is read off the tensor shapes and key names; GroupNorm group counts cannot be
(they have no weights of their own), so labml's 32 and 8 are assumed unless given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import DDPMError
from ..core.files import file_sha256
from ..core.metadata import DecoderInfo, ModelInfo
from ..train.checkpoint import is_project_checkpoint, is_state_dict, read_checkpoint_file, validate_checkpoint, versions
from ..train.config import UNetConfig
from ..train.unet import UNet

LABML_KEYS = ("image_proj.weight", "time_emb.lin1.weight", "time_emb.lin2.weight", "norm.weight", "final.weight")
LABML_SCHEDULE = {"kind": "linear", "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
LABML_IMAGE_SIZE = 32


@dataclass
class ExportSource:
    model: UNet
    info: ModelInfo
    kind: str  # "ddpm-mnist" or "labml"
    decoder: nn.Module | None = None  # a latent model's: scaled latents → images (train.latent.LatentDecoder)
    decoder_info: DecoderInfo | None = None
    autoencoder: dict[str, Any] | None = None  # a latent model's autoencoder record, for int8 calibration


def looks_like_labml(state: dict[str, Any]) -> bool:
    return (
        all(key in state for key in LABML_KEYS)
        and any(k.startswith("down.") for k in state)
        and any(k.startswith("up.") for k in state)
    )


def infer_labml_config(state: dict[str, torch.Tensor], norm_groups: int = 32, final_norm_groups: int = 8) -> UNetConfig:
    """The U-Net configuration that produced a labml-layout state dict."""
    image_channels = int(state["image_proj.weight"].shape[1])
    base = int(state["image_proj.weight"].shape[0])
    down_ids = sorted({int(key.split(".")[1]) for key in state if key.startswith("down.")})
    if down_ids != list(range(len(down_ids))):
        raise DDPMError("labml state dict: the down.N modules are not numbered 0..N-1")
    levels: list[list[int]] = [[]]
    for index in down_ids:
        if f"down.{index}.conv.weight" in state:
            levels.append([])
        elif f"down.{index}.res.conv1.weight" in state:
            levels[-1].append(index)
        else:
            raise DDPMError(f"labml state dict: down.{index} is neither a residual block nor a downsample")
    blocks = {len(level) for level in levels}
    if len(blocks) != 1 or 0 in blocks:
        raise DDPMError("labml state dict: resolution levels have different numbers of blocks")
    widths = [int(state[f"down.{level[0]}.res.conv1.weight"].shape[0]) for level in levels]
    attention = tuple(f"down.{level[0]}.attn.projection.weight" in state for level in levels)
    previous = [base, *widths[:-1]]
    if all(w % p == 0 for w, p in zip(widths, previous)):
        rule, mults = "compound", tuple(w // p for w, p in zip(widths, previous))
    elif all(w % base == 0 for w in widths):
        rule, mults = "base", tuple(w // base for w in widths)
    else:
        raise DDPMError(f"labml state dict: widths {widths} are not integer multiples of {base}")
    return UNetConfig(
        image_channels=image_channels,
        base_channels=base,
        channel_mults=mults,
        attention=attention,
        blocks_per_resolution=blocks.pop(),
        norm_groups=norm_groups,
        final_norm_groups=final_norm_groups,
        dropout=0.0,
        width_rule=rule,
    )


def build_model(config: UNetConfig, state: dict[str, torch.Tensor], origin: str) -> UNet:
    problems = config.problems()
    if problems:
        raise DDPMError(f"{origin}: cannot build its U-Net: {problems[0]}")
    model = UNet(config)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(expected[key].shape)}"
        for key, value in state.items()
        if key in expected and expected[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                f"shape of {mismatched[0]}" if mismatched else "",
            )
            if part
        )
        raise DDPMError(f"{origin}: weights do not fit the U-Net its config describes ({detail})")
    model.load_state_dict(state)
    return model.eval()


def load_for_export(
    path: Path, weights: str = "ema", norm_groups: int | None = None, final_norm_groups: int | None = None
) -> ExportSource:
    """Model and metadata from a ddpm-mnist checkpoint (``weights`` "ema" or "raw") or a labml state dict."""
    content = read_checkpoint_file(path)
    sha256 = file_sha256(path)
    if is_project_checkpoint(content):
        return project_source(validate_checkpoint(content, path), path, sha256, weights)
    if is_state_dict(content) and looks_like_labml(content):
        return labml_source(content, path, sha256, norm_groups or 32, final_norm_groups or 8)
    if is_state_dict(content):
        raise DDPMError(
            f"{path} is a state dict of another network: expected a ddpm-mnist checkpoint or a labml U-Net "
            f"state dict with keys {', '.join(LABML_KEYS)}, down.N.*, middle.*, up.N.*"
        )
    raise DDPMError(
        f"{path} is neither a ddpm-mnist checkpoint (a dict with format='ddpm-mnist-checkpoint') nor a labml "
        f"U-Net state dict (tensors under {', '.join(LABML_KEYS[:2])}, down.N.*, up.N.*, ...)"
    )


def project_source(checkpoint: dict[str, Any], path: Path, sha256: str, weights: str) -> ExportSource:
    """A validated ddpm-mnist checkpoint: its EMA or raw weights, and the settings it records; a latent
    U-Net's with its decoder (the latent's side and channels are the U-Net's image size and channels)."""
    if checkpoint.get("kind") == "autoencoder":
        raise DDPMError(
            f"{path} is an autoencoder; export the latent U-Net trained on it (ddpm-train --autoencoder), "
            "which carries it"
        )
    config = UNetConfig.from_dict(checkpoint["model_config"])
    model = build_model(config, checkpoint["ema" if weights == "ema" else "model"], str(path))
    student = checkpoint.get("student")
    if student is not None:
        model = student_network(model, checkpoint["schedule"])
    data, sampling = checkpoint["data"], checkpoint["sampling"]
    info = ModelInfo(
        schedule=dict(checkpoint["schedule"]),
        image_size=int(data["image_size"]),
        image_channels=config.image_channels,
        data_range=tuple(data["data_range"]),
        prediction=sampling["prediction"],
        variance=sampling["variance"],
        noise_at_last_step=bool(sampling["noise_at_last_step"]),
        num_classes=config.num_classes,
        model_config=config.to_dict(),
        source={
            "kind": "ddpm-mnist",
            "sha256": sha256,
            "weights": weights,
            "step": int(checkpoint["progress"]["step"]),
            "transform": data.get("transform"),
            "preset": checkpoint["train"].get("preset"),
        },
        versions={"checkpoint": checkpoint.get("versions", {}), "export": versions()},
        student=None if student is None else student_metadata(student),
    )
    if checkpoint.get("autoencoder") is None:
        return ExportSource(model, info, "ddpm-mnist")
    return latent_source(ExportSource(model, info, "ddpm-mnist"), checkpoint["autoencoder"])


def student_network(model: UNet, schedule: dict[str, Any]) -> UNet:
    """A student's weights as the network it is: v_θ answering ε (train/distill.py)."""
    from ..core.schedule import make_schedule
    from ..train.distill import StudentUNet

    student = StudentUNet(model.config, make_schedule(**schedule))
    student.load_state_dict(model.state_dict())
    return student.eval()


def student_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """What an exported student says of itself: its teacher, timesteps, built-in guidance and how it learned."""
    return {
        "teacher_sha256": record["teacher_sha256"],
        "teacher_step": record["teacher_step"],
        "timesteps": list(record["timesteps"]),
        "guidance": float(record["guidance"]),
        "teacher_sampler": record["teacher_sampler"],
        "teacher_steps": record["teacher_steps"],
        "trajectories": record["trajectories"],
    }


def latent_source(unet: ExportSource, record: dict[str, Any]) -> ExportSource:
    """A latent U-Net's source: its metadata says what the decoder makes (the decoder's file name and
    hash are filled in when the decoder is written) and the decoder comes along."""
    from ..train.latent import latent_decoder, latent_size, record_config, record_data

    config, data, scale = record_config(record), record_data(record), float(record["scale_factor"])
    side = latent_size(record)
    latent = {
        "image_size": data.image_size,
        "image_channels": config.image_channels,
        "scale_factor": scale,
        "autoencoder_sha256": record["sha256"],
        "decoder_file": "",
        "decoder_sha256": "",
    }
    info = replace(unet.info, image_size=side, latent=latent)
    decoder_info = DecoderInfo(
        latent_channels=config.latent_channels,
        latent_size=side,
        image_size=data.image_size,
        image_channels=config.image_channels,
        data_range=data.data_range,
        scale_factor=scale,
        autoencoder_sha256=record["sha256"],
        model_config=config.to_dict(),
        source={
            "kind": "ddpm-mnist",
            "autoencoder_step": record["step"],
            "transform": data.transform,
            "unet_checkpoint_sha256": unet.info.source["sha256"],
        },
        versions=unet.info.versions,
    )
    return ExportSource(unet.model, info, unet.kind, latent_decoder(record), decoder_info, record)


def labml_source(
    state: dict[str, torch.Tensor], path: Path, sha256: str, norm_groups: int, final_norm_groups: int
) -> ExportSource:
    """A labml U-Net state dict: the architecture read off its tensors, labml's DDPM settings assumed."""
    config = infer_labml_config(state, norm_groups, final_norm_groups)
    model = build_model(config, state, f"{path} (labml state dict)")
    info = ModelInfo(
        schedule=dict(LABML_SCHEDULE),
        image_size=LABML_IMAGE_SIZE,
        image_channels=config.image_channels,
        data_range=(0.0, 1.0),
        prediction="eps",
        variance="beta",
        noise_at_last_step=True,
        num_classes=0,
        model_config=config.to_dict(),
        source={"kind": "labml", "sha256": sha256, "weights": "state_dict", "transform": "resize"},
        versions={"export": versions()},
    )
    return ExportSource(model, info, "labml")
