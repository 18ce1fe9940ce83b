"""Continuous batching: many sampling requests, one network call per tick.

The exported U-Net takes a timestep per row (``t`` is [B]), so requests at different positions of
different plans can share a call, as LLM servers batch tokens of different sequences. Each tick
gathers the rows of the requests it serves (x, t, and y for a class-conditional model; a guided
sample adds its "no class" row), makes one network call (several only for a request larger than a
call), splits ε back, and applies each request's own sampler step with noise from that request's own
generator::

    engine = SamplingEngine(session, max_rows=64)
    seven = engine.submit(4, plan_with_digit_7, seed=1)
    reference = engine.submit(16, ancestral_plan, seed=2)
    engine.run_until_idle()                   # or engine.start(): ticks on a thread of its own
    images = seven.wait().images

Same seed, same plan: x_T and every step's noise come from the request's ``numpy.random.Generator``
in the order ``DDPM.generate`` draws them, so the samples are those of a request sampled alone, up
to the float round-off of other batch compositions (identical when the composition is the same).

Fairness: when the active rows exceed ``max_rows``, each tick serves the requests that waited
longest first (requests are whole: all rows of a request take each step together), so a short
request behind long ones advances at nearly every tick and finishes in about its own steps.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import DDPMError, summary
from ..core.images import to_uint8
from ..core.plan import SamplingPlan
from ..core.record import RunSettings
from ..core.samplers import Sampler, predict_x0
from .decoder import Decoder
from .machine import available_memory
from .memory import memory_needed
from .network import Network
from .session import UNetSession

LABEL_STREAM = 0x1ABE1  # the labels' random stream, apart from the images' noise


def class_prior_labels(n: int, classes: int, seed: int) -> np.ndarray:
    """Labels for sampling a class-conditional model without a requested digit: every class
    equally often (the remainder to classes drawn at random), in an order drawn from ``seed``.

    Sampling p(x | y) with y from this prior samples the whole distribution. The model's "no
    class" index does the same in principle, but it learned from only the label-dropout share of
    the batches and draws worse digits (measured in benchmarks/results/gpu-h100.md).
    The stream is separate from the images' noise, so the noise is the same as with given labels.
    """
    rng = np.random.default_rng([seed, LABEL_STREAM])
    order = rng.permutation(classes)
    return rng.permutation(order[np.arange(n) % classes]).astype(np.int64)


def frame_positions(steps: int, frames: int) -> list[int]:
    """Loop positions (0 = first update) after which a frame is kept, denser towards the end.

    The picture changes most in the last steps, so positions follow (k/K)^2 backwards from the
    final step; the last position is always the finished sample.
    """
    if frames < 1:
        return []
    last = steps - 1
    positions = {last - int(round(last * (k / frames) ** 2)) for k in range(frames)}
    return sorted(positions)


def request_rows(n: int, plan: SamplingPlan) -> int:
    """Rows a request of ``n`` samples takes in each network call: two per sample with guidance
    (the conditional and the "no class" ε)."""
    return n * (2 if plan.guidance > 0 else 1)


class Cancelled(DDPMError):
    """The request was cancelled before it finished."""


@dataclass
class SampleRun:
    """The result of one sampling request."""

    samples: np.ndarray  # float32 [N, C, H, W] in the model's data range (a latent model's: decoded)
    images: np.ndarray  # uint8 [N, H, W] (or [N, H, W, C] for colour)
    frames: list[np.ndarray] = field(default_factory=list)  # uint8 images, noise first, final last
    frame_timesteps: list[int] = field(default_factory=list)  # model timestep after each frame (-1: x_T)
    seconds: float = 0.0  # from the request's first step to its last
    run_seconds: float = 0.0  # time inside the network calls the request took part in
    provider: str = ""
    settings: RunSettings | None = None  # what is recorded beside the samples; DDPM.generate sets it


@dataclass
class Job:
    """A request as its caller sees it: state, progress, frames so far, and the result.

    ``position`` counts the steps done out of ``steps``; ``frames`` grow as the request passes the
    positions its plan keeps. Read them from any thread; the engine's thread writes them.
    """

    id: int
    n: int
    plan: SamplingPlan
    seed: int
    steps: int
    labels: np.ndarray | None  # the labels sampled (None: an unconditional model)
    labels_drawn: bool  # drawn from the class prior, not requested
    state: str = "queued"
    position: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    frame_timesteps: list[int] = field(default_factory=list)
    error: str | None = None
    result: SampleRun | None = None
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    _cancel: bool = False
    _done: threading.Event = field(default_factory=threading.Event)
    _callbacks: list[Callable[[Job], None]] = field(default_factory=list)
    _callbacks_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop the request: its rows are freed at the next tick."""
        self._cancel = True

    def add_done_callback(self, callback: Callable[[Job], None]) -> None:
        """Call ``callback(job)`` once the request has ended (done, failed or cancelled): at once when it
        has, else on the engine's thread as it ends. An asyncio server hands it to its loop with
        ``loop.call_soon_threadsafe``; a failing callback is ignored, it cannot change the outcome."""
        with self._callbacks_lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        self._call(callback)

    def _finish(self) -> None:
        with self._callbacks_lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._call(callback)

    def _call(self, callback: Callable[[Job], None]) -> None:
        try:
            callback(self)
        except Exception:  # the outcome stands; a caller's notification is its own business
            pass

    def wait(self, timeout: float | None = None) -> SampleRun:
        """The finished run; a failed request raises its one-line :class:`DDPMError`, a cancelled one
        :class:`Cancelled`, and one not finished within ``timeout`` seconds :class:`TimeoutError`."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} is still running ({self.position} of {self.steps} steps)")
        if self.state == "cancelled":
            raise Cancelled(f"request {self.id} was cancelled after {self.position} of {self.steps} steps")
        if self.state == "failed":
            raise DDPMError(self.error)
        return self.result


@dataclass
class _Flight:
    """The engine's side of a request: its sampler (with any multistep history), generator and x."""

    job: Job
    sampler: Sampler
    rng: np.random.Generator
    x: np.ndarray
    keep: set[int]
    guided: bool
    on_step: Callable[[Job], None] | None
    served: int = -1  # the last tick that advanced it
    run_seconds: float = 0.0
    ended: bool = False  # set (under the engine's lock) by the one _end that decides its outcome

    @property
    def rows(self) -> int:
        return request_rows(self.job.n, self.job.plan)


