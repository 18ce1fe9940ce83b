"""Checkpoint files: one dict of plain values and tensors, written atomically, read with weights_only."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import random
import re
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import DDPMError, summary
from ..core.files import atomic_write, input_problem, make_dir
from ..core.metadata import ModelInfo

FORMAT = "ddpm-mnist-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "model_config",
    "schedule",
    "data",
    "sampling",
    "train",
    "model",
    "ema",
    "optimizer",
    "progress",
    "rng",
)


def versions() -> dict[str, str]:
    try:
        project = metadata.version("ddpm-mnist")
    except metadata.PackageNotFoundError:
        project = "unknown"
    return {
        "ddpm_mnist": project,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *map(float, numpy_state[2:])],
        "python": [python_version, list(python_internal), python_gauss],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


CHECKSUMMED = ("model", "ema", "optimizer", "autoencoder", "student")  # carried autoencoder and teacher weights too


def tensor_checksum(checkpoint: dict[str, Any]) -> str:
    """sha256 over every tensor of the weights, EMA weights, optimizer state and carried autoencoder (names, dtypes,
    shapes and bytes, in a fixed order): what a flipped bit would change."""
    digest = hashlib.sha256()

    def visit(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(value.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(f"{name}.{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f"{name}.{index}", item)

    for key in CHECKSUMMED:
        visit(key, checkpoint.get(key))
    return digest.hexdigest()


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` through a temporary file: ``path`` is never half-written."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        **checkpoint,
        "checksum": {"sha256": tensor_checksum(checkpoint)},
    }
    try:
        with atomic_write(path) as handle:
            torch.save(payload, handle)
    except OSError as exc:
        raise DDPMError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def read_checkpoint_file(path: str | Path) -> Any:
    """Whatever ``torch.load(weights_only=True)`` finds in ``path``, with one-line errors."""
    path = Path(path)
    problem = input_problem(path)
    if problem:
        raise DDPMError(f"checkpoint {path} {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, unsafe globals ...
        text = str(exc)
        unsafe = re.search(r"GLOBAL ([\w.]+)", text)
        if unsafe:
            raise DDPMError(
                f"{path} refused: loading it would run code ({unsafe.group(1)}); checkpoints are read with "
                "torch.load(weights_only=True), which accepts only tensors and plain values"
            ) from None
        raise DDPMError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {summary(exc, 160)}"
        ) from None


def contradiction(content: dict[str, Any]) -> str | None:
    """What in a checkpoint disagrees with the rest of it: a config that cannot be built, weights of
    other names or shapes than that config's U-Net (compared on the meta device: nothing is
    allocated), or progress that is not a step count."""
    from .autoencoder import Autoencoder
    from .config import AutoencoderConfig, UNetConfig
    from .unet import UNet

    autoencoder = content.get("kind") == "autoencoder"
    config_class, network = (AutoencoderConfig, Autoencoder) if autoencoder else (UNetConfig, UNet)
    try:
        config = config_class.from_dict(content["model_config"])
        problems = config.problems()
    except (TypeError, ValueError, AttributeError) as exc:
        return f"model config unreadable ({exc})"
    if problems:
        return "model config: " + "; ".join(problems)
    problem = None if autoencoder else settings_problem(content, config.image_channels)
    if problem:
        return problem
    step = content["progress"].get("step") if isinstance(content["progress"], dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"progress step {step!r} is not a step count"
    return weights_problem(content, network(config), ("model", "ema")) or carried_autoencoder_problem(content)


def carried_autoencoder_problem(content: dict[str, Any]) -> str | None:
    """What is wrong with the autoencoder a latent U-Net's checkpoint carries (None: fine, or none carried)."""
    from .autoencoder import Autoencoder
    from .config import AutoencoderConfig

    record = content.get("autoencoder")
    if record is None:
        return None
    try:
        config = AutoencoderConfig.from_dict(record["config"])
        scale = record["scale_factor"]
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return f"its autoencoder record is unreadable ({exc})"
    if config.problems() or not (scale is None or isinstance(scale, float) and 0.0 < scale < 1e6):
        return "its autoencoder record holds an impossible config or latent scale"
    problem = weights_problem(record, Autoencoder(config), ("weights",))
    return f"autoencoder: {problem}" if problem else None


def weights_problem(content: dict[str, Any], network: torch.nn.Module, keys: tuple[str, ...]) -> str | None:
    """Which of a checkpoint's weights (under ``keys``) do not fit ``network`` (built on the meta device)
    by name or shape."""
    with torch.device("meta"):
        expected = {name: tuple(value.shape) for name, value in network.state_dict().items()}
    for key in keys:
        state = content[key]
        if not is_state_dict(state):
            return f"its {key} weights are not a state dict"
        found = {name: tuple(value.shape) for name, value in state.items()}
        if found.keys() != expected.keys():
            missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
            return f"its {key} weights lack {missing[:3]} / have extra {extra[:3]} for the network its config describes"
        wrong = next((name for name in expected if found[name] != expected[name]), None)
        if wrong:
            return (
                f"{key} weight {wrong} has shape {list(found[wrong])}, "
                f"its config's network needs {list(expected[wrong])}"
            )
    return None


