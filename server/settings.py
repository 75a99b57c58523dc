"""The one settings object: every default of scorehost lives here.

Values come from, highest priority first: keyword arguments (the CLI passes its
flags this way), our own environment variables (prefix ``SCOREHOST_``), then the
Azure ML names an existing deployment already sets (``AZUREML_ENTRY_SCRIPT``,
``SCORING_TIMEOUT_MS``, ``WORKER_COUNT`` ...). The object is frozen and does no
I/O: resolving paths against the file system is the caller's job.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PREFIX = "SCOREHOST_"


def _env(name: str, *azure: str) -> AliasChoices:
    """Accept ``SCOREHOST_<NAME>`` first, then the Azure ML names in order.

    Keyword arguments use the field name (``populate_by_name``); the bare name is
    deliberately not an environment alias, so a stray ``PORT`` or ``HOST`` is ignored.
    """
    return AliasChoices(PREFIX + name.upper(), *azure)


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask, then the cgroup v2 quota)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


class Settings(BaseSettings):
    """Runtime configuration. Every field documents its Azure ML equivalent."""

    model_config = SettingsConfigDict(
        frozen=True,
        populate_by_name=True,
        case_sensitive=False,
        extra="ignore",
        env_prefix=PREFIX,
    )

    # --- what to serve -------------------------------------------------------
    entry_script: str | None = Field(None, validation_alias=_env("entry_script", "AZUREML_ENTRY_SCRIPT"))
    """Path of the user's score.py. Relative paths are taken from ``app_root``. Without one,
    the models under ``model_dir`` are served over the Open Inference Protocol (``/v2``)."""

    model_dir: str | None = Field(None, validation_alias=_env("model_dir", "AZUREML_MODEL_DIR"))
    """Folder of models, exported to the script as ``AZUREML_MODEL_DIR``."""

    app_root: str | None = Field(None, validation_alias=_env("app_root", "AML_APP_ROOT"))
    """Folder put on ``sys.path`` for the script (Azure ML ``AML_APP_ROOT``); default: the working directory."""

    source_directory: str | None = Field(None, validation_alias=_env("source_directory", "AZUREML_SOURCE_DIRECTORY"))
    """Sub-folder of ``app_root`` also put on ``sys.path`` (Azure ML ``AZUREML_SOURCE_DIRECTORY``)."""

    # --- network -------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias=_env("host"))
    """Address to bind. Loopback by default; the container images set 0.0.0.0."""

    port: int = Field(5001, ge=0, le=65535, validation_alias=_env("port"))
    """TCP port (the reference server's default, 5001). 0 picks a free port."""

    # --- workers and bounds --------------------------------------------------
    workers: int = Field(1, ge=1, le=64, validation_alias=_env("workers", "WORKER_COUNT"))
    """Worker processes that each load the script and run ``init()`` (Azure ML ``WORKER_COUNT``)."""

    max_concurrent_requests: int = Field(
        default_factory=available_cpus,
        ge=1,
        le=10_000,
        validation_alias=_env("max_concurrent_requests", "REPLICA_MAX_CONCURRENT_REQUESTS"),
    )
    """Scoring calls in flight per container (Azure ML ``replica_max_concurrent_requests``).
    Default: the CPUs available to the container. Spread over the workers as slots."""

    max_queue_length: int = Field(256, ge=0, le=1_000_000, validation_alias=_env("max_queue_length"))
    """Requests that may wait for a slot; beyond it a request is refused at once with 503."""

    max_queue_wait_ms: int = Field(
        500, ge=0, le=3_600_000, validation_alias=_env("max_queue_wait_ms", "MAX_REQUEST_WAIT_TIME")
    )
    """How long a request may wait for a slot before 503 (Azure ML ``max_request_wait_time``)."""

    scoring_timeout_ms: int = Field(
        60_000, ge=1, le=86_400_000, validation_alias=_env("scoring_timeout_ms", "SCORING_TIMEOUT_MS")
    )
    """Deadline of one ``run()`` call; past it the client gets 504 (Azure ML ``scoring_timeout_ms``)."""

    max_request_bytes: int = Field(100 * 1024 * 1024, ge=1, validation_alias=_env("max_request_bytes"))
    """Largest request body; larger ones get 413 before they are read whole."""

    wedged_after_ms: int = Field(10_000, ge=0, validation_alias=_env("wedged_after_ms"))
    """A worker whose every slot is held by calls this long past their deadline is replaced."""

    init_timeout_s: float = Field(1800.0, gt=0, validation_alias=_env("init_timeout_s"))
    """Longest a worker may spend loading the script and running ``init()``."""

    restart_backoff_max_s: float = Field(30.0, gt=0, validation_alias=_env("restart_backoff_max_s"))
    """Ceiling of the exponential back-off between restarts of a crashing worker."""

    shutdown_delay_s: float = Field(2.0, ge=0, validation_alias=_env("shutdown_delay_s"))
    """After SIGTERM readiness turns 503 at once; requests are still served for this long."""

    graceful_timeout_s: float = Field(30.0, ge=0, validation_alias=_env("graceful_timeout_s"))
    """After the delay, in-flight requests get this long to finish before workers are killed."""

    api_key: str | None = Field(None, validation_alias=_env("api_key"))
    """If set, ``/score`` and ``/v2`` require ``Authorization: Bearer <key>`` (401 otherwise)."""

    # --- Azure ML service description ---------------------------------------
    service_name: str = Field("ML service", validation_alias=_env("service_name", "SERVICE_NAME"))
    """Title of the generated swagger document."""

    service_version: str = Field("1.0", validation_alias=_env("service_version", "SERVICE_VERSION"))
    """Version of the generated swagger document."""

    service_path_prefix: str = Field("", validation_alias=_env("service_path_prefix", "SERVICE_PATH_PREFIX"))
    """Path prefix written into the swagger document's paths."""

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("cors_origins", "AML_CORS_ORIGINS")
    )
    """Comma-separated allowed CORS origins (Azure ML ``AML_CORS_ORIGINS``); empty: no CORS."""

    # --- logging -------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("log_level", "AZUREML_LOG_LEVEL")
    )
    """Server log level."""

    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("log_format"))
    """``text`` (the reference's line format) or ``json`` (one object per line)."""

    access_log: bool = Field(True, validation_alias=_env("access_log"))
    """Log one line per request with method, path, status, latency and request id."""

    access_log_probes: bool = Field(False, validation_alias=_env("access_log_probes"))
    """Also log liveness/readiness probes (left out by default, as the reference does)."""

    # --- model store (ONNX Runtime) ------------------------------------------
    max_models: int = Field(1000, ge=1, le=100_000, validation_alias=_env("max_models"))
    """Most models the store accepts under ``model_dir``; more is a start-up error."""

    model_load_concurrency: int = Field(
        default_factory=available_cpus, ge=1, le=256, validation_alias=_env("model_load_concurrency")
    )
    """Models loaded in parallel at start-up."""

    lazy_models: bool = Field(False, validation_alias=_env("lazy_models"))
    """Load models on first use instead of at start-up."""

    max_loaded_models: int = Field(0, ge=0, validation_alias=_env("max_loaded_models"))
    """With lazy loading, most sessions kept loaded (least recently used evicted); 0: no limit."""

    model_memory_budget_mb: int = Field(0, ge=0, validation_alias=_env("model_memory_budget_mb"))
    """With lazy loading, evict least recently used models above this many MB of model files; 0: none."""

    ready_min_models: float = Field(1.0, ge=0.0, le=1.0, validation_alias=_env("ready_min_models"))
    """Fraction of discovered models that must be loaded before readiness is 200 (1.0: all that can load)."""

    device: str = Field("auto", validation_alias=_env("device"))
    """Execution device: ``auto`` (CUDA when usable, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    gpu_mem_limit_mb: int = Field(0, ge=0, validation_alias=_env("gpu_mem_limit_mb"))
    """Per-session CUDA arena limit in MB; 0: ONNX Runtime's default (no limit)."""

    ort_threads: int = Field(1, ge=0, le=1024, validation_alias=_env("ort_threads"))
    """Intra-op threads for the model store's sessions. 1 (default): single-threaded sessions and no
    process-wide pool; parallelism comes from ``max_concurrent_requests``. >1: one global pool of that
    size shared by every session (it spins, see docs/models.md); 0: a global pool of the CPUs available."""

    model_compact: Literal["auto", "on", "off"] = Field("auto", validation_alias=_env("model_compact"))
    """Sessions without weight pre-packing and memory patterns: about 55 KB less per small model at
    the same batch-1 latency. ``auto``: on when the store holds more than 100 models."""

    # --- validation ----------------------------------------------------------
    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        v = value.strip().lower()
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @field_validator("service_path_prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        return value.strip("/")

    @model_validator(mode="after")
    def _slots_per_worker(self) -> Settings:
        if self.max_concurrent_requests < self.workers:
            # NOTE: every worker needs one slot at least; raising the limit silently
            # would over-promise capacity, so say what to change instead.
            raise ValueError(
                f"max_concurrent_requests ({self.max_concurrent_requests}) must be at least workers ({self.workers})"
            )
        return self

    # --- derived values (pure) -----------------------------------------------
    def slots_for(self, worker_index: int) -> int:
        """Concurrency slots of one worker: the container limit spread evenly."""
        base, extra = divmod(self.max_concurrent_requests, self.workers)
        return base + (1 if worker_index < extra else 0)

    def resolved_app_root(self, cwd: str) -> str:
        return os.path.abspath(self.app_root or cwd)

    def resolved_entry_script(self, cwd: str) -> str | None:
        if not self.entry_script:
            return None
        root = self.resolved_app_root(cwd)
        return os.path.normpath(os.path.join(root, os.path.expanduser(self.entry_script)))
