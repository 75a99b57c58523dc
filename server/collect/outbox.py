"""Worker side: how a script's ``collect()`` reaches the HTTP process, without ever blocking it.

:func:`server.workers.main.install_collect_hook` installs an :class:`Outbox` when collection is on,
before the script loads, and attaches it to the worker's socket once the serve loop runs.
``collect()`` runs in the script's thread (a run thread, or the loop for ``async def run()``); it
encodes a COLLECT frame and :meth:`Outbox.put` hands it to the worker's event loop, which writes
it to the socket with the replies. If the frames not yet written pass :data:`LIMIT_BYTES` (the HTTP
process is not reading), the record is dropped and counted instead: the count travels with the
next record that gets through, and a warning is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from server.workers.protocol import Collected, encode_collect

logger = logging.getLogger("scorehost.collect")

LIMIT_BYTES = 16 * 1024 * 1024
WARN_EVERY_S = 60.0


class Outbox:
    """Installed before the script loads (its ``init()`` may collect); holds records until the
    serve loop :meth:`attach` es it."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.write: Callable[[bytes], None] = _nowhere  # the worker's transport write (loop thread only)
        self.backlog: Callable[[], int] = _nothing  # bytes its transport has not sent yet (loop thread only)
        self.dropped = 0
        self._unreported = 0
        self._frames: list[bytes] = []
        self._held = 0  # bytes in _frames
        self._sending = 0  # the transport's backlog, as last seen on the loop
        self._lock = threading.Lock()
        self._warned = -WARN_EVERY_S

    def put(self, record: Collected) -> bool:
        """Queue one record for the HTTP process; False (dropped, counted) when the buffer is full."""
        with self._lock:
            if self._held + self._sending > LIMIT_BYTES:
                self.dropped += 1
                self._unreported += 1
                self._warn()
                return False
            record.dropped, self._unreported = self._unreported, 0
            frame = encode_collect(record)
            first = not self._frames
            self._frames.append(frame)
            self._held += len(frame)
        if first and self.loop is not None:
            self.loop.call_soon_threadsafe(self._flush)
        return True

    def attach(
        self, loop: asyncio.AbstractEventLoop, write: Callable[[bytes], None], backlog: Callable[[], int]
    ) -> None:
        """Start sending, on ``loop``, through ``write``; ``backlog``: the bytes it has not sent."""
        self.write, self.backlog = write, backlog
        self.loop = loop
        loop.call_soon_threadsafe(self._flush)

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_S:
            self._warned = now
            logger.warning(
                "Model data collection: the worker's outbound buffer is full; %d record(s) dropped so far",
                self.dropped,
            )

    def _flush(self) -> None:
        with self._lock:
            frames, self._frames, self._held = self._frames, [], 0
        if frames:
            self.write(b"".join(frames) if len(frames) > 1 else frames[0])
        self._sending = self.backlog()


def _nowhere(data: bytes) -> None:
    return None


def _nothing() -> int:
    return 0


_outbox: Outbox | None = None


def install(outbox: Outbox | None) -> None:
    global _outbox
    _outbox = outbox


def current() -> Outbox | None:
    """The worker's outbox; None when collection is off (or outside a worker)."""
    return _outbox