def settings_problem(content: dict[str, Any], image_channels: int) -> str | None:
    """What is impossible in a checkpoint's schedule or data settings, by the rules an export's metadata
    must pass (timesteps bounded before any schedule is built, a data range the sampler can scale)."""
    try:
        data = content["data"]
        low, high = data["data_range"]
        info = ModelInfo(
            schedule=dict(content["schedule"]),
            image_size=data["image_size"],
            image_channels=image_channels,
            data_range=(float(low), float(high)),
        )
        found = info.problems()
    except (TypeError, ValueError, KeyError) as exc:
        return f"data or schedule settings unreadable ({exc})"
    return f"impossible settings: {found[0]}" if found else None


def is_project_checkpoint(content: Any) -> bool:
    return isinstance(content, dict) and content.get("format") == FORMAT


def is_state_dict(content: Any) -> bool:
    return (
        isinstance(content, dict)
        and bool(content)
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items())
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ddpm-mnist training checkpoint, checked for the keys training needs."""
    return validate_checkpoint(read_checkpoint_file(path), path)


def validate_checkpoint(content: Any, path: str | Path) -> dict[str, Any]:
    if is_project_checkpoint(content):
        if content.get("format_version") != FORMAT_VERSION:
            raise DDPMError(f"{path}: checkpoint format version {content.get('format_version')} is not supported")
        missing = [key for key in REQUIRED_KEYS if key not in content]
        if missing:
            raise DDPMError(f"{path}: checkpoint lacks {', '.join(missing)}")
        stored = content.get("checksum")  # checkpoints written before checksums existed have none
        if stored is not None and (not isinstance(stored, dict) or stored.get("sha256") != tensor_checksum(content)):
            raise DDPMError(
                f"{path} is damaged: its weights or optimizer state do not match the checksum saved with them"
            )
        problem = contradiction(content)
        if problem:
            raise DDPMError(f"{path} contradicts itself: {problem}")
        return content
    if is_state_dict(content):
        raise DDPMError(f"{path} is a bare state dict (weights only): it has no optimizer, EMA or step to resume from")
    raise DDPMError(f"{path} is not a ddpm-mnist checkpoint (expected a dict with format={FORMAT!r})")


# -- a run's checkpoint folder: ckpt-<step>.pt files, model.pt = the newest --------------------------

STEP_FILE = re.compile(r"^ckpt-(\d{8})\.pt$")
LATEST = "model.pt"


def step_file_name(step: int) -> str:
    return f"ckpt-{step:08d}.pt"


def step_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """The ckpt-<step>.pt files in ``directory``, newest first."""
    found = []
    for path in directory.iterdir() if directory.is_dir() else []:
        match = STEP_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def publish_latest(source: Path, latest: Path) -> None:
    """Point ``latest`` at ``source`` atomically (a hard link, or a copy where links are not possible)."""
    tmp = latest.with_name(f".{latest.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, latest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DDPMError(f"cannot update {latest}: {exc.strerror or exc}") from None


def run_files(directory: Path) -> list[Path]:
    """What a training run leaves in ``directory``: step checkpoints, model.pt in any state (a file,
    a link, a dangling link or a loop) and the log."""
    if not directory.is_dir():
        return []
    found = [path for _, path in step_checkpoints(directory)]
    for name in (LATEST, "log.jsonl"):
        path = directory / name
        if path.is_symlink() or path.exists():
            found.append(path)
    return found


class RunLock:
    """An exclusive lock on a run folder (flock on the folder itself) held while one ddpm-train uses it.

    The kernel drops the lock when its process dies, so a killed run leaves no stale lock, and no
    lock file is left in the folder. A folder this lock created is removed again on release if
    nothing was written into it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._created = not directory.exists()
        make_dir(directory)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unlocked
            return
        self._fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise DDPMError(
                f"{directory} is in use by another ddpm-train; wait for it to finish or choose another --out"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._created:
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only succeeds while empty


def prune_checkpoints(directory: Path, keep: int) -> None:
    for _, path in step_checkpoints(directory)[keep:]:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files a killed run left behind (never complete checkpoints)."""
    for path in directory.glob(".*.tmp") if directory.is_dir() else []:
        if path.name.startswith((".ckpt-", f".{LATEST}.", ".samples-", ".log.jsonl.")):
            with contextlib.suppress(OSError):
                path.unlink()


def find_resumable(directory: Path, warn) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``directory`` that loads; corrupt ones are skipped with a warning."""
    candidates = [path for _, path in step_checkpoints(directory)]
    if (directory / LATEST).is_file():
        candidates.append(directory / LATEST)
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except DDPMError as exc:
            warn(f"skipping {path.name}: {exc}")
    return None
