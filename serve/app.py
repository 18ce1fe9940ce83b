"""The HTTP API over one model and one continuous-batching engine (``ddpm-serve`` runs it).

    app = create_app(DDPM.load(), Settings(queue_rows=128))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: ``/healthz``, ``POST /v1/samples`` (the grid, once sampled), ``/v1/jobs`` (submit, poll,
stream events, fetch the result, cancel), ``/metrics``, ``/docs`` and the page at ``/``. Every error
is JSON ``{"detail": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..core.errors import DDPMError, SettingError, summary
from ..runtime.pipeline import DDPM
from . import events
from .jobs import MEDIA_TYPES, Jobs, LocalRunner, QueueFull, Runner, ServedJob, Unavailable
from .limits import BODY_LIMIT, BearerAuth, BodyLimit, HostCheck
from .metrics import Counted, Metrics
from .schema import MAX_SAMPLES, Health, JobView, Problem, SampleBody, check, reason

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
    # Host names served besides IP addresses and localhost ("*": any); None: no Host check.
    allowed_hosts: list[str] | None = None


def local_runner(ddpm: DDPM, settings: Settings) -> LocalRunner:
    """An engine in this process for ``settings``: its rows per call, requests of up to 64 guided
    samples, and the queue limit."""
    engine = ddpm.serving_engine(settings.max_rows, max_request_rows=2 * MAX_SAMPLES)
    return LocalRunner(ddpm, engine, settings.queue_rows or max(4 * engine.max_rows, 2 * MAX_SAMPLES))


def create_app(ddpm: DDPM, settings: Settings | None = None, runner: Runner | None = None) -> FastAPI:
    """The app over ``runner`` (default: an engine of its own, :func:`local_runner`), started and
    stopped with the app's lifespan. ``ddpm`` checks the requests; the runner samples them."""
    settings = settings or Settings()
    runner = runner or local_runner(ddpm, settings)
    jobs = Jobs(runner, keep=settings.keep_jobs)
    queued = lambda: sum(1 for served in jobs.live() if served.job.state == "queued")  # noqa: E731
    metrics = Metrics(getattr(runner, "engine", None), queued)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.start()
        yield
        app.state.draining = True
        await asyncio.to_thread(runner.stop, settings.grace)

    app = FastAPI(
        title="ddpm-serve",
        version="0.1.0",
        lifespan=lifespan,
        description="MNIST digits from a DDPM, sampled by a continuous-batching engine: many requests share "
        "each network call.",
    )
    app.state.ddpm, app.state.runner, app.state.jobs, app.state.metrics = ddpm, runner, jobs, metrics
    app.state.engine = getattr(runner, "engine", None)
    app.state.draining, app.state.settings = False, settings
    _errors(app)
    # Outermost last: counted, the Host, then CORS (its preflights carry no token), the token, the body limit.
    app.add_middleware(BodyLimit, limit=settings.body_limit)
    app.add_middleware(BearerAuth, token=settings.token)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-DDPM-Seed", "X-DDPM-Replica"],
        )
    if settings.allowed_hosts is not None:
        app.add_middleware(HostCheck, allowed=settings.allowed_hosts)
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
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names the first route on the path; a path has several
            headers = {**(headers or {}), "Allow": _allowed(request)}
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse({"detail": f"internal error: {summary(exc)}"}, status_code=500)


def _allowed(request: Request) -> str:
    """The methods of every route on ``request``'s path (FastAPI includes a router as one route, so
    the routers' own routes are looked at too)."""
    methods: set[str] = set()
    for route in (*request.app.router.routes, *public.routes, *api.routes):
        if getattr(route, "methods", None) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


