"""Dynamic batching for the model store: calls for one model run as one ``session.run``.

    batching = plan(inputs, outputs, max_batch_size=32, max_queue_delay_us=0, preferred=())
    model = open_model(session, source, settings)     # Model + metadata.batching (+ its batcher)
    run_jobs(model, jobs, max_rows)                   # fills job.result / job.error, never raises

A model batches when its ``max_batch_size`` (the ``max_batch_size`` setting, or its
``<stem>.scorehost.json``) is above 1 and every input and output has a dynamic first dimension
(the batch axis). Calls are *grouped by shape*: only calls whose inputs agree on every other
dimension and dtype are concatenated along the batch axis, at most ``max_batch_size`` rows at
once, and each caller gets its own rows of every output. A call with more rows than that, or
whose inputs disagree on their first dimension, runs alone.

Isolation: inputs are checked before they join (V2 decoding, ``Model._check``), so a bad input
fails its own call with 400. A batch that still fails (onnxruntime refused or crashed on it) is
run again one call at a time, so one poisoned input fails only its own call; that is counted as
a fallback (:mod:`server.batching.stats`). A model whose outputs turn out not to follow the batch
axis stops batching, with the reason in the log.

Who batches: V2 requests are batched in the worker, across connections
(:mod:`server.store.v2batch`); ``Model.run`` from several threads at once (entry scripts with
several slots) through :class:`ModelBatcher`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from server.batching.queue import Policy, ThreadBatcher, Waiter, expired_error
from server.batching.stats import STATS
from server.store.sessions import PLATFORM, Model, ModelMetadata, TensorSpec, tensor_spec

if TYPE_CHECKING:
    from server.settings import Settings
    from server.store.repository import ModelSource

logger = logging.getLogger(__name__)

_stats = STATS["model"]


@dataclass(frozen=True, slots=True)
class Batching:
    """A model's batching, as its metadata reports it: on, or why not."""

    enabled: bool
    max_batch_size: int = 1
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    reason: str | None = None  # why it is off

    @property
    def policy(self) -> Policy:
        return Policy(self.max_batch_size, self.max_queue_delay_us / 1e6, self.preferred_batch_sizes)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
        }
        if self.reason:
            out["reason"] = self.reason
        return out


