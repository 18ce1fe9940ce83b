"""Uvicorn around the app, draining on SIGTERM, SIGHUP and Ctrl-C: the listening socket closes at
once, new requests on open connections get 503, in-flight requests get the grace period to finish and
then end as cancelled (a JSON 503; streams with their ``end`` event). SIGUSR1 logs one status line."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable

import click
import uvicorn

from ..runtime.pipeline import DDPM
from .app import Settings, create_app
from .limits import GuardedH11, RedactSecrets

# Bounds on what clients may hold: at LIMIT_CONCURRENCY connections the one idle longest is closed for
# a new one (a 503 only when all are in requests); an idle keep-alive connection closes after KEEP_ALIVE s.
LIMIT_CONCURRENCY = 1024
KEEP_ALIVE = 5
# After the grace, cancelled requests still need to write their 503 or their stream's end event.
ANSWER_SECONDS = 2.0
DRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that marks the app as draining when told to stop, and does not raise the
    signal again once it has stopped (the command ends normally after a drain)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None], on_status: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit, self.on_status = on_exit, on_status

    def handle_exit(self, sig: int, frame) -> None:
        self.on_exit()
        super().handle_exit(sig if sig != signal.SIGHUP else signal.SIGTERM, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda sig, frame: self.on_status())
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Server:
    """One model, one engine, one uvicorn process on ``host``:``port``."""

    def __init__(
        self,
        ddpm: DDPM,
        settings: Settings,
        host: str,
        port: int,
        quiet: bool = False,
        on_measure: Callable[[], None] | None = None,
    ) -> None:
        if settings.max_rows is None and ddpm.session.on_cpu and ddpm.session.fixed_batch is None:
            ddpm.batch_choice(on_measure=on_measure)  # measured (or read from the cache) before the port opens
        self.app = create_app(ddpm, settings)
        # Idle connections stay open through the grace (answered 503 if used), as the in-flight requests do.
        protocol = type(
            "ServerH11",
            (GuardedH11,),
            {"drain_seconds": min(settings.grace, KEEP_ALIVE), "max_connections": LIMIT_CONCURRENCY},
        )
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            log_level="warning" if quiet else "info",
            access_log=not quiet,
            timeout_graceful_shutdown=int(settings.grace + ANSWER_SECONDS + 0.999),
            timeout_keep_alive=KEEP_ALIVE,
            lifespan="on",
            server_header=False,
            http=protocol,
        )
        logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
        self.uvicorn = _Uvicorn(config, self._drain, self._status)

    def _drain(self) -> None:
        """The first stop signal: no new work; the engine gets the grace from now, then cancels the rest."""
        state = self.app.state
        if state.draining:
            return
        state.draining = True
        click.echo(
            "ddpm-serve: draining: no new requests; in-flight ones finish or are cancelled after "
            f"{state.settings.grace:g} s",
            err=True,
        )
        threading.Thread(target=state.runner.stop, args=(state.settings.grace,), name="ddpm-drain", daemon=True).start()

    def _status(self) -> None:
        engine = self.app.state.engine
        click.echo(
            f"ddpm-serve: {'draining' if self.app.state.draining else 'serving'}; {engine.queued} requests "
            f"({engine.active_rows} rows) in flight or waiting; {self.report()}",
            err=True,
        )

    def run(self) -> None:
        self.uvicorn.run()

    def report(self) -> str:
        outcomes = self.app.state.engine.stats.outcomes
        return ", ".join(f"{count} {outcome}" for outcome, count in outcomes.items()) + " requests"
