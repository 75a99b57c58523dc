"""The HTTP process: bind the socket, run uvicorn, start and watch the workers,
and shut down in the right order.

SIGTERM (or the first Ctrl-C):
1. readiness (and ``GET /``) turns 503 at once, so load balancers stop sending new traffic;
2. requests are still served for ``shutdown_delay_s`` (0 by default; the Kubernetes
   manifests and images set it, since load balancers notice late);
3. the listening sockets close at once (an idle server frees its port within
   milliseconds) and in-flight requests finish, within ``graceful_timeout_s``;
4. workers get STOP, finish their calls, exit; the process exits 0.
A second signal skips the waiting. If no worker ever became ready because the
script or init() failed, the process exits 3, as the reference server does. A port
that is taken is one error line and exit 3, before any worker starts.

With ``separate_health_endpoint`` a second socket, on ``health_port``, is served by the
same uvicorn server; requests arriving there get the probes only (see
:func:`server.http.app.create_app`).

With ``http_processes`` > 1 this runs once per front, forked by :mod:`server.http.fronts` with
its share of the settings and a :class:`~server.http.pod.FrontRole`: its sockets then join the
port with ``SO_REUSEPORT``, its probes answer for every front, and the parent prints the banner.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import uvicorn

from server import log
from server.entry.environment import worker_environment
from server.errors import LoggingFileError, SettingsError
from server.gctune import tune_gc
from server.http import probes
from server.http.app import create_app
from server.http.auth import Authenticator
from server.http.connection import Limits, drain, protocol_class
from server.http.pod import FrontRole, PodView
from server.http.tls import TlsReloader
from server.settings import NEVER_WEDGED_MS, Settings
from server.workers.pool import WorkerPool

logger = logging.getLogger("scorehost")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_START_FAILED = 3


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        pool: WorkerPool,
        settings: Settings,
        listeners: Sequence[socket.socket] = (),
        *,
        auth: Authenticator | None = None,
        tls: TlsReloader | None = None,
        plain: socket.socket | None = None,
        pod: PodView | None = None,
    ) -> None:
        super().__init__(config)
        self.pool = pool
        self.settings = settings
        self.listeners = list(listeners)
        self.exit_code = EXIT_OK
        self.auth = auth
        self.tls = tls
        self.plain = plain  # a listener served without TLS when TLS is on (the health port)
        self.pod = pod  # one front of several: publishes this front's state for the others' probes
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = loop = asyncio.get_running_loop()
        plain = self.plain
        await super().startup([s for s in sockets if s is not plain] if sockets and plain else sockets)
        config = self.config
        if plain is not None and self.started:

            def protocol() -> asyncio.Protocol:
                return config.http_protocol_class(  # type: ignore[call-arg]
                    config=config, server_state=self.server_state, app_state=self.lifespan.state
                )

            self.servers.append(await loop.create_server(protocol, sock=plain, backlog=config.backlog))
        if self.tls is not None and config.ssl is not None:
            self.tls.attach(config.ssl)
            self.tls.watch(loop)
        if self.auth is not None:
            self.auth.watch(loop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        if self.pod is not None:
            self.pod.start(loop)

    def reload(self) -> None:
        """SIGHUP: re-read the keys file, the JWKS file and the TLS certificates."""
        logger.info("Received SIGHUP: re-reading key files and certificates")
        if self.auth is not None:
            self.auth.reload()
        if self.tls is not None:
            self.tls.reload()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # NOTE: runs in the signal handler; uvicorn's own version would re-raise the
        # signal after shutdown, turning a clean drain into exit code 143.
        if self.pool.draining or self._loop is None:
            logger.warning("Second signal %s: stopping without waiting", signal.Signals(sig).name)
            self.should_exit = True
            self.force_exit = True
            return
        self.pool.draining = True
        if self.pod is not None:
            self.pod.publish()  # the other fronts' readiness turns 503 now, not at the next tick
        drain(self.server_state.connections)  # every response from now on says Connection: close
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
        self.close_listeners()

    def close_listeners(self) -> None:
        """Stop accepting and free the ports now, not at uvicorn's next tick (up to 0.1 s
        later): a restarted server, or the next pod on this node, can bind at once."""
        for server in getattr(self, "servers", []):
            server.close()
        for sock in self.listeners:
            sock.close()

    def fatal(self, message: str) -> None:
        self.exit_code = EXIT_START_FAILED
        self.should_exit = True


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    """A socket bound to ``host:port``, listening unless ``listen`` is false. ``reuse_port``: the
    fronts of one server share the port (``SO_REUSEPORT``; the kernel spreads connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # NOTE: SO_REUSEADDR lets a restarted server bind over connections of the old one
        # in TIME_WAIT; on Linux it never lets two servers listen on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def bind_error(what: str, host: str, port: int, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is already in use (another server is listening there)"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need privileges)"
    return f"Cannot listen on {host}:{port}{what}: {reason}"


def preflight(settings: Settings) -> str | None:
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


def shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def banner(settings: Settings, port: int, health_port: int | None) -> list[str]:
    """The reference's "Server Settings" and "Server Routes" blocks, line for line, with our
    effective values (the reference prints its raw environment)."""
    none = "None"
    entry = settings.resolved_entry_script(os.getcwd())
    kill_ms = settings.scoring_timeout_ms + settings.wedged_after_ms
    worker_timeout = "0" if settings.wedged_after_ms >= NEVER_WEDGED_MS else f"{kill_ms / 1000:g}"
    probe_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else shown(settings.host)
    cors = f"Enabling CORS for {','.join(settings.cors_origins)}" if settings.cors_origins else none
    return [
        "",
        "Server Settings",
        "---------------",
        f"Entry Script Name: {entry or none}",
        f"Model Directory: {settings.model_dir if settings.model_dir is not None else none}",
        f"Config File: {settings.config_file or none}",
        f"Worker Count: {settings.workers}",
        f"Worker Timeout (seconds): {worker_timeout}",
        f"Server Port: {port}",
        f"Health Port: {health_port if health_port is not None else port}",
        f"Application Insights Enabled: {'true' if settings.app_insights_active() else 'false'}",
        f"Application Insights Key: {'AppInsights key provided' if settings.app_insights_key else none}",
        f"Inferencing HTTP server version: {'scorehost/' + _version() if settings.server_version_header else none}",
        f"CORS for the specified origins: {cors}",
        f"Create dedicated endpoint for health: {'true' if settings.separate_health_endpoint else none}",
        "",
        "",
        "Server Routes",
        "---------------",
        f"Liveness Probe: GET   {probe_host}:{health_port if health_port is not None else port}/",
        f"Score:          POST  {probe_host}:{port}/score",
        "",
    ]


def print_banner(settings: Settings, lines: list[str]) -> None:
    """Plain lines, as the reference prints them; one log record per line in JSON mode."""
    if settings.log_format == "json":
        for line in lines:
            if line:
                logger.info("%s", line)
        return
    handler = next((h for h in logging.getLogger().handlers if isinstance(h, log.DeferredFlushHandler)), None)
    if handler is None:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        return
    handler.write_line("\n".join(lines), urgent=True)


@dataclass
class Prepared:
    """What start-up checks built: the authenticator and the TLS certificates, if any."""

    auth: Authenticator | None
    tls: TlsReloader | None


def prepare(settings: Settings, warnings: Sequence[str] = (), *, announce: bool = True) -> Prepared | int:
    """Logging, then every check that needs no socket or process: what the server will use, or
    the exit code. The front supervisor runs it first too, so a mistake is one line, not one per
    front; a front then runs it without ``announce`` (no second copy of the notes)."""
    try:
        log.configure_from(settings)
    except LoggingFileError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    # NOTE: this process runs no user code, so the caller's file and line in log
    # records are never needed; skipping the stack walk saves microseconds per line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    for line in warnings:
        logger.warning("%s", line)
    problem = preflight(settings)
    if problem:
        logger.error("%s", problem)
        return EXIT_START_FAILED
    if announce and settings.model_dir and not os.path.isdir(settings.model_dir) and settings.entry_script:
        logger.warning(
            "Model directory %s does not exist; AZUREML_MODEL_DIR is passed to the script as given", settings.model_dir
        )
    try:
        auth = Authenticator.from_settings(settings)
        tls = TlsReloader(settings) if settings.ssl_certfile else None
        if tls is not None:
            tls.build()  # the files are usable, or one line now
    except SettingsError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    if announce and auth is None and (settings.primary_key or settings.keys_file or settings.token_secret):
        logger.warning("auth_mode=none: the keys or token secret given are not checked; /score needs no key")
    elif announce and auth is not None:
        logger.info("Authentication: auth_mode=%s", auth.mode)
    return Prepared(auth, tls)


def open_listeners(settings: Settings, *, reuse_port: bool = False, listen: bool = True) -> list[socket.socket] | int:
    """The main socket, and the health port's when it is separate; or, logged, the exit code."""
    try:
        sock = bind(settings.host, settings.port, reuse_port=reuse_port, listen=listen)
    except OSError as exc:
        logger.error("%s", bind_error("", settings.host, settings.port, exc))
        return EXIT_START_FAILED
    if not settings.separate_health_endpoint:
        return [sock]
    try:
        health_sock = bind(settings.host, settings.health_port, reuse_port=reuse_port, listen=listen)
    except OSError as exc:
        sock.close()
        logger.error("%s", bind_error(" (health port)", settings.host, settings.health_port, exc))
        return EXIT_START_FAILED
    return [sock, health_sock]


def serve(settings: Settings, warnings: Sequence[str] = (), *, front: FrontRole | None = None) -> int:
    """Run the server until it is stopped; returns the process exit code. ``warnings``: lines
    the CLI found while reading the settings (a config file's unknown keys ...). ``front``: this
    process is one front of several (:mod:`server.http.fronts`), ``settings`` its share."""
    prepared = prepare(settings, warnings, announce=front is None)
    if isinstance(prepared, int):
        return prepared
    auth, tls = prepared.auth, prepared.tls
    listeners = open_listeners(settings, reuse_port=front is not None)
    if isinstance(listeners, int):
        return listeners
    host, port = listeners[0].getsockname()[:2]
    health_port: int | None = listeners[1].getsockname()[1] if len(listeners) > 1 else None
    pool = WorkerPool(settings)
    # The script's environment, as the reference's launcher leaves it (secrets left out).
    pool.worker_env = worker_environment(settings, os.environ, os.getcwd(), port=port, health_port=health_port)
    pod = PodView(front, pool) if front is not None else None
    probes.answer_for_pod(pod)
    http = protocol_class(Limits.from_settings(settings, health_port), pool)
    app = create_app(settings, pool, health_port=health_port, auth=auth, connections=http.guard, front=front)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=http,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, round(settings.graceful_timeout_s)),
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),  # our protocol's sweep enforces it
        backlog=2048,
        **(tls.uvicorn_options() if tls is not None else {}),
    )
    plain = listeners[1] if tls is not None and health_port is not None and not settings.ssl_health_port else None
    server = _Server(config, pool, settings, listeners, auth=auth, tls=tls, plain=plain, pod=pod)
    pool.on_fatal = server.fatal
    label = "" if front is None else f" (front {front.index} of {front.count}, pid {os.getpid()})"
    logger.info(
        "scorehost %s%s: %d worker(s), %d concurrent call(s), queue %d / %d ms, timeout %d ms",
        _version(),
        label,
        settings.workers,
        settings.max_concurrent_requests,
        settings.max_queue_length,
        settings.max_queue_wait_ms,
        settings.scoring_timeout_ms,
    )
    if front is None:  # with several fronts the parent prints these once, with the totals
        print_banner(settings, banner(settings, port, health_port))
        scheme = "https" if tls is not None else "http"
        logger.info("Listening on %s://%s:%d", scheme, shown(host), port)
        if health_port is not None:
            logger.info("Health probes on %s://%s:%d", "http" if plain else scheme, shown(host), health_port)
    tune_gc()
    try:
        server.run(sockets=listeners)
    finally:
        if pod is not None:
            pod.stop()
        for listener in listeners:
            listener.close()
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
