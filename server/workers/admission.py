"""Admission: the bounded, deadline-limited queue in front of the worker slots.

A request that finds no free slot waits here, in arrival order, for at most
``max_queue_wait_ms``; when ``max_queue_length`` requests already wait, it is
refused at once. Either refusal is :class:`~server.errors.Overloaded` (503 with
``Retry-After``). A freed slot is handed straight to the oldest waiter, so a slot
is never up for grabs between two waiters (no thundering herd, strict FIFO).

This module is independent of HTTP and of processes: a slot is any object.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from server.errors import Overloaded

T = TypeVar("T")


class WaitQueue(Generic[T]):
    def __init__(self, max_length: int, max_wait_ms: int) -> None:
        self.max_length = max_length
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_wait_ms = max_wait_ms
        self._waiters: deque[asyncio.Future[T]] = deque()
        self.refused_full = 0
        self.refused_timeout = 0

    def __len__(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    @property
    def has_waiters(self) -> bool:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        return bool(self._waiters)

    async def wait(self, give_back: Callable[[T], None]) -> T:
        """Wait for a slot handed over by :meth:`hand_off`.

        ``give_back`` returns a slot that arrived after the caller stopped waiting
        (it was cancelled), so capacity is never lost.
        """
        if len(self._waiters) >= self.max_length and len(self) >= self.max_length:
            self.refused_full += 1
            raise Overloaded(f"Server is overloaded: {self.max_length} requests are already waiting.")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiters.append(future)
        timer = loop.call_later(self.max_wait_s, self._expire, future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                give_back(future.result())
            raise
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[T]) -> None:
        if not future.done():
            self.refused_timeout += 1
            future.set_exception(
                Overloaded(f"No scoring slot became free within {self.max_wait_ms} ms; try again later.")
            )

    def hand_off(self, slot: T) -> bool:
        """Give ``slot`` to the oldest live waiter. False if nobody waits."""
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(slot)
                return True
        return False

    def fail_all(self, exc: Exception) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(exc)
