"""SIGINT and SIGTERM during training: finish the step, save a checkpoint, then stop."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from ..core.errors import DDPMError


class Interrupted(DDPMError):
    """SIGINT or SIGTERM ended training after a checkpoint was saved."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: saved {path}; continue with --resume auto --out {path.parent}")
        self.exit_code = 128 + signum


class StopSignals:
    """While active, SIGINT and SIGTERM only set ``received``: the loop finishes its step and saves."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
