"""Scale-out on Ray Serve: one ingress replica (the same HTTP app, with the job table) over N sampler
replicas, each with its own continuous-batching engine.

    ddpm-serve --ray --replicas 2                       # on a local Ray cluster, started for it
    ddpm-serve --ray --replicas 8 --address auto        # on the cluster of `ray start --head`
    serve run ddpm.serve.ray_app:build replicas=2       # the same through Ray's own command line

The ingress checks each request against the model, as ``ddpm-serve`` does, and streams it to a
sampler replica (Ray routes it to a less loaded one): the replica answers "accepted" or "refused"
(its own queue limit: 429), then progress, frames and the end, so ``/v1/jobs`` and its events work
whatever replica runs a job. A replica that dies takes only its own requests with it: they end in
503, and Ray starts a replacement.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.exceptions import TaskCancelledError

from ..core.errors import DDPMError, summary
from ..runtime.engine import SampleRun
from ..runtime.pipeline import DDPM, open_model
from ..runtime.session import cores_shared
from .app import Settings, create_app, local_runner
from .jobs import QueueFull, Unavailable
from .schema import Checked

APP_NAME = "ddpm"
POLL = 0.05  # seconds between a replica's looks at its job


@dataclass(frozen=True)
class ModelOptions:
    """How each process opens the model: ``ddpm-serve``'s model options."""

    onnx: str | None = None
    precision: str = "auto"
    provider: str = "auto"
    threads: int | None = None
    device_id: int = 0
    embedded: str | None = None  # --model's name, where no file is named

    def open(self) -> DDPM:
        model = Path(self.onnx) if self.onnx is not None else self.embedded
        with cores_shared():  # the replica's request handling runs on its engine's cores
            return open_model(model, self.provider, self.precision, self.threads, self.device_id)


class SamplerReplica:
    """A replica: one model, one engine; each request is a stream of plain dicts."""

    def __init__(self, options: ModelOptions, settings: Settings) -> None:
        self.runner = local_runner(options.open(), settings)
        self.runner.start()
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def run(self, checked: Checked):
        try:
            job = await self.runner.submit(checked)
        except QueueFull as exc:
            yield {"kind": "refused", "status": 429, "detail": str(exc), "retry_after": exc.retry_after}
            return
        except DDPMError as exc:
            yield {"kind": "refused", "status": 503 if self.runner.stopping else 422, "detail": str(exc)}
            return
        yield {"kind": "accepted", "steps": job.steps, "replica": self.replica}
        try:
            async for message in self._follow(job):
                yield message
        finally:
            job.cancel()  # the ingress went away (or the request ended): no-op once the job is done

    async def _follow(self, job):
        sent, position = 0, -1
        while True:
            done = job.done  # read first: frames and position are final once it is set
            while sent < len(job.frames):
                yield {"kind": "frame", "frame": job.frames[sent], "timestep": job.frame_timesteps[sent]}
                sent += 1
            if job.position != position or done:
                position = job.position
                yield {"kind": "progress", "state": job.state, "position": position}
            if done:
                break
            await asyncio.sleep(POLL)
        end = {"kind": "end", "state": job.state, "error": job.error}
        if job.state == "done":
            end.update(images=job.result.images, settings=self.runner.record(job).to_dict(), seconds=job.result.seconds)
        yield end


