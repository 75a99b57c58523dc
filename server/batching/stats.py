"""Dynamic-batching counters, worker side.

Every batcher in a worker (the model store's, :mod:`server.store.batcher` and
:mod:`server.store.v2batch`; entry scripts' ``@batch``, :mod:`server.entry.batching`) records
here, in one :class:`BatchStats` per source (``model`` or ``script``):

* the size of every execution (calls per ``session.run`` or per call of the batch function;
  a call that ran alone is an execution of size 1), so mean batch size = sum / count;
* every call's queue delay: from joining the batcher to its batch starting;
* fallbacks: batches that failed and were run again one call at a time;
* expired: calls whose deadline passed while they waited, answered 504 and never run.

The worker sends them to the HTTP process in STATS frames, only when they changed
(:func:`payload`, called by :func:`server.store.stats.start_reporting`); ``/metrics``
exports them as histograms and counters (:mod:`server.batching.metrics`). Nothing here imports
prometheus_client: the worker only counts.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

SOURCES = ("model", "script")
# Calls per execution.
SIZE_BOUNDS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Seconds a call waited in a batcher, 10 µs to 10 s.
DELAY_BOUNDS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class BatchStats:
    """One source's counters. Thread-safe: batches run on the loop and on run threads."""

    __slots__ = ("_lock", "delay_counts", "delay_sum", "expired", "fallbacks", "size_counts", "size_sum")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.size_counts = [0] * (len(SIZE_BOUNDS) + 1)  # the last one: above every bound
        self.size_sum = 0
        self.delay_counts = [0] * (len(DELAY_BOUNDS) + 1)
        self.delay_sum = 0.0
        self.fallbacks = 0
        self.expired = 0

    def executed(self, size: int, delays: Iterable[float]) -> None:
        """One execution of ``size`` calls, which waited ``delays`` seconds each."""
        with self._lock:
            self.size_counts[bisect_left(SIZE_BOUNDS, size)] += 1
            self.size_sum += size
            counts = self.delay_counts
            for d in delays:
                d = d if d > 0.0 else 0.0
                counts[bisect_left(DELAY_BOUNDS, d)] += 1
                self.delay_sum += d

    def fallback(self) -> None:
        with self._lock:
            self.fallbacks += 1

    def expire(self, calls: int = 1) -> None:
        with self._lock:
            self.expired += calls

    @property
    def executions(self) -> int:
        return sum(self.size_counts)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "size": list(self.size_counts),
                "size_sum": self.size_sum,
                "delay": list(self.delay_counts),
                "delay_sum": self.delay_sum,
                "fallbacks": self.fallbacks,
                "expired": self.expired,
            }


STATS: dict[str, BatchStats] = {source: BatchStats() for source in SOURCES}
_last: dict[str, Any] = {}


def payload() -> dict[str, Any] | None:
    """``{source: snapshot}`` of the sources that changed since the last call; None if none did."""
    changed = {}
    for source, stats in STATS.items():
        snap = stats.snapshot()
        if snap != _last.get(source):
            _last[source] = snap
            changed[source] = snap
    return changed or None
