"""Where the package keeps what it ships (the embedded models, the judge, the ε check's digits), and
every file the runtime reads without being told, which no command may write over."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from . import cpu_batch


def models_dir() -> Path:
    """The package's models folder."""
    return Path(str(resources.files("ddpm.runtime") / "models"))


def installed_inputs() -> dict[str, Path]:
    """The files the runtime reads without being told, by what they are: the package's embedded
    models, judge and check digits, and the per-machine CPU cache."""
    folder = models_dir()
    found = (
        {f"the installed {path.name}": path for path in sorted(folder.iterdir()) if path.is_file()}
        if folder.is_dir()
        else {}
    )
    found["the CPU measurement cache"] = cpu_batch.cache_file()
    return found
