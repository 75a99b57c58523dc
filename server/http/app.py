"""The Starlette application: the route list and the middleware list, in one place.

Request path: uvicorn -> (CORS, when configured) -> router -> a handler in
:mod:`server.http.handlers` -> :class:`server.pool.WorkerPool` (admission, worker slot,
deadline) -> a worker process -> reply rendered by :mod:`server.http.responses`.
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
from starlette.types import Receive, Scope, Send

from server.errors import InternalError, MethodNotAllowed, NotFound, ScoreHostError
from server.http.handlers import Handlers
from server.http.responses import render_error
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


def create_app(settings: Settings, pool: WorkerPool, *, manage_pool: bool = True) -> ScoreHostApp:
    """Build the app. With ``manage_pool`` the lifespan starts and stops the pool."""
    h = Handlers(settings, pool)
    routes = [
        # /score first: it is the hot path and the router tries routes in order.
        Route("/score", h.score, methods=ALL),
        Route("/", h.root, methods=["GET"]),
        Route("/health/live", h.live, methods=["GET"]),
        Route("/health/ready", h.ready, methods=["GET"]),
        Route("/swagger.json", h.swagger, methods=["GET"]),
        Route("/v2/health/live", h.v2_live, methods=["GET"]),
        Route("/v2/health/ready", h.v2_ready, methods=["GET"]),
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

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: ScoreHostError
        if exc.status_code == 405:
            error = MethodNotAllowed("The method is not allowed for the requested URL.")
        elif exc.status_code == 404:
            error = NotFound(
                "The requested URL was not found on the server. If you entered the URL manually "
                "please check your spelling and try again."
            )
        else:
            error = ScoreHostError(str(exc.detail))
            error.status_code = exc.status_code
        return render_error(error)

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
        routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        response = await h.not_found(Request(scope, receive))
        await response(scope, receive, send)

    app.router.default = not_found
    return ScoreHostApp(app, h, fast_score=not settings.cors_origins)
