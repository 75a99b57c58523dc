"""The HTTP process: bind the socket, run uvicorn, start and watch the workers,
and shut down in the right order.

SIGTERM (or the first Ctrl-C):
1. readiness turns 503 at once, so load balancers stop sending new traffic;
2. requests are still served for ``shutdown_delay_s`` (load balancers notice late);
3. the listening socket closes and in-flight requests finish, within
   ``graceful_timeout_s``;
4. workers get STOP, finish their calls, exit; the process exits 0.
A second signal skips the waiting. If no worker ever became ready because the
script or init() failed, the process exits 3, as the reference server does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from types import FrameType

import uvicorn

from server import log
from server.gctune import tune_gc
from server.http.app import create_app
from server.http.connection import CoalescingHttpToolsProtocol
from server.settings import Settings
from server.workers.pool import WorkerPool

logger = logging.getLogger("scorehost")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START_FAILED = 3


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, pool: WorkerPool, settings: Settings) -> None:
        super().__init__(config)
        self.pool = pool
        self.settings = settings
        self.exit_code = EXIT_OK
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # NOTE: runs in the signal handler; uvicorn's own version would re-raise the
        # signal after shutdown, turning a clean drain into exit code 143.
        if self.pool.draining or self._loop is None:
            logger.warning("Second signal %s: stopping without waiting", signal.Signals(sig).name)
            self.should_exit = True
            self.force_exit = True
            return
        self.pool.draining = True
        delay = self.settings.shutdown_delay_s
        logger.info(
            "Received %s: readiness is 503 now; serving for %.1f s more, then draining in-flight "
            "requests (up to %.0f s)",
            signal.Signals(sig).name,
            delay,
            self.settings.graceful_timeout_s,
        )
        self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._begin_exit)

    def _begin_exit(self) -> None:
        logger.info("Draining: no new connections; waiting for in-flight requests")
        self.should_exit = True

    def fatal(self, message: str) -> None:
        self.exit_code = EXIT_START_FAILED
        self.should_exit = True


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def _preflight(settings: Settings) -> str | None:
    """Problems we can name before starting any process."""
    entry = settings.resolved_entry_script(os.getcwd())
    if entry is None and not settings.model_dir:
        return (
            "Nothing to serve: set an entry script (--entry_script / AZUREML_ENTRY_SCRIPT) or a model "
            "directory (--model_dir / AZUREML_MODEL_DIR)."
        )
    if entry is not None and not os.path.isfile(entry):
        return f"Entry script not found: {entry}"
    if entry is None and settings.model_dir and not os.path.exists(settings.model_dir):
        return f"Model directory not found: {settings.model_dir}"
    return None


def serve(settings: Settings) -> int:
    """Run the server until it is stopped; returns the process exit code."""
    log.configure(settings.log_level, settings.log_format)
    # NOTE: this process runs no user code, so the caller's file and line in log
    # records are never needed; skipping the stack walk saves microseconds per line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    problem = _preflight(settings)
    if problem:
        logger.error("%s", problem)
        return EXIT_START_FAILED
    try:
        sock = bind(settings.host, settings.port)
    except OSError as exc:
        logger.error("Cannot listen on %s:%d: %s", settings.host, settings.port, exc)
        return EXIT_START_FAILED
    host, port = sock.getsockname()[:2]
    pool = WorkerPool(settings)
    app = create_app(settings, pool)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_s)),
        timeout_keep_alive=5,
        backlog=2048,
    )
    server = _Server(config, pool, settings)
    pool.on_fatal = server.fatal
    shown = f"[{host}]" if ":" in host else host
    logger.info(
        "scorehost %s: %d worker(s), %d concurrent call(s), queue %d / %d ms, timeout %d ms",
        _version(),
        settings.workers,
        settings.max_concurrent_requests,
        settings.max_queue_length,
        settings.max_queue_wait_ms,
        settings.scoring_timeout_ms,
    )
    logger.info("Listening on http://%s:%d", shown, port)
    tune_gc()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if pool.fatal:
        logger.error("Exiting: %s", pool.fatal)
        return EXIT_START_FAILED
    logger.info("Stopped")
    return server.exit_code


def _version() -> str:
    from server import __version__

    return __version__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(serve(Settings()))
