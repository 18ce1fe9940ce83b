"""The HTTP API over one model and one continuous-batching engine (``ddpm-serve`` runs it).

    app = create_app(DDPM.load(), Settings(queue_rows=128))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``/healthz``, ``POST /v1/samples`` (the grid, once sampled), ``/v1/jobs`` (submit, poll,
stream events, fetch the result, cancel), ``/metrics``, ``/docs`` and the page at ``/``. Every error
is JSON ``{"detail": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import DDPMError, SettingError, summary
from ..runtime.pipeline import DDPM
from . import events
from .jobs import MEDIA_TYPES, Backend, Jobs, LocalBackend, QueueFull, ServedJob, Unavailable
from .limits import BODY_LIMIT, BearerAuth, BodyLimit
from .metrics import Counted, Metrics
from .schema import MAX_SAMPLES, Health, JobView, SampleBody, check, reason

DISCONNECT_POLL = 0.25  # seconds between checks that a waiting /v1/samples client is still there


@dataclass
class Settings:
    """How the server admits work. ``queue_rows``: rows in flight or waiting before a request is
    refused with 429 (None: four calls' worth, at least one largest request). ``token``: bearer
    token for everything but ``/healthz``, the page and the API docs. ``grace``: seconds in-flight
    requests get to finish at shutdown."""

    queue_rows: int | None = None
    token: str | None = None
    grace: float = 30.0
    body_limit: int = BODY_LIMIT
    keep_jobs: int = 128
    cors_origins: list[str] = field(default_factory=list)
    max_rows: int | None = None  # rows per network call (None: the DDPM's serving default)


def local_backend(ddpm: DDPM, settings: Settings) -> LocalBackend:
    """An engine in this process for ``settings``: its rows per call, requests of up to 64 guided
    samples, and the queue limit."""
    engine = ddpm.serving_engine(settings.max_rows, max_request_rows=2 * MAX_SAMPLES)
    return LocalBackend(ddpm, engine, settings.queue_rows or max(4 * engine.max_rows, 2 * MAX_SAMPLES))


def create_app(ddpm: DDPM, settings: Settings | None = None, backend: Backend | None = None) -> FastAPI:
    """The app over ``backend`` (default: an engine of its own, :func:`local_backend`), started and
    stopped with the app's lifespan. ``ddpm`` checks the requests; the backend samples them."""
    settings = settings or Settings()
    backend = backend or local_backend(ddpm, settings)
    jobs = Jobs(backend, keep=settings.keep_jobs)
    queued = lambda: sum(1 for served in jobs.live() if served.job.state == "queued")  # noqa: E731
    metrics = Metrics(getattr(backend, "engine", None), queued)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        backend.start()
        yield
        app.state.draining = True
        await asyncio.to_thread(backend.stop, settings.grace)

    app = FastAPI(title="ddpm-serve", version="0.1.0", lifespan=lifespan,
                  description="MNIST digits from a DDPM, sampled by a continuous-batching engine: many requests share "
                              "each network call.")
    app.state.ddpm, app.state.backend, app.state.jobs, app.state.metrics = ddpm, backend, jobs, metrics
    app.state.engine = getattr(backend, "engine", None)
    app.state.draining, app.state.settings = False, settings
    _errors(app)
    # Outermost last: counted, then CORS (its preflights carry no token), the token, the body limit.
    app.add_middleware(BodyLimit, limit=settings.body_limit)
    app.add_middleware(BearerAuth, token=settings.token)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-DDPM-Seed", "X-DDPM-Replica"])
    app.add_middleware(Counted, metrics=metrics)
    app.include_router(public)
    app.include_router(api)
    return app


def _errors(app: FastAPI) -> None:
    """Every error as one line of JSON."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            problem = f"not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})"
            return JSONResponse({"detail": f"body: {problem}"}, status_code=422)
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse({"detail": f"internal error: {summary(exc)}"}, status_code=500)



public = APIRouter()  # open without a token: health, and the page (it holds no data)


@public.get("/healthz", response_model=Health, summary="200 once the model is loaded and the engine runs")
async def healthz(request: Request):
    state = request.app.state
    if state.draining or not state.backend.running:
        raise HTTPException(503, "draining: the server is shutting down" if state.draining else "the engine is not running")
    rows = state.engine.max_rows if state.engine is not None else None
    return Health(status="ok", model=state.ddpm.session.path.name, provider=state.ddpm.provider, rows_per_call=rows)


@public.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page():
    return HTMLResponse((resources.files("ddpm.serve") / "page" / "index.html").read_text(encoding="utf-8"))


async def _checked_submit(request: Request, body: SampleBody) -> ServedJob:
    """The body checked against the model and queued, or the HTTP error that says why not."""
    state = request.app.state
    if state.draining:
        raise HTTPException(503, "the server is shutting down and takes no new requests", headers={"Retry-After": "5"})
    try:
        return await state.jobs.submit(check(state.ddpm, body))
    except SettingError as exc:
        raise HTTPException(422, reason(exc)) from None
    except QueueFull as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    except Unavailable as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
    except DDPMError as exc:  # too large for the engine or the memory, or the engine stopping
        if state.backend.stopping:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        raise HTTPException(422, str(exc)) from None


def _observe(request: Request, served: ServedJob, kind: str) -> None:
    job = served.job
    metrics = request.app.state.metrics
    metrics.latency.labels(kind, job.state).observe(time.perf_counter() - job.submitted)
    if job.started is not None:
        metrics.wait.observe(job.started - job.submitted)


def _result(request: Request, served: ServedJob, kind: str) -> Response:
    job = served.job
    if not job.done:
        raise HTTPException(409, f"the job is {job.state} ({job.position} of {job.steps} steps)")
    if job.state != "done":
        if getattr(job, "lost", False):  # its replica died: another will take it
            raise HTTPException(503, job.error, headers={"Retry-After": "1"})
        raise HTTPException(409 if job.state == "cancelled" else 500, job.error or f"the job was {job.state}")
    try:
        data = request.app.state.jobs.render(served, kind)
    except DDPMError as exc:
        raise HTTPException(409, str(exc)) from None
    headers = {"X-DDPM-Seed": str(job.seed), "Content-Disposition": f'inline; filename="ddpm-{job.seed}.{kind}"'}
    if getattr(job, "replica", None):  # on Ray: which sampler replica ran it
        headers["X-DDPM-Replica"] = job.replica
    return Response(data, media_type=MEDIA_TYPES[kind], headers=headers)


api = APIRouter()  # everything behind the token, when there is one
RESULTS = {200: {"content": {"image/png": {}, "application/octet-stream": {}, "image/gif": {}},
                 "description": "The grid (PNG), the npz, or the GIF."}}


@api.post("/v1/samples", response_class=Response, responses=RESULTS,
          summary="Sample and return the grid (PNG) or ddpm-run's npz; a client that leaves cancels it")
async def samples(body: SampleBody, request: Request):
    served = await _checked_submit(request, body)
    waiting = asyncio.ensure_future(served.ended())
    while not waiting.done():
        await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
        if not waiting.done() and await request.is_disconnected():
            served.job.cancel()
            await waiting
    _observe(request, served, "sample")
    return await asyncio.to_thread(_result, request, served, served.checked.format)


@api.post("/v1/jobs", status_code=202, response_model=JobView, summary="Submit a job; poll it or stream its events")
async def submit(body: SampleBody, request: Request):
    served = await _checked_submit(request, body)
    served.job.add_done_callback(lambda job: _observe(request, served, "job"))
    return served.view()


def served_job(job_id: str, request: Request) -> ServedJob:
    """The job a path names (a dependency of the job routes), or 404."""
    served = request.app.state.jobs.get(job_id)
    if served is None:
        raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)")
    return served


Served = Annotated[ServedJob, Depends(served_job)]


@api.get("/v1/jobs/{job_id}", response_model=JobView, summary="A job's state and progress")
async def status(served: Served):
    return served.view()


@api.get("/v1/jobs/{job_id}/events", summary="Server-sent events: progress, frames (PNG, base64) and the end")
async def stream(served: Served, request: Request):
    return events.response(request, served)


@api.get("/v1/jobs/{job_id}/result", response_class=Response, responses=RESULTS,
         summary="A finished job's grid (png), npz, or denoising GIF (gif, when it kept frames)")
async def result(served: Served, request: Request, format: str | None = None):
    kind = format or served.checked.format
    if kind not in MEDIA_TYPES:
        raise HTTPException(422, f"format: must be one of {', '.join(MEDIA_TYPES)}, got {kind!r}")
    return await asyncio.to_thread(_result, request, served, kind)


@api.delete("/v1/jobs/{job_id}", status_code=202, response_model=JobView, summary="Cancel a job")
async def cancel(served: Served):
    served.job.cancel()
    return served.view()


@api.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request):
    return Response(request.app.state.metrics.text(), media_type="text/plain; version=0.0.4")
