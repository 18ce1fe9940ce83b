"""Uvicorn around the app, draining on SIGTERM and Ctrl-C: the listening socket closes at once, new
requests on open connections get 503, and in-flight requests get the grace period to finish."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable

import click
import uvicorn

from ..runtime.pipeline import DDPM
from .app import Settings, create_app
from .limits import GuardedH11

# Bounds on what clients may hold: open connections beyond LIMIT_CONCURRENCY get 503; an idle
# keep-alive connection closes after KEEP_ALIVE seconds.
LIMIT_CONCURRENCY = 1024
KEEP_ALIVE = 5


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that marks the app as draining when told to stop, and does not raise the
    signal again once it has stopped (the command ends normally after a drain)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Server:
    """One model, one engine, one uvicorn process on ``host``:``port``."""

    def __init__(self, ddpm: DDPM, settings: Settings, host: str, port: int, quiet: bool = False,
                 on_measure: Callable[[], None] | None = None) -> None:
        if settings.max_rows is None and ddpm.session.on_cpu and ddpm.session.fixed_batch is None:
            ddpm.batch_choice(on_measure=on_measure)  # measured (or read from the cache) before the port opens
        self.app = create_app(ddpm, settings)
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning" if quiet else "info",
                                access_log=not quiet, timeout_graceful_shutdown=int(settings.grace + 0.999),
                                limit_concurrency=LIMIT_CONCURRENCY, timeout_keep_alive=KEEP_ALIVE,
                                lifespan="on", server_header=False, http=GuardedH11)
        self.uvicorn = _Uvicorn(config, self._drain)

    def _drain(self) -> None:
        if not self.app.state.draining:
            self.app.state.draining = True
            click.echo("ddpm-serve: draining: no new requests; in-flight ones finish or are cancelled after "
                       f"{self.app.state.settings.grace:g} s", err=True)

    def run(self) -> None:
        self.uvicorn.run()

    def report(self) -> str:
        outcomes = self.app.state.engine.stats.outcomes
        return ", ".join(f"{count} {outcome}" for outcome, count in outcomes.items()) + " requests"
