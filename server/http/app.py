"""The Starlette application: the route list and the middleware list, in one place.

Request path: uvicorn -> (CORS, when configured) -> router -> a handler in
:mod:`server.http.handlers` -> :class:`server.pool.WorkerPool` (admission, worker slot,
deadline) -> a worker process -> reply rendered by :mod:`server.http.responses`.
Probes are answered by :mod:`server.http.probes` from the pool's state. With a separate
health port, requests that arrived on it go to a second app that has the probes only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import InternalError, MethodNotAllowed, NotFound, ScoreHostError
from server.http.handlers import Handlers
from server.http.probes import Probes
from server.http.responses import render_error, send_server_version
from server.settings import Settings
from server.workers.pool import WorkerPool

logger = logging.getLogger("scorehost.http")

ALL = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


class ScoreHostApp:
    """The outermost ASGI app. ``/score`` goes straight to its handler, skipping the
    router and middleware layers (the hot path: about a fifth of a request's cost
    on one core); everything else, and ``/score`` too when CORS is on, goes through
    Starlette."""

    def __init__(self, app: Starlette, handlers: Handlers, fast_score: bool) -> None:
        self.app = app
        self.handlers = handlers
        self.fast_score = fast_score

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.fast_score and scope["type"] == "http" and scope["path"] == "/score":
            try:
                response = await self.handlers.score(Request(scope, receive))
            except Exception:  # a bug of ours: still answer, and say so in the log
                logger.exception("Unhandled error in /score")
                response = render_error(InternalError("An unexpected internal error occurred."))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


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


def health_app(probes: Probes) -> Starlette:
    """The app of the health port: the probes and nothing else (404 for other paths)."""
    app = Starlette(routes=probes.routes(), exception_handlers={HTTPException: _http_error_handler})

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        response = _http_error(Request(scope, receive), HTTPException(404))
        await response(scope, receive, send)

    app.router.default = not_found
    return app


def create_app(
    settings: Settings, pool: WorkerPool, *, manage_pool: bool = True, health_port: int | None = None
) -> ASGIApp:
    """Build the app. With ``manage_pool`` the lifespan starts and stops the pool. With
    ``health_port`` (the bound port of the separate health listener), requests arriving on
    that port get the probes only."""
    send_server_version(settings.server_version_header)
    h = Handlers(settings, pool)
    probes = Probes(settings, pool, h.access)
    routes = [
        # /score first: it is the hot path and the router tries routes in order.
        Route("/score", h.score, methods=ALL),
        *probes.routes(),
        Route("/swagger.json", h.swagger, methods=["GET"]),
        Route("/v2", h.v2, methods=ALL),
        Route("/v2/{rest:path}", h.v2, methods=ALL),
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
        if manage_pool:
            await pool.start()
        try:
            yield
        finally:
            if manage_pool:
                await pool.stop(settings.graceful_timeout_s)

    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: _http_error_handler}
    )

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        response = await h.not_found(Request(scope, receive))
        await response(scope, receive, send)

    app.router.default = not_found
    main = ScoreHostApp(app, h, fast_score=not settings.cors_origins)
    if health_port is None:
        return main
    return HealthPortDispatch(main, health_app(probes), health_port)