@dataclass
class EngineStats:
    """Counters since the engine was made: ticks, network calls, rows evaluated, and requests by outcome."""

    ticks: int = 0
    calls: int = 0
    rows: int = 0
    steps: int = 0  # request steps advanced (a request's step counts once, whatever its n)
    tick_seconds: float = 0.0  # wall time of recent ticks, smoothed (exponential, 1/8 per tick)
    outcomes: dict[str, int] = field(default_factory=lambda: {"done": 0, "failed": 0, "cancelled": 0})

    @property
    def rows_per_call(self) -> float:
        return self.rows / self.calls if self.calls else 0.0


class SamplingEngine:
    """In-flight sampling requests over one ONNX Runtime session, advanced a tick at a time.

    ``max_rows``: rows per network call (a guided sample is two rows). ``max_request_rows``: the
    largest request accepted, in rows (default ``max_rows``; None for a loop that may split one
    large request over several calls per tick, as ``DDPM.generate`` does). ``binding``: IOBinding.
    ``decoder``: a latent model's (:mod:`.decoder`); the requests that finish in one tick are decoded
    in one call.
    """

    def __init__(
        self,
        session: UNetSession,
        max_rows: int,
        binding: bool = False,
        max_request_rows: int | None | str = "max_rows",
        decoder: Decoder | None = None,
    ) -> None:
        if max_rows < 1:
            raise DDPMError(f"an engine needs at least 1 row per network call, got {max_rows}")
        self.session = session
        self.decoder = decoder  # a latent model's: latents become images once per finished batch and frame
        self.info = session.info
        self.schedule = self.info.make_schedule()
        self.network = Network(session, max_rows, binding)
        self.max_rows = self.network.max_rows
        self.max_request_rows = self.max_rows if max_request_rows == "max_rows" else max_request_rows
        self.stats = EngineStats()
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._pending: list[_Flight] = []
        self._active: list[_Flight] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- requests ----------------------------------------------------------------------------------

    def submit(self, n: int, plan: SamplingPlan, seed: int, on_step: Callable[[Job], None] | None = None) -> Job:
        """Queue ``n`` samples of ``plan`` (checked against this model) from ``seed``; they join at the
        next tick. ``on_step(job)`` runs on the engine's thread after each of the request's steps.
        A request that cannot fit is refused here, in one line, before it takes a row."""
        guided = plan.guidance > 0
        self._check_fits(n, plan, guided)
        labels, drawn = plan.labels(n), False
        if labels is None and self.info.num_classes:
            labels, drawn = class_prior_labels(n, self.info.num_classes, seed), True
        sampler = plan.make_sampler(self.info, self.schedule)
        job = Job(id=next(self._ids), n=n, plan=plan, seed=seed, steps=len(sampler), labels=labels, labels_drawn=drawn)
        rng = np.random.default_rng(seed)
        shape = (n, self.info.image_channels, self.info.image_size, self.info.image_size)
        flight = _Flight(
            job,
            sampler,
            rng,
            rng.standard_normal(shape, dtype=np.float32),
            set(frame_positions(job.steps, plan.frames)),
            guided,
            on_step,
        )
        if plan.frames:
            self._keep_frame(flight, flight.x, None, -1)  # pure noise: x̂_0 not predicted yet
        with self._lock:
            if self._stopping:
                raise DDPMError("the engine is shutting down and takes no new requests")
            self._pending.append(flight)
            self._lock.notify_all()
        return job

    def _check_fits(self, n: int, plan: SamplingPlan, guided: bool) -> None:
        rows = request_rows(n, plan)
        if n < 1:
            raise DDPMError(f"a request needs at least 1 sample, got {n}")
        if self.max_request_rows is not None and rows > self.max_request_rows:
            most = self.max_request_rows // (2 if guided else 1)
            raise DDPMError(
                f"{n} samples{' with guidance (2 rows each)' if guided else ''} need {rows} rows; this engine "
                f"takes at most {self.max_request_rows} rows per request: ask for at most {most}"
            )
        frames = plan.frames * (2 if plan.show == "both" else 1)
        needed = 2 * memory_needed(
            rows, self.info.image_size, self.info.image_channels, frames, 0
        )  # x, ε, noise, copies
        available = available_memory()
        if available is not None and needed > available:
            raise DDPMError(
                f"{n} samples need about {needed / 1e9:.1f} GB of memory and {available / 1e9:.1f} GB is free: "
                "ask for fewer (or fewer frames)"
            )

    @property
    def active_rows(self) -> int:
        """Rows of the requests admitted or waiting to be."""
        with self._lock:
            return sum(f.rows for f in self._active + self._pending)

    @property
    def queued(self) -> int:
        """Requests admitted or waiting to be."""
        with self._lock:
            return len(self._pending) + len(self._active)

    def steps_left(self) -> list[int]:
        """Steps each admitted or waiting request has still to take."""
        with self._lock:
            return [f.job.steps - f.job.position for f in self._active + self._pending]

    @property
    def running(self) -> bool:
        """Whether the engine's own thread (:meth:`start`) is ticking."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: no new requests are taken."""
        return self._stopping

    # -- ticks -------------------------------------------------------------------------------------

    def tick(self) -> bool:
        """One tick: admit new requests, drop cancelled ones, serve as many rows as fit in a call and
        advance each served request one step. False when there was nothing to do."""
        with self._lock:
            self._admit()
            batch = self._select()
        if not batch:
            return False
        before, began = self.session.run_seconds, time.perf_counter()
        try:
            outputs = self._evaluate(batch)
        except Exception as exc:  # the call failed: every request in it ends with the reason, the engine goes on
            reason = str(exc) if isinstance(exc, DDPMError) else f"the network call failed: {summary(exc)}"
            for flight in batch:
                self._end(flight, "failed", reason)
            return True
        spent = self.session.run_seconds - before
        self.stats.ticks += 1
        finished = []
        for flight, output in zip(batch, outputs):
            if flight.ended:  # cancelled while the call ran
                continue
            flight.run_seconds += spent
            if self._advance(flight, output):
                finished.append(flight)
        if finished:
            self._complete(finished)
        took = time.perf_counter() - began
        self.stats.tick_seconds = (
            took if self.stats.ticks == 1 else self.stats.tick_seconds + (took - self.stats.tick_seconds) / 8
        )
        return True

    def _admit(self) -> None:
        """Pending requests join; cancelled ones leave (called with the lock held)."""
        self._active.extend(self._pending)
        self._pending.clear()
        for flight in [f for f in self._active if f.job._cancel]:
            self._end(flight, "cancelled", None)

    def _select(self) -> list[_Flight]:
        """The requests this tick serves: longest-waiting first, as many whole requests as fit in
        ``max_rows`` (the first always, so a request larger than a call still advances)."""
        chosen: list[_Flight] = []
        rows = 0
        for flight in sorted(self._active, key=lambda f: (f.served, f.job.id)):
            if chosen and rows + flight.rows > self.max_rows:
                continue
            chosen.append(flight)
            rows += flight.rows
        for flight in chosen:
            flight.served = self.stats.ticks
            if flight.job.started is None:
                flight.job.started, flight.job.state = time.perf_counter(), "running"
        return chosen

    def _evaluate(self, batch: list[_Flight]) -> list[np.ndarray]:
        """One network call over the batch's rows; per request, its ε (guidance applied) or, for a
        fused-step graph, its next x."""
        xs, ts, ys, noises = [], [], [], []
        null = self.info.num_classes  # the "no class" index
        for flight in batch:
            n, t = flight.job.n, int(flight.sampler.model_timesteps[flight.job.position])
            xs.append(flight.x)
            ts.append(np.full(n, t, dtype=np.int64))
            ys.append(flight.job.labels)
            if flight.guided:
                xs.append(flight.x)
                ts.append(ts[-1])
                ys.append(np.full(n, null, dtype=np.int64))
            if self.info.graph == "fused-step":
                noises.append(self._noise(flight))
        x, t = np.concatenate(xs), np.concatenate(ts)
        if self.info.graph == "fused-step":
            out = self.network.fused_step(x, t, np.concatenate(noises))
        else:
            out = self.network.eps(x, t, np.concatenate(ys) if self.info.num_classes else None)
        self.stats.calls, self.stats.rows = self.network.calls, self.network.rows
        return self._split(batch, out)

    @staticmethod
    def _split(batch: list[_Flight], out: np.ndarray) -> list[np.ndarray]:
        """Each request's share of the call: (1+w)·ε(x,y) − w·ε(x,∅) for a guided one."""
        shares, start = [], 0
        for flight in batch:
            n, w = flight.job.n, flight.job.plan.guidance
            if flight.guided:
                shares.append((1.0 + w) * out[start : start + n] - w * out[start + n : start + 2 * n])
            else:
                shares.append(out[start : start + n])
            start += flight.rows
        return shares

    def _noise(self, flight: _Flight) -> np.ndarray | None:
        """z for the request's current step (None where the step adds none; zeros for a fused graph)."""
        i = flight.job.position
        if flight.sampler.needs_noise(i):
            return flight.rng.standard_normal(flight.x.shape, dtype=np.float32)
        return np.zeros_like(flight.x) if self.info.graph == "fused-step" else None

    def _advance(self, flight: _Flight, output: np.ndarray) -> bool:
        """The request's own step from ε (or the fused graph's x_{t−1}), frames, progress; True when that
        was its last step (the caller completes it)."""
        job, i = flight.job, flight.job.position
        t = int(flight.sampler.model_timesteps[i])
        try:
            x_next = (
                output
                if self.info.graph == "fused-step"
                else flight.sampler.step(flight.x, i, output, self._noise(flight))
            )
        except ValueError as exc:  # a sampler's own refusal, e.g. a multistep solver out of order
            self._end(flight, "failed", f"the {job.plan.sampler} sampler failed at step {i + 1}: {summary(exc)}")
            return False
        if not np.isfinite(x_next).all():
            self._end(
                flight,
                "failed",
                f"the samples became NaN or infinite at step {i + 1} of {job.steps} (t = {t}): "
                "the model's ε or the sampler's settings are out of range",
            )
            return False
        if i in flight.keep:
            x0 = None
            if job.plan.show != "xt" and self.info.graph != "fused-step":
                x0 = predict_x0(flight.x, output, self.schedule.alpha_bars[t])
            try:
                self._keep_frame(flight, x_next, x0, t)
            except DDPMError as exc:  # the decoder failed
                self._end(flight, "failed", str(exc))
                return False
        flight.x = x_next
        job.position = i + 1
        self.stats.steps += 1
        if flight.on_step is not None:
            try:
                flight.on_step(job)
            except Exception as exc:  # a caller's progress callback fails its own request, not the engine
                self._end(flight, "failed", f"the progress callback failed at step {i + 1}: {summary(exc)}")
                return False
        return job.position == job.steps

    def _pictures(self, x: np.ndarray) -> np.ndarray:
        """float32 images in the data range: x itself, or a latent model's decoded x."""
        return x if self.decoder is None else self.decoder.decode(x)

    def _complete(self, flights: list[_Flight]) -> None:
        """End the requests that took their last step in this tick, decoding all of them in one call."""
        flights = [flight for flight in flights if not flight.ended]
        if not flights:
            return
        try:
            images = self._pictures(np.concatenate([flight.x for flight in flights]))
        except DDPMError as exc:
            for flight in flights:
                self._end(flight, "failed", str(exc))
            return
        start = 0
        for flight in flights:
            self._end(flight, "done", None, images[start : start + flight.job.n])
            start += flight.job.n

    def _keep_frame(self, flight: _Flight, x: np.ndarray, x0: np.ndarray | None, t: int) -> None:
        """One frame of uint8 images: x_t, x̂_0 (mid-grey before the first prediction), or both side by side."""
        data_range, show = self.info.data_range, flight.job.plan.show
        if show == "xt":
            frame = to_uint8(self._pictures(x), data_range)
        else:
            shape = (len(x), self.info.output_channels, self.info.output_size, self.info.output_size)
            predicted = to_uint8(
                self._pictures(x0) if x0 is not None else np.full(shape, sum(data_range) / 2), data_range
            )
            frame = (
                predicted
                if show == "x0"
                else np.concatenate([to_uint8(self._pictures(x), data_range), predicted], axis=-1)
            )
        flight.job.frames.append(frame)
        flight.job.frame_timesteps.append(t)

    def _end(self, flight: _Flight, state: str, error: str | None, images: np.ndarray | None = None) -> None:
        """End a request: "done" with its float ``images``, or "failed"/"cancelled" with ``error``. The
        first call decides; a later one (a tick's failure on rows a stop already cancelled) changes nothing."""
        job = flight.job
        with self._lock:
            if flight.ended:
                return
            flight.ended = True
            if flight in self._active:
                self._active.remove(flight)
            job.finished = time.perf_counter()
            job.state, job.error = state, error
            if state == "done":
                job.result = SampleRun(
                    samples=images,
                    images=to_uint8(images, self.info.data_range),
                    frames=job.frames,
                    frame_timesteps=job.frame_timesteps,
                    seconds=job.finished - (job.started or job.finished),
                    run_seconds=flight.run_seconds,
                    provider=self.session.provider,
                )
            if state != "done":
                flight.x = np.empty(0, np.float32)  # its rows' memory goes back at once
            self.stats.outcomes[state] += 1
            self._lock.notify_all()
        job._finish()

    # -- running -----------------------------------------------------------------------------------

    def run_until_idle(self) -> None:
        """Tick on the caller's thread until no request is left."""
        while self.tick():
            pass

    def start(self) -> None:
        """Tick on a thread of the engine's own, sleeping while there is nothing to do."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="ddpm-engine", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not (self._pending or self._active or self._stopping):
                    self._lock.wait()
                if self._stopping and not (self._pending or self._active):
                    return
            self.tick()

    def stop(self, grace: float | None = None) -> bool:
        """Take no new requests; let those in flight finish within ``grace`` seconds (None: however long
        they take), then cancel what is left. True when everything finished in time."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        deadline = None if grace is None else time.perf_counter() + grace
        if self._thread is not None:
            self._thread.join(grace)
        else:
            while (deadline is None or time.perf_counter() < deadline) and self.tick():
                pass
        with self._lock:
            finished = not (self._pending or self._active)
            for flight in self._pending + self._active:
                flight.job.cancel()
            if self._thread is None:
                self._admit()  # ends the cancelled ones; a running thread ends them at its next tick
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        return finished
