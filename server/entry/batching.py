"""``@batch`` for entry scripts: concurrent ``run()`` calls share one call of a batch function.

    from scorehost import batch            # or: from server.batching import batch

    @batch(max_batch_size=32, max_delay_ms=2)
    def predict(rows: list[list[float]]) -> list[float]:      # a list in, a list (or array) out
        return model.predict(np.asarray(rows)).tolist()

    def run(raw):
        return {"score": predict(json.loads(raw)["row"])}      # one item in, its own result out

As Ray Serve's ``@serve.batch``: the decorated function takes a list of inputs and returns one
output per input, in order; callers call it with one input and get their own output. ``async
def`` functions are awaited (``await predict(x)`` from an ``async def run()``); plain functions
are called from a sync ``run()``.

What batches: calls that are in progress at the same time. An ``async def run()`` has every
call of the worker in flight at once (each is a task), so the batches fill under load. A sync
``run()`` runs ``max_concurrent_requests`` per worker at once (one thread each): that is the
most a batch can hold, so raise it to the batch size you want (with one slot, every call runs
alone). The rule (:func:`server.batching.queue.decide`): a call that finds nothing waiting runs at
once; calls that wait together run when they fill ``max_batch_size`` or when the oldest has
waited ``max_delay_ms``; calls that come while a batch runs form the next one.

Deadlines and isolation: a call whose deadline (``scoring_timeout_ms``) passes while it waits
raises ScoringTimeout (504) and never reaches the function. If the function raises (or returns
the wrong number of outputs) for a batch, each call of the batch is run again alone, so one bad
input fails only its own call; that fallback is counted in ``/metrics``
(``scorehost_batch_fallbacks_total{source="script"}``). Without the decorator nothing changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, overload

from server import deadline
from server.batching.queue import Policy, ThreadBatcher, Waiter, decide, expired_error, take
from server.batching.stats import STATS

logger = logging.getLogger("scorehost.entry")

_stats = STATS["script"]
__all__ = ["AsyncBatched", "SyncBatched", "batch"]


class BatchResultError(TypeError):
    """The batch function did not return one output per input."""


def _outputs(out: Any, n: int) -> list[Any]:
    if isinstance(out, str | bytes | dict) or not hasattr(out, "__len__") or not hasattr(out, "__getitem__"):
        raise BatchResultError(f"a @batch function must return a list of outputs, not {type(out).__name__}")
    if len(out) != n:
        raise BatchResultError(f"a @batch function returned {len(out)} outputs for {n} inputs")
    return [out[i] for i in range(n)]


def _fallback_note(fn: Callable[..., Any], size: int, exc: BaseException) -> None:
    _stats.fallback()
    logger.warning("@batch %s: a batch of %d failed (%s: %s); running its calls one at a time",
                   getattr(fn, "__name__", "function"), size, type(exc).__name__, exc)  # fmt: skip


class SyncBatched:
    """A plain function under ``@batch``: calls from several run threads share a batch."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], policy: Policy) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self.policy = policy
        self._threads: ThreadBatcher[Any] = ThreadBatcher(self._execute, policy, _stats.expire)

    def __call__(self, item: Any) -> Any:
        return self._threads.submit(item)

    def _execute(self, waiters: list[Waiter[Any]]) -> None:
        now = time.monotonic()
        _stats.executed(len(waiters), [now - w.queued_at for w in waiters])
        try:
            outs = _outputs(self._fn([w.item for w in waiters]), len(waiters))
        except Exception as exc:
            if len(waiters) == 1:
                waiters[0].error = exc
                return
            _fallback_note(self._fn, len(waiters), exc)
            for w in waiters:
                try:
                    w.result = _outputs(self._fn([w.item]), 1)[0]
                except Exception as one:
                    w.error = one
            return
        for w, out in zip(waiters, outs, strict=True):
            w.result = out


class _Entry:
    __slots__ = ("deadline", "future", "item", "queued_at")

    def __init__(self, item: Any, future: asyncio.Future[Any]) -> None:
        self.item = item
        self.future = future
        self.queued_at = time.monotonic()
        self.deadline = deadline.current.get()


def _one(_: _Entry) -> int:
    return 1


