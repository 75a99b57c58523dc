"""The worker pool: spawns, feeds, times and watches the worker processes.

The HTTP process never runs user code. Each request takes a *slot* on a ready
worker (the least loaded one), is sent over that worker's socket, and is
answered by whichever comes first: the worker's reply, or the scoring deadline
(504). A call that timed out keeps its slot until the worker really finishes it,
so capacity is never over-promised. Because the client's connection lives here,
a worker that crashes or is killed mid-call still lets us answer every caller
(500), never an empty reply.

Watching:
* a worker that exits is restarted with exponential back-off, and runs
  ``init()`` again, while the others keep serving;
* a worker whose every slot is held by calls more than ``wedged_after_ms`` past
  their deadline is wedged: it is killed (SIGKILL; a C call holding the GIL
  ignores anything gentler) and replaced;
* a worker that does not finish ``init()`` within ``init_timeout_s`` is killed;
* if no worker ever became ready because loading or ``init()`` failed, the pool
  reports a fatal error and the server exits non-zero, as the reference does.
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
from collections.abc import Callable
from typing import Any, cast

from server.errors import NotReady, ScoreHostError, ScoringTimeout, ScriptError
from server.settings import Settings
from server.workers import protocol
from server.workers.admission import WaitQueue
from server.workers.protocol import Reply
from server.workers.writer import CoalescingTransport

logger = logging.getLogger("scorehost.pool")

WEDGE_CHECK_EVERY_S = 0.1
# Deadlines are checked by one sweep instead of a timer per call; a 504 leaves at
# most this much after its deadline.
DEADLINE_SWEEP_S = 0.005
# Pipelining: a worker may be sent calls beyond its slots (they wait in the worker,
# in order) while the expected wait there stays under this budget. Short calls then
# travel many to a system call and a context switch; long calls get none.
PIPELINE_BUDGET_MS = 2.0
MAX_PIPELINE = 32
_EWMA_ALPHA = 0.1
_FIRST_BACKOFF_S = 0.5
_STABLE_AFTER_S = 30.0


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Pending:
    """A call sent to a worker. Its future is done once answered: by the reply, or
    with 504 at the deadline (the entry then stays until the worker replies)."""

    __slots__ = ("deadline", "future")

    def __init__(self, future: asyncio.Future[Reply], deadline: float) -> None:
        self.future = future
        self.deadline = deadline


class Worker:
    def __init__(self, index: int, slots: int) -> None:
        self.index = index
        self.slots = slots
        self.state = State.STOPPED
        self.busy = 0
        self.in_flight: dict[int, Pending] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: _Connection | None = None
        self.generation = 0
        self.started_at = 0.0
        self.ready_at = 0.0
        self.failures = 0
        self.restarts = 0
        self.ever_ready = False
        self.kill_reason: str | None = None
        self.fail_message: str | None = None
        self.models: dict[str, Any] | None = None
        # Smoothed run() time, for the pipelining budget; starts pessimistic.
        self.ewma_ms = PIPELINE_BUDGET_MS
        self.capacity = slots

    def update_capacity(self, exec_ms: float) -> None:
        self.ewma_ms += _EWMA_ALPHA * (exec_ms - self.ewma_ms)
        if self.ewma_ms >= PIPELINE_BUDGET_MS:
            self.capacity = self.slots
        else:
            extra = int(PIPELINE_BUDGET_MS * self.slots / max(self.ewma_ms, 0.01))
            self.capacity = self.slots + min(MAX_PIPELINE, extra)

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "state": self.state.value,
            "pid": self.proc.pid if self.proc else None,
            "slots": self.slots,
            "busy": self.busy,
            "capacity": self.capacity,
            "restarts": self.restarts,
        }


class _Connection(asyncio.Protocol):
    """The HTTP process's end of one worker's socket."""

    def __init__(self, pool: WorkerPool, worker: Worker, generation: int) -> None:
        self.pool = pool
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
        of the worker serves a whole batch whatever the scheduler does."""
        assert self.out is not None
        if urgent:
            self.out.write(data)
        else:
            self.out.hold(data)

    def data_received(self, data: bytes) -> None:
        pool, worker = self.pool, self.worker
        for frame in self.frames.feed(data):
            kind = frame[0]
            if kind == protocol.REPLY:
                call_id, reply = protocol.decode_reply(frame)
                pool._on_reply(worker, call_id, reply)
            elif kind == protocol.READY:
                pool._on_ready(worker, protocol.decode_message(frame))
            elif kind == protocol.STATE:
                worker.models = protocol.decode_message(frame).get("models")
            elif kind == protocol.FAILED:
                worker.fail_message = protocol.decode_message(frame).get("message")
        if self.out is not None:
            # NOTE: scheduled, not immediate: waiters handed a slot by these replies
            # dispatch first and join the same write.
            self.out.flush_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.generation == self.worker.generation:
            asyncio.get_running_loop().create_task(self.pool._on_exit(self.worker))


