"""What ``/metrics`` reads at scrape time: the recorder's counters, the pool's state, the
workers' processes and the model stores' last reports.

Nothing here runs per request. A scrape is two steps: :meth:`ServerCollector.snapshot`, on
the HTTP process's event loop, copies the numbers (it sees the pool between two events,
never half-way through one; about a millisecond with 1,000 models); then
:func:`families` turns the copy into metric families and the exposition is formatted, on a
thread (:meth:`server.metrics.Metrics.render`), so a large scrape does not hold the loop.

Label sets are bounded: routes are folded into templates (:func:`server.metrics.route_of`),
workers are at most 64, and per-model series (about four per model version) exist only with
``metrics_per_model``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from server import __version__
from server.workers.supervision import State

if TYPE_CHECKING:
    from server.metrics import Histogram, Metrics

UNAVAILABLE_REASONS = ("queue_full", "queue_timeout", "not_ready", "draining", "model_not_ready", "connections")
RESTART_CAUSES = ("crash", "init_failed", "init_timeout", "wedged")
# The connection layer's refusals (server.http.connection.Counters) that answer with a status.
CONNECTION_ERRORS = {
    "bad_requests": "bad_request",
    "header_too_large": "header_too_large",
    "too_many_headers": "too_many_headers",
    "header_timeouts": "header_timeout",
    "body_timeouts": "body_timeout",
}
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

ModelKey = tuple[str, str]
ModelRow = tuple[str, float, int, int]  # state, load seconds, inferences, errors


class _WorkerStore:
    """One worker's store, as its last STATS frames described it."""

    __slots__ = ("counts", "evictions", "loads", "models")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.evictions = 0
        self.loads = 0
        self.models: dict[ModelKey, ModelRow] = {}

    def copy(self) -> _WorkerStore:
        twin = _WorkerStore()
        twin.counts, twin.evictions, twin.loads = self.counts, self.evictions, self.loads
        twin.models = dict(self.models)
        return twin


class ModelTotals:
    """The model stores of every worker. A worker that exits hands its counters to the
    retired totals, so the exported counters never go down when a worker is replaced."""

    def __init__(self, per_model: bool) -> None:
        self.per_model = per_model
        self.workers: dict[int, _WorkerStore] = {}
        self.retired_loads = 0
        self.retired_evictions = 0
        self.retired: dict[ModelKey, tuple[int, int]] = {}  # inferences, errors

    def apply(self, index: int, payload: dict[str, Any]) -> None:
        store = self.workers.get(index)
        if store is None:
            store = self.workers[index] = _WorkerStore()
        store.counts = {str(k): int(v) for k, v in payload.get("counts", {}).items()}
        store.loads = int(payload.get("loads", 0))
        store.evictions = int(payload.get("evictions", 0))
        for name, version, state, load_s, inferences, errors in payload.get("models", ()):
            store.models[(str(name), str(version))] = (str(state), float(load_s), int(inferences), int(errors))

    def retire(self, index: int) -> None:
        store = self.workers.pop(index, None)
        if store is None:
            return
        self.retired_loads += store.loads
        self.retired_evictions += store.evictions
        for key, (_, _, inferences, errors) in store.models.items():
            done_inf, done_err = self.retired.get(key, (0, 0))
            self.retired[key] = (done_inf + inferences, done_err + errors)

    def copy(self) -> ModelTotals:
        twin = ModelTotals(self.per_model)
        twin.workers = {i: s.copy() for i, s in self.workers.items()}
        twin.retired_loads, twin.retired_evictions, twin.retired = (
            self.retired_loads, self.retired_evictions, dict(self.retired))  # fmt: skip
        return twin

    def families(self) -> Iterator[Metric]:
        if not self.workers and not self.retired_loads:
            return  # no model store in this server
        counts = GaugeMetricFamily("scorehost_models", "Models in each store state, per worker "
                                   "(loaded, failed, loading, lazy: not loaded yet or evicted).",
                                   labels=["worker", "state"])  # fmt: skip
        for index, store in sorted(self.workers.items()):
            for state, n in sorted(store.counts.items()):
                counts.add_metric([str(index), state], n)
        yield counts
        loads = self.retired_loads + sum(s.loads for s in self.workers.values())
        evictions = self.retired_evictions + sum(s.evictions for s in self.workers.values())
        yield CounterMetricFamily("scorehost_model_loads", "Models loaded (start-up and lazy loads), all workers.",
                                  value=loads)  # fmt: skip
        yield CounterMetricFamily("scorehost_model_evictions", "Models evicted by the LRU limits, all workers.",
                                  value=evictions)  # fmt: skip
        if self.per_model:
            yield from self._per_model()

    def _per_model(self) -> Iterator[Metric]:
        states: dict[tuple[str, str, str], int] = {}
        load_s: dict[ModelKey, float] = {}
        totals: dict[ModelKey, list[int]] = {k: [i, e] for k, (i, e) in self.retired.items()}
        for store in self.workers.values():
            for key, (label, seconds, inferences, errors) in store.models.items():
                skey = (*key, label)
                states[skey] = states.get(skey, 0) + 1
                if seconds > load_s.get(key, 0.0):
                    load_s[key] = seconds
                total = totals.setdefault(key, [0, 0])
                total[0] += inferences
                total[1] += errors
        state_family = GaugeMetricFamily("scorehost_model_state", "Workers in which the model version is in this "
                                         "state.", labels=["model", "version", "state"])  # fmt: skip
        for (name, version, label), n in sorted(states.items()):
            state_family.add_metric([name, version, label], n)
        yield state_family
        load_family = GaugeMetricFamily("scorehost_model_load_seconds", "The model version's last load, warm-up "
                                        "included (the slowest worker's).", labels=["model", "version"])  # fmt: skip
        for (name, version), value in sorted(load_s.items()):
            load_family.add_metric([name, version], value)
        yield load_family
        inf_family = CounterMetricFamily("scorehost_model_inferences", "Model.run calls (V2 and scripts).",
                                         labels=["model", "version"])  # fmt: skip
        err_family = CounterMetricFamily("scorehost_model_errors", "Model.run calls that raised (bad input, "
                                         "runtime errors).", labels=["model", "version"])  # fmt: skip
        for (name, version), (inf, err) in sorted(totals.items()):
            inf_family.add_metric([name, version], inf)
            err_family.add_metric([name, version], err)
        yield inf_family
        yield err_family