class _LoopQueue:
    """An async batch function's queue on one event loop (the worker has one)."""

    def __init__(self, owner: AsyncBatched, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.loop = loop
        self.queue: deque[_Entry] = deque()
        self.running = False
        self.scheduled = False
        self.timer: asyncio.TimerHandle | None = None

    def kick(self) -> None:
        if not self.scheduled and not self.running:
            self.scheduled = True
            self.loop.call_soon(self.service)  # after every call of this loop turn has joined

    def _drop_done(self, until: float) -> None:
        """Forget cancelled callers; answer those whose deadline comes before ``until``."""
        kept: deque[_Entry] = deque()
        expired = 0
        for e in self.queue:
            if e.future.done():
                continue
            if e.deadline is not None and e.deadline <= until:
                e.future.set_exception(expired_error())
                expired += 1
                continue
            kept.append(e)
        self.queue = kept
        if expired:
            _stats.expire(expired)

    def service(self) -> None:
        self.scheduled = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.running:
            return
        now = time.monotonic()
        self._drop_done(now)
        if not self.queue:
            return
        size, wait_s = decide(len(self.queue), now - self.queue[0].queued_at, self.owner.policy)
        if not size:
            self._drop_done(now + wait_s)
            if self.queue:
                self.timer = self.loop.call_at(now + wait_s, self.service)
            return
        batch: list[_Entry] = take(self.queue, size, _one)
        self.running = True
        # A context of its own: the batch belongs to no single request.
        self.loop.create_task(self._run(batch), context=contextvars.Context())

    async def _run(self, batch: list[_Entry]) -> None:
        fn = self.owner.fn
        try:
            now = time.monotonic()
            _stats.executed(len(batch), [now - e.queued_at for e in batch])
            try:
                outs = _outputs(await fn([e.item for e in batch]), len(batch))
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0], None, exc)
                    return
                _fallback_note(fn, len(batch), exc)
                for e in batch:
                    try:
                        _settle(e, _outputs(await fn([e.item]), 1)[0], None)
                    except Exception as one:
                        _settle(e, None, one)
                return
            for e, out in zip(batch, outs, strict=True):
                _settle(e, out, None)
        except BaseException as exc:  # cancelled (shutdown), or a bug: nobody is left waiting
            for e in batch:
                _settle(e, None, exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise
        finally:
            self.running = False
            if self.queue:
                self.kick()


def _settle(entry: _Entry, result: Any, error: BaseException | None) -> None:
    if entry.future.done():  # the caller went away
        return
    if error is not None:
        entry.future.set_exception(error)
    else:
        entry.future.set_result(result)


class AsyncBatched:
    """An ``async def`` function under ``@batch``: awaiting callers on the loop share a batch."""

    def __init__(self, fn: Callable[[list[Any]], Awaitable[Sequence[Any]]], policy: Policy) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.policy = policy
        self._queue: _LoopQueue | None = None

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        queue = self._queue
        if queue is None or queue.loop is not loop:  # first use, or a new loop (tests)
            queue = self._queue = _LoopQueue(self, loop)
        entry = _Entry(item, loop.create_future())
        queue.queue.append(entry)
        queue.kick()
        return await entry.future


@overload
def batch(func: Callable[..., Any], /) -> Any: ...


@overload
def batch(*, max_batch_size: int = 32, max_delay_ms: float = 0.0) -> Callable[[Callable[..., Any]], Any]: ...


def batch(func: Callable[..., Any] | None = None, /, *, max_batch_size: int = 32, max_delay_ms: float = 0.0) -> Any:
    """Batch concurrent calls of a function that takes a list of inputs and returns a list of
    outputs; callers pass one input and get its output. ``@batch`` or ``@batch(max_batch_size=...,
    max_delay_ms=...)``; see :mod:`server.entry.batching`."""
    if type(max_batch_size) is not int or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, not {max_batch_size!r}")
    if not isinstance(max_delay_ms, int | float) or isinstance(max_delay_ms, bool) or not 0 <= max_delay_ms <= 1000:
        raise ValueError(f"max_delay_ms must be a number from 0 to 1000, not {max_delay_ms!r}")
    policy = Policy(max_batch_size, max_delay_ms / 1000.0)

    def wrap(fn: Callable[..., Any]) -> Any:
        if not callable(fn):
            raise TypeError("@batch decorates a function")
        if inspect.iscoroutinefunction(fn):
            return AsyncBatched(fn, policy)
        return SyncBatched(fn, policy)

    return wrap if func is None else wrap(func)
