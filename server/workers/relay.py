"""Calls in flight, HTTP-process side: a pending answer, and a streamed reply being relayed.

A :class:`Pending` is answered once: by the worker's reply, or by the pool at a
deadline (504), at its queue deadline (503), or when its worker dies (500). It stays
in its worker's in-flight table until the worker really finishes, so capacity is
never over-promised.

A :class:`ReplyStream` carries a streamed reply's chunks from the worker's socket to
the HTTP response. Each chunk the client takes is returned to the worker as CREDIT,
so the bytes buffered here stay within the worker's window; closing the stream early
(the client went away) sends CANCEL, so the generator is closed and the slot freed.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Callable

from server.errors import ScoreHostError, StreamFailed
from server.workers.protocol import Reply


class ReplyStream:
    """The chunks of one streamed reply, in order."""

    __slots__ = ("_chunks", "_credit", "_event", "_failure", "_finished", "_on_close", "head", "sent_bytes")

    def __init__(self, head: Reply, credit: Callable[[int], None], on_close: Callable[[], None]) -> None:
        self.head = head
        self.sent_bytes = 0
        self._chunks: deque[bytes] = deque()
        self._event = asyncio.Event()
        self._finished = False
        self._failure: str | None = None
        self._credit = credit
        self._on_close = on_close

    @property
    def done(self) -> bool:
        return self._finished

    def push(self, data: bytes) -> None:
        self._chunks.append(data)
        self._event.set()

    def finish(self, failure: str | None = None) -> None:
        if not self._finished:
            self._finished = True
            self._failure = failure
            self._event.set()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            while True:
                while self._chunks:
                    data = self._chunks.popleft()
                    self.sent_bytes += len(data)
                    yield data
                    self._credit(len(data))
                if self._finished:
                    if self._failure is not None:
                        raise StreamFailed(self._failure)
                    return
                self._event.clear()
                await self._event.wait()
        finally:
            if not self._finished or self._chunks:
                self._finished = True
                self._on_close()  # the consumer stopped early: cancel in the worker


Answer = Reply | ReplyStream


class Pending:
    """A call sent to a worker."""

    __slots__ = ("arrived", "call_deadline", "deadline", "future", "start_by", "stream")

    def __init__(
        self, future: asyncio.Future[Answer], deadline: float, start_by: float = math.inf, arrived: float = 0.0
    ) -> None:
        self.future = future
        self.arrived = arrived  # when the request reached the pool (its queue wait began)
        self.call_deadline = deadline  # the scoring deadline (the wedge rule counts from it)
        self.deadline = deadline  # the next deadline: scoring, then a stream's idle gap
        self.start_by = start_by  # finite while a pipelined call waits in the worker
        self.stream: ReplyStream | None = None

    def fail(self, exc: ScoreHostError) -> bool:
        """Answer with ``exc`` if not answered yet (a stream is ended instead). True if it did."""
        if self.stream is not None:
            if self.stream.done:
                return False
            self.stream.finish(exc.message)
            return True
        if self.future.done():
            return False
        self.future.set_exception(exc)
        return True