def axis_problem(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str | None:
    """Why calls of a model with these tensors cannot be concatenated on the first dimension, or None."""
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if spec.dtype is None:
                return f"{kind} {spec.name!r} is {spec.onnx_type}, not a tensor"
            if not spec.shape:
                if kind == "input":  # an output of unknown rank is checked when it comes back
                    return f"input {spec.name!r} has no batch axis (a scalar, or of unknown rank)"
            elif spec.shape[0] != -1:
                return f"{kind} {spec.name!r} has a fixed first dimension ({spec.shape[0]}), not a batch axis"
    return None


def plan(
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    max_queue_delay_us: int,
    preferred: Sequence[int] = (),
) -> Batching:
    """A model's batching from its tensors and its effective settings."""
    kept = tuple(sorted({p for p in preferred if 1 < p <= max_batch_size}))
    problem = axis_problem(inputs, outputs)
    if problem is not None:
        return Batching(False, max_batch_size, max_queue_delay_us, kept, f"cannot batch: {problem}")
    if max_batch_size <= 1:
        return Batching(False, max_batch_size, max_queue_delay_us, kept, "off (max_batch_size is 1)")
    return Batching(True, max_batch_size, max_queue_delay_us, kept)


def open_model(session: Any, source: ModelSource, settings: Settings) -> Model:
    """The Model of a new session: its metadata, batching included, and its batcher when batching is on."""
    inputs = tuple(tensor_spec(a) for a in session.get_inputs())
    outputs = tuple(tensor_spec(a) for a in session.get_outputs())
    cfg = source.config
    batching = plan(
        inputs,
        outputs,
        max_batch_size=settings.max_batch_size if cfg.max_batch_size is None else cfg.max_batch_size,
        max_queue_delay_us=settings.max_queue_delay_us if cfg.max_queue_delay_us is None else cfg.max_queue_delay_us,
        preferred=cfg.preferred_batch_sizes or (),
    )
    if not batching.enabled and batching.max_batch_size > 1:
        # Asked for and impossible: say so once per model (it still serves, one call at a time).
        log = logger.warning if cfg.max_batch_size is not None else logger.debug
        log("model %s version %s: batching %s", source.name, source.version, batching.reason)
    providers = tuple(session.get_providers())
    metadata = ModelMetadata(source.name, source.version, PLATFORM, inputs, outputs, providers, batching)
    model = Model(session, metadata)
    if batching.enabled:
        model.batcher = ModelBatcher(batching)
    return model


# --- running jobs ---------------------------------------------------------------------------
class Job:
    """One call's checked inputs, the outputs it wants, and then its result or error."""

    __slots__ = ("deadline", "error", "feed", "key", "names", "queued_at", "result", "rows")

    def __init__(
        self, feed: dict[str, Any], names: list[str] | None, queued_at: float, due: float | None = None
    ) -> None:
        self.feed = feed
        self.names = names  # None: every output
        self.queued_at = queued_at
        self.deadline = due
        self.rows, self.key = _shape_key(feed)
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None


def _shape_key(feed: dict[str, Any]) -> tuple[int, Any]:
    """(rows, what must agree to share a batch); key None: the call runs alone."""
    rows = -1
    parts = []
    for name, value in feed.items():
        shape = getattr(value, "shape", None)
        if not shape or (rows >= 0 and shape[0] != rows):
            return 0, None
        rows = shape[0]
        parts.append((name, shape[1:], value.dtype))
    if rows <= 0:
        return 0, None
    parts.sort(key=_first)  # names are unique: shapes and dtypes are never compared
    return rows, tuple(parts)


def _first(part: tuple[str, Any, Any]) -> str:
    return part[0]


def run_jobs(model: Model, jobs: list[Job], max_rows: int, *, count: bool = True) -> None:
    """Run ``jobs`` (calls for ``model``) in as few ``session.run`` as their shapes allow.

    Each job gets ``result`` (its outputs) or ``error``; nothing raises. Jobs past their deadline
    get a 504 error and do not run. ``count``: add the calls to the model's /metrics counters
    (``Model.run`` counts its own).
    """
    batcher = model.batcher
    if batcher is not None and batcher.disabled:
        max_rows = 1
    now = time.monotonic()
    groups: dict[Any, list[Job]] = {}
    expired = 0
    for job in jobs:
        if job.deadline is not None and job.deadline <= now:
            job.error = expired_error()
            expired += 1
        elif job.key is not None and job.rows <= max_rows:
            groups.setdefault(job.key, []).append(job)
        else:
            groups[id(job)] = [job]
    if expired:
        _stats.expire(expired)
    for group in groups.values():
        start = 0
        while start < len(group):
            end, rows = start + 1, group[start].rows
            while end < len(group) and rows + group[end].rows <= max_rows:
                rows += group[end].rows
                end += 1
            chunk = group[start:end]
            started = time.monotonic()
            _stats.executed(len(chunk), [started - j.queued_at for j in chunk])
            if len(chunk) == 1:
                _alone(model, chunk[0])
            else:
                _together(model, chunk, rows)
            start = end
    counters = model.stats
    if count and counters is not None:
        # NOTE: unlocked, as Model.run's own counts.
        counters.inferences += len(jobs)
        counters.errors += sum(1 for j in jobs if j.error is not None)


def _alone(model: Model, job: Job) -> None:
    names = job.names or list(model.outputs)
    try:
        job.result = dict(zip(names, model.execute(names, job.feed), strict=True))
    except Exception as exc:
        job.error = exc


class _Misaligned(Exception):
    """An output of a batch does not have the batch's rows on its first dimension."""


def _together(model: Model, chunk: list[Job], rows: int) -> None:
    names = _union(model, chunk)
    try:
        feed = {name: np.concatenate([j.feed[name] for j in chunk]) for name in chunk[0].feed}
        values = model.execute(names, feed)
        del feed
        for name, value in zip(names, values, strict=True):
            if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != rows:
                shape = getattr(value, "shape", type(value).__name__)
                raise _Misaligned(f"output {name!r} of a {rows}-row batch has shape {shape}")
    except Exception as exc:
        _stats.fallback()
        if isinstance(exc, _Misaligned) and model.batcher is not None:
            model.batcher.disable(model, str(exc))
        else:
            logger.warning("model %s: a batch of %d calls failed (%s); running them one at a time",
                           model.name, len(chunk), exc)  # fmt: skip
        for job in chunk:
            _alone(model, job)
        return
    index = {name: i for i, name in enumerate(names)}
    offset = 0
    for job in chunk:
        end = offset + job.rows
        # Rows of a C-contiguous array: views, still C-contiguous (what the V2 encoder needs).
        job.result = {n: values[index[n]][offset:end] for n in (job.names or names)}
        offset = end


def _union(model: Model, chunk: list[Job]) -> list[str]:
    """The outputs any job of the chunk wants, in the model's order."""
    wanted: set[str] = set()
    for job in chunk:
        if job.names is None:
            return list(model.outputs)
        wanted.update(job.names)
    return [n for n in model.outputs if n in wanted]


# --- Model.run from many threads ------------------------------------------------------------
class ModelBatcher:
    """A batching model's ``Model.run``: calls from several threads at once share a batch.

    A call alone runs at once on its own thread; calls made while a batch runs wait and run
    together next (:class:`server.batching.queue.ThreadBatcher`). A waiting call whose deadline
    (:data:`server.deadline.current`) passes is answered with ScoringTimeout and never runs.
    """

    __slots__ = ("_threads", "batching", "disabled")

    def __init__(self, batching: Batching) -> None:
        self.batching = batching
        self.disabled: str | None = None  # why batching stopped at run time
        self._threads: ThreadBatcher[tuple[Model, Job]] = ThreadBatcher(self._execute, batching.policy, _stats.expire)

    def submit(self, model: Model, feed: dict[str, Any], names: list[str]) -> dict[str, Any]:
        job = Job(feed, names, time.monotonic())
        result: dict[str, Any] = self._threads.submit((model, job), max(job.rows, 1))
        return result

    def _execute(self, waiters: list[Waiter[tuple[Model, Job]]]) -> None:
        model = waiters[0].item[0]
        jobs = [w.item[1] for w in waiters]
        for w, job in zip(waiters, jobs, strict=True):
            job.queued_at = w.queued_at
        run_jobs(model, jobs, self.batching.max_batch_size, count=False)
        for w, job in zip(waiters, jobs, strict=True):
            if job.error is not None:
                w.error = job.error
            else:
                w.result = job.result

    def disable(self, model: Model, reason: str) -> None:
        if self.disabled is None:
            self.disabled = reason
            logger.warning("model %s version %s: batching stopped: %s; its calls now run one at a time",
                           model.name, model.version, reason)  # fmt: skip
