"""The Starlette application: the route list and the middleware list, in one place.

Request path: uvicorn -> (CORS, when configured) -> router -> a handler in
:mod:`server.http.handlers` -> :class:`server.pool.WorkerPool` (admission, worker slot,
deadline) -> a worker process -> reply rendered by :mod:`server.http.responses`.
Probes are answered by :mod:`server.http.probes` from the pool's state. With a separate
health port, requests that arrived on it go to a second app that has the probes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.collect.writer import PayloadCollector
from server.errors import InternalError, MethodNotAllowed, NotFound, ScoreHostError
from server.http.auth import Authenticator
from server.http.handlers import Handlers
from server.http.observe import Observability
from server.http.pod import FrontRole
from server.http.probes import Probes
from server.http.responses import render_error, send_server_version
from server.metrics import V2_INFER_ROUTE, route_of
from server.settings import Settings
from server.tracing import Telemetry
from server.workers.pool import WorkerPool

logger = logging.getLogger("scorehost.http")

ALL = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
# The longest shutdown waits for model data collection to write and finish its files.
COLLECT_CLOSE_S = 10.0


class ScoreHostApp:
    """The outermost ASGI app. The two inference routes, ``/score`` and V2's
    ``/v2/models/{model}[/versions/{version}]/infer``, go straight to their handlers,
    skipping the router and middleware layers (the hot paths: for ``/score`` about a fifth
    of a request's cost on one core); everything else, and both when CORS is on, goes
    through Starlette. A request gets the same handler, metrics and span either way."""

    def __init__(
        self, app: ASGIApp, handlers: Handlers, fast_paths: bool, observe: Observability | None = None
    ) -> None:
        self.app = app
        self.handlers = handlers
        self.fast_paths = fast_paths
        self.recorder = observe.recorder if observe is not None else None
        self.tracing = observe.tracing if observe is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_paths and scope["type"] == "http":
            path = scope["path"]
            if path == "/score":
                await self._fast(scope, receive, send, v2=False)
                return
            # Starlette would route these to the same handler through "/v2/{rest:path}"; the
            # metric label's rule says which paths are inference, so the two cannot disagree.
            if route_of(path) == V2_INFER_ROUTE:
                await self._fast(scope, receive, send, v2=True)
                return
        await self.app(scope, receive, send)

    async def _fast(self, scope: Scope, receive: Receive, send: Send, *, v2: bool) -> None:
        recorder, tracing = self.recorder, self.tracing
        if recorder is None and tracing is None:
            response = await self._answer(scope, receive, v2)
            await response(scope, receive, send)
            return
        # /metrics and tracing (server.http.observe): the fast path records inline.
        started = time.perf_counter()
        route = V2_INFER_ROUTE if v2 else "/score"
        span = tracing.start(scope, route) if tracing is not None else None
        status = 500
        try:
            response = await self._answer(scope, receive, v2)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            if recorder is not None:
                if v2:
                    recorder.request(route, scope["method"], status, time.perf_counter() - started)
                else:
                    recorder.score(scope["method"], status, time.perf_counter() - started)
            if tracing is not None and span is not None:
                tracing.end(span[0], span[1], status)

    async def _answer(self, scope: Scope, receive: Receive, v2: bool) -> Response:
        request = Request(scope, receive)
        try:
            return await (self.handlers.v2(request) if v2 else self.handlers.score(request))
        except Exception:  # a bug of ours: still answer, and say so in the log
            logger.exception("Unhandled error in %s", scope["path"] if v2 else "/score")
            return render_error(InternalError("An unexpected internal error occurred."), v2=v2)


class HealthPortDispatch:
    """Sends HTTP requests that arrived on the health port to the probes-only app and
    everything else (other ports, the lifespan) to the main app. Used only when a
    separate health port is configured, so the main port pays nothing for it."""

    def __init__(self, main: ASGIApp, health: ASGIApp, health_port: int) -> None:
        self.main = main
        self.health = health
        self.health_port = health_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            if server is not None and server[1] == self.health_port:
                await self.health(scope, receive, send)
                return
        await self.main(scope, receive, send)


def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: ScoreHostError
    if exc.status_code == 405:
        error = MethodNotAllowed("The method is not allowed for the requested URL.")
        error.headers.update(exc.headers or {})  # Starlette's Allow
    elif exc.status_code == 404:
        error = NotFound(
            "The requested URL was not found on the server. If you entered the URL manually "
            "please check your spelling and try again."
        )
    else:
        error = ScoreHostError(str(exc.detail))
        error.status_code = exc.status_code
    return render_error(error)


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    return _http_error(request, exc)


def health_app(probes: Probes, extra: list[Route] | None = None) -> Starlette:
    """The app of the health port: the probes (and ``/metrics`` if it moved here), nothing else (404)."""
    routes = [*probes.routes(), *(extra or [])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error_handler})

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        response = _http_error(Request(scope, receive), HTTPException(404))
        await response(scope, receive, send)

    app.router.default = not_found
    return app


def create_app(
    settings: Settings,
    pool: WorkerPool,
    *,
    manage_pool: bool = True,
    health_port: int | None = None,
    auth: Authenticator | None = None,
    connections: Any = None,
    telemetry: Telemetry | None = None,
    front: FrontRole | None = None,
) -> ASGIApp:
    """Build the app. With ``manage_pool`` the lifespan starts and stops the pool. With
    ``health_port`` (the bound port of the separate health listener), requests arriving on
    that port get the probes only. ``auth``: the server's authenticator (default: built from
    the settings; see server.http.auth). ``connections``: the connection layer's guard, whose
    counters ``/metrics`` reports; ``telemetry``: tracing set up by the caller (default: as the
    settings say; see server.http.observe); ``front``: this process is one HTTP front of several
    (``/metrics`` then answers for all of them)."""
    send_server_version(settings.server_version_header)
    h = Handlers(settings, pool, auth)
    probes = Probes(settings, pool, h.access)
    observe = Observability(settings, pool, connections, telemetry, front)
    if observe.recorder is not None:
        h.on_error = observe.error
    # Model data collection (server.collect): payloads recorded by /score, COLLECT frames from workers.
    collector = PayloadCollector.from_settings(settings, os.getcwd())
    if collector is not None:
        h.collect = collector
        pool.on_collect = collector.frame
    on_health = settings.metrics_endpoint == "health" and health_port is not None
    routes = [
        # /score first: it is the hot path and the router tries routes in order.
        Route("/score", h.score, methods=ALL),
        *probes.routes(),
        Route("/swagger.json", h.swagger, methods=["GET"]),
        Route("/v2", h.v2, methods=ALL),
        Route("/v2/{rest:path}", h.v2, methods=ALL),
        *([] if on_health else observe.routes()),
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if collector is not None:
            collector.start()
        await observe.start()
        if manage_pool:
            await pool.start()
        try:
            yield
        finally:
            await observe.stop()
            if manage_pool:
                await pool.stop(settings.graceful_timeout_s)
                observe.close()
            if collector is not None:  # after the workers: their last records are queued by now
                await asyncio.sleep(0.01)
                close_s = min(settings.graceful_timeout_s, COLLECT_CLOSE_S)
                await asyncio.get_running_loop().run_in_executor(None, collector.close, close_s)

    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: _http_error_handler}
    )

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        response = await h.not_found(Request(scope, receive))
        await response(scope, receive, send)

    app.router.default = not_found
    main = ScoreHostApp(observe.wrap(app), h, fast_paths=not settings.cors_origins, observe=observe)
    if health_port is None:
        return main
    health = health_app(probes, observe.routes() if on_health else None)
    return HealthPortDispatch(main, observe.wrap(health), health_port)
