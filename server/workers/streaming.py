"""Streamed replies, worker side: send a generator's items as they are yielded.

A streamed reply leaves as a REPLY head with the first chunk, then CHUNK frames, then
END. Its bytes are bounded by a credit window: the HTTP process returns CREDIT as
its client consumes chunks, and while ``stream_buffer_bytes`` are outstanding the
generator is not advanced (it is paused, not buffered). A CANCEL (the client went
away, or the stream went idle) closes the generator, so its ``finally`` runs.

Bounds: the scoring deadline covers the time to the first chunk (the HTTP process
answers 504 if none came); ``stream_idle_timeout_ms`` bounds every wait for credit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from server.entry.results import Stream, chunk_bytes
from server.errors import ScriptError
from server.workers import protocol
from server.workers.protocol import Reply

logger = logging.getLogger("scorehost.worker")

STREAM_ERROR_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."


class Outlet:
    """One stream's flow control: how many bytes may still be sent, and whether to stop."""

    __slots__ = ("_async_event", "_cond", "_loop", "cancelled", "outstanding", "window")

    def __init__(self, window: int, loop: asyncio.AbstractEventLoop) -> None:
        self.window = window
        self.outstanding = 0
        self.cancelled = False
        self._cond = threading.Condition()
        self._loop = loop
        self._async_event = asyncio.Event()

    # Called on the worker's event loop, when CREDIT or CANCEL frames arrive.
    def credit(self, consumed: int) -> None:
        with self._cond:
            self.outstanding = max(0, self.outstanding - consumed)
            self._cond.notify_all()
        self._async_event.set()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()
        self._async_event.set()

    def sent(self, size: int) -> None:
        with self._cond:
            self.outstanding += size

    def wait_sync(self, timeout_s: float) -> bool:
        """Block a run thread until the window has room; False on cancel or timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.outstanding > self.window and not self.cancelled:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return not self.cancelled

    async def wait_async(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.outstanding > self.window and not self.cancelled:
            self._async_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._async_event.wait(), left)
            except TimeoutError:
                return False
        return not self.cancelled


class StreamPump:
    """Sends one stream's frames through ``send`` (which must be safe from the calling thread)."""

    def __init__(self, call_id: int, stream: Stream, outlet: Outlet, idle_s: float, send: Callable[[bytes], None]):
        self.call_id = call_id
        self.stream = stream
        self.outlet = outlet
        self.idle_s = idle_s
        self.send = send
        self.started = False

    def _emit(self, item: Any) -> None:
        data = chunk_bytes(item)
        chunk = protocol.encode_chunk(self.call_id, data)
        if not self.started:
            self.started = True
            chunk = protocol.encode_reply(self.call_id, self.stream.head) + chunk
        self.outlet.sent(len(data))
        self.send(chunk)

    def _finish(self, exc: BaseException | None) -> None:
        if exc is not None and not self.started:
            # Nothing was sent yet: the caller still gets an ordinary 500.
            self.send(protocol.encode_reply(self.call_id, Reply.from_error(ScriptError(STREAM_ERROR_MESSAGE))))
            return
        if not self.started:  # an empty generator: an empty body
            self.send(protocol.encode_reply(self.call_id, self.stream.head))
        self.send(protocol.encode_end(self.call_id, failed=exc is not None or self.outlet.cancelled))

    def _give_up(self) -> None:
        if self.outlet.cancelled:
            logger.info("Stream for call %d cancelled: the client went away or the stream went idle", self.call_id)
        else:
            logger.warning("Stream for call %d: the client read nothing within the idle timeout", self.call_id)
            self.outlet.cancelled = True

    def run_sync(self) -> None:
        """Pump a sync generator on this (run) thread."""
        items = self.stream.items
        assert isinstance(items, Iterator)
        error: BaseException | None = None
        try:
            for item in items:
                self._emit(item)
                if not self.outlet.wait_sync(self.idle_s):
                    self._give_up()
                    break
        except Exception as exc:
            error = exc
            logger.exception("The streaming run() raised midway; ending the stream")
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # runs the generator's finally blocks
        self._finish(error)

    async def run_async(self) -> None:
        """Pump an async generator on the worker's event loop."""
        items = self.stream.items
        assert isinstance(items, AsyncIterator)
        error: BaseException | None = None
        try:
            async for item in items:
                self._emit(item)
                if not await self.outlet.wait_async(self.idle_s):
                    self._give_up()
                    break
        except asyncio.CancelledError:
            self.outlet.cancelled = True
            raise
        except Exception as exc:
            error = exc
            logger.exception("The streaming run() raised midway; ending the stream")
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()
        self._finish(error)