@dataclass
class WorkerView:
    index: int
    state: State
    init_seconds: float | None
    pid: int | None


@dataclass
class Snapshot:
    """Every number a scrape reports, copied on the event loop."""

    requests: dict[tuple[str, str, int], int]
    latency: dict[str, Histogram]
    queue_wait: Histogram
    exec_time: Histogram
    unavailable: dict[str, int]
    timeouts: int
    connection_errors: dict[str, int] | None
    open_connections: int
    gauges: list[tuple[str, str, float]]
    workers: list[WorkerView]
    restarts: dict[str, int]
    models: ModelTotals


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], hist.cumulative(), hist.sum)
    return family


def _process(pid: int) -> tuple[float, float] | None:
    """(resident bytes, CPU seconds) of a process, from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return float(rss), (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


class ServerCollector(Collector):
    """Everything scorehost exports itself (the process, platform and user metrics are the
    library's collectors). ``collect`` takes a snapshot and formats it in one go (tests, and
    any registry user); ``/metrics`` splits the two (:meth:`server.metrics.Metrics.render`)."""

    def __init__(self, metrics: Metrics, connections: Any = None) -> None:
        self.metrics = metrics
        self.connections = connections  # server.http.connection.Guard, when served by uvicorn

    def collect(self) -> Iterator[Metric]:
        return families(self.snapshot())

    def snapshot(self) -> Snapshot:
        """Copy what a scrape reports. Runs on the event loop: copies, no formatting."""
        m = self.metrics
        rec, pool, settings = m.recorder, m.pool, m.settings
        unavailable = dict.fromkeys(UNAVAILABLE_REASONS, 0)
        unavailable.update(rec.unavailable)
        unavailable["queue_full"] += pool.queue.refused_full
        unavailable["queue_timeout"] += pool.queue.refused_timeout + pool.pipeline_timeouts
        guard = self.connections
        errors = None
        open_connections = 0
        if guard is not None:
            unavailable["connections"] += guard.counters.refused
            errors = {reason: getattr(guard.counters, attr) for attr, reason in CONNECTION_ERRORS.items()}
            open_connections = len(getattr(guard, "_connections", ()))
        workers = pool.workers
        slots = sum(w.slots for w in workers)
        busy = sum(min(w.busy, w.slots) for w in workers)
        gauges = [
            ("scorehost_in_flight_calls", "Calls held by workers (running, pipelined, or past their deadline "
             "and still running).", sum(w.busy for w in workers)),
            ("scorehost_queued_requests", "Requests waiting in the admission queue for a slot.", len(pool.queue)),
            ("scorehost_pipelined_calls", "Calls sent ahead into a busy worker, waiting there to start.",
             sum(max(0, len(w.in_flight) - w.slots) for w in workers)),
            ("scorehost_slots", "Concurrency slots (max_concurrent_requests over the workers).", slots),
            ("scorehost_busy_slots", "Slots held by a call.", busy),
            ("scorehost_utilization", "Busy slots / slots, at scrape time (0..1).", busy / slots if slots else 0.0),
            ("scorehost_queue_limit", "max_queue_length.", settings.max_queue_length),
            ("scorehost_scoring_timeout_seconds", "scoring_timeout_ms in seconds.", settings.scoring_timeout_ms / 1e3),
        ]  # fmt: skip
        views = [
            WorkerView(
                w.index,
                w.state,
                w.ready_at - w.started_at if w.ready_at >= w.started_at > 0 else None,
                w.proc.pid if w.proc is not None and w.proc.returncode is None else None,
            )
            for w in workers
        ]
        return Snapshot(
            requests=rec.all_requests(),
            latency={route: h.copy() for route, h in rec.latency.items()},
            queue_wait=rec.queue_wait.copy(),
            exec_time=rec.exec_time.copy(),
            unavailable=unavailable,
            timeouts=rec.timeouts,
            connection_errors=errors,
            open_connections=open_connections,
            gauges=gauges,
            workers=views,
            restarts=dict(pool.restart_causes),
            models=m.models.copy(),
        )


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of a snapshot (safe on any thread: it reads only the copy, and /proc)."""
    info = GaugeMetricFamily("scorehost_build", "scorehost's version.", labels=["version"])
    info.add_metric([__version__], 1)
    yield info
    yield from _requests(snap)
    for name, doc, value in snap.gauges:
        yield GaugeMetricFamily(name, doc, value=value)
    yield from _workers(snap)
    yield from snap.models.families()


