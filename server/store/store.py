"""The model store: up to ``max_models`` ONNX models in one process, with bounded
threads and memory.

For entry scripts::

    from server.models import get_store

    def init():
        global model
        model = get_store().get("fraud")            # newest version

    def run(raw):
        return model.run({"x": np.asarray(raw, np.float32)})["y"].tolist()

For the worker process (Open Inference Protocol serving)::

    store = open_store(settings, progress=send_state)   # blocks until loaded
    ready, progress = store.readiness()

Errors are ``server.errors`` types: ModelNotFound (404), ModelNotReady (503, with
the load failure as the reason), InvalidInput (400, naming the input); a start-up
problem (no model_dir, no models, more than max_models) is ModelStoreError.
"""

from __future__ import annotations

import builtins
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any

from server import deadline
from server import settings as settings_module
from server.errors import ModelNotFound, ModelNotReady, ModelStoreError
from server.settings import Settings
from server.store.batcher import open_model
from server.store.repository import DiscoveryError, ModelSource, discover, warmup_feed
from server.store.sessions import (
    Model,
    ModelMetadata,
    Runtime,
    TensorSpec,
    configure_runtime,
    create_session,
    describe_error,
    parse_device,
    plan_providers,
    session_options,
)
from server.store.stats import ModelStats

__all__ = [
    "Model",
    "ModelInfo",
    "ModelMetadata",
    "ModelState",
    "ModelStore",
    "ModelStoreError",
    "TensorSpec",
    "current_store",
    "get_store",
    "open_store",
]

logger = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

_PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress calls per second
_MAX_REPORTED_FAILURES = 50  # keeps the readiness payload small with 1,000 broken models
_MAX_REASON = 500
_COMPACT_ABOVE = 100  # model_compact=auto: compact sessions when the store holds more models


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNLOADED = "UNLOADED"  # lazy mode: not loaded yet, or evicted; loads on next use


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model's entry in ``store.list()``."""

    name: str
    version: str
    state: ModelState
    reason: str | None
    path: str | None
    size_bytes: int


class _Entry:
    __slots__ = ("lock", "metadata", "model", "reason", "source", "state", "stats")

    def __init__(self, source: ModelSource, state: ModelState) -> None:
        self.source = source
        self.state = state
        self.reason: str | None = source.error
        self.model: Model | None = None
        self.metadata: ModelMetadata | None = None
        self.lock = threading.Lock()  # one load at a time per model (lazy mode)
        self.stats = ModelStats()  # for /metrics (server.store.stats)


