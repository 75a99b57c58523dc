"""ONNX Runtime plumbing for the model store: devices, execution providers, the
process-wide thread pool and allocator, session options, tensor types, and the
Model that runs one session.

    configure_runtime(threads, want_cuda)   once per process: shared pool + arena, cuBLAS workspace
    parse_device("cuda:1")                  -> Device("cuda", 1)
    plan_providers(device, available, ...)  -> ProviderPlan (pure: testable without a GPU)
    session_options(runtime, ...)           -> onnxruntime.SessionOptions
    create_session(path, options, plan)     -> (InferenceSession, fallback warning or None)
    tensor_spec(node_arg)                   -> TensorSpec (V2 datatype, -1 for dynamic dims)
    Model(session, metadata).run({...})     -> {output: ndarray}, inputs checked by name/dtype/shape

NOTE: ONNX Runtime's global thread pools can be created once per process and
never resized, so ``configure_runtime`` keeps the first configuration and later
calls (a second store, tests) reuse it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument as OrtInvalidArgument

from server.cpus import available_cpus
from server.errors import InternalError, InvalidInput, ScoreHostError
from server.store.cuda import CUDA, prepare_cuda
from server.store.stats import ModelStats

if TYPE_CHECKING:
    from server.store.batcher import Batching, ModelBatcher

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"

# A provider as onnxruntime takes it: a name, or (name, options).
ProviderSpec = str | tuple[str, dict[str, str]]

# ONNX tensor type -> (Open Inference Protocol datatype, numpy dtype).
ONNX_TYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "tensor(bool)": ("BOOL", np.dtype(np.bool_)),
    "tensor(uint8)": ("UINT8", np.dtype(np.uint8)),
    "tensor(uint16)": ("UINT16", np.dtype(np.uint16)),
    "tensor(uint32)": ("UINT32", np.dtype(np.uint32)),
    "tensor(uint64)": ("UINT64", np.dtype(np.uint64)),
    "tensor(int8)": ("INT8", np.dtype(np.int8)),
    "tensor(int16)": ("INT16", np.dtype(np.int16)),
    "tensor(int32)": ("INT32", np.dtype(np.int32)),
    "tensor(int64)": ("INT64", np.dtype(np.int64)),
    "tensor(float16)": ("FP16", np.dtype(np.float16)),
    "tensor(float)": ("FP32", np.dtype(np.float32)),
    "tensor(double)": ("FP64", np.dtype(np.float64)),
    "tensor(string)": ("BYTES", np.dtype(object)),
}

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
GRAPH_LEVELS = tuple(_GRAPH_LEVELS)


# --- tensors -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output.

    ``datatype`` is the Open Inference Protocol name (``FP32``, ``INT64``, ``BYTES`` ...),
    or the ONNX type itself for values no V2 datatype describes (sequences, maps,
    bfloat16); ``dtype`` is then None. ``shape`` uses -1 for dynamic dimensions;
    an empty shape means a scalar or a tensor of unknown rank (ONNX Runtime reports
    both the same way), so it is not checked.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any] | None
    onnx_type: str


def tensor_spec(node_arg: Any) -> TensorSpec:
    """Describe an onnxruntime ``NodeArg``."""
    onnx_type = str(node_arg.type)
    datatype, dtype = ONNX_TYPES.get(onnx_type, (onnx_type, None))
    dims = node_arg.shape if isinstance(node_arg.shape, list | tuple) else ()
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)
    return TensorSpec(str(node_arg.name), datatype, shape, dtype, onnx_type)


# --- devices and providers -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class Device:
    """Where a model runs: ``auto`` (CUDA when usable, else CPU), ``cpu`` or ``cuda`` #index."""

    kind: str
    index: int = 0

    @property
    def wants_cuda(self) -> bool:
        return self.kind != "cpu"

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.kind == "cuda" else self.kind


