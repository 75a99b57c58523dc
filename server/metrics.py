"""Prometheus metrics, recorded in the HTTP process (``GET /metrics``).

The HTTP process sees every request, so everything is recorded there, in one ordinary
``prometheus_client`` registry (not the library's multiprocess mode):

* per request, on the event loop: :class:`Recorder` bumps two counters and appends to three
  lists, bucketed in bulk later (no lock: only the loop thread writes; a scrape copies on the
  loop too, so it reads a consistent state). That is the whole hot-path cost, about 8,400
  instructions (docs/benchmarks.md);
* the worker's view comes in its frames: each REPLY carries ``exec_ms`` (``run()``'s own
  time) and ``started_at`` (when the worker began the call, which ends the queue wait),
  and the model stores send their counters in STATS frames (:mod:`server.store.stats`);
* everything that is state rather than an event (in-flight and queued calls, slots,
  utilisation, worker states and memory, model states) is read at scrape time by
  :class:`server.metrics_collect.ServerCollector`, never updated per request.

User metrics: an entry script may define its own ``prometheus_client`` metrics. Workers
run with ``PROMETHEUS_MULTIPROC_DIR`` set to a temporary folder owned by the server
(removed at exit); the library's :class:`MultiProcessCollector` merges it into
``/metrics``, and a dead worker's live gauges are dropped with ``mark_process_dead``.

Pure ``prometheus_client``: no Starlette here (the route is :mod:`server.http.observe`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import weakref
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from server.batching.metrics import BatchTotals
from server.errors import NotReady, ScoreHostError, ScoringTimeout
from server.metrics_collect import ModelTotals, ServerCollector, Snapshot, families
from server.workers.protocol import Reply

if TYPE_CHECKING:
    from server.settings import Settings
    from server.workers.pool import WorkerPool
    from server.workers.supervision import Worker

logger = logging.getLogger("scorehost.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: from 25 µs (an echo run()) to two minutes (past the default 60 s scoring timeout),
# about 1-1.5-2-3-5-7.5 steps where calls usually fall, so percentiles interpolate within ~50%.
BUCKETS: tuple[float, ...] = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.00075,
    0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

# Observations wait in a list until this many, then go into their buckets at once.
FOLD_AT = 4096

# The route label: fixed paths as they are, everything else folded into a few templates, so
# no client can grow the label set.
_FIXED_ROUTES = frozenset(
    ("/score", "/", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/swagger.json",
     "/metrics", "/v2")
)  # fmt: skip


V2_INFER_ROUTE = "/v2/models/{model}/infer"


def route_of(path: str) -> str:
    """The bounded route label of a request path."""
    if path in _FIXED_ROUTES:
        return path
    if path.startswith("/v2/models/"):
        if path.endswith("/infer"):
            return V2_INFER_ROUTE
        if path.endswith("/ready"):
            return "/v2/models/{model}/ready"
        return "/v2/models/{model}"
    if path.startswith("/v2/"):
        return "/v2/other"
    return "other"


class Histogram:
    """A histogram for the event loop's thread.

    An observation is one list append: values are put in buckets in bulk, :data:`FOLD_AT`
    at a time or at a scrape (sort, then one bisect per bound), which costs a tenth of
    bucketing each value as it comes. ``fold()`` before reading ``counts`` or ``sum``."""

    __slots__ = ("bounds", "counts", "pending", "sum")

    def __init__(self, bounds: Sequence[float] = BUCKETS) -> None:
        self.bounds = list(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.pending: list[float] = []  # observed, not in a bucket yet (cleared, never replaced)

    def observe(self, seconds: float) -> None:
        pending = self.pending
        pending.append(seconds)
        if len(pending) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Put the pending values in their buckets (``le``: a value equal to a bound is in it)."""
        pending = self.pending
        if not pending:
            return
        pending.sort()
        counts = self.counts
        below = 0
        for i, bound in enumerate(self.bounds):
            upto = bisect_right(pending, bound)
            counts[i] += upto - below
            below = upto
        counts[-1] += len(pending) - below
        self.sum += sum(pending)
        pending.clear()

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of observations <= le) pairs, ending with +Inf, as exposition wants them."""
        self.fold()
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip([*map(floatToGoString, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append((bound, float(total)))
        return out

    @property
    def count(self) -> int:
        self.fold()
        return sum(self.counts)

    def copy(self) -> Histogram:
        self.fold()
        twin = Histogram.__new__(Histogram)
        twin.bounds, twin.counts, twin.sum, twin.pending = self.bounds, list(self.counts), self.sum, []
        return twin


class Recorder:
    """The per-request counters. Called on the HTTP process's event loop only.

    NOTE: the two per-request methods (:meth:`score`, :meth:`reply`) append to the histograms'
    pending lists directly: a method call saved is a tenth of a microsecond on a 50 µs request."""

    __slots__ = ("exec_pending", "exec_time", "latency", "queue_wait", "requests", "score_counts", "score_latency",
                 "score_pending", "timeouts", "unavailable", "wait_pending")  # fmt: skip

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        # /score, the hot path: (method, status) counts and its histogram, without a route lookup.
        self.score_counts: dict[tuple[str, int], int] = {}
        self.score_latency = self.latency["/score"] = Histogram()
        self.queue_wait = Histogram()
        self.exec_time = Histogram()
        self.score_pending = self.score_latency.pending
        self.wait_pending = self.queue_wait.pending
        self.exec_pending = self.exec_time.pending
        self.unavailable: dict[str, int] = {}  # 503s counted here (others: at their source)
        self.timeouts = 0  # 504s

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """A request on any route but the /score fast path."""
        key = (route, method, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        hist = self.latency.get(route)
        if hist is None:
            hist = self.latency[route] = Histogram()
        hist.observe(seconds)

    def score(self, method: str, status: int, seconds: float) -> None:
        """A /score request on the fast path."""
        key = (method, status)
        counts = self.score_counts
        counts[key] = counts.get(key, 0) + 1
        pending = self.score_pending
        pending.append(seconds)
        if len(pending) >= FOLD_AT:
            self.score_latency.fold()

    def all_requests(self) -> dict[tuple[str, str, int], int]:
        """Every route's counts, /score's fast-path counts folded in."""
        out = dict(self.requests)
        for (method, status), n in self.score_counts.items():
            key = ("/score", method, status)
            out[key] = out.get(key, 0) + n
        return out

    def reply(self, arrived: float, reply: Reply) -> None:
        """A worker's reply (or a stream's head): its queue wait and run() time."""
        started = reply.started_at
        if started is None:  # refused by the worker: answered 503/504 here already
            return
        pending = self.wait_pending
        pending.append(started - arrived)  # the same clock in both processes: never negative
        if len(pending) >= FOLD_AT:
            self.queue_wait.fold()
        exec_ms = reply.exec_ms
        if exec_ms is not None:
            pending = self.exec_pending
            pending.append(exec_ms * 0.001)
            if len(pending) >= FOLD_AT:
                self.exec_time.fold()
        if reply.status == 503:  # the model store's (or the script's) own 503
            self.refused("model_not_ready")

    def refused(self, reason: str) -> None:
        self.unavailable[reason] = self.unavailable.get(reason, 0) + 1

    def error(self, exc: ScoreHostError, draining: bool) -> None:
        """An error answered by the HTTP process (queue refusals are counted by admission)."""
        if isinstance(exc, ScoringTimeout):
            self.timeouts += 1
        elif isinstance(exc, NotReady):
            self.refused("draining" if draining else "not_ready")


class Metrics:
    """The registry behind ``/metrics`` and what feeds it; one per server."""

    def __init__(self, settings: Settings, pool: WorkerPool, connections: Any = None) -> None:
        self.settings = settings
        self.pool = pool
        self.recorder = Recorder()
        self.models = ModelTotals(settings.metrics_per_model)
        self.multiproc_dir = tempfile.mkdtemp(prefix="scorehost-metrics-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.multiproc_dir, True)
        base = pool.worker_env if pool.worker_env is not None else os.environ
        if base.get(MULTIPROC_ENV):
            logger.info("%s is replaced in the workers by the server's own folder", MULTIPROC_ENV)
        pool.worker_env = {**base, MULTIPROC_ENV: self.multiproc_dir}
        pool.monitor = self
        pool.on_answer = self.recorder.reply
        self.collector = ServerCollector(self, connections)
        # The library's collectors: the HTTP process itself, and the scripts' metrics.
        self.library: list[Collector] = [
            ProcessCollector(registry=None),
            PlatformCollector(registry=None),
            multiprocess.MultiProcessCollector(None, path=self.multiproc_dir),  # type: ignore[no-untyped-call]
        ]
        self.batching = BatchTotals()  # dynamic batching's counters (server.batching.metrics)
        self.library.append(self.batching)  # read off the loop as these are: it copies first
        self.registry = CollectorRegistry()
        for collector in (self.collector, *self.library):
            self.registry.register(collector)

    # --- WorkerMonitor (server.workers.supervision) ------------------------------
    def on_stats(self, worker: Worker, payload: dict[str, Any]) -> None:
        if "batching" in payload:  # a frame of its own (server.batching.stats)
            self.batching.apply(worker.index, payload["batching"])
            return
        self.models.apply(worker.index, payload)

    def on_exit(self, worker: Worker, pid: int | None, cause: str) -> None:
        self.models.retire(worker.index)
        self.batching.retire(worker.index)
        if pid is not None:
            try:
                multiprocess.mark_process_dead(pid, self.multiproc_dir)  # type: ignore[no-untyped-call]
            except OSError:  # pragma: no cover - the folder was removed at shutdown
                pass

    # --- exposition ------------------------------------------------------------
    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks for it).

        The numbers are copied here, on the event loop; the families are built and formatted
        on a thread (5 ms GIL slices), so a large scrape (1,000 models: tens of ms) does not
        stall the requests in between."""
        encoder, content_type = choose_encoder(accept or "")
        frozen = _Frozen(self.collector.snapshot(), self.library)
        return await asyncio.to_thread(encoder, frozen), content_type

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every sample as (name, labels, value): for tests and the load-test report."""
        for family in self.registry.collect():
            for sample in family.samples:
                yield sample.name, sample.labels, sample.value

    def close(self) -> None:
        """Remove the multiprocess folder (the workers have stopped)."""
        self._cleanup()


class _Frozen(Collector):
    """One scrape's families: a snapshot taken on the loop, and the library's collectors."""

    def __init__(self, snapshot: Snapshot, library: list[Collector]) -> None:
        self.snapshot = snapshot
        self.library = library

    def collect(self) -> Iterable[Metric]:
        yield from families(self.snapshot)
        for collector in self.library:
            yield from collector.collect()
