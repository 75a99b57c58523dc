"""Model-store counters for ``/metrics``, worker side.

The store lives in a worker; ``/metrics`` is served by the HTTP process. So each worker
sends its store's counters to the HTTP process in STATS frames (:attr:`Kind.STATS`):
once when it starts serving, then at most once a second, and only when something
changed. A frame carries the store's totals (models per state, loads, LRU evictions)
and, with ``metrics_per_model``, one row per model whose state or counters changed
since the previous frame: with 1,000 idle models a worker sends nothing at all, and a
busy one sends the rows of the models that served. The HTTP process keeps the last
values per worker (:mod:`server.metrics_collect`); a scrape reads them, and never waits
for a worker.

The counters themselves are plain attributes of :class:`ModelStats`, one per model
version, bumped by :meth:`Model.run` and the store's loader: no lock, no I/O.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from server.batching import stats as batch_stats
from server.workers.protocol import Kind, encode_message

# How often a worker looks for changed counters (and sends them, if any changed).
STATS_EVERY_S = 1.0
# The store's states as metric label values.
STATE_LABELS = {"READY": "loaded", "FAILED": "failed", "LOADING": "loading", "UNLOADED": "lazy"}


class ModelStats:
    """One model version's counters, kept across evictions and reloads."""

    __slots__ = ("errors", "inferences", "load_seconds")

    def __init__(self) -> None:
        self.inferences = 0  # Model.run calls
        self.errors = 0  # of which raised
        self.load_seconds = 0.0  # the last load, warm-up included


class StatsSource(Protocol):
    """What a report needs of the store (:class:`server.store.store.ModelStore`)."""

    evictions: int
    loads: int

    def model_stats(self) -> Iterable[tuple[str, str, str, ModelStats]]: ...


class StatsReporter:
    """Builds one worker's STATS payloads: what changed since the previous one."""

    def __init__(self, per_model: bool) -> None:
        self.per_model = per_model
        self._sent: dict[tuple[str, str], tuple[str, float, int, int]] = {}
        self._totals: tuple[dict[str, int], int, int] | None = None

    def payload(self, store: StatsSource) -> dict[str, Any] | None:
        """The next frame's payload, or None when nothing changed."""
        counts: dict[str, int] = {}
        rows: list[list[Any]] = []
        sent = self._sent
        for name, version, state, stats in store.model_stats():
            label = STATE_LABELS.get(state, state.lower())
            counts[label] = counts.get(label, 0) + 1
            if self.per_model:
                row = (label, round(stats.load_seconds, 6), stats.inferences, stats.errors)
                key = (name, version)
                if sent.get(key) != row:
                    sent[key] = row
                    rows.append([name, version, *row])
        totals = (counts, store.evictions, store.loads)
        if not rows and totals == self._totals:
            return None
        self._totals = totals
        return {"counts": counts, "evictions": store.evictions, "loads": store.loads, "models": rows}


def start_reporting(loop: asyncio.AbstractEventLoop, send: Callable[[bytes], None], per_model: bool) -> None:
    """Report the process's model store, if it has one, every :data:`STATS_EVERY_S` on ``loop``.

    The store is looked up in ``sys.modules``: a script that never opens one does not import
    onnxruntime for this."""
    reporter = StatsReporter(per_model)

    def tick() -> None:
        module = sys.modules.get("server.store.store")
        store = module.current_store() if module is not None else None
        if store is not None:
            payload = reporter.payload(store)
            if payload is not None:
                send(encode_message(Kind.STATS, payload))
        batching = batch_stats.payload()  # dynamic batching's counters, in a frame of their own
        if batching is not None:
            send(encode_message(Kind.STATS, {"batching": batching}))
        loop.call_later(STATS_EVERY_S, tick)

    loop.call_soon(tick)
