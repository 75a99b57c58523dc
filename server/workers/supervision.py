"""Supervision: spawn, watch, restart and kill the worker processes.

The restart rule:

* a worker that crashes **after it has served** (at least one reply since it became
  ready) is restarted at once: one bad request or a rare crash costs one restart,
  never an outage;
* back-off (0.5 s doubling to ``restart_backoff_max_s``) applies only to a worker that
  fails during start-up or ``init()``, or that crashes again with nothing served in
  between;
* liveness fails only when no worker can be restarted: start-up failed on every
  worker ``LIVENESS_FAILURES`` times in a row. A worker that is restarting is not a
  dead server;
* a worker whose every slot is held by calls more than ``wedged_after_ms`` past their
  deadline is wedged: killed (SIGKILL; a C call holding the GIL ignores anything
  gentler) and replaced. From the kill on it takes no call and no longer counts for
  readiness, though its exit is seen a moment later;
* a worker that does not finish ``init()`` within ``init_timeout_s`` is killed;
* if no worker ever became ready because loading or ``init()`` failed, the pool reports
  a fatal error and the server exits non-zero, as the reference does.

Workers die with the HTTP process (``PR_SET_PDEATHSIG``, set in :mod:`.main`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from server.errors import ScriptError
from server.settings import SECRET_FIELDS, Settings
from server.workers import protocol
from server.workers.protocol import Kind, Ready, ScriptInfo
from server.workers.relay import Pending
from server.workers.writer import CoalescingTransport

logger = logging.getLogger("scorehost.pool")

WEDGE_CHECK_EVERY_S = 0.1
# Pipelining starts pessimistic: a worker's smoothed run() time begins at the budget.
PIPELINE_BUDGET_MS = 2.0
MAX_PIPELINE = 32
_EWMA_ALPHA = 0.1
FIRST_BACKOFF_S = 0.5
LIVENESS_FAILURES = 3


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class WorkerMonitor(Protocol):
    """What /metrics learns from the supervisor (``server.metrics``): STATS frames and exits."""

    def on_stats(self, worker: Worker, payload: dict[str, Any]) -> None: ...

    def on_exit(self, worker: Worker, pid: int | None, cause: str) -> None: ...


class Worker:
    def __init__(self, index: int, slots: int) -> None:
        self.index = index
        self.slots = slots
        self.state = State.STOPPED
        self.busy = 0
        self.in_flight: dict[int, Pending] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: WorkerConnection | None = None
        self.generation = 0
        self.started_at = 0.0
        self.ready_at = 0.0
        self.failures = 0  # consecutive failures with nothing served in between
        self.served = 0  # replies since the last READY
        self.restarts = 0
        self.ever_ready = False
        self.kill_reason: str | None = None
        self.kill_cause: str | None = None  # a metrics label: wedged, init_timeout, shutdown
        self.fail_message: str | None = None
        self.models: dict[str, Any] | None = None
        # Smoothed run() time, for the pipelining budget; starts pessimistic.
        self.ewma_ms = PIPELINE_BUDGET_MS
        self.capacity = slots

    def update_capacity(self, exec_ms: float) -> None:
        """Pipelining: a worker may be sent calls beyond its slots (they wait in the worker,
        in order) while the expected wait there stays under the budget. Short calls then
        travel many to a system call and a context switch; long calls get none."""
        self.ewma_ms += _EWMA_ALPHA * (exec_ms - self.ewma_ms)
        if self.ewma_ms >= PIPELINE_BUDGET_MS:
            self.capacity = self.slots
        else:
            extra = int(PIPELINE_BUDGET_MS * self.slots / max(self.ewma_ms, 0.01))
            self.capacity = self.slots + min(MAX_PIPELINE, extra)

    @property
    def serving(self) -> bool:
        """Takes calls and counts for readiness. A worker condemned by :meth:`Supervisor.kill`
        stays READY until its exit is seen, and must take no new call meanwhile."""
        return self.state is State.READY and self.kill_reason is None

    def describe(self) -> dict[str, Any]:
        """State and counts only: no pids or paths (probes answer without authentication)."""
        condemned = self.state is State.READY and self.kill_reason is not None
        return {
            "index": self.index,
            "state": State.STOPPING.value if condemned else self.state.value,
            "slots": self.slots,
            "busy": self.busy,
            "restarts": self.restarts,
        }


class WorkerConnection(asyncio.Protocol):
    """The HTTP process's end of one worker's socket."""

    def __init__(self, supervisor: Supervisor, worker: Worker, generation: int) -> None:
        self.supervisor = supervisor
        self.worker = worker
        self.generation = generation
        self.frames = protocol.FrameBuffer()
        self.out: CoalescingTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NOTE: uvloop's transports do not subclass asyncio.Transport.
        self.out = CoalescingTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())

    def send(self, data: bytes, urgent: bool = True) -> None:
        """Queue a frame. Urgent frames (a call that can start at once) leave at the end
        of this loop iteration; the others (pipelined calls that would only wait in the
        worker) leave with the next batch, when the worker next replies, so one wake-up
        of the worker serves a whole batch whatever the scheduler does.

        NOTE: writing a call to an idle worker at once (not at the end of the iteration)
        was tried: no gain at one connection, and 10-25% fewer req/s at 8, because the
        first call of a burst then wakes the worker alone (docs/benchmarks.md)."""
        assert self.out is not None
        if urgent:
            self.out.write(data)
        else:
            self.out.hold(data)

    def data_received(self, data: bytes) -> None:
        sup, worker = self.supervisor, self.worker
        for frame in self.frames.feed(data):
            kind = frame[0]
            if kind == Kind.REPLY:
                call_id, reply = protocol.decode_reply(frame)
                sup.on_reply(worker, call_id, reply)
            elif kind == Kind.CHUNK:
                sup.on_chunk(worker, protocol.decode_id(frame), protocol.chunk_data(frame))
            elif kind == Kind.END:
                sup.on_end(worker, *protocol.decode_end(frame))
            elif kind == Kind.READY:
                sup.on_ready(worker, protocol.decode_ready(frame))
            elif kind == Kind.STATE:
                worker.models = protocol.decode_message(frame).get("models")
            elif kind == Kind.FAILED:
                worker.fail_message = protocol.decode_message(frame).get("message")
            elif kind == Kind.STATS and sup.monitor is not None:
                sup.monitor.on_stats(worker, protocol.decode_message(frame))
            elif kind == Kind.COLLECT and sup.on_collect is not None:
                sup.on_collect(frame)
        if self.out is not None:
            # NOTE: scheduled, not immediate: waiters handed a slot by these replies
            # dispatch first and join the same write.
            self.out.flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.generation == self.worker.generation:
            asyncio.get_running_loop().create_task(self.supervisor.on_exit(self.worker))


def worker_settings_json(settings: Settings) -> str:
    """The settings a worker gets: everything but secrets, which user code could read."""
    return settings.model_dump_json(exclude=set(SECRET_FIELDS))


class Supervisor:
    """Starts, watches and restarts N worker processes. :class:`~.pool.WorkerPool`
    adds dispatch on top; the hooks below are where the two meet."""

    def __init__(self, settings: Settings, on_fatal: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.workers = [Worker(i, settings.slots_for(i)) for i in range(settings.workers)]
        self.on_fatal = on_fatal
        self.fatal: str | None = None
        self.stopping = False
        self.script: ScriptInfo | None = None
        self.worker_env: Mapping[str, str] | None = None  # None: this process's environment
        self.monitor: WorkerMonitor | None = None
        # Model data collection (server.collect.writer.PayloadCollector.frame): COLLECT frames.
        self.on_collect: Callable[[memoryview], None] | None = None
        # Restarts by cause (crash, init_failed, init_timeout, wedged), for /metrics.
        self.restart_causes: Counter[str] = Counter()
        self._watch_task: asyncio.Task[None] | None = None

    # --- hooks for the pool ---------------------------------------------------
    def on_reply(self, worker: Worker, call_id: int, reply: protocol.Reply) -> None:
        raise NotImplementedError

    def on_chunk(self, worker: Worker, call_id: int, data: bytes) -> None:
        raise NotImplementedError

    def on_end(self, worker: Worker, call_id: int, failed: bool) -> None:
        raise NotImplementedError

    def fill(self, worker: Worker) -> None:
        raise NotImplementedError

    def fail_queue(self, message: str) -> None:
        raise NotImplementedError

    # --- life cycle -----------------------------------------------------------
    async def start_workers(self) -> None:
        for worker in self.workers:
            await self.spawn(worker)
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def spawn(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(self.worker_env if self.worker_env is not None else os.environ)
        env[protocol.SETTINGS_ENV] = worker_settings_json(self.settings)
        if self.settings.model_dir and "AZUREML_MODEL_DIR" not in env:
            env["AZUREML_MODEL_DIR"] = self.settings.model_dir
        cmd = [
            sys.executable, "-m", "server.workers.main", "--fd", str(child.fileno()),
            "--index", str(worker.index), "--slots", str(worker.slots), "--parent", str(os.getpid()),
        ]  # fmt: skip
        worker.generation += 1
        worker.kill_reason = None
        worker.kill_cause = None
        worker.fail_message = None
        try:
            worker.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), env=env)
        finally:
            child.close()
        worker.state = State.STARTING
        worker.started_at = time.monotonic()
        parent.setblocking(False)
        gen = worker.generation
        _, conn = await loop.create_unix_connection(lambda: WorkerConnection(self, worker, gen), sock=parent)
        worker.conn = conn
        logger.info("Started worker %d (pid %d, %d slot(s))", worker.index, worker.proc.pid, worker.slots)

    def on_ready(self, worker: Worker, ready: Ready) -> None:
        worker.state = State.READY
        worker.ready_at = time.monotonic()
        worker.ever_ready = True
        worker.served = 0
        worker.models = ready.models if ready.models is not None else worker.models
        if ready.script is not None:
            self.script = ready.script
        logger.info(
            "Worker %d is ready (pid %s) after %.2f s", worker.index, ready.pid, worker.ready_at - worker.started_at
        )
        # Waiters queued while no worker was ready get this worker's slots first.
        self.fill(worker)

    async def on_exit(self, worker: Worker) -> None:
        proc = worker.proc
        code = None
        if proc is not None:
            try:
                code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 5.0)
        was = worker.state
        reason = worker.kill_reason or f"exited unexpectedly (exit code {code})"
        cause = worker.kill_cause or ("init_failed" if was is State.STARTING else "crash")
        if self.monitor is not None:
            self.monitor.on_exit(worker, proc.pid if proc is not None else None, cause)
        failed = 0
        for pending in worker.in_flight.values():
            if pending.fail(ScriptError(f"The worker process running run() {reason}.")):
                failed += 1
        worker.in_flight.clear()
        worker.busy = 0
        worker.capacity = worker.slots
        worker.ewma_ms = PIPELINE_BUDGET_MS
        worker.conn = None
        if self.stopping or was is State.STOPPING:
            worker.state = State.STOPPED
            logger.info("Worker %d stopped (exit code %s)", worker.index, code)
            return
        if failed:
            logger.error("Worker %d %s; %d request(s) in flight answered with 500", worker.index, reason, failed)
        if not worker.ever_ready and not any(w.ever_ready for w in self.workers):
            self.fail(worker.fail_message or f"worker {worker.index} {reason} before it was ready")
            return
        if was is State.READY and worker.served > 0:
            worker.failures = 0  # it served since it last started: restart at once
            delay = 0.0
        else:
            worker.failures += 1
            delay = min(self.settings.restart_backoff_max_s, FIRST_BACKOFF_S * 2 ** (worker.failures - 1))
        worker.state = State.BACKOFF
        worker.restarts += 1
        self.restart_causes[cause] += 1
        logger.warning("Worker %d %s; restarting in %.1f s", worker.index, reason, delay)
        asyncio.get_running_loop().call_later(delay, self._restart, worker)

    def _restart(self, worker: Worker) -> None:
        if self.stopping or worker.state is not State.BACKOFF:
            return
        asyncio.get_running_loop().create_task(self.spawn(worker))

    def fail(self, message: str) -> None:
        self.fatal = message
        logger.error("Giving up: %s", message)
        self.fail_queue(message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    def kill(self, worker: Worker, reason: str, cause: str = "killed") -> None:
        worker.kill_reason = reason
        worker.kill_cause = cause
        if worker.proc is not None and worker.proc.poll() is None:
            try:
                os.kill(worker.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def can_restart(self) -> bool:
        """False once start-up keeps failing on every worker (the liveness rule)."""
        return self.fatal is None and any(
            w.state is State.READY or w.failures < LIVENESS_FAILURES for w in self.workers
        )

    async def _watch(self) -> None:
        """Find wedged workers and workers stuck in init()."""
        wedge_s = self.settings.wedged_after_ms / 1000.0
        init_s = self.settings.init_timeout_s
        while not self.stopping:
            await asyncio.sleep(WEDGE_CHECK_EVERY_S)
            now = time.monotonic()
            for w in self.workers:
                if w.kill_reason is not None:
                    continue
                if w.state is State.STARTING and now - w.started_at > init_s:
                    logger.error("Worker %d did not finish init() within %.0f s", w.index, init_s)
                    self.kill(w, f"did not finish init() within {init_s:.0f} s", "init_timeout")
                elif w.state is State.READY and _stuck(w, now, wedge_s) >= w.slots:
                    logger.error(
                        "Worker %d is wedged: all %d slot(s) held by calls more than %d ms past their deadline; "
                        "replacing it", w.index, w.slots, self.settings.wedged_after_ms,
                    )  # fmt: skip
                    self.kill(w, "was replaced because run() was stuck past its deadline", "wedged")

    async def stop_workers(self, grace_s: float) -> None:
        """Let workers finish in-flight calls for up to ``grace_s``, then kill them."""
        self.stopping = True
        for w in self.workers:
            if w.conn is not None and w.state in (State.READY, State.STARTING):
                w.state = State.STOPPING
                w.conn.send(protocol.encode_message(Kind.STOP))
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(w.proc and w.proc.poll() is None for w in self.workers):
            await asyncio.sleep(0.02)
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                logger.warning("Worker %d did not stop within %.1f s; killing it", w.index, grace_s)
                self.kill(w, "was killed at shutdown", "shutdown")
        for w in self.workers:
            if w.proc is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, w.proc.wait, 5.0)
                except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                    logger.error("Worker %d (pid %d) did not exit", w.index, w.proc.pid)
        if self._watch_task is not None:
            self._watch_task.cancel()


def _stuck(worker: Worker, now: float, wedge_s: float) -> int:
    """Calls still running more than ``wedge_s`` past their scoring deadline."""
    return sum(1 for p in worker.in_flight.values() if now - p.call_deadline >= wedge_s)