def parse_device(value: str) -> Device:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` -> Device; ValueError otherwise."""
    v = value.strip().lower()
    if v in ("auto", "cpu", "cuda"):
        return Device(v)
    if v.startswith("cuda:") and v[5:].isdigit():
        return Device("cuda", int(v[5:]))
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")


def cuda_options(index: int, gpu_mem_limit_mb: int) -> dict[str, str]:
    """CUDAExecutionProvider options: one device, an arena that grows only as asked."""
    # NOTE: kSameAsRequested keeps each session's CUDA arena at what it used;
    # the default power-of-two growth wastes up to half of it, per session.
    options = {"device_id": str(index), "arena_extend_strategy": "kSameAsRequested"}
    if gpu_mem_limit_mb > 0:
        options["gpu_mem_limit"] = str(gpu_mem_limit_mb * 1024 * 1024)
    return options


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """The providers a session is created with, and why CUDA is missing if it was asked for."""

    providers: tuple[ProviderSpec, ...]
    wants_cuda: bool
    warning: str | None = None
    note: str | None = None


def provider_name(spec: ProviderSpec) -> str:
    return spec if isinstance(spec, str) else spec[0]


def plan_providers(
    device: Device,
    available: Sequence[str],
    *,
    gpu_mem_limit_mb: int = 0,
    explicit: Sequence[ProviderSpec] | None = None,
) -> ProviderPlan:
    """Decide the execution providers for one model. Pure: no onnxruntime calls.

    ``explicit`` (a model config's ``providers``) wins over ``device``; names that
    this onnxruntime build lacks are dropped with a warning. CPU always comes last,
    so an op that the accelerator lacks still runs.
    """
    if explicit:
        kept = [p for p in explicit if provider_name(p) in available]
        dropped = [provider_name(p) for p in explicit if provider_name(p) not in available]
        if not any(provider_name(p) == CPU for p in kept):
            kept.append(CPU)
        warning = None
        if dropped:
            warning = (
                f"providers {dropped} are not available in this onnxruntime build "
                f"(available: {list(available)}); using {[provider_name(p) for p in kept]}"
            )
        return ProviderPlan(tuple(kept), any(provider_name(p) == CUDA for p in kept), warning)
    if not device.wants_cuda:
        return ProviderPlan((CPU,), False)
    if CUDA in available:
        return ProviderPlan(((CUDA, cuda_options(device.index, gpu_mem_limit_mb)), CPU), True)
    reason = (
        f"CUDAExecutionProvider is not available in onnxruntime {ort.__version__} "
        f"(available: {list(available)}; install onnxruntime-gpu)"
    )
    if device.kind == "auto":
        # A CPU-only image asked for "auto": expected, not worth a warning.
        return ProviderPlan((CPU,), False, note=f"device auto: {reason}; running on CPU")
    return ProviderPlan((CPU,), False, warning=f"device {device} was requested but {reason}; running on CPU")


def fallback_warning(plan: ProviderPlan, session_providers: Sequence[str]) -> str | None:
    """A warning if the session was asked for CUDA and onnxruntime fell back to CPU."""
    if plan.wants_cuda and CUDA not in session_providers:
        return (
            f"CUDAExecutionProvider could not be initialised on {_cuda_device(plan)} (no such GPU, or no "
            f"driver or CUDA/cuDNN libraries?); the session runs on {list(session_providers)}"
        )
    return None


def _cuda_device(plan: ProviderPlan) -> str:
    for spec in plan.providers:
        if not isinstance(spec, str) and spec[0] == CUDA:
            return f"cuda:{spec[1].get('device_id', '0')}"
    return "cuda:0"  # CUDA named without options: onnxruntime's default device


# --- the process-wide runtime ---------------------------------------------------
@dataclass(frozen=True, slots=True)
class Runtime:
    """How this process's sessions share threads and memory.

    ``shared_pool``: every session runs on onnxruntime's one global intra-op pool of
    ``intra_threads`` threads. Otherwise each session is single-threaded and owns no
    pool thread at all. Either way the thread count does not grow with the models.
    """

    intra_threads: int
    shared_pool: bool
    shared_arena: bool
    available_providers: tuple[str, ...]


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def configure_runtime(threads: int, *, want_cuda: bool, cublas_workspace_mb: int = 0) -> Runtime:
    """Choose the threading mode and share one CPU arena, once per process; later calls reuse it.

    ``threads`` (``ort_threads``; 0: the CPUs this process may use) > 1 creates
    onnxruntime's global intra-op pool of that size. NOTE: from then on onnxruntime
    refuses any session in this process that asks for its own pool, including a
    user script's ``InferenceSession`` with default options (docs/models.md). 1 keeps
    sessions single-threaded and touches no process-wide thread state.
    """
    global _runtime
    with _runtime_lock:
        if want_cuda:
            prepare_cuda(cublas_workspace_mb)
        wanted = threads or available_cpus()
        if _runtime is not None:
            if wanted != _runtime.intra_threads:
                logger.info(
                    "onnxruntime threading is fixed per process at %d intra-op thread(s); "
                    "ort_threads=%d takes effect on the next start",
                    _runtime.intra_threads,
                    wanted,
                )
            return _runtime
        shared_pool = wanted > 1 and _create_global_pool(wanted)
        shared_arena = _register_shared_arena()
        _runtime = Runtime(
            intra_threads=wanted if shared_pool else 1,
            shared_pool=shared_pool,
            shared_arena=shared_arena,
            available_providers=tuple(ort.get_available_providers()),
        )
        logger.info(
            "onnxruntime %s: %s, %s CPU arena; providers %s",
            ort.__version__,
            f"one shared intra-op pool of {wanted} threads" if shared_pool else "single-threaded sessions",
            "one shared" if shared_arena else "per-session",
            list(_runtime.available_providers),
        )
        return _runtime


def _create_global_pool(threads: int) -> bool:
    try:
        # inter-op 1: sessions run sequentially, so the inter-op pool needs no threads.
        ort.set_global_thread_pool_sizes(threads, 1)
    except Exception as exc:
        if "already been created" in str(exc):
            # Someone in this process (a user script) created them first: share them.
            logger.warning("onnxruntime's global thread pools already exist; sharing them as they are")
            return True
        logger.warning("could not create onnxruntime's global thread pool (%s); sessions run single-threaded", exc)
        return False
    return True


def _register_shared_arena() -> bool:
    try:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        # max_mem 0 (no cap), default extend strategy, chunk size and dead-bytes limit.
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
    except Exception as exc:
        logger.warning("could not register a shared CPU arena (%s); sessions keep their own", exc)
        return False
    return True


# --- sessions --------------------------------------------------------------------
def session_options(
    runtime: Runtime, *, graph_optimization_level: str = "all", compact: bool = False
) -> ort.SessionOptions:
    """Options for one session: the shared pool (or one thread) and the shared arena.

    ``compact`` turns off weight pre-packing and memory patterns. NOTE: only both
    together pay (measured, 78 KB MLP: 165 -> 109 KB of RSS per session beyond the
    weights; either alone saves 0-13 KB), at the same batch-1 latency.
    """
    so = ort.SessionOptions()
    # Errors only: with 1,000 models, per-model optimiser warnings would flood the log.
    so.log_severity_level = 3
    so.graph_optimization_level = _GRAPH_LEVELS[graph_optimization_level]
    if runtime.shared_pool:
        so.use_per_session_threads = False
    else:
        # One thread: onnxruntime starts no pool thread, so nothing can spin.
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
    if runtime.shared_arena:
        so.add_session_config_entry("session.use_env_allocators", "1")
    if compact:
        so.add_session_config_entry("session.disable_prepacking", "1")
        so.enable_mem_pattern = False
    return so


def create_session(
    path: Path, options: ort.SessionOptions, plan: ProviderPlan
) -> tuple[ort.InferenceSession, str | None]:
    """Create a session; the second value warns if CUDA was asked for and not obtained."""
    session = ort.InferenceSession(str(path), options, providers=list(plan.providers))
    return session, fallback_warning(plan, session.get_providers())


# --- a loaded model --------------------------------------------------------------
PLATFORM = "onnxruntime_onnx"


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    version: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    providers: tuple[str, ...]
    batching: Batching | None = None  # dynamic batching: on, or why not (server.store.batcher)


class Model:
    """A loaded model. ``run`` is thread-safe and may be called from many threads at once."""

    __slots__ = ("_inputs", "_outputs", "_session", "batcher", "metadata", "stats")

    def __init__(self, session: Any, metadata: ModelMetadata) -> None:
        self._session = session
        self.metadata = metadata
        self.stats: ModelStats | None = None  # the store's counters for /metrics
        self.batcher: ModelBatcher | None = None  # set when batching is on (server.store.batcher)
        self._inputs = {spec.name: spec for spec in metadata.inputs}
        self._outputs = {spec.name: spec for spec in metadata.outputs}

    @property
    def inputs(self) -> Mapping[str, TensorSpec]:
        """Input specs by name."""
        return self._inputs

    @property
    def outputs(self) -> Mapping[str, TensorSpec]:
        """Output specs by name."""
        return self._outputs

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version

    def run(self, inputs: Mapping[str, Any], outputs: Sequence[str] | None = None) -> dict[str, Any]:
        """``{input_name: ndarray}`` -> ``{output_name: ndarray}`` (all outputs, or those named).

        Arrays must have the model's dtype (no silent casts); lists are converted to it.
        Raises InvalidInput naming the input for a wrong name, dtype or shape.
        """
        stats = self.stats
        if stats is None:
            return self._run(inputs, outputs)
        # NOTE: unlocked increments from several run threads may, very rarely, lose one count.
        stats.inferences += 1
        try:
            return self._run(inputs, outputs)
        except Exception:
            stats.errors += 1
            raise

    def _run(self, inputs: Mapping[str, Any], outputs: Sequence[str] | None) -> dict[str, Any]:
        feed = {name: self._check(name, value) for name, value in inputs.items()}
        if len(feed) != len(self._inputs):
            missing = [n for n in self._inputs if n not in feed]
            raise InvalidInput(f"model {self.name!r}: missing input(s) {missing}")
        names = list(outputs) if outputs else list(self._outputs)
        for name in names:
            if name not in self._outputs:
                raise InvalidInput(f"model {self.name!r} has no output {name!r}; outputs: {list(self._outputs)}")
        if self.batcher is not None:  # checked inputs only: a bad one never joins a batch
            return self.batcher.submit(self, feed, names)
        return dict(zip(names, self.execute(names, feed), strict=True))

    def execute(self, names: list[str], feed: Mapping[str, Any]) -> list[Any]:
        """One ``session.run`` of checked inputs; onnxruntime's errors as InvalidInput or InternalError."""
        try:
            values: list[Any] = self._session.run(names, feed)
        except OrtInvalidArgument as exc:
            raise InvalidInput(f"model {self.name!r}: {describe_error(exc)}") from exc
        except Exception as exc:
            raise InternalError(f"model {self.name!r} failed: {describe_error(exc)}") from exc
        return values

    def _check(self, name: str, value: Any) -> Any:
        spec = self._inputs.get(name)
        if spec is None:
            raise InvalidInput(f"model {self.name!r} has no input {name!r}; inputs: {list(self._inputs)}")
        if spec.dtype is None:
            raise InvalidInput(f"input {name!r} has ONNX type {spec.onnx_type}, which scorehost cannot feed")
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value, dtype=spec.dtype)
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidInput(f"input {name!r}: not convertible to {spec.datatype} ({exc})") from exc
        if spec.datatype == "BYTES":
            if value.dtype.kind not in "OU":
                raise InvalidInput(f"input {name!r} has dtype {value.dtype}; model expects strings (BYTES)")
        elif value.dtype != spec.dtype:
            raise InvalidInput(
                f"input {name!r} has dtype {value.dtype}; model {self.name!r} expects {spec.dtype} ({spec.datatype})"
            )
        shape = spec.shape
        if shape and not shape_fits(value.shape, shape):
            raise InvalidInput(
                f"input {name!r} has shape {list(value.shape)}; model {self.name!r} expects "
                f"{list(shape)} (-1: any size)"
            )
        return value


def shape_fits(shape: Sequence[int], expected: tuple[int, ...]) -> bool:
    """Whether a shape matches a model's (-1: any size); a plain loop, it runs on every call."""
    if len(shape) != len(expected):
        return False
    for d, e in zip(shape, expected, strict=True):  # noqa: SIM110 (no generator on the hot path)
        if e >= 0 and d != e:
            return False
    return True


def describe_error(exc: BaseException) -> str:
    """An exception as one line: onnxruntime's messages already carry their category."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ScoreHostError) or "ONNXRuntimeError" in text:
        return text[:1000]
    return f"{type(exc).__name__}: {text}"[:1000]
