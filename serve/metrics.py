"""``/metrics``: Prometheus text, the server's counters beside the engine's, read at each scrape."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..runtime.engine import SamplingEngine

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)
RATE_WINDOW = 10.0  # seconds over which steps/s is measured

disable_created_metrics()  # no *_created series: they double the page and say nothing a scrape needs


class EngineCollector:
    """The engine's state and counters as metric families, read when scraped."""

    def __init__(self, engine: SamplingEngine, queued: callable) -> None:
        self.engine, self.queued = engine, queued
        self._samples: deque[tuple[float, int]] = deque()

    def steps_per_second(self) -> float:
        """Request steps per second over the last :data:`RATE_WINDOW` seconds of scrapes (0 at the first)."""
        now, steps = time.monotonic(), self.engine.stats.steps
        self._samples.append((now, steps))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
            self._samples.popleft()
        then, before = self._samples[0]
        return (steps - before) / (now - then) if now > then else 0.0

    def collect(self):
        stats = self.engine.stats
        yield GaugeMetricFamily("ddpm_queue_depth", "Requests waiting for their first step.", value=self.queued())
        yield GaugeMetricFamily(
            "ddpm_requests_in_flight", "Requests admitted and not yet ended.", value=self.engine.queued
        )
        yield GaugeMetricFamily(
            "ddpm_active_rows", "Rows of the requests in flight (a guided sample is 2).", value=self.engine.active_rows
        )
        yield GaugeMetricFamily(
            "ddpm_rows_per_call", "Mean rows per network call since start.", value=stats.rows_per_call
        )
        yield GaugeMetricFamily("ddpm_max_rows_per_call", "Rows one network call takes.", value=self.engine.max_rows)
        yield GaugeMetricFamily(
            "ddpm_steps_per_second",
            f"Request steps per second over the last {RATE_WINDOW:g} s.",
            value=self.steps_per_second(),
        )
        yield GaugeMetricFamily("ddpm_tick_seconds", "Wall time of a tick, smoothed.", value=stats.tick_seconds)
        yield CounterMetricFamily("ddpm_network_calls", "Network calls made.", value=stats.calls)
        yield CounterMetricFamily("ddpm_network_rows", "Rows evaluated by network calls.", value=stats.rows)
        yield CounterMetricFamily("ddpm_steps", "Request steps advanced.", value=stats.steps)
        ended = CounterMetricFamily(
            "ddpm_engine_requests", "Requests the engine ended, by outcome.", labels=["outcome"]
        )
        for outcome, count in stats.outcomes.items():
            ended.add_metric([outcome], count)
        yield ended


class Metrics:
    """The server's registry: HTTP outcomes and latencies, plus the engine collector where the engine is local."""

    def __init__(self, engine: SamplingEngine | None, queued: callable) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ddpm_http_requests", "HTTP requests by route and status code.", ["route", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "ddpm_request_seconds",
            "Seconds from submission to the end of a sampling request.",
            ["kind", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.wait = Histogram(
            "ddpm_queue_wait_seconds",
            "Seconds a request waited for its first step.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        if engine is not None:  # a server whose engines run elsewhere (Ray replicas) reports its HTTP side only
            self.registry.register(EngineCollector(engine, queued))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class Counted:
    """ASGI middleware: each HTTP response counted by route template and status code."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "other")  # the router fills in the scope it was given
            self.metrics.requests.labels(route, str(status.get("code", 500))).inc()
