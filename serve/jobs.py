"""The server's side of a request: an engine job with an unguessable id, its response settings, and
a bounded store of recent jobs for ``/v1/jobs``."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from ..core.errors import DDPMError
from ..core.images import make_grid
from ..core.outputs import gif_bytes, npz_bytes, png_bytes
from ..core.record import RunSettings
from ..runtime.engine import Job, SamplingEngine, request_rows
from ..runtime.pipeline import DDPM
from .schema import Checked, JobView

MEDIA_TYPES = {"png": "image/png", "npz": "application/octet-stream", "gif": "image/gif"}
GIF_FPS = 12.0
GIF_HOLD = 2.0
# What one GIF may cost: pixels over all its frames (rendering holds a few bytes of memory per pixel).
# A larger request's GIF comes at a smaller scale, then with every k-th frame (the last always).
GIF_PIXELS = 16_000_000
GIF_RENDERS = 2  # GIFs rendered at once; more wait their turn
GIF_KEPT_BYTES = 256 << 20  # rendered GIFs kept for repeated fetches; the oldest are dropped beyond this


def gif_budget(frames: list, scale: int, columns: int | None) -> tuple[list, int]:
    """The frames and scale of a GIF within :data:`GIF_PIXELS`: the scale lowered first, then every
    k-th frame kept (the last always)."""
    height, width = make_grid(frames[0], columns=columns).shape[:2]
    while scale > 1 and len(frames) * height * width * scale**2 > GIF_PIXELS:
        scale -= 1
    fit = max(1, GIF_PIXELS // (height * width * scale**2))
    if len(frames) > fit:
        step = -(-len(frames) // fit)
        frames = frames[::-1][::step][::-1]  # counted from the last, so it is kept
    return frames, scale


class QueueFull(DDPMError):
    """The engine holds as many rows as the server admits; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DDPMError):
    """No worker could take the request just now (shutting down, or a Ray replica lost): a 503."""


@dataclass
class ServedJob:
    """An engine job as the API knows it."""

    id: str
    job: Job
    checked: Checked
    created: float = field(default_factory=time.monotonic)
    gif: bytes | None = None  # rendered once, on the first fetch
    gif_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def view(self) -> JobView:
        job = self.job
        return JobView(
            id=self.id,
            state=job.state,
            position=job.position,
            steps=job.steps,
            frames=len(job.frames),
            seed=job.seed,
            error=job.error,
        )

    async def ended(self) -> None:
        """Returns once the engine has ended the job (done, failed or cancelled)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def wake(job: Job) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(None))

        self.job.add_done_callback(wake)
        await future


class Runner(Protocol):
    """Where the requests run: :class:`LocalRunner` (an engine in this process) or, on Ray, the
    ingress's remote runner (``ddpm.serve.ray_app.RemoteRunner``)."""

    running: bool  # taking and advancing requests
    stopping: bool  # shutting down: takes no new ones

    async def submit(self, checked: Checked) -> Job:
        """The request under way; :class:`QueueFull`, :class:`Unavailable` or a one-line DDPMError if not."""

    def record(self, job: Job) -> RunSettings | dict:
        """What a finished job's npz and PNG record."""

    def start(self) -> None: ...

    def stop(self, grace: float) -> None: ...


class LocalRunner:
    """Requests run on an engine in this process, within a limit of rows.

    ``queue_rows``: the most rows in flight or waiting (a guided sample counts 2); a request beyond
    it is refused at once with a retry time.
    """

    def __init__(self, ddpm: DDPM, engine: SamplingEngine, queue_rows: int) -> None:
        self.ddpm, self.engine, self.queue_rows = ddpm, engine, queue_rows

    async def submit(self, checked: Checked) -> Job:
        rows = request_rows(checked.n, checked.plan)
        if rows > self.queue_rows:
            raise DDPMError(
                f"the request needs {rows} rows and this server admits {self.queue_rows} at a time "
                "(--queue-rows): ask for fewer samples"
            )
        waiting = self.engine.active_rows
        if waiting + rows > self.queue_rows:
            raise QueueFull(
                f"the server is full ({waiting} of {self.queue_rows} rows in flight); retry later", self.retry_after()
            )
        return self.engine.submit(checked.n, checked.plan, checked.seed)

    def retry_after(self) -> int:
        """Seconds until the running request closest to its end should be done, at the recent tick rate."""
        seconds = min(self.engine.steps_left(), default=1) * max(self.engine.stats.tick_seconds, 0.001)
        return max(1, int(seconds + 0.999))

    def record(self, job: Job) -> RunSettings:
        binding = "iobinding" if self.engine.network.binding else "plain"
        return self.ddpm.record(job, self.engine.max_rows, binding)

    @property
    def running(self) -> bool:
        return self.engine.running

    @property
    def stopping(self) -> bool:
        return self.engine.stopping

    def start(self) -> None:
        self.engine.start()

    def stop(self, grace: float) -> None:
        self.engine.stop(grace)


