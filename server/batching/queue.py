"""What every batcher shares: when to run (:func:`decide`) and a batcher for threads
(:class:`ThreadBatcher`).

The rule (:func:`decide`), the same for ONNX models and entry scripts:

* a call that finds nothing else waiting runs at once: an idle server never pays the delay;
* calls that wait together run as soon as they fill ``max_size`` (or a preferred size);
* otherwise they wait for more until the oldest has waited ``delay_s``, then run as they are.

Calls pile up on their own while a batch runs, so under load batches form without any delay
(the delay only trades latency for fuller batches). Deadlines: a call whose deadline passes
while it waits is answered 504 and never run (:func:`server.deadline` is the one clock).

:class:`ThreadBatcher` batches calls made from several threads (a worker's run threads): the
first caller with nothing ahead of it runs its own call at once (the *leader*); callers that
come while a batch runs wait, and when it ends the oldest of them leads the next batch with
everyone waiting. No thread of its own, no timer: nothing runs when nothing is called.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from server import deadline
from server.errors import ScoringTimeout

T = TypeVar("T")

EXPIRED_MESSAGE = "Scoring timeout: the deadline passed while the call waited for its batch"
_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Policy:
    """How a batcher batches: sizes in the batcher's unit (rows for models, calls for scripts)."""

    max_size: int
    delay_s: float = 0.0
    preferred: tuple[int, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.max_size > 1


def decide(waiting: int, waited_s: float, policy: Policy) -> tuple[int, float]:
    """``(size to take now, 0.0)``, or ``(0, seconds to wait before deciding again)``.

    ``waiting``: the size of what waits (calls or rows); ``waited_s``: how long the oldest has.
    """
    if waiting <= 1 or waiting >= policy.max_size:
        return min(waiting, policy.max_size), 0.0
    fit = 0
    for p in policy.preferred:
        if waiting >= p > fit:
            fit = p
    if fit:
        return fit, 0.0
    if waited_s >= policy.delay_s:
        return waiting, 0.0
    return 0, policy.delay_s - waited_s


def expired_error() -> ScoringTimeout:
    return ScoringTimeout(0, EXPIRED_MESSAGE)


def take(queue: deque[Any], size: int, measure: Callable[[Any], int]) -> list[Any]:
    """The oldest entries of ``queue`` whose sizes add up to at most ``size`` (at least one)."""
    out = [queue.popleft()]
    total = measure(out[0])
    while queue and total + measure(queue[0]) <= size:
        item = queue.popleft()
        total += measure(item)
        out.append(item)
    return out


class Waiter(Generic[T]):
    """One call in a :class:`ThreadBatcher`: its item, and then its result or error."""

    __slots__ = ("deadline", "error", "event", "item", "lead", "queued_at", "result", "size", "taken")

    def __init__(self, item: T, size: int, due: float | None) -> None:
        self.item = item
        self.size = size
        self.deadline = due
        self.queued_at = time.monotonic()
        self.event = threading.Event()
        self.lead = False  # woken to lead the next batch
        self.taken = False  # in a batch that runs (or ran)
        self.result: Any = _UNSET
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def _size(w: Waiter[Any]) -> int:
    return w.size


class ThreadBatcher(Generic[T]):
    """Batches calls from many threads; ``execute`` runs a batch and fills each waiter's outcome.

    ``execute`` must not raise: it sets ``result`` or ``error`` on every waiter it gets. Waiters
    past their deadline never reach it (they get a 504 error here).
    """

    def __init__(self, execute: Callable[[list[Waiter[T]]], None], policy: Policy, on_expired: Callable[[int], None]):
        self._execute = execute
        self.policy = policy
        self._on_expired = on_expired
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Waiter[T]] = deque()
        self._busy = False

    def submit(self, item: T, size: int = 1) -> Any:
        """Run ``item`` in some batch and return its result (or raise its error)."""
        waiter = Waiter(item, size, deadline.current.get())
        with self._cond:
            if not self._busy:  # nothing runs, so nothing waits: run at once
                self._busy = True
                waiter.taken = True
                lead = True
            else:
                self._queue.append(waiter)
                self._cond.notify_all()  # a leader waiting for more calls counts again
                lead = False
        if lead:
            self._run([waiter])
        elif self._follow(waiter):
            self._run(self._collect())
        return waiter.outcome()

    def _follow(self, waiter: Waiter[T]) -> bool:
        """Wait for the outcome (False) or to lead the next batch (True)."""
        due = waiter.deadline
        if due is not None and not waiter.event.wait(max(0.0, due - time.monotonic())):
            with self._cond:
                if not waiter.taken and not waiter.lead:
                    self._queue.remove(waiter)
                    waiter.error = expired_error()
                    self._on_expired(1)
                    return False
        waiter.event.wait()
        return waiter.lead

    def _collect(self) -> list[Waiter[T]]:
        """As the leader: wait (per the policy) and take the next batch; this waiter is the oldest."""
        with self._cond:
            while True:
                waiting = sum(w.size for w in self._queue)
                oldest = self._queue[0].queued_at
                size, wait_s = decide(waiting, time.monotonic() - oldest, self.policy)
                if size:
                    break
                self._cond.wait(wait_s)
            batch: list[Waiter[T]] = take(self._queue, size, _size)
            for w in batch:
                w.taken = True
        return batch

    def _run(self, batch: list[Waiter[T]]) -> None:
        try:
            now = time.monotonic()
            live = [w for w in batch if w.deadline is None or w.deadline > now]
            if len(live) < len(batch):
                for w in batch:
                    if w.deadline is not None and w.deadline <= now:
                        w.error = expired_error()
                self._on_expired(len(batch) - len(live))
            if live:
                self._execute(live)
        except BaseException as exc:  # execute must not raise; if it does, nobody is left waiting
            for w in batch:
                if w.error is None and w.result is _UNSET:
                    w.error = exc
        finally:
            for w in batch:
                w.event.set()
            with self._cond:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.event.set()
                else:
                    self._busy = False
