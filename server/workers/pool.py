"""The worker pool: dispatch and deadlines.

The HTTP process never runs user code. Each request takes a *slot* on a ready worker
(the least loaded one), is sent over that worker's socket, and is answered by
whichever comes first: the worker's reply, or its deadline. The deadlines:

* the scoring deadline (:func:`server.deadline.call_deadline`, decided here at
  dispatch and carried by the call): 504, covering a streamed reply's first chunk;
* the queue deadline: a call sent ahead into a busy worker's pipeline counts as
  queued until it starts; not started within ``max_queue_wait_ms`` of its arrival,
  it gets 503 and the worker skips it;
* a stream's idle gap (``stream_idle_timeout_ms``) between chunks or reads.

A call that timed out keeps its slot until the worker really finishes it, so
capacity is never over-promised. Because the client's connection lives here, a
worker that crashes or is killed mid-call still lets us answer every caller (500),
never an empty reply. Spawning, watching and restarting workers is
:mod:`.supervision`'s job.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from server import deadline
from server.errors import NotReady, Overloaded, ScoreHostError, ScoringTimeout
from server.settings import Settings
from server.workers import protocol
from server.workers.admission import WaitQueue
from server.workers.protocol import NO_START_BY, Call, Reply
from server.workers.relay import Answer, Pending, ReplyStream
from server.workers.supervision import State, Supervisor, Worker

logger = logging.getLogger("scorehost.pool")

# Deadlines are checked by one sweep instead of a timer per call; a 504 leaves at
# most this much after its deadline.
DEADLINE_SWEEP_S = 0.005


class CallTracer(Protocol):
    """Tracing of calls (``server.tracing``), set only when tracing is on."""

    def traceparent(self) -> str: ...

    def queued(self, arrived: float, answer: Answer) -> None: ...


class WorkerPool(Supervisor):
    """N worker processes behind one admission queue."""

    def __init__(self, settings: Settings, on_fatal: Any = None) -> None:
        super().__init__(settings, on_fatal)
        self.queue: WaitQueue[Worker] = WaitQueue(settings.max_queue_length, settings.max_queue_wait_ms)
        self.timeout_ms = settings.scoring_timeout_ms
        self.queue_wait_s = settings.max_queue_wait_ms / 1000.0
        self.idle_s = settings.stream_idle_timeout_ms / 1000.0
        self.draining = False
        self._ids = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # /metrics and tracing hooks (server.metrics, server.tracing); None when off.
        self.on_answer: Callable[[float, Reply], None] | None = None
        self.tracer: CallTracer | None = None
        self.pipeline_timeouts = 0  # calls answered 503 while waiting in a worker's pipeline

    # --- life cycle -----------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.start_workers()
        self._sweeper = self._loop.call_later(DEADLINE_SWEEP_S, self._sweep)

    async def stop(self, grace_s: float) -> None:
        """Refuse waiters, let workers finish in-flight calls for up to ``grace_s``, then kill them."""
        self.stopping = True
        self.queue.fail_all(NotReady("Server is shutting down."))
        await self.stop_workers(grace_s)
        if self._sweeper is not None:
            self._sweeper.cancel()

    def fail_queue(self, message: str) -> None:
        self.queue.fail_all(NotReady(f"Server failed to start: {message}"))

    # --- calls ------------------------------------------------------------------
    def _acquire(self) -> Worker | None:
        best: Worker | None = None
        for w in self.workers:
            if w.serving and w.busy < w.capacity and (best is None or w.busy < best.busy):
                best = w
        if best is not None:
            best.busy += 1
        return best

    def _release(self, worker: Worker) -> None:
        worker.busy = max(0, worker.busy - 1)
        self.fill(worker)

    def fill(self, worker: Worker) -> None:
        """Hand the worker's free capacity to the oldest waiters.

        NOTE: not just the one slot a reply frees: capacity grows when calls turn out
        short (pipelining), and while requests wait nobody else would claim it."""
        while worker.serving and worker.busy < worker.capacity and self.queue.has_waiters:
            worker.busy += 1
            if not self.queue.hand_off(worker):
                worker.busy -= 1
                return

    async def call(self, call: Call) -> Answer:
        """Run one call on a worker: its reply, or a stream for a streamed reply.

        The pool fills in the call's id and deadlines. Raises a :class:`ScoreHostError`
        on refusal or timeout.
        """
        if self.draining and self.stopping:
            raise NotReady("Server is shutting down.")
        arrived = time.monotonic()
        worker = None if self.queue.has_waiters else self._acquire()
        if worker is None:
            if not any(w.serving for w in self.workers):
                raise NotReady(self._not_ready_message())
            worker = await self.queue.wait(self._release)
        assert self._loop is not None and worker.conn is not None
        self._ids = (self._ids + 1) & 0xFFFFFFFF
        call.call_id = self._ids
        call.deadline = deadline.call_deadline(time.monotonic(), self.timeout_ms)
        urgent = len(worker.in_flight) < worker.slots
        call.start_by = NO_START_BY if urgent else arrived + self.queue_wait_s
        tracer = self.tracer
        if tracer is not None:
            call.traceparent = tracer.traceparent()
        future: asyncio.Future[Answer] = self._loop.create_future()
        worker.in_flight[call.call_id] = Pending(future, call.deadline, call.start_by, arrived)
        worker.conn.send(protocol.encode_call(call), urgent)
        if tracer is None:
            return await future
        answer = await future
        tracer.queued(arrived, answer)
        return answer

    # --- frames from workers ------------------------------------------------------
    def on_reply(self, worker: Worker, call_id: int, reply: Reply) -> None:
        worker.served += 1
        if reply.stream:
            self._open_stream(worker, call_id, reply)
            return
        pending = worker.in_flight.pop(call_id, None)
        if pending is None:
            return
        if self.on_answer is not None:
            self.on_answer(pending.arrived, reply)
        if not pending.future.done():
            pending.future.set_result(reply)
        if reply.exec_ms is not None:
            worker.update_capacity(reply.exec_ms)
        self._release(worker)

    def _open_stream(self, worker: Worker, call_id: int, head: Reply) -> None:
        pending = worker.in_flight.get(call_id)
        if pending is None:
            return
        if self.on_answer is not None:
            self.on_answer(pending.arrived, head)
        stream = ReplyStream(head, lambda n: self._credit(worker, call_id, n), lambda: self._cancel(worker, call_id))
        pending.stream = stream
        pending.start_by = math.inf
        pending.deadline = time.monotonic() + self.idle_s
        if pending.future.done():  # answered 504/503 already: nobody will read it
            stream.finish("answered already")
            self._cancel(worker, call_id)
        else:
            pending.future.set_result(stream)

    def on_chunk(self, worker: Worker, call_id: int, data: bytes) -> None:
        pending = worker.in_flight.get(call_id)
        if pending is not None and pending.stream is not None and not pending.stream.done:
            pending.stream.push(data)
            pending.deadline = time.monotonic() + self.idle_s

    def on_end(self, worker: Worker, call_id: int, failed: bool) -> None:
        pending = worker.in_flight.pop(call_id, None)
        if pending is None:
            return
        if pending.stream is not None:
            pending.stream.finish("run() failed while streaming" if failed else None)
        self._release(worker)

    def _credit(self, worker: Worker, call_id: int, consumed: int) -> None:
        pending = worker.in_flight.get(call_id)
        if pending is not None and worker.conn is not None:
            pending.deadline = time.monotonic() + self.idle_s  # the client is reading: progress
            worker.conn.send(protocol.encode_credit(call_id, consumed))

    def _cancel(self, worker: Worker, call_id: int) -> None:
        if call_id in worker.in_flight and worker.conn is not None:
            worker.conn.send(protocol.encode_cancel(call_id))

    def _sweep(self) -> None:
        """Answer every call past a deadline, then re-arm."""
        assert self._loop is not None
        now = time.monotonic()
        for worker in self.workers:
            for position, (call_id, pending) in enumerate(list(worker.in_flight.items())):
                if pending.deadline <= now:
                    self._expire(worker, call_id, pending)
                elif position >= worker.slots and pending.start_by <= now and not pending.future.done():
                    logger.warning("Call %d waited in worker %d's pipeline past the queue deadline; answered 503",
                                   call_id, worker.index)  # fmt: skip
                    self.pipeline_timeouts += 1
                    pending.future.set_exception(
                        Overloaded(f"No scoring slot became free within {self.settings.max_queue_wait_ms} ms; "
                                   "try again later.")
                    )  # fmt: skip
        if not self.stopping:
            self._sweeper = self._loop.call_later(DEADLINE_SWEEP_S, self._sweep)

    def _expire(self, worker: Worker, call_id: int, pending: Pending) -> None:
        pending.deadline = math.inf  # act once; the entry stays until the worker finishes
        if pending.stream is not None:
            if not pending.stream.done:
                logger.warning("Stream of call %d on worker %d made no progress for %.1f s; ending it",
                               call_id, worker.index, self.idle_s)  # fmt: skip
                pending.stream.finish("the stream went idle")
                self._cancel(worker, call_id)
        elif not pending.future.done():
            logger.warning("run() passed its %d ms deadline on worker %d (call %d); answered 504, the call keeps "
                           "its slot until it ends", self.timeout_ms, worker.index, call_id)  # fmt: skip
            pending.future.set_exception(ScoringTimeout(self.timeout_ms))

    # --- state ---------------------------------------------------------------
    def live(self) -> bool:
        """False only when the pool cannot serve again: start-up failed for good, or
        failed ``LIVENESS_FAILURES`` times in a row on every worker. A worker that is
        restarting is not a dead server."""
        return self.stopping or self.can_restart()

    def ready(self) -> bool:
        return not self.draining and self.fatal is None and any(w.serving for w in self.workers)

    def _not_ready_message(self) -> str:
        if self.fatal:
            return "Server failed to start: init() or loading failed; see the server log."
        if self.draining:
            return "Server is shutting down."
        if any(w.state is State.STARTING for w in self.workers):
            return "Server is starting: init() has not finished yet."
        return "No worker is ready: restarting after a failure."

    def status(self) -> dict[str, Any]:
        """States and counts for the probes; details (messages, paths) go to the log."""
        ready = sum(1 for w in self.workers if w.serving)
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
            out["models"] = _model_counts(models)
        if not out["ready"]:
            out["message"] = self._not_ready_message()
        return out


def _model_counts(models: dict[str, Any]) -> dict[str, Any]:
    """The store's progress without failure reasons (they hold paths and exception text)."""
    return {k: v for k, v in models.items() if not isinstance(v, dict | list)}


__all__ = ["ScoreHostError", "State", "WorkerPool"]
