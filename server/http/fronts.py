"""The front supervisor: ``http_processes`` HTTP front processes on one port (``SO_REUSEPORT``).

One HTTP process serves about one core's worth of small requests. With ``http_processes`` = N > 1
the process the CLI started becomes a small parent that serves nothing itself:

1. it runs the start-up checks (logging, entry script, auth, TLS) and binds each port without
   listening: a taken port is the usual one line and exit 3 before anything starts, and port 0 is
   chosen here, once, so that every front joins the same port. It keeps those sockets (bound, never
   listening: the kernel gives them no connections) so a chosen port stays this server's;
2. it forks N fronts. Each runs :func:`server.http.server.serve` with an equal share of ``workers``,
   ``max_concurrent_requests`` and ``max_queue_length`` (:func:`shares`: they sum to the totals) and
   binds the port with ``SO_REUSEPORT``; the kernel spreads new connections over the fronts. Each
   front publishes its state on a shared :class:`~server.http.pod.Board`, so any front's probes
   answer for all of them;
3. it watches them. A front that dies is restarted: at once if it had been ready, else after a
   back-off (0.5 s doubling to ``restart_backoff_max_s``), as workers are. A front that exits 2 or 3
   before any front was ever ready means the server cannot start (``init()`` failed, a file is
   unusable): the parent stops the others and exits with that code, as one process would. A front
   that fails to start :data:`FRONT_START_FAILURES` times in a row ends the server too (exit 3);
4. SIGTERM and SIGINT go to every front, which drain exactly as one process does; the parent waits
   for them (at most :func:`drain_bound_s`), SIGKILLs what remains and exits with the fronts' exit
   code. SIGHUP goes to every front (keys and certificates are re-read).

Fronts die with the parent (``PR_SET_PDEATHSIG``), and their workers die with them. Each front
runs in its own process group, so a terminal's Ctrl-C reaches the parent alone, which passes it
on once (a front that got it twice would skip its drain). Why each front owns its workers rather
than sharing them: docs/architecture.md, "Multi-front serving".
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from server.http.pod import Board, FrontRole, FrontState
from server.orphans import die_with_parent
from server.settings import Settings

logger = logging.getLogger("scorehost")

# How often the parent looks at its fronts when no signal wakes it: the board (for "was it ever
# ready") and restarts that are due. A child's exit wakes it at once (SIGCHLD).
TICK_S = 0.05
FIRST_BACKOFF_S = 0.5
FRONT_START_FAILURES = 5
# Past the fronts' own bound (drain_bound_s), for interpreters and workers to exit.
EXIT_MARGIN_S = 10.0
# The exit codes of server.http.server (not imported at module level: it loads uvicorn).
EXIT_USAGE = 2
EXIT_START_FAILED = 3
_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by one at most and sum to it exactly."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def shares(settings: Settings, port: int, health_port: int) -> list[Settings]:
    """Each front's settings: its share of the workers, the concurrency limit and the queue, on the
    ports the parent chose. The extra units of each total go to the same (lowest) fronts, so a
    front's slots are never fewer than its workers (the totals satisfy that, so each share does)."""
    n = settings.http_processes
    workers = split(settings.workers, n)
    slots = split(settings.max_concurrent_requests, n)
    queue = split(settings.max_queue_length, n)
    return [
        settings.model_copy(
            update={
                "http_processes": 1,  # a front is a one-front server: its workers see a consistent object
                "workers": w,
                "max_concurrent_requests": c,
                "max_queue_length": q,
                "port": port,
                "health_port": health_port,
            }
        )
        for w, c, q in zip(workers, slots, queue, strict=True)
    ]


def drain_bound_s(settings: Settings) -> float:
    """The longest the parent waits for its fronts after SIGTERM. A front serves for
    ``shutdown_delay_s``, gives in-flight requests ``graceful_timeout_s``, then gives its workers
    as long again to finish what they still run (its pool's stop); then the margin."""
    return settings.shutdown_delay_s + 2 * settings.graceful_timeout_s + EXIT_MARGIN_S


def _exit_status(code: int) -> int:
    """A child's exit code as this process's: a signal death as the shell writes it (128 + n)."""
    return code if code >= 0 else 128 - code


