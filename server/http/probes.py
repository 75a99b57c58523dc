"""Probe answers: instant, from the pool's state, whatever the workers are doing.

* ``GET /``: the reference's probe, ``200 Healthy``, but only once a worker has finished
  ``init()`` and can serve (the reference answers it from a worker, so it cannot answer
  before; it blocks instead). ``503 Unhealthy`` + ``Retry-After`` before that, while no
  worker is ready, and from the moment SIGTERM arrives.
* ``GET /health/live``: liveness only: 503 once the server cannot serve any more.
* ``GET /health/ready``: readiness with the workers' states and a reason when not ready.
* ``GET /v2/health/live`` and ``/v2/health/ready``: the same for KServe V2 clients.

These routes are served on the main port and, with ``separate_health_endpoint``, on the
health port (:func:`health_app`), where nothing else is.

In one front of several (``http_processes`` > 1) they answer for the whole pod: the front's
:class:`~server.http.pod.PodView` stands in for its pool (see :func:`answer_for_pod`).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.http.responses import RawResponse, json_response, text_response
from server.log import AccessLog
from server.settings import Settings
from server.workers.pool import WorkerPool

_RETRY = (b"retry-after", b"1")


class ProbeSource(Protocol):
    """What the probes ask: a pool, or the pod view of a front (:class:`server.http.pod.PodView`)."""

    def ready(self) -> bool: ...

    def live(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


class _PodSource(ProbeSource, Protocol):
    pool: WorkerPool


# NOTE: set once per process, before the app is built, by a front of a multi-front server: the
# app builder (server.http.app) knows nothing of fronts, and one process serves one pool.
_pod: _PodSource | None = None


def answer_for_pod(view: _PodSource | None) -> None:
    """Make the probes of ``view.pool``'s app answer from ``view`` (every front's state)."""
    global _pod
    _pod = view


class Probes:
    def __init__(self, settings: Settings, pool: WorkerPool, access: AccessLog | None = None) -> None:
        self.pool: ProbeSource = _pod if _pod is not None and _pod.pool is pool else pool
        self.log = settings.access_log and settings.access_log_probes
        self.access = access if access is not None or not self.log else AccessLog(settings.log_format)

    def routes(self) -> list[Route]:
        return [
            Route("/", self.root, methods=["GET"]),
            Route("/health/live", self.live, methods=["GET"]),
            Route("/health/ready", self.ready, methods=["GET"]),
            Route("/v2/health/live", self.v2_live, methods=["GET"]),
            Route("/v2/health/ready", self.v2_ready, methods=["GET"]),
        ]

    def _answer(self, request: Request, started: float, response: RawResponse) -> RawResponse:
        if self.log and self.access is not None:
            scope = request.scope
            ms = (time.perf_counter() - started) * 1000.0
            self.access.write(scope["method"], scope["path"], response.status_code, ms, len(response.body), "-")
        return response

    async def root(self, request: Request) -> Response:
        """``GET /``: ``Healthy`` once a worker finished ``init()``; 503 before and while draining."""
        started = time.perf_counter()
        if self.pool.ready():
            return self._answer(request, started, text_response(200, "Healthy"))
        response = text_response(503, "Unhealthy")
        response.raw_headers.append(_RETRY)
        return self._answer(request, started, response)

    async def live(self, request: Request) -> Response:
        started = time.perf_counter()
        status = self.pool.status()
        code = 200 if status["live"] else 503
        body: dict[str, Any] = {"status": "live" if code == 200 else "failed"}
        if code != 200:
            body["message"] = status.get("message") or "No worker can serve requests."
            body["workers"] = status["detail"]
        return self._answer(request, started, json_response(code, body))

    async def ready(self, request: Request) -> Response:
        started = time.perf_counter()
        status = self.pool.status()
        code = 200 if status["ready"] else 503
        return self._answer(request, started, json_response(code, status, [] if code == 200 else [_RETRY]))

    async def v2_live(self, request: Request) -> Response:
        started = time.perf_counter()
        live = self.pool.live()
        return self._answer(request, started, json_response(200 if live else 503, {"live": live}))

    async def v2_ready(self, request: Request) -> Response:
        started = time.perf_counter()
        ready = self.pool.ready()
        return self._answer(request, started, json_response(200 if ready else 503, {"ready": ready}))