def _requests(snap: Snapshot) -> Iterator[Metric]:
    requests = CounterMetricFamily("scorehost_requests", "HTTP requests answered, by route template, method "
                                   "and status.", labels=["route", "method", "status"])  # fmt: skip
    for (route, method, status), n in sorted(snap.requests.items()):
        requests.add_metric([route, method, str(status)], n)
    yield requests
    latency = HistogramMetricFamily("scorehost_request_duration_seconds", "Time in the HTTP process from the "
                                    "request's arrival to its last byte sent.", labels=["route"])  # fmt: skip
    for route, hist in sorted(snap.latency.items()):
        latency.add_metric([route], hist.cumulative(), hist.sum)
    yield latency
    yield _histogram("scorehost_queue_wait_seconds", "From a call's arrival at the pool to its worker starting "
                     "it (admission queue and worker pipeline).", snap.queue_wait)  # fmt: skip
    yield _histogram("scorehost_run_seconds", "run() (or the V2 inference), as the worker timed it.",
                     snap.exec_time)  # fmt: skip
    unavailable = CounterMetricFamily("scorehost_unavailable", "503 answers by reason.", labels=["reason"])
    for reason, n in snap.unavailable.items():
        unavailable.add_metric([reason], n)
    yield unavailable
    yield CounterMetricFamily("scorehost_timeouts", "504 answers: run() passed scoring_timeout_ms.",
                              value=snap.timeouts)  # fmt: skip
    if snap.connection_errors is not None:
        refused = CounterMetricFamily("scorehost_connection_errors", "Requests the connection layer answered "
                                      "before routing (400, 408, 431), by reason.", labels=["reason"])  # fmt: skip
        for reason, n in snap.connection_errors.items():
            refused.add_metric([reason], n)
        yield refused
        yield GaugeMetricFamily("scorehost_open_connections", "Open client connections.", value=snap.open_connections)


def _workers(snap: Snapshot) -> Iterator[Metric]:
    state = GaugeMetricFamily("scorehost_worker_state", "1 for the worker's current state.",
                              labels=["worker", "state"])  # fmt: skip
    init = GaugeMetricFamily("scorehost_worker_init_seconds", "The worker's last start-up: spawn to READY "
                             "(imports, init(), model loading).", labels=["worker"])  # fmt: skip
    rss = GaugeMetricFamily("scorehost_worker_resident_memory_bytes", "The worker process's resident memory.",
                            labels=["worker"])  # fmt: skip
    cpu = CounterMetricFamily("scorehost_worker_cpu_seconds", "The worker process's CPU time (starts at 0 "
                              "when the worker is replaced).", labels=["worker"])  # fmt: skip
    for w in snap.workers:
        index = str(w.index)
        for s in State:
            state.add_metric([index, s.value], 1.0 if w.state is s else 0.0)
        if w.init_seconds is not None:
            init.add_metric([index], w.init_seconds)
        usage = _process(w.pid) if w.pid is not None else None
        if usage is not None:
            rss.add_metric([index], usage[0])
            cpu.add_metric([index], usage[1])
    yield from (state, init, rss, cpu)
    restarts = CounterMetricFamily("scorehost_worker_restarts", "Worker restarts by cause: crash, init_failed, "
                                   "init_timeout, wedged.", labels=["cause"])  # fmt: skip
    for cause in RESTART_CAUSES:
        restarts.add_metric([cause], snap.restarts.get(cause, 0))
    for cause, n in sorted(snap.restarts.items()):
        if cause not in RESTART_CAUSES:
            restarts.add_metric([cause], n)
    yield restarts
