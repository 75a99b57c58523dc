"""The HTTP side of observability: ``GET /metrics``, per-request recording, request spans.

:class:`Observability` is built once by :func:`server.http.app.create_app` from the
settings: a :class:`server.metrics.Metrics` when ``metrics`` is on, an
:class:`server.tracing.HttpTracing` when tracing (or Application Insights) is on, neither
when both are off, and then nothing here runs per request.

``/score`` (the fast path in :class:`server.http.app.ScoreHostApp`) is recorded inline;
every other route goes through :class:`Observed`, which reads the status from the
response's start message. ``/metrics`` itself is counted like any route but never
access-logged unless ``access_log_probes`` is on. In one HTTP front of several
(``http_processes``) it answers for every front (:mod:`server.metrics_pod`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import tracing
from server.errors import ScoreHostError
from server.http.pod import FrontRole
from server.http.responses import RawResponse
from server.log import AccessLog
from server.metrics import Metrics, Recorder, route_of
from server.metrics_pod import PodMetrics
from server.settings import Settings
from server.workers.pool import WorkerPool

# Routes that get no span: probes, /metrics, swagger and 404s would only be noise.
_UNTRACED = frozenset(
    ("/", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/metrics", "/swagger.json", "other")
)


class Observability:
    def __init__(
        self,
        settings: Settings,
        pool: WorkerPool,
        connections: Any = None,
        telemetry: tracing.Telemetry | None = None,
        front: FrontRole | None = None,
    ) -> None:
        self.pool = pool
        self.metrics = Metrics(settings, pool, connections) if settings.metrics else None
        self.recorder: Recorder | None = self.metrics.recorder if self.metrics is not None else None
        self.pod: PodMetrics | None = None
        if self.metrics is not None and front is not None and front.metrics_dir is not None:
            self.pod = PodMetrics(front.index, front.count, front.metrics_dir, self._own_exposition)
        if telemetry is None:
            telemetry = tracing.setup(settings, os.environ, role="http")
        self.telemetry = telemetry
        self.tracing = tracing.HttpTracing(telemetry) if telemetry is not None else None
        if self.tracing is not None:
            pool.tracer = self.tracing
            extra = tracing.worker_environment(settings, os.environ)
            if extra:
                base = pool.worker_env if pool.worker_env is not None else os.environ
                pool.worker_env = {**base, **extra}
        self._log = AccessLog(settings.log_format) if settings.access_log and settings.access_log_probes else None

    @property
    def active(self) -> bool:
        return self.recorder is not None or self.tracing is not None

    def error(self, exc: ScoreHostError) -> None:
        """An error answered by a handler (for the 503-by-reason and 504 counters)."""
        if self.recorder is not None:
            self.recorder.error(exc, self.pool.draining)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return Observed(app, self) if self.active else app

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.serve_metrics, methods=["GET"])] if self.metrics is not None else []

    async def start(self) -> None:
        if self.pod is not None:
            await self.pod.start()

    async def stop(self) -> None:
        if self.pod is not None:
            await self.pod.close()

    async def _own_exposition(self) -> bytes:
        assert self.metrics is not None
        return (await self.metrics.render())[0]

    async def serve_metrics(self, request: Request) -> Response:
        assert self.metrics is not None
        started = time.perf_counter()
        accept = request.headers.get("accept")
        render = self.pod.render if self.pod is not None else self.metrics.render
        body, content_type = await render(accept)
        response = RawResponse(200, body, [(b"content-type", content_type.encode())])
        if self._log is not None:
            ms = (time.perf_counter() - started) * 1000.0
            self._log.write("GET", "/metrics", 200, ms, len(body), "-")
        return response

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.shutdown()
        if self.metrics is not None:
            self.metrics.close()


class Observed:
    """Counts (and, with tracing, spans) every request that is not the ``/score`` fast path."""

    def __init__(self, app: ASGIApp, observe: Observability) -> None:
        self.app = app
        self.recorder = observe.recorder
        self.tracing = observe.tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = route_of(scope["path"])
        status = 500  # when the app fails before it answers

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        tracer = self.tracing if route not in _UNTRACED else None
        span = tracer.start(scope, route) if tracer is not None else None
        try:
            await self.app(scope, receive, sent)
        finally:
            if self.recorder is not None:
                self.recorder.request(route, scope["method"], status, time.perf_counter() - started)
            if tracer is not None and span is not None:
                tracer.end(span[0], span[1], status)
