"""V2 inference calls batched in the worker, across HTTP connections.

The HTTP process multiplexes every connection's calls onto one socket per worker and, for
short calls, sends them ahead (pipelining, :mod:`server.workers.pool`), so a busy worker
receives many CALL frames per read. The worker hands the V2 inference calls of batching models
(:mod:`server.store.batcher`) to :class:`V2Batcher` instead of running them one by one:

* each model has a queue, owned by the event loop (no lock). A call joins its model's queue
  and the queue is looked at once the current read is processed (``run_due``, called by the
  worker at the end of each read), so every call of one read is there;
* :func:`server.batching.queue.decide` says when: a call alone runs at once; calls that wait
  together run when they fill the batch, or when the oldest has waited ``max_queue_delay_us``;
* a batch runs inline on the loop (a one-slot worker, like any call there) or on a run thread,
  at most ``slots`` batches of one model at once. Calls that come while they run wait, and form
  the next batch: under load, batches form without any delay;
* the batch decodes each call (a bad input is answered 400 alone), runs the rest as few
  ``session.run`` as their shapes allow (:func:`server.store.batcher.run_jobs`), and answers each
  call with its own rows.

Deadlines: a call refused by the HTTP process (its deadline or queue deadline passed) is
answered and dropped when its batch is taken, and a call whose deadline would pass while it
waits for the delay is answered 504 at once; neither runs. ``exec_ms`` of each answer is its
share of the batch's time (the batch's time over its calls), which keeps the pool's pipelining
budget (:meth:`server.workers.supervision.Worker.update_capacity`) counting per call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from server import deadline
from server.batching.queue import EXPIRED_MESSAGE, Policy, decide, take
from server.batching.stats import STATS
from server.errors import Overloaded, ScoringTimeout
from server.store.batcher import Job, run_jobs
from server.store.store import ModelStore
from server.store.v2 import InferRequest, V2Handler, error_reply
from server.workers.protocol import Call, Reply

logger = logging.getLogger(__name__)

Send = Callable[[int, Reply], None]
_Entry = tuple[Call, float]  # a call and when it joined


def _one(_: _Entry) -> int:
    return 1


class _Queue:
    __slots__ = ("calls", "key", "name", "policy", "running", "scheduled", "timer", "version")

    def __init__(self, name: str, version: str | None, key: str, policy: Policy) -> None:
        self.name = name
        self.version = version
        self.key = key
        self.policy = policy
        self.calls: deque[_Entry] = deque()
        self.running = 0  # batches of this model running now
        self.scheduled = False  # a look at the queue is due (call_soon)
        self.timer: asyncio.TimerHandle | None = None


class V2Batcher:
    """Batches a worker's V2 inference calls per model. Every method runs on the event loop."""

    def __init__(
        self, handler: V2Handler, loop: asyncio.AbstractEventLoop, send: Send, pool: Executor | None, slots: int
    ) -> None:
        self._handler = handler
        self._store: ModelStore = handler.store
        self._loop = loop
        self._send = send
        self._pool = pool
        self._limit = max(1, slots) if pool is not None else 1
        self._queues: dict[str, _Queue] = {}
        self._due: list[_Queue] = []  # queues that calls joined since they were last looked at

    def offer(self, call: Call) -> bool:
        """Take ``call`` if it is an inference for a batching model (it will be answered through
        ``send``); False: the caller runs it as usual."""
        route = V2Handler.infer_route(call.method, call.path)
        if route is None:
            return False
        name, version = route
        metadata = self._store.known_metadata(name, version)
        if metadata is None or metadata.batching is None or not metadata.batching.enabled:
            return False  # unknown, never loaded yet, or not batching: the usual path
        key = f"{metadata.name}/{metadata.version}"
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(name, metadata.version, key, metadata.batching.policy)
        queue.calls.append((call, time.monotonic()))
        self._schedule(queue)
        return True

    # --- deciding, on the loop ------------------------------------------------------------
    def _schedule(self, queue: _Queue) -> None:
        if not queue.scheduled:
            queue.scheduled = True
            self._due.append(queue)
            if len(self._due) == 1:
                self._loop.call_soon(self.run_due)

    def run_due(self) -> None:
        """Look at the queues that calls joined. The worker calls this at the end of the read that
        brought them, so a call alone runs, and its reply leaves, within that read, as an unbatched
        call's does; otherwise (a call started later, a batch's follow-up) the next turn of the loop
        does."""
        due, self._due = self._due, []
        for queue in due:
            self._service(queue)

    def _service(self, queue: _Queue) -> None:
        queue.scheduled = False
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        calls = queue.calls
        while calls and queue.running < self._limit:
            now = time.monotonic()
            size, wait_s = decide(len(calls), now - calls[0][1], queue.policy)
            if not size:
                self._expire_before(queue, now + wait_s)
                if calls:
                    queue.timer = self._loop.call_at(now + wait_s, self._service, queue)
                return
            batch = self._refuse_late(take(calls, size, _one), now)
            if not batch:
                continue
            queue.running += 1
            if self._pool is None:
                # A one-slot worker runs calls on its loop, and so a batch: then the loop reads
                # what came meanwhile before the next one is formed.
                try:
                    replies = self._run(queue, batch)
                finally:
                    queue.running -= 1
                self._answer(replies)
                if calls:
                    self._schedule(queue)
                return
            self._pool.submit(self._run_pooled, queue, batch)

    def _refuse_late(self, batch: list[_Entry], now: float) -> list[_Entry]:
        """Answer and drop the calls past their deadline or queue deadline (the HTTP process has
        answered them already, or does so now): they do not run."""
        kept = []
        for entry in batch:
            if not self._refused(entry[0], now):
                kept.append(entry)
        return kept

    def _refused(self, call: Call, when: float) -> bool:
        if when >= call.deadline:
            STATS["model"].expire()
            self._send(call.call_id, Reply.from_error(ScoringTimeout(0, EXPIRED_MESSAGE), v2=True))
            return True
        if when >= call.start_by:
            self._send(call.call_id, Reply.from_error(Overloaded("Queue wait ran out before run() started"), v2=True))
            return True
        return False

    def _expire_before(self, queue: _Queue, when: float) -> None:
        """Answer now the calls whose deadline (or queue deadline) would pass while they wait until ``when``."""
        doomed = [e for e in queue.calls if e[0].deadline <= when or e[0].start_by <= when]
        for entry in doomed:
            queue.calls.remove(entry)
            self._refused(entry[0], when)

    # --- running a batch --------------------------------------------------------------------
    def _run_pooled(self, queue: _Queue, batch: list[_Entry]) -> None:
        try:
            replies = self._run(queue, batch)
        except BaseException as exc:  # _run does not raise; never leave a caller waiting
            logger.exception("a batch of %d V2 calls failed inside the worker", len(batch))
            replies = [(c.call_id, Reply.from_error(exc, v2=True)) for c, _ in batch]
        self._loop.call_soon_threadsafe(self._finished, queue, replies)

    def _finished(self, queue: _Queue, replies: list[tuple[int, Reply]]) -> None:
        queue.running -= 1
        self._answer(replies)
        if queue.calls:
            self._schedule(queue)

    def _answer(self, replies: list[tuple[int, Reply]]) -> None:
        for call_id, reply in replies:
            self._send(call_id, reply)

    def _run(self, queue: _Queue, batch: list[_Entry]) -> list[tuple[int, Reply]]:
        """Decode, run and encode one batch of calls; an answer for every call, never raises."""
        started = time.monotonic()
        replies: list[tuple[int, Reply]] = []
        token = deadline.current.set(max(c.deadline for c, _ in batch))  # a lazy load waits no longer
        try:
            model = self._store.get(queue.name, queue.version)
        except Exception as exc:
            reply = error_reply(exc, "POST", batch[0][0].path)
            return [(c.call_id, _stamped(_copy(reply), started)) for c, _ in batch]
        finally:
            deadline.current.reset(token)
        requests: list[tuple[Call, InferRequest, Job]] = []
        for call, joined in batch:
            try:
                request = self._handler.decode(model, call.body, dict(call.headers), call.request_id)
            except Exception as exc:  # a bad input: this call alone
                replies.append((call.call_id, _stamped(error_reply(exc, "POST", call.path), started)))
                continue
            requests.append((call, request, Job(request.feed, request.names, joined, call.deadline)))
        if requests:
            jobs = [job for _, _, job in requests]
            began = time.perf_counter()
            run_jobs(model, jobs, queue.policy.max_size)
            share_ms = (time.perf_counter() - began) * 1000.0 / len(jobs)
            for call, request, job in requests:
                request.feed = {}
                try:
                    if job.error is not None:
                        raise job.error
                    assert job.result is not None
                    reply = V2Handler.encode(request, job.result, share_ms)
                except Exception as exc:
                    reply = error_reply(exc, "POST", call.path)
                replies.append((call.call_id, _stamped(reply, started)))
        return replies


def _stamped(reply: Reply, started: float) -> Reply:
    reply.started_at = started
    return reply


def _copy(reply: Reply) -> Reply:
    return Reply(reply.status, reply.body, reply.content_type, list(reply.headers), reply.run_failed)