class Jobs:
    """Submits checked requests to the runner and keeps the recent ones for ``/v1/jobs``: ``keep``
    finished jobs (oldest finished dropped first), each for at most ``keep_seconds``."""

    def __init__(self, runner: Runner, keep: int = 128, keep_seconds: float = 600.0) -> None:
        self.runner, self.keep, self.keep_seconds = runner, keep, keep_seconds
        self._jobs: OrderedDict[str, ServedJob] = OrderedDict()
        self._renders = asyncio.Semaphore(GIF_RENDERS)
        self._gifs: OrderedDict[str, ServedJob] = OrderedDict()  # jobs holding a rendered GIF, oldest first

    async def submit(self, checked: Checked) -> ServedJob:
        job = await self.runner.submit(checked)
        served = ServedJob(secrets.token_urlsafe(12), job, checked)
        self._forget_old()
        self._jobs[served.id] = served
        return served

    def get(self, job_id: str) -> ServedJob | None:
        return self._jobs.get(job_id)

    def live(self) -> list[ServedJob]:
        return [served for served in self._jobs.values() if not served.job.done]

    def _forget_old(self) -> None:
        now = time.monotonic()
        finished = [key for key, served in self._jobs.items() if served.job.done]
        for key in finished:
            if now - self._jobs[key].created > self.keep_seconds:
                del self._jobs[key]
        finished = [key for key in finished if key in self._jobs]
        for key in finished[: max(0, len(finished) - self.keep + 1)]:
            del self._jobs[key]

    async def result(self, served: ServedJob, kind: str) -> bytes:
        """A finished job's result (see :meth:`render`), rendered off the event loop. A GIF is rendered
        once per job, at most :data:`GIF_RENDERS` at a time, and kept for the fetches that follow."""
        if kind != "gif":
            return await asyncio.to_thread(self.render, served, kind)
        async with served.gif_lock:
            if served.gif is None:
                async with self._renders:
                    served.gif = await asyncio.to_thread(self.render, served, kind)
                self._keep_gif(served)
            return served.gif

    def _keep_gif(self, served: ServedJob) -> None:
        self._gifs[served.id] = served
        while sum(len(kept.gif or b"") for kept in self._gifs.values()) > GIF_KEPT_BYTES and len(self._gifs) > 1:
            _, oldest = self._gifs.popitem(last=False)
            oldest.gif = None

    def render(self, served: ServedJob, kind: str) -> bytes:
        """A finished job's result: the PNG grid (seed and settings in its text), ddpm-run's npz, or the GIF."""
        run, checked = served.job.result, served.checked
        if kind == "gif":
            if not run.frames:
                raise DDPMError("this job kept no frames: submit it with frames > 0 for a GIF")
            frames, scale = gif_budget(run.frames, checked.scale, checked.columns)
            return gif_bytes(frames, fps=GIF_FPS, hold=GIF_HOLD, scale=scale, columns=checked.columns)
        settings = self.runner.record(served.job)
        if kind == "npz":
            return npz_bytes(run.images, settings)
        return png_bytes(run.images, scale=checked.scale, columns=checked.columns, settings=settings)

    def frame_png(self, served: ServedJob, index: int) -> bytes:
        """Frame ``index`` of a job as a PNG grid at one pixel per pixel (the page scales it)."""
        return png_bytes(served.job.frames[index], scale=1, columns=served.checked.columns)