class _JSONBody(Request):
    """A request whose body is read as JSON one way: whatever ``json.loads`` cannot read (bad syntax,
    bytes that are not UTF-8, nesting deeper than the parser goes, an integer of more digits than
    Python converts) is a :class:`json.JSONDecodeError`, which FastAPI hands ``_errors`` as invalid
    JSON (422). Other parse errors would reach FastAPI as its own 400 with another wording."""

    async def json(self):
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body.decode("utf-8"))  # JSON between systems is UTF-8 (RFC 8259)
            except json.JSONDecodeError:  # a ValueError too: FastAPI's own case, as it is
                raise
            except UnicodeDecodeError as exc:
                raise json.JSONDecodeError("not UTF-8", body.decode("utf-8", "replace"), exc.start) from None
            except RecursionError:
                raise json.JSONDecodeError("nested too deeply", "", 0) from None
            except ValueError:  # an integer over sys.get_int_max_str_digits()
                raise json.JSONDecodeError("a number has too many digits", "", 0) from None
        return self._json


class _JSONRoute(APIRoute):
    """A route that reads its body through :class:`_JSONBody`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def read_json_once(request: Request) -> Response:
            return await handler(_JSONBody(request.scope, request.receive))

        return read_json_once


def _problems(*statuses: int, **descriptions: str) -> dict:
    """The documented error responses of a route, each a :class:`~.schema.Problem`; ``descriptions``
    (``s409="..."``) say what a status means on that route where the general line is not enough."""
    return {
        status: {
            "model": Problem,
            "description": descriptions.get(f"s{status}", PROBLEMS[status]),
            **({"headers": HEADERS[status]} if status in HEADERS else {}),
        }
        for status in statuses
    }


PROBLEMS = {
    401: "This server has a token and the request did not carry it: Authorization: Bearer <token>.",
    404: "No such job: never submitted, or finished long enough ago to be forgotten.",
    408: "The body did not arrive in time.",
    409: "The job has not finished, was cancelled, or kept no frames for a GIF.",
    413: "The body is over the size limit.",
    422: "A value is invalid: the body is not JSON (bad syntax, not UTF-8, nested too deeply, a number of too many "
    "digits), a field is of the wrong type or out of range, or the model or sampler cannot take a setting.",
    429: "The queue is full; retry after Retry-After seconds.",
    500: "The job failed, or the server met an unexpected error.",
    503: "The server is shutting down or its engine is not running; retry after Retry-After seconds.",
}
HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer"},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "required": True,
            "schema": {"type": "integer"},
        }
    },
}
EVENT = {
    "type": "object",
    "required": ["event", "data"],  # one event of the stream, as FastAPI declares SSE
    "properties": {
        "event": {"type": "string", "enum": ["progress", "frame", "end"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
SUBMIT_PROBLEMS = (401, 408, 413, 422, 429, 500, 503)  # a body checked and queued: _checked_submit, the body limit
# 422: FastAPI declares it on every route with a parameter, in its own model unless the route names one;
# the job routes never send it (a job id is any string), and the document says what it would look like.
JOB_PROBLEMS = (401, 404, 422, 500)


public = APIRouter()  # open without a token: health, and the page (it holds no data)


@public.get(
    "/healthz",
    response_model=Health,
    summary="200 once the model is loaded and the engine runs",
    responses={**_problems(500), 503: {"model": Problem, "description": "Draining, or the engine is not running."}},
)
async def healthz(request: Request):
    state = request.app.state
    if state.draining or not state.runner.running:
        raise HTTPException(
            503, "draining: the server is shutting down" if state.draining else "the engine is not running"
        )
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
        if state.runner.stopping:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        raise HTTPException(422, str(exc)) from None


def _observe(request: Request, served: ServedJob, kind: str) -> None:
    job = served.job
    metrics = request.app.state.metrics
    metrics.latency.labels(kind, job.state).observe(time.perf_counter() - job.submitted)
    if job.started is not None:
        metrics.wait.observe(job.started - job.submitted)


async def _result(request: Request, served: ServedJob, kind: str) -> Response:
    job = served.job
    if not job.done:
        raise HTTPException(409, f"the job is {job.state} ({job.position} of {job.steps} steps)")
    if job.state != "done":
        if getattr(job, "lost", False):  # its replica died: another will take it
            raise HTTPException(503, job.error, headers={"Retry-After": "1"})
        if job.state == "cancelled" and request.app.state.draining:
            raise HTTPException(503, "the server shut down before the request finished", headers={"Retry-After": "5"})
        raise HTTPException(409 if job.state == "cancelled" else 500, job.error or f"the job was {job.state}")
    try:
        data = await request.app.state.jobs.result(served, kind)
    except DDPMError as exc:
        raise HTTPException(409, str(exc)) from None
    headers = {"X-DDPM-Seed": str(job.seed), "Content-Disposition": f'inline; filename="ddpm-{job.seed}.{kind}"'}
    if getattr(job, "replica", None):  # on Ray: which sampler replica ran it
        headers["X-DDPM-Replica"] = job.replica
    return Response(data, media_type=MEDIA_TYPES[kind], headers=headers)


api = APIRouter(route_class=_JSONRoute)  # everything behind the token, when there is one
RESULTS = {
    200: {
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in dict.fromkeys(MEDIA_TYPES.values())
        },
        "description": "The grid (PNG), the npz, or the GIF.",
        "headers": {
            "X-DDPM-Seed": {
                "description": "The seed the samples were drawn from.",
                "required": True,
                "schema": {"type": "integer"},
            }
        },
    }
}


@api.post(
    "/v1/samples",
    response_class=Response,
    responses={**RESULTS, **_problems(*SUBMIT_PROBLEMS, 409, s409="The request was cancelled before it finished.")},
    summary="Sample and return the grid (PNG) or ddpm-run's npz; a client that leaves cancels it",
)
async def samples(body: SampleBody, request: Request):
    served = await _checked_submit(request, body)
    waiting = asyncio.ensure_future(served.ended())
    while not waiting.done():
        await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
        if not waiting.done() and await request.is_disconnected():
            served.job.cancel()
            await waiting
    _observe(request, served, "sample")
    return await _result(request, served, served.checked.format)


@api.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobView,
    responses=_problems(*SUBMIT_PROBLEMS),
    summary="Submit a job; poll it or stream its events",
)
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


@api.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses=_problems(*JOB_PROBLEMS),
    summary="A job's state and progress",
)
async def status(served: Served):
    return served.view()


@api.get(
    "/v1/jobs/{job_id}/events",
    response_class=Response,
    responses={
        200: {
            "content": {"text/event-stream": {"itemSchema": EVENT}},
            "description": "Events `progress`, `frame` and `end` (last), each with one JSON object as its data.",
        },
        **_problems(*JOB_PROBLEMS),
    },
    summary="Server-sent events: progress, frames (PNG, base64) and the end",
)
async def stream(served: Served, request: Request):
    return events.response(request, served)


@api.get(
    "/v1/jobs/{job_id}/result",
    response_class=Response,
    responses={
        **RESULTS,
        **_problems(
            *JOB_PROBLEMS,
            409,
            503,
            s422="format is not one of the formats.",
            s503="The replica that ran the job was lost; retry after Retry-After seconds.",
        ),
    },
    summary="A finished job's grid (png), npz, or denoising GIF (gif, when it kept frames)",
)
async def result(served: Served, request: Request, format: Literal[tuple(MEDIA_TYPES)] | None = None):
    return await _result(request, served, format or served.checked.format)


@api.delete(
    "/v1/jobs/{job_id}",
    status_code=202,
    response_model=JobView,
    responses=_problems(*JOB_PROBLEMS),
    summary="Cancel a job",
)
async def cancel(served: Served):
    served.job.cancel()
    return served.view()


@api.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."},
        **_problems(401, 500),
    },
)
async def metrics(request: Request):
    return Response(request.app.state.metrics.text(), media_type="text/plain; version=0.0.4")