class WorkerPool:
    """N worker processes behind one admission queue."""

    def __init__(self, settings: Settings, on_fatal: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.workers = [Worker(i, settings.slots_for(i)) for i in range(settings.workers)]
        self.queue: WaitQueue[Worker] = WaitQueue(settings.max_queue_length, settings.max_queue_wait_ms)
        self.timeout_s = settings.scoring_timeout_ms / 1000.0
        self.on_fatal = on_fatal
        self.fatal: str | None = None
        self.draining = False
        self.stopping = False
        self.script: dict[str, Any] | None = None
        self._ids = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life cycle -----------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for worker in self.workers:
            await self._spawn(worker)
        self._watch_task = self._loop.create_task(self._watch())
        self._sweeper = self._loop.call_later(DEADLINE_SWEEP_S, self._sweep)

    async def _spawn(self, worker: Worker) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["SCOREHOST_WORKER_SETTINGS"] = self.settings.model_dump_json()
        if self.settings.model_dir:
            env["AZUREML_MODEL_DIR"] = self.settings.model_dir
        cmd = [
            sys.executable,
            "-m",
            "server.workers.main",
            "--fd",
            str(child.fileno()),
            "--index",
            str(worker.index),
            "--slots",
            str(worker.slots),
        ]
        worker.generation += 1
        worker.kill_reason = None
        worker.fail_message = None
        try:
            worker.proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),), env=env)
        finally:
            child.close()
        worker.state = State.STARTING
        worker.started_at = time.monotonic()
        parent.setblocking(False)
        gen = worker.generation
        _, conn = await loop.create_unix_connection(lambda: _Connection(self, worker, gen), sock=parent)
        worker.conn = conn
        logger.info("Started worker %d (pid %d, %d slot(s))", worker.index, worker.proc.pid, worker.slots)

    def _on_ready(self, worker: Worker, info: dict[str, Any]) -> None:
        worker.state = State.READY
        worker.ready_at = time.monotonic()
        worker.ever_ready = True
        worker.models = info.get("models", worker.models)
        if info.get("script") is not None:
            self.script = info["script"]
        logger.info(
            "Worker %d is ready (pid %s) after %.2f s",
            worker.index,
            info.get("pid"),
            worker.ready_at - worker.started_at,
        )
        # Waiters queued while no worker was ready get this worker's slots first.
        self._fill(worker)

    async def _on_exit(self, worker: Worker) -> None:
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
        failed = [p for p in worker.in_flight.values() if not p.future.done()]
        for pending in failed:
            pending.future.set_exception(ScriptError(f"The worker process running run() {reason}."))
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
            logger.error("Worker %d %s; %d request(s) in flight answered with 500", worker.index, reason, len(failed))
        if not worker.ever_ready and not any(w.ever_ready for w in self.workers):
            message = worker.fail_message or f"worker {worker.index} {reason} before it was ready"
            self._fail(message)
            return
        if was is State.READY and time.monotonic() - worker.ready_at > _STABLE_AFTER_S:
            worker.failures = 0
        worker.failures += 1
        delay = min(self.settings.restart_backoff_max_s, _FIRST_BACKOFF_S * 2 ** (worker.failures - 1))
        worker.state = State.BACKOFF
        worker.restarts += 1
        logger.warning("Worker %d %s; restarting in %.1f s", worker.index, reason, delay)
        asyncio.get_running_loop().call_later(delay, self._restart, worker)

    def _restart(self, worker: Worker) -> None:
        if self.stopping or worker.state is not State.BACKOFF:
            return
        asyncio.get_running_loop().create_task(self._spawn(worker))

    def _fail(self, message: str) -> None:
        self.fatal = message
        logger.error("Giving up: %s", message)
        self.queue.fail_all(NotReady(f"Server failed to start: {message}"))
        if self.on_fatal is not None:
            self.on_fatal(message)

    def _kill(self, worker: Worker, reason: str) -> None:
        worker.kill_reason = reason
        if worker.proc is not None and worker.proc.poll() is None:
            try:
                os.kill(worker.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

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
                    self._kill(w, f"did not finish init() within {init_s:.0f} s")
                elif w.state is State.READY and self._stuck(w, now, wedge_s) >= w.slots:
                    logger.error(
                        "Worker %d is wedged: all %d slot(s) held by calls more than %d ms past "
                        "their deadline; replacing it",
                        w.index,
                        w.slots,
                        self.settings.wedged_after_ms,
                    )
                    self._kill(w, "was replaced because run() was stuck past its deadline")

    @staticmethod
    def _stuck(worker: Worker, now: float, wedge_s: float) -> int:
        """Calls more than ``wedge_s`` past their deadline (the oldest come first)."""
        count = 0
        for pending in worker.in_flight.values():
            if now - pending.deadline < wedge_s:
                break
            count += 1
        return count

    def _sweep(self) -> None:
        """Answer 504 for every call past its deadline, then re-arm."""
        assert self._loop is not None
        now = time.monotonic()
        for worker in self.workers:
            for call_id, pending in worker.in_flight.items():
                if pending.deadline > now:
                    break  # calls are in dispatch order, all with the same timeout
                if not pending.future.done():
                    logger.warning(
                        "run() passed its %d ms deadline on worker %d (call %d); answered "
                        "504, the call keeps its slot until it ends",
                        self.settings.scoring_timeout_ms,
                        worker.index,
                        call_id,
                    )
                    pending.future.set_exception(ScoringTimeout(self.settings.scoring_timeout_ms))
        if not self.stopping:
            self._sweeper = self._loop.call_later(DEADLINE_SWEEP_S, self._sweep)

    async def stop(self, grace_s: float) -> None:
        """Let workers finish in-flight calls for up to ``grace_s``, then kill them."""
        self.stopping = True
        self.queue.fail_all(NotReady("Server is shutting down."))
        for w in self.workers:
            if w.conn is not None and w.state in (State.READY, State.STARTING):
                w.state = State.STOPPING
                w.conn.send(protocol.encode_message(protocol.STOP))
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(w.proc and w.proc.poll() is None for w in self.workers):
            await asyncio.sleep(0.02)
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                logger.warning("Worker %d did not stop within %.1f s; killing it", w.index, grace_s)
                self._kill(w, "was killed at shutdown")
        for w in self.workers:
            if w.proc is not None:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, w.proc.wait, 5.0)
                except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
                    logger.error("Worker %d (pid %d) did not exit", w.index, w.proc.pid)
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # --- calls -------------------------------------------------------------
    def _acquire(self) -> Worker | None:
        best: Worker | None = None
        for w in self.workers:
            if w.state is State.READY and w.busy < w.capacity and (best is None or w.busy < best.busy):
                best = w
        if best is not None:
            best.busy += 1
        return best

    def _release(self, worker: Worker) -> None:
        worker.busy = max(0, worker.busy - 1)
        self._fill(worker)

    def _fill(self, worker: Worker) -> None:
        """Hand the worker's free capacity to the oldest waiters.

        NOTE: not just the one slot a reply frees: capacity grows when calls turn out
        short (pipelining), and while requests wait nobody else would claim it."""
        while worker.state is State.READY and worker.busy < worker.capacity and self.queue.has_waiters:
            worker.busy += 1
            if not self.queue.hand_off(worker):
                worker.busy -= 1
                return

    async def call(self, target: int, method: str, request_id: str, body: bytes, meta: bytes = b"") -> Reply:
        """Run one call on a worker. Raises a :class:`ScoreHostError` on refusal or timeout."""
        if self.draining and self.stopping:
            raise NotReady("Server is shutting down.")
        worker = None if self.queue.has_waiters else self._acquire()
        if worker is None:
            if not any(w.state is State.READY for w in self.workers):
                raise NotReady(self._not_ready_message())
            worker = await self.queue.wait(self._release)
        return await self._dispatch(worker, target, method, request_id, body, meta)

    async def _dispatch(
        self, worker: Worker, target: int, method: str, request_id: str, body: bytes, meta: bytes
    ) -> Reply:
        assert self._loop is not None and worker.conn is not None
        self._ids = (self._ids + 1) & 0xFFFFFFFF
        call_id = self._ids
        future: asyncio.Future[Reply] = self._loop.create_future()
        worker.in_flight[call_id] = Pending(future, time.monotonic() + self.timeout_s)
        urgent = len(worker.in_flight) <= worker.slots
        worker.conn.send(protocol.encode_call(call_id, target, method, request_id, body, meta), urgent)
        return await future

    def _on_reply(self, worker: Worker, call_id: int, reply: Reply) -> None:
        pending = worker.in_flight.pop(call_id, None)
        if pending is None:
            return
        if not pending.future.done():
            pending.future.set_result(reply)
        if reply.exec_ms is not None:
            worker.update_capacity(reply.exec_ms)
        self._release(worker)

    # --- state ---------------------------------------------------------------
    def live(self) -> bool:
        """False once the pool cannot serve: start-up failed, or it served before and
        now no worker is ready (with one worker: it crashed or wedged and is restarting)."""
        if self.fatal is not None:
            return False
        if not any(w.ever_ready for w in self.workers):
            return True
        return any(w.state is State.READY for w in self.workers) or self.stopping

    def ready(self) -> bool:
        return not self.draining and self.fatal is None and any(w.state is State.READY for w in self.workers)

    def _not_ready_message(self) -> str:
        if self.fatal:
            return f"Server failed to start: {self.fatal}"
        if self.draining:
            return "Server is shutting down."
        if any(w.state is State.STARTING for w in self.workers):
            return "Server is starting: init() has not finished yet."
        return "No worker is ready: restarting after a failure."

    def status(self) -> dict[str, Any]:
        ready = sum(1 for w in self.workers if w.state is State.READY)
        out: dict[str, Any] = {
            "ready": self.ready(),
            "live": self.live(),
            "draining": self.draining,
            "workers_ready": ready,
            "workers": len(self.workers),
            "queued": len(self.queue),
            "in_flight": sum(w.busy for w in self.workers),
            "detail": [w.describe() for w in self.workers],
        }
        models = next((w.models for w in self.workers if w.models), None)
        if models is not None:
            out["models"] = models
        if not out["ready"]:
            out["message"] = self._not_ready_message()
        return out


__all__ = ["ScoreHostError", "State", "WorkerPool"]