@dataclass
class RemoteJob:
    """A request running on a sampler replica, as the ingress's job table sees it: the fields of an
    engine job, kept up to date from the replica's stream."""

    n: int
    plan: Any
    seed: int
    steps: int
    replica: str
    state: str = "queued"
    position: int = 0
    frames: list[np.ndarray] = field(default_factory=list)
    frame_timesteps: list[int] = field(default_factory=list)
    error: str | None = None
    result: SampleRun | None = None
    settings: dict | None = None
    lost: bool = False  # its replica went away: a 503, worth retrying
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    _callbacks: list[Callable] = field(default_factory=list)
    _done: bool = False
    _stream: Any = None

    @property
    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        if not self._done and self._stream is not None:
            self._stream.cancel()

    def add_done_callback(self, callback: Callable[[RemoteJob], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    async def follow(self, stream) -> None:
        """Reads the replica's stream to its end; a lost replica fails the job in one line."""
        self._stream = stream
        try:
            async for message in stream:
                self._apply(message)
        except (asyncio.CancelledError, TaskCancelledError):  # cancel() (Ray's RequestCancelledError is one)
            self._end("cancelled", None)
        except Exception as exc:  # noqa: BLE001 - the replica died or its stream broke
            self.lost = True
            self._end("failed", f"the replica serving this request stopped ({self.replica}): {summary(exc)}; retry it")
        if not self._done:
            self._end("failed", "the replica's stream ended without a result")

    def _apply(self, message: dict) -> None:
        kind = message["kind"]
        if kind == "frame":
            self.frames.append(message["frame"])
            self.frame_timesteps.append(message["timestep"])
        elif kind == "progress":
            self.position = message["position"]
            if message["state"] == "running" and self.started is None:
                self.state, self.started = "running", time.perf_counter()
        elif kind == "end":
            if message["state"] == "done":
                self.settings = message["settings"]
                self.result = SampleRun(
                    samples=np.empty(0, np.float32),
                    images=message["images"],
                    frames=self.frames,
                    frame_timesteps=self.frame_timesteps,
                    seconds=message["seconds"],
                )
            self._end(message["state"], message["error"])

    def _end(self, state: str, error: str | None) -> None:
        if self._done:
            return
        self.state, self.error, self._done = state, error, True
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - a notification cannot change the outcome
                pass


class RemoteRunner:
    """The ingress's runner: each request streamed to a sampler replica through a deployment handle."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self._followers: set[asyncio.Task] = set()

    async def submit(self, checked: Checked) -> RemoteJob:
        stream = self.handle.options(stream=True).run.remote(checked)
        try:
            first = await stream.__anext__()
        except Exception as exc:  # noqa: BLE001 - no replica could take it
            raise Unavailable(f"no sampler replica took the request: {summary(exc)}; retry it") from None
        if first["kind"] == "refused":
            if first["status"] == 429:
                raise QueueFull(first["detail"], first["retry_after"])
            raise (Unavailable if first["status"] == 503 else DDPMError)(first["detail"])
        job = RemoteJob(checked.n, checked.plan, checked.seed, first["steps"], first["replica"])
        task = asyncio.ensure_future(job.follow(stream))
        self._followers.add(task)
        task.add_done_callback(self._followers.discard)
        return job

    def record(self, job: RemoteJob) -> dict:
        return job.settings

    running = True  # Ray keeps the replicas up; the ingress answers while it runs
    stopping = False

    def start(self) -> None:
        pass

    def stop(self, grace: float) -> None:
        pass


@serve.ingress()
class Ingress:
    """The HTTP app of ``ddpm-serve`` over the sampler replicas."""

    def __init__(self, sampler, options: ModelOptions, settings: Settings) -> None:
        self.http_app = create_app(options.open(), settings, RemoteRunner(sampler))  # "app" is the wrapper's

    def __serve_build_asgi_app__(self):
        return self.http_app


def application(options: ModelOptions, settings: Settings, replicas: int, replica_cpus: float = 1.0):
    """The Ray Serve application: the ingress bound to ``replicas`` sampler replicas."""
    sampler = serve.deployment(
        SamplerReplica,
        name="SamplerReplica",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": replica_cpus},
        max_ongoing_requests=256,
    )
    ingress = serve.deployment(
        Ingress, name="Ingress", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096
    )
    return ingress.bind(sampler.bind(options, settings), options, settings)


def build(args: dict[str, str]):
    """For ``serve run ddpm.serve.ray_app:build replicas=2 [onnx=PATH threads=1 max_rows=32 queue_rows=128
    allow_hosts=NAME,NAME]``: requests are served when their Host is an IP address, localhost or one of
    ``allow_hosts`` ("*": any)."""
    replicas = int(args.get("replicas", 2))
    threads = int(args["threads"]) if "threads" in args else 1
    options = ModelOptions(onnx=args.get("onnx"), threads=threads, provider=args.get("provider", "auto"))
    settings = Settings(
        max_rows=int(args["max_rows"]) if "max_rows" in args else None,
        queue_rows=int(args["queue_rows"]) if "queue_rows" in args else None,
        allowed_hosts=[name for name in args.get("allow_hosts", "").split(",") if name],
    )
    return application(options, settings, replicas, float(args.get("replica_cpus", 1)))


def serve_on_ray(
    options: ModelOptions,
    settings: Settings,
    replicas: int,
    replica_cpus: float,
    host: str,
    port: int,
    address: str | None,
    echo: Callable[[str], None],
) -> None:
    """Run the application on Ray (a local cluster when ``address`` is None) until SIGTERM or Ctrl-C,
    then shut it down, letting replicas finish what they hold within Ray's graceful shutdown."""
    import ray

    ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(application(options, settings, replicas, replica_cpus), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # Ray's report of a replica that failed to start: its last line says why
            lines = [line for line in str(exc).splitlines() if line.strip()]
            raise DDPMError(f"the Ray Serve application did not start: {lines[-1][:200] if lines else exc}") from None
        echo(
            f"ddpm-serve: running on http://{host}:{port} (Ray Serve: {replicas} sampler replicas"
            f"{'' if address is None else ', cluster ' + address})"
        )
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            stop.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        echo("ddpm-serve: shutting down the Ray Serve application")
        serve.shutdown()
    finally:
        ray.shutdown()