def _how(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


@dataclass
class Front:
    index: int
    settings: Settings  # its share
    pid: int = 0  # 0: not running
    ready_seen: bool = False  # this incarnation published READY at least once
    failures: int = 0  # consecutive starts that never became ready
    restart_at: float | None = None


class FrontSupervisor:
    """Starts, watches, restarts and stops the fronts; one thread, woken by signals."""

    def __init__(
        self,
        settings: Settings,
        fronts: list[Front],
        board: Board,
        keep: Sequence[socket.socket] = (),
        mask: set[int | signal.Signals] | None = None,
        metrics_dir: str | None = None,
    ) -> None:
        self.settings = settings
        self.fronts = fronts
        self.board = board
        self.metrics_dir = metrics_dir
        self.keep = list(keep)  # the parent's bound sockets: a front closes its copies
        self.stopping = False
        self.deadline = math.inf
        self.exit_code = 0
        self.ever_ready = False  # some front was ready once: the script can start
        self._mask = mask if mask is not None else set()  # the signal mask fronts run with
        self._pid = os.getpid()

    # --- the loop ------------------------------------------------------------------
    def run(self) -> int:
        """Start the fronts and watch them until they all stopped; the signals must be blocked
        (:func:`serve_fronts` blocks them before any thread starts)."""
        try:
            for front in self.fronts:
                self._start(front)
            while not self.stopping or any(f.pid for f in self.fronts):
                info = signal.sigtimedwait(_SIGNALS, TICK_S)
                if info is not None:
                    self._on_signal(info.si_signo)
                self._tick()
            logger.info("Stopped: all %d HTTP fronts exited", len(self.fronts))
            return self.exit_code
        finally:
            for front in self.fronts:  # only on an error of ours: never leave a front behind
                if front.pid:
                    self._signal(front, signal.SIGKILL)
                    os.waitpid(front.pid, 0)

    def _tick(self) -> None:
        now = time.monotonic()
        for front in self.fronts:
            if front.pid:
                if not front.ready_seen and self.board.get(front.index) is FrontState.READY:
                    front.ready_seen = self.ever_ready = True
                self._reap(front)
            elif not self.stopping and front.restart_at is not None and front.restart_at <= now:
                self._start(front)
        if self.stopping and now > self.deadline:
            self.deadline = math.inf  # once: the reaping above collects them
            for front in self.fronts:
                if front.pid:
                    logger.error("Front %d (pid %d) did not stop in time; killing it", front.index, front.pid)
                    self._signal(front, signal.SIGKILL)

    def _on_signal(self, signo: int) -> None:
        if signo == signal.SIGCHLD:
            return  # the tick reaps
        name = signal.Signals(signo).name
        running = sum(1 for f in self.fronts if f.pid)
        if signo == signal.SIGHUP:
            logger.info("Received SIGHUP: passing it to %d front(s)", running)
            self._forward(signo)
        elif self.stopping:
            logger.warning("Second signal %s: passing it on; the fronts stop without waiting", name)
            self._forward(signo)
        else:
            logger.info(
                "Received %s: passing it to %d front(s), which drain; waiting up to %.0f s for them",
                name,
                running,
                drain_bound_s(self.settings),
            )
            self._stop(signo)

    def _stop(self, signo: int) -> None:
        self.stopping = True
        self.deadline = time.monotonic() + drain_bound_s(self.settings)
        self._forward(signo)

    def _forward(self, signo: int) -> None:
        for front in self.fronts:
            if front.pid:
                self._signal(front, signo)

    @staticmethod
    def _signal(front: Front, signo: int) -> None:
        try:
            os.kill(front.pid, signo)
        except ProcessLookupError:  # exited; not reaped yet
            pass

    # --- one front -------------------------------------------------------------------
    def _start(self, front: Front) -> None:
        front.restart_at = None
        front.ready_seen = False
        self.board.set(front.index, FrontState.STARTING)
        handlers = logging.getLogger().handlers
        # NOTE: with every handler's lock held, no log thread is half-way through a write (and
        # holding the stream's own lock) at the fork; the child's logging re-creates its locks.
        for handler in handlers:
            handler.acquire()
        try:
            for handler in handlers:
                handler.flush()  # nothing held is written twice, once by each process
            pid = os.fork()
            if pid == 0:  # the front: never returns into the parent's code
                code = 1
                try:
                    code = self._front_main(front)
                finally:
                    os._exit(code)
        finally:
            for handler in handlers:
                handler.release()
        front.pid = pid
        s = front.settings
        logger.info(
            "Started HTTP front %d (pid %d): %d worker(s), %d concurrent call(s), queue %d",
            front.index, pid, s.workers, s.max_concurrent_requests, s.max_queue_length,
        )  # fmt: skip

    def _front_main(self, front: Front) -> int:
        """In the forked front: undo the parent's process state, then serve."""
        try:
            os.setpgid(0, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
            die_with_parent(self._pid, "a front outlives a parent killed with SIGKILL")
            for sock in self.keep:
                sock.close()
            from server.http.server import serve

            return serve(front.settings, front=FrontRole(front.index, self.board, self.metrics_dir))
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
        except KeyboardInterrupt:  # SIGINT before uvicorn took the signal over
            return 0
        except BaseException:
            logger.exception("HTTP front %d failed", front.index)
            return 1
        finally:
            logging.shutdown()  # os._exit skips atexit: write what the log holds now
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass

    def _reap(self, front: Front) -> None:
        try:
            pid, status = os.waitpid(front.pid, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - reaped elsewhere; its code is lost
            pid, status = front.pid, 0
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        was_ready = front.ready_seen or self.board.get(front.index) is FrontState.READY
        front.pid = 0
        self.board.set(front.index, FrontState.STARTING)  # a dead front is not ready
        self._on_exit(front, pid, code, was_ready)

    def _on_exit(self, front: Front, pid: int, code: int, was_ready: bool) -> None:
        if self.stopping:
            # A front signalled before uvicorn took SIGTERM/SIGINT over dies of it: a clean stop too.
            clean = code in (0, -signal.SIGTERM, -signal.SIGINT)
            if not clean and self.exit_code == 0:
                self.exit_code = _exit_status(code)
            level = logging.INFO if clean else logging.WARNING
            logger.log(level, "HTTP front %d (pid %d) stopped: %s", front.index, pid, _how(code))
            return
        how = _how(code)
        if code in (EXIT_USAGE, EXIT_START_FAILED) and not self.ever_ready:
            self._give_up(code, f"HTTP front {front.index} {how} before the server was ever ready")
            return
        if was_ready:
            front.failures = 0  # it served: restart at once
            delay = 0.0
        else:
            front.failures += 1
            if front.failures >= FRONT_START_FAILURES:
                self._give_up(
                    EXIT_START_FAILED, f"HTTP front {front.index} failed to start {front.failures} times in a row"
                )
                return
            delay = min(self.settings.restart_backoff_max_s, FIRST_BACKOFF_S * 2 ** (front.failures - 1))
        logger.warning("HTTP front %d (pid %d) %s; restarting it in %.1f s", front.index, pid, how, delay)
        front.restart_at = time.monotonic() + delay

    def _give_up(self, code: int, message: str) -> None:
        logger.error("Giving up: %s; stopping the other fronts", message)
        self.exit_code = code
        self._stop(signal.SIGTERM)


def serve_fronts(settings: Settings, warnings: Sequence[str] = ()) -> int:
    """Run ``settings.http_processes`` fronts until stopped; returns the process exit code."""
    # NOTE: blocked before any thread starts (logging starts one), so that every thread inherits the
    # mask: a signal that reached a thread without it would kill the process (default action).
    # The loop takes them with sigtimedwait: no handler interrupts it half-way through a restart,
    # a child's exit wakes it at once, and a SIGTERM during start-up waits for the loop.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        return _serve_fronts(settings, warnings, mask)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _serve_fronts(settings: Settings, warnings: Sequence[str], mask: set[int | signal.Signals]) -> int:
    # NOTE: the fronts' code (uvicorn, Starlette, the app) is imported here, once, before the fork:
    # every front starts without importing it again and shares those pages copy-on-write.
    from server.http import server as http

    prepared = http.prepare(settings, warnings)
    if isinstance(prepared, int):
        return prepared
    keep = http.open_listeners(settings, listen=False)
    if isinstance(keep, int):
        return keep
    try:
        host, port = keep[0].getsockname()[:2]
        health_port = keep[1].getsockname()[1] if len(keep) > 1 else None
        n = settings.http_processes
        logger.info(
            "scorehost %s: %d HTTP front processes sharing the port (supervisor pid %d); %d worker(s), "
            "%d concurrent call(s), queue %d / %d ms in all, split evenly; timeout %d ms",
            http._version(), n, os.getpid(), settings.workers, settings.max_concurrent_requests,
            settings.max_queue_length, settings.max_queue_wait_ms, settings.scoring_timeout_ms,
        )  # fmt: skip
        http.print_banner(settings, http.banner(settings, port, health_port))
        scheme = "https" if prepared.tls is not None else "http"
        logger.info("Listening on %s://%s:%d", scheme, http.shown(host), port)
        if health_port is not None:
            plain = prepared.tls is not None and not settings.ssl_health_port
            logger.info("Health probes on %s://%s:%d", "http" if plain else scheme, http.shown(host), health_port)
        del prepared  # each front builds its own authenticator and TLS context
        board = Board(n)
        parts = shares(settings, port, health_port if health_port is not None else settings.health_port)
        fronts = [Front(i, share) for i, share in enumerate(parts)]
        # The fronts' metrics sockets (pod-wide /metrics, server.metrics_pod): mkdtemp's 0700 folder.
        metrics_dir = tempfile.mkdtemp(prefix="scorehost-fronts-") if settings.metrics else None
        try:
            return FrontSupervisor(settings, fronts, board, keep, mask, metrics_dir).run()
        finally:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    finally:
        for sock in keep:
            sock.close()
