"""Checkpoint files: one dict of plain values and tensors, written atomically, read with weights_only."""

from __future__ import annotations

import platform
import random
import re
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm.runtime.errors import DDPMError
from ddpm.runtime.files import atomic_write

FORMAT = "ddpm-mnist-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model_config", "schedule", "data", "sampling", "train", "model", "ema", "optimizer", "progress", "rng")


def versions() -> dict[str, str]:
    try:
        project = metadata.version("ddpm-mnist")
    except metadata.PackageNotFoundError:
        project = "unknown"
    return {"ddpm_mnist": project, "torch": str(torch.__version__), "numpy": str(np.__version__), "python": platform.python_version()}


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


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` to ``path`` through a temporary file: ``path`` is never half-written."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(), **checkpoint}
    try:
        with atomic_write(path) as handle:
            torch.save(payload, handle)
    except OSError as exc:
        raise DDPMError(f"cannot write checkpoint {path}: {exc.strerror or exc}") from None


def read_checkpoint_file(path: str | Path) -> Any:
    """Whatever ``torch.load(weights_only=True)`` finds in ``path``, with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise DDPMError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise DDPMError(f"checkpoint {path} is a directory, not a file")
    if path.stat().st_size == 0:
        raise DDPMError(f"checkpoint {path} is empty")
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
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise DDPMError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {reason[:160]}") from None


def is_project_checkpoint(content: Any) -> bool:
    return isinstance(content, dict) and content.get("format") == FORMAT


def is_state_dict(content: Any) -> bool:
    return isinstance(content, dict) and bool(content) and all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items()
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
        return content
    if is_state_dict(content):
        raise DDPMError(
            f"{path} is a bare state dict (weights only): it has no optimizer, EMA or step to resume from"
        )
    raise DDPMError(f"{path} is not a ddpm-mnist checkpoint (expected a dict with format={FORMAT!r})")
