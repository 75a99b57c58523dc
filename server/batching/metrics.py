"""Dynamic batching in ``/metrics``: the workers' counters (:mod:`server.batching.stats`), summed.

Each worker sends its cumulative counters per source (``model``: the model store's batches,
V2 and ``Model.run``; ``script``: entry scripts' ``@batch`` functions) in STATS frames; the
last frame of each worker is kept here, and a worker that exits hands its counters to the
retired totals, so nothing exported ever goes down. Exported:

    scorehost_batch_size                   histogram  calls per execution (mean batch size: sum / count)
    scorehost_batch_queue_delay_seconds    histogram  a call's wait in a batcher before its batch started
    scorehost_batch_fallbacks_total        counter    failed batches run again one call at a time
    scorehost_batch_expired_total          counter    calls whose deadline passed while they waited (504, not run)

all with the label ``source``. A registry collector of its own (:class:`Collector`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from server.batching.stats import DELAY_BOUNDS, SIZE_BOUNDS, SOURCES

_KEYS = ("size", "delay")


def _zero() -> dict[str, Any]:
    return {
        "size": [0] * (len(SIZE_BOUNDS) + 1),
        "size_sum": 0.0,
        "delay": [0] * (len(DELAY_BOUNDS) + 1),
        "delay_sum": 0.0,
        "fallbacks": 0,
        "expired": 0,
    }


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key in _KEYS:
        counts = part.get(key) or []
        into = total[key]
        for i in range(min(len(into), len(counts))):
            into[i] += int(counts[i])
        total[f"{key}_sum"] += float(part.get(f"{key}_sum", 0.0))
    total["fallbacks"] += int(part.get("fallbacks", 0))
    total["expired"] += int(part.get("expired", 0))


def _buckets(bounds: Sequence[float], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip([*map(floatToGoString, bounds), "+Inf"], counts, strict=True):
        running += count
        out.append((bound, float(running)))
    return out


class BatchTotals(Collector):
    """Every worker's batching counters. ``apply`` and ``retire`` run on the event loop."""

    def __init__(self) -> None:
        self.workers: dict[int, dict[str, dict[str, Any]]] = {}
        self.retired: dict[str, dict[str, Any]] = {s: _zero() for s in SOURCES}

    def apply(self, index: int, payload: dict[str, Any]) -> None:
        """A worker's STATS ``batching`` payload: ``{source: counters}`` of the sources that changed."""
        current = dict(self.workers.get(index, {}))
        for source, counters in payload.items():
            if source in SOURCES and isinstance(counters, dict):
                current[source] = counters
        self.workers[index] = current  # replaced whole: a scrape never sees half an update

    def retire(self, index: int) -> None:
        for source, counters in self.workers.pop(index, {}).items():
            _add(self.retired[source], counters)

    def totals(self) -> dict[str, dict[str, Any]]:
        out = {}
        for source in SOURCES:
            total = _zero()
            _add(total, self.retired[source])
            for counters in list(self.workers.values()):
                if source in counters:
                    _add(total, counters[source])
            out[source] = total
        return out

    def collect(self) -> Iterator[Metric]:
        totals = self.totals()
        size = HistogramMetricFamily("scorehost_batch_size", "Calls per batched execution (one session.run, or "
                                     "one call of a @batch function); a call that ran alone counts as 1.",
                                     labels=["source"])  # fmt: skip
        delay = HistogramMetricFamily("scorehost_batch_queue_delay_seconds", "How long a call waited in a "
                                      "batcher before its batch started.", labels=["source"])  # fmt: skip
        fallbacks = CounterMetricFamily("scorehost_batch_fallbacks", "Batches that failed and were run again one "
                                        "call at a time.", labels=["source"])  # fmt: skip
        expired = CounterMetricFamily("scorehost_batch_expired", "Calls whose deadline passed while they waited "
                                      "for their batch: answered 504, never run.", labels=["source"])  # fmt: skip
        for source, t in totals.items():
            size.add_metric([source], _buckets(SIZE_BOUNDS, t["size"]), t["size_sum"])
            delay.add_metric([source], _buckets(DELAY_BOUNDS, t["delay"]), t["delay_sum"])
            fallbacks.add_metric([source], t["fallbacks"])
            expired.add_metric([source], t["expired"])
        yield from (size, delay, fallbacks, expired)