class ModelStore:
    """The models under one model directory. Build it with ``open_store``."""

    def __init__(
        self, settings: Settings, sources: Sequence[ModelSource], runtime: Runtime, progress: Progress | None
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._callback = progress
        self._lazy = settings.lazy_models
        self._lock = threading.Lock()  # guards states, counters and the LRU order
        self._progress_lock = threading.Lock()
        self._last_report = 0.0
        self._loaded = 0
        self._failed = 0
        self._loaded_bytes = 0
        self.loads = self.evictions = 0  # successful loads, LRU evictions (for /metrics)
        self._lru: OrderedDict[str, _Entry] = OrderedDict()
        self._warned: set[str] = set()
        self._failures: dict[str, str] = {}
        self._entries: dict[str, dict[str, _Entry]] = {}
        initial = ModelState.UNLOADED if self._lazy else ModelState.LOADING
        for source in sources:
            entry = _Entry(source, ModelState.FAILED if source.error else initial)
            self._entries.setdefault(source.name, {})[source.version] = entry
            if source.error:
                self._failed += 1
                self._failures[source.key] = source.error[:_MAX_REASON]
                logger.error("model %s version %s cannot be loaded: %s", source.name, source.version, source.error)
        self._total = len(sources)
        mode = settings.model_compact
        self._compact = mode == "on" or (mode == "auto" and self._total > _COMPACT_ABOVE)
        # Newest version by number, like MLServer and Triton's "latest" policy.
        self._default = {name: max(vs, key=_version_key) for name, vs in self._entries.items()}

    # --- public API ------------------------------------------------------------------
    @property
    def lazy(self) -> bool:
        return self._lazy

    def list(self) -> list[ModelInfo]:
        """Every discovered model with its state, sorted by name and version."""
        out = []
        for name in sorted(self._entries):
            for version in sorted(self._entries[name], key=_version_key):
                e = self._entries[name][version]
                path = str(e.source.path) if e.source.path else None
                out.append(ModelInfo(name, version, e.state, e.reason, path, e.source.size_bytes))
        return out

    def versions(self, name: str) -> builtins.list[str]:
        """The versions of ``name``, oldest first; ModelNotFound if there is no such model."""
        versions = self._entries.get(name)
        if versions is None:
            raise ModelNotFound(f"Model {name} not found")
        return sorted(versions, key=_version_key)

    def status(self, name: str, version: str | None = None) -> ModelInfo:
        """A model's state without loading it. ModelNotFound for an unknown name or version."""
        e = self._entry(name, version)
        path = str(e.source.path) if e.source.path else None
        return ModelInfo(e.source.name, e.source.version, e.state, e.reason, path, e.source.size_bytes)

    def get(self, name: str, version: str | None = None) -> Model:
        """The loaded model (newest version by default), loading it first in lazy mode.

        ModelNotFound for an unknown name or version; ModelNotReady while it loads
        or if it failed to load (the message says why).
        """
        entry = self._entry(name, version)
        model = entry.model
        if model is not None:
            if self._lazy:
                with self._lock:
                    if entry.source.key in self._lru:  # not if evicted meanwhile
                        self._lru.move_to_end(entry.source.key)
            return model
        if entry.state is ModelState.FAILED:
            raise ModelNotReady(_failed_message(entry))
        if not self._lazy:
            raise ModelNotReady(f"Model {entry.source.name} version {entry.source.version} is still loading")
        return self._load_lazily(entry)

    def metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """A model's inputs and outputs; kept after eviction, so it loads a model at most once."""
        entry = self._entry(name, version)
        if entry.metadata is not None:
            return entry.metadata
        return self.get(name, version).metadata

    def known_metadata(self, name: str, version: str | None = None) -> ModelMetadata | None:
        """A model's metadata if it was ever loaded, else None; never loads, never raises."""
        versions = self._entries.get(name)
        entry = versions.get(self._default[name] if version is None else version) if versions else None
        return entry.metadata if entry is not None else None

    def model_stats(self) -> builtins.list[tuple[str, str, str, ModelStats]]:
        """(name, version, state, counters) of every model, for /metrics (:mod:`server.store.stats`)."""
        return [(e.source.name, e.source.version, e.state.value, e.stats) for vs in self._entries.values()
                for e in vs.values()]  # fmt: skip

    def progress(self) -> dict[str, Any]:
        """``{"loaded", "failed", "total", "failures": {"name/version": reason}}``."""
        with self._lock:
            report: dict[str, Any] = {
                "loaded": self._loaded,
                "failed": self._failed,
                "total": self._total,
                "failures": dict(islice(self._failures.items(), _MAX_REPORTED_FAILURES)),
            }
            omitted = len(self._failures) - _MAX_REPORTED_FAILURES
        if omitted > 0:
            report["failures_omitted"] = omitted
        return report

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready per ``ready_min_models``, plus ``progress()``.

        Eager: ready once ``loaded >= ceil(ready_min_models * (total - failed))`` and at
        least one model is loaded, so 1.0 waits for every model that can load and a
        failed model does not hold readiness back (it answers 503 with its reason).
        Lazy: ready as soon as discovery succeeded; models load on first use.
        """
        report = self.progress()
        if self._lazy:
            return self._total > report["failed"], report
        loadable = report["total"] - report["failed"]
        need = max(1, math.ceil(self._settings.ready_min_models * loadable - 1e-9))
        return report["loaded"] >= need, report

    def close(self) -> None:
        """Drop every session (in-flight calls finish first) and stop being the process-wide store."""
        global _store
        with self._lock:
            for versions in self._entries.values():
                for e in versions.values():
                    if e.model is not None:
                        e.model = None
                        e.state = ModelState.UNLOADED
            self._lru.clear()
            self._loaded = 0
            self._loaded_bytes = 0
        with _store_lock:
            if _store is self:
                _store = None

    # --- loading -----------------------------------------------------------------------
    def load_all(self, deadline_s: float) -> None:
        """Eager start-up: load every model in parallel, at most model_load_concurrency at once."""
        started = time.perf_counter()
        pending = [e for vs in self._entries.values() for e in vs.values() if e.state is ModelState.LOADING]
        self._report(force=True)
        if pending:
            workers = min(self._settings.model_load_concurrency, len(pending))
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model-load")
            not_done: set[Any] = set()
            try:
                futures = [pool.submit(self._load, e) for e in pending]
                _, not_done = wait_futures(futures, timeout=deadline_s)
            finally:
                # All done: join the loader threads so none outlives start-up. Past the
                # deadline: a session being created cannot be cancelled, so stragglers
                # finish in the background and report progress when they do.
                pool.shutdown(wait=not not_done, cancel_futures=True)
            if not_done:
                logger.error("%d models were still loading after %.0f s; they stay LOADING", len(not_done), deadline_s)
        self._report(force=True)
        report = self.progress()
        logger.info(
            "loaded %d/%d models in %.2f s (%d failed)",
            report["loaded"],
            report["total"],
            time.perf_counter() - started,
            report["failed"],
        )

    def _load(self, entry: _Entry) -> None:
        source = entry.source
        started = time.perf_counter()
        try:
            model = self._open(source)
        except Exception as exc:
            reason = describe_error(exc)
            with self._lock:
                entry.state = ModelState.FAILED
                entry.reason = reason
                self._failed += 1
                self._failures[source.key] = reason[:_MAX_REASON]
            logger.error("model %s version %s failed to load: %s", source.name, source.version, reason)
        else:
            with self._lock:
                entry.model = model
                entry.metadata = model.metadata
                entry.state = ModelState.READY
                entry.reason = None
                entry.stats.load_seconds = time.perf_counter() - started
                model.stats = entry.stats
                self.loads += 1
                self._loaded += 1
                self._loaded_bytes += source.size_bytes
                if self._lazy:
                    self._lru[source.key] = entry  # the hot end; _admit evicts from the cold one
        self._report()

    def _open(self, source: ModelSource) -> Model:
        if source.path is None:  # pragma: no cover - sources without a path carry an error
            raise RuntimeError(source.error or "no model file")
        cfg = source.config
        s = self._settings
        device = parse_device(cfg.device or s.device)
        plan = plan_providers(
            device,
            self._runtime.available_providers,
            gpu_mem_limit_mb=s.gpu_mem_limit_mb if cfg.gpu_mem_limit_mb is None else cfg.gpu_mem_limit_mb,
            explicit=cfg.providers,
        )
        if plan.warning:
            self._log_once(logging.WARNING, plan.warning)
        elif plan.note:
            self._log_once(logging.INFO, plan.note)
        options = session_options(
            self._runtime,
            graph_optimization_level=cfg.graph_optimization_level,
            compact=self._compact if cfg.compact is None else cfg.compact,
        )
        session, fallback = create_session(source.path, options, plan)
        if fallback:
            self._log_once(logging.WARNING, fallback)
        model = open_model(session, source, s)  # metadata, and dynamic batching (server.store.batcher)
        for i, request in enumerate(cfg.warmup):
            try:
                model.run(warmup_feed(model.metadata.inputs, request))
            except Exception as exc:
                raise RuntimeError(f"warm-up request {i} failed: {describe_error(exc)}") from exc
        return model

    def _load_lazily(self, entry: _Entry) -> Model:
        # Inside a call, wait no longer than its deadline allows.
        wait_s = deadline.remaining(max(1.0, self._settings.scoring_timeout_ms / 1000))
        if not entry.lock.acquire(timeout=wait_s):
            raise ModelNotReady(f"Model {entry.source.name} version {entry.source.version} is still loading")
        try:
            if entry.model is None and entry.state is not ModelState.FAILED:
                entry.state = ModelState.LOADING
                self._load(entry)
            model = entry.model
            if model is None:
                raise ModelNotReady(_failed_message(entry))
            self._evict()
            return model
        finally:
            entry.lock.release()

    def _evict(self) -> None:
        """Evict the least recently used models beyond max_loaded_models / model_memory_budget_mb."""
        limit = self._settings.max_loaded_models
        budget = self._settings.model_memory_budget_mb * 1024 * 1024
        evicted: list[Model] = []
        with self._lock:
            while len(self._lru) > 1 and (
                (limit and len(self._lru) > limit) or (budget and self._loaded_bytes > budget)
            ):
                _, cold = self._lru.popitem(last=False)
                if cold.model is not None:
                    evicted.append(cold.model)
                    cold.model = None
                    cold.state = ModelState.UNLOADED
                    self.evictions += 1
                    self._loaded -= 1
                    self._loaded_bytes -= cold.source.size_bytes
        for model in evicted:
            logger.info("evicted model %s version %s (least recently used)", model.name, model.version)
        # The sessions are freed here, outside the lock, once in-flight calls release them.
        evicted.clear()
        self._report()

    # --- helpers -----------------------------------------------------------------------
    def _entry(self, name: str, version: str | None) -> _Entry:
        versions = self._entries.get(name)
        if versions is None:
            raise ModelNotFound(f"Model {name} not found")
        entry = versions.get(self._default[name] if version is None else version)
        if entry is None:
            raise ModelNotFound(f"Model {name} version {version} not found")
        return entry

    def _log_once(self, level: int, message: str) -> None:
        # With 1,000 models, one line per distinct problem rather than one per model.
        with self._lock:
            if message in self._warned:
                return
            self._warned.add(message)
        logger.log(level, "%s", message)

    def _report(self, force: bool = False) -> None:
        if self._callback is None:
            return
        with self._progress_lock:
            now = time.monotonic()
            if not force and now - self._last_report < _PROGRESS_INTERVAL_S:
                return
            self._last_report = now
            try:
                self._callback(self.progress())
            except Exception:
                logger.exception("the model-store progress callback failed")


# --- opening the store ----------------------------------------------------------------
_store: ModelStore | None = None
_store_lock = threading.Lock()
_open_lock = threading.Lock()


def open_store(settings: Settings, progress: Progress | None = None) -> ModelStore:
    """Discover, check the count, set up onnxruntime, and load (eager) or prepare (lazy).

    Blocks until loading is done; ``progress`` is called as it advances (from loader
    threads, one call at a time, at most ~10 per second, always once at the end).
    Raises ModelStoreError if model_dir is missing, holds no model, or more than
    max_models. The first store opened becomes the one ``get_store()`` returns.
    """
    if not settings.model_dir:
        raise ModelStoreError("no model directory: set SCOREHOST_MODEL_DIR or AZUREML_MODEL_DIR")
    try:
        sources = discover(settings.model_dir)
    except (DiscoveryError, OSError) as exc:
        raise ModelStoreError(str(exc)) from exc
    if not sources:
        raise ModelStoreError(f"no .onnx model found under {settings.model_dir}")
    if len(sources) > settings.max_models:
        raise ModelStoreError(
            f"found {len(sources)} models under {settings.model_dir}, more than max_models="
            f"{settings.max_models}; raise SCOREHOST_MAX_MODELS or remove models"
        )
    if not settings.lazy_models and (settings.max_loaded_models or settings.model_memory_budget_mb):
        logger.warning("max_loaded_models and model_memory_budget_mb apply only with lazy_models")
    want_cuda = any(parse_device(s.config.device or settings.device).wants_cuda for s in sources)
    runtime = configure_runtime(
        settings.ort_threads, want_cuda=want_cuda, cublas_workspace_mb=settings.gpu_cublas_workspace_mb
    )
    store = ModelStore(settings, sources, runtime, progress)
    if settings.lazy_models:
        store._report(force=True)
        logger.info("found %d models; lazy_models: each loads on first use", len(sources))
    else:
        store.load_all(settings.init_timeout_s)
    global _store
    with _store_lock:
        if _store is None:
            _store = store
    return store


def current_store() -> ModelStore | None:
    """The process-wide store if one is open (the worker's, or one an entry script opened)."""
    with _store_lock:
        return _store


def get_store() -> ModelStore:
    """The process-wide store: the one the worker opened, else opened now from ``Settings()``."""
    with _store_lock:
        if _store is not None:
            return _store
    with _open_lock:  # two threads calling first must not load everything twice
        with _store_lock:
            if _store is not None:
                return _store
        return open_store(settings_module.current())


# --- small helpers -----------------------------------------------------------------------


def _version_key(version: str) -> tuple[int, int, str]:
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def _failed_message(entry: _Entry) -> str:
    return f"Model {entry.source.name} version {entry.source.version} failed to load: {entry.reason}"
