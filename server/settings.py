"""The one settings object: every default of scorehost lives here.

Values come from, highest priority first: keyword arguments (the CLI passes its
flags this way), our own environment variables (prefix ``SCOREHOST_``), then the
Azure ML names an existing deployment already sets (``AZUREML_ENTRY_SCRIPT``,
``SCORING_TIMEOUT_MS``, ``WORKER_COUNT`` ...), then the values of a ``config.json``
(which the CLI reads and hands over with :meth:`Settings.build`), then the
defaults. The object is frozen and does no I/O: finding and reading files, and
resolving paths against the file system, is the caller's job.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from server.batching.settings import BatchSettings
from server.collect.settings import CollectSettings
from server.security_settings import SecuritySettings

PREFIX = "SCOREHOST_"
# Fields that hold secrets: never sent to worker processes (user code runs there), logged or exported.
SECRET_FIELDS = frozenset({"api_key", "primary_key", "secondary_key", "token_secret", "app_insights_key"})


def _env(name: str, *azure: str) -> AliasChoices:
    """Accept ``SCOREHOST_<NAME>`` first, then the Azure ML names in order.

    Keyword arguments use the field name (``populate_by_name``); the bare name is
    deliberately not an environment alias, so a stray ``PORT`` or ``HOST`` is ignored.
    """
    return AliasChoices(PREFIX + name.upper(), *azure)


# WORKER_TIMEOUT=0 means "never" (gunicorn's meaning): a stuck worker is then left alone this long.
NEVER_WEDGED_MS = 365 * 86_400_000
_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z", re.I)
# Values below the environment in priority (a config file's, a command's own defaults); set
# only for the duration of one Settings.build() call.
_LOW_PRIORITY: ContextVar[Mapping[str, Any] | None] = ContextVar("scorehost_low_priority_settings", default=None)


class _LowPrioritySource(PydanticBaseSettingsSource):
    """Field values handed to :meth:`Settings.build`; consulted after the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ is what pydantic-settings uses

    def __call__(self) -> dict[str, Any]:
        return dict(_LOW_PRIORITY.get() or {})


def _lenient_bool(value: object) -> object:
    """Azure ML switches: only a true word turns them on; anything else is off, never an error."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE_WORDS
    return value


class Settings(SecuritySettings, CollectSettings, BatchSettings):
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

    # --- connections (server.http.connection enforces these, before routing or auth) ---
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024, validation_alias=_env("max_header_bytes"))
    """Largest request head (request line plus header fields); past it the client gets 431 and the
    connection is closed, before the rest is read or parsed."""

    max_headers: int = Field(100, ge=1, le=10_000, validation_alias=_env("max_headers"))
    """Most header fields in one request; more get 431 and the connection is closed."""

    header_read_timeout_s: float = Field(10.0, gt=0, le=3600, validation_alias=_env("header_read_timeout_s"))
    """A request head must be complete this long after its first byte (a new connection must send
    one within this long, too); otherwise 408 (a connection that sent nothing is just closed)."""

    body_read_timeout_s: float = Field(60.0, gt=0, le=86_400, validation_alias=_env("body_read_timeout_s"))
    """A request body must be complete this long after its head; otherwise 408 and the connection
    is closed (``run()`` is not called). The clock restarts while the server itself holds reading
    paused (a pipelined request waiting its turn, body the app has not taken yet)."""

    keepalive_timeout_s: float = Field(5.0, gt=0, le=3600, validation_alias=_env("keepalive_timeout_s"))
    """An idle keep-alive connection is closed this long after its last response."""

    max_connections: int = Field(4096, ge=1, le=1_000_000, validation_alias=_env("max_connections"))
    """Open client connections; a connection beyond it gets a canned 503 and is closed before any
    byte of it is read. The health port (``separate_health_endpoint``) is exempt. Keep it below the
    process's open-file limit (``ulimit -n``)."""

    # --- workers and bounds --------------------------------------------------
    workers: int = Field(1, ge=1, le=64, validation_alias=_env("workers", "WORKER_COUNT"))
    """Worker processes that each load the script and run ``init()`` (Azure ML ``WORKER_COUNT``)."""

    http_processes: int = Field(1, ge=1, le=64, validation_alias=_env("http_processes"))
    """HTTP front processes sharing the port (``SO_REUSEPORT``; :mod:`server.http.fronts`). One front
    serves about one core's worth of small requests; more split ``workers``, ``max_concurrent_requests``
    and ``max_queue_length`` into equal shares, one per front, so the container's limits hold with no
    shared state on the request path. Needs ``workers`` >= it. 1 (default): one HTTP process, no parent."""

    cpus: int = Field(1, ge=1, le=4096, validation_alias=_env("cpus"))
    """CPUs available to the container: the default of ``max_concurrent_requests`` and
    ``model_load_concurrency``. The CLI measures it once at start-up (affinity mask, then the cgroup
    quota; :func:`server.cpus.available_cpus`); set it to override the measurement."""

    max_concurrent_requests: int = Field(
        # Every worker needs a slot: with more workers than CPUs, each gets one.
        default_factory=lambda data: max(data["cpus"], data["workers"]),
        ge=1,
        le=10_000,
        validation_alias=_env("max_concurrent_requests", "REPLICA_MAX_CONCURRENT_REQUESTS"),
    )
    """Scoring calls in flight per container (Azure ML ``replica_max_concurrent_requests``).
    Default: ``cpus`` (the CPUs available to the container), at least one per worker. Spread over
    the workers as slots."""

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

    shutdown_delay_s: float = Field(0.0, ge=0, validation_alias=_env("shutdown_delay_s"))
    """After SIGTERM readiness turns 503 at once; requests are still served for this long, so load
    balancers notice before the port closes. 0 by default (the port is released at once, as the
    reference does); the Kubernetes manifests and the container images set it."""

    graceful_timeout_s: float = Field(30.0, ge=0, validation_alias=_env("graceful_timeout_s"))
    """After the delay, in-flight requests get this long to finish before workers are killed."""

    # Authentication and TLS: auth_mode, primary_key ... ssl_health_port (server.security_settings).
    # Model data collection: collect_model_data, collect_dir ... (server.collect.settings).

    stream_idle_timeout_ms: int = Field(60_000, ge=1, le=86_400_000, validation_alias=_env("stream_idle_timeout_ms"))
    """A streamed reply (run() yielding) ends when no chunk is produced or read for this long. The
    scoring timeout covers the time to its first chunk."""

    stream_buffer_bytes: int = Field(1024 * 1024, ge=1, le=1024**3, validation_alias=_env("stream_buffer_bytes"))
    """Bytes of a streamed reply that may be produced ahead of what the client has read; past it the
    generator is paused (backpressure), not buffered."""

    worker_timeout_s: int | None = Field(
        None, ge=0, le=86_400, validation_alias=_env("worker_timeout_s", "WORKER_TIMEOUT")
    )
    """The reference's gunicorn ``--timeout`` (Azure ML ``WORKER_TIMEOUT``): the longest one ``run()``
    may hold a worker before the worker is killed and restarted. Mapped onto our rules: the scoring
    timeout is lowered to it if longer, and, unless ``wedged_after_ms`` is set, a worker is replaced
    once its calls are ``worker_timeout_s`` old (``wedged_after_ms`` = it minus the scoring timeout).
    0: stuck workers are never replaced (gunicorn's 0). Unset: the two settings apply as they are."""

    # --- probes --------------------------------------------------------------
    separate_health_endpoint: bool = Field(
        False, validation_alias=_env("separate_health_endpoint", "SEPERATE_HEALTH_ENDPOINT")
    )
    """Also answer the probes on a second port, ``health_port`` (Azure ML ``SEPERATE_HEALTH_ENDPOINT``,
    sic). Only the probes are served there, by the HTTP process."""

    health_port: int = Field(5000, ge=0, le=65535, validation_alias=_env("health_port", "HEALTH_PORT"))
    """Port of the probe listener when ``separate_health_endpoint`` is on (the reference's default,
    5000). 0 picks a free port."""

    # --- Azure ML compatibility ---------------------------------------------
    config_file: str | None = Field(None, validation_alias=_env("config_file", "AZUREML_CONFIG_FILE"))
    """The JSON config file in use (Azure ML ``AZUREML_CONFIG_FILE`` / ``--config_file``): a flat
    object of the reference's environment names, below the environment in priority. Without one,
    ``config.json`` in the app root or next to the entry script is used. Read by the CLI."""

    server_version_header: bool = Field(
        True, validation_alias=_env("server_version_header", "SERVER_VERSION_LOG_RESPONSE_ENABLED")
    )
    """Send ``x-ms-server-version`` on every response (Azure ML ``SERVER_VERSION_LOG_RESPONSE_ENABLED``;
    any value but a true word turns it off)."""

    app_insights_enabled: bool = Field(False, validation_alias=_env("app_insights_enabled", "AML_APP_INSIGHTS_ENABLED"))
    """Azure ML ``AML_APP_INSIGHTS_ENABLED``. With a key shaped like a UUID (:meth:`app_insights_active`),
    traces, request telemetry and logs go to Application Insights (``server.tracing``; needs the
    ``appinsights`` extra), as does ``APPLICATIONINSIGHTS_CONNECTION_STRING`` alone. The value is also
    passed to the script's environment, normalised to ``true``/``false``."""

    app_insights_key: SecretStr | None = Field(None, validation_alias=_env("app_insights_key", "AML_APP_INSIGHTS_KEY"))
    """Azure ML ``AML_APP_INSIGHTS_KEY`` / ``--appinsights_instrumentation_key``; passed to the
    script's environment when set, never logged."""

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

    log_names: Literal["scorehost", "azmlinfsrv"] = Field("scorehost", validation_alias=_env("log_names"))
    """Logger names and line style. ``scorehost``: ``scorehost.*`` loggers, the request id appended
    to lines. ``azmlinfsrv`` (what the ``azmlinfsrv`` command uses): the reference's names
    (``azmlinfsrv``, ``azmlinfsrv.print``, ``azmlinfsrv.user_script`` ...), UTC times and its exact
    line, so existing log queries keep matching."""

    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("log_format"))
    """``text`` (the reference's line format) or ``json`` (one object per line)."""

    access_log: bool = Field(True, validation_alias=_env("access_log"))
    """Log one line per request with method, path, status, latency and request id."""

    access_log_probes: bool = Field(False, validation_alias=_env("access_log_probes"))
    """Also log liveness/readiness probes (left out by default, as the reference does)."""

    access_log_query: bool = Field(False, validation_alias=_env("access_log_query"))
    """Write the query string in the access line too. Off by default: ``GET /score`` carries the
    user's inputs there, which do not belong in the log."""

    # --- observability (server.metrics, server.tracing; README "Metrics") -----
    metrics: bool = Field(True, validation_alias=_env("metrics"))
    """Record the server's metrics and serve them at ``GET /metrics`` in the Prometheus text format,
    with the entry script's own prometheus_client metrics merged in. Off: no route, nothing recorded."""

    metrics_endpoint: Literal["main", "health"] = Field("main", validation_alias=_env("metrics_endpoint"))
    """Where ``/metrics`` is served: the main port, or only the health port (needs
    ``separate_health_endpoint``). It is never access-logged unless ``access_log_probes`` is on."""

    metrics_per_model: bool = Field(True, validation_alias=_env("metrics_per_model"))
    """Model-store series per model and version (state, load seconds, inferences, errors): about four
    series per model, 4,000 with 1,000 models. Off: the store's totals only."""

    tracing: bool = Field(False, validation_alias=_env("tracing"))
    """OpenTelemetry tracing (the ``tracing`` extra): a span per ``/score`` and ``/v2`` request (W3C
    ``traceparent`` honoured), its queue wait, and ``run()`` in the worker as a child, under which the
    script's own spans nest; exported over OTLP as the standard ``OTEL_*`` variables say. Log lines
    then carry the trace and span ids. Off: nothing is imported and nothing is recorded."""

    # --- model store (ONNX Runtime) ------------------------------------------
    max_models: int = Field(1000, ge=1, le=100_000, validation_alias=_env("max_models"))
    """Most models the store accepts under ``model_dir``; more is a start-up error."""

    model_load_concurrency: int = Field(
        default_factory=lambda data: min(256, data["cpus"]),
        ge=1,
        le=256,
        validation_alias=_env("model_load_concurrency"),
    )
    """Models loaded in parallel at start-up. Default: ``cpus``."""

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

    gpu_cublas_workspace_mb: int = Field(4, ge=0, le=1024, validation_alias=_env("gpu_cublas_workspace_mb"))
    """cuBLAS workspace per handle in MB, set as ``CUBLAS_WORKSPACE_CONFIG`` before CUDA loads in a
    process that runs models on CUDA (unless that variable is already set); 0: cuBLAS's default.
    Every CUDA session holds its own handles: on an H200 the default cost 146 MiB of GPU memory per
    loaded model and 4 MB costs 26 MiB (docs/models.md, "GPU memory per model")."""

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

    @field_validator("separate_health_endpoint", "server_version_header", "app_insights_enabled", mode="before")
    @classmethod
    def _switch(cls, value: object) -> object:
        return _lenient_bool(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: object) -> object:
        # NOTE: Azure ML writes AZUREML_LOG_LEVEL in upper case (INFO) and knows WARN and CRITICAL.
        if isinstance(value, str):
            v = value.strip().lower()
            return {"warn": "warning", "critical": "error", "fatal": "error"}.get(v, v)
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
    def _worker_timeout(self) -> Settings:
        # NOTE: derived values on a frozen object; only here, while it is being built. A worker
        # re-validating the dumped settings gets the same values (the rule is idempotent).
        wt = self.worker_timeout_s
        if wt is None:
            return self
        if wt == 0:
            if "wedged_after_ms" not in self.model_fields_set:
                object.__setattr__(self, "wedged_after_ms", NEVER_WEDGED_MS)
            return self
        if self.scoring_timeout_ms > wt * 1000:
            object.__setattr__(self, "scoring_timeout_ms", wt * 1000)
        if "wedged_after_ms" not in self.model_fields_set:
            object.__setattr__(self, "wedged_after_ms", wt * 1000 - self.scoring_timeout_ms)
        return self

    @model_validator(mode="after")
    def _metrics_port(self) -> Settings:
        if self.metrics_endpoint == "health" and not self.separate_health_endpoint:
            raise ValueError("metrics_endpoint=health needs separate_health_endpoint")
        return self

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.separate_health_endpoint and self.health_port and self.health_port == self.port:
            raise ValueError(
                f"health_port ({self.health_port}) must differ from port when separate_health_endpoint is on"
            )
        return self

    @model_validator(mode="after")
    def _slots_per_worker(self) -> Settings:
        if self.max_concurrent_requests < self.workers:
            # NOTE: every worker needs one slot at least; raising the limit silently
            # would over-promise capacity, so say what to change instead.
            raise ValueError(
                f"max_concurrent_requests ({self.max_concurrent_requests}) must be at least workers ({self.workers})"
            )
        return self

    @model_validator(mode="after")
    def _workers_per_front(self) -> Settings:
        # NOTE: each front owns its workers (no slot accounting across processes), so each needs one;
        # max_concurrent_requests >= workers (checked above) then gives each front a slot too.
        if self.workers < self.http_processes:
            raise ValueError(
                f"http_processes ({self.http_processes}) needs at least as many workers ({self.workers}): each "
                "HTTP front owns an equal share of them; set workers (SCOREHOST_WORKERS, WORKER_COUNT, --worker_count) "
                f"to {self.http_processes} or more, or lower http_processes"
            )
        return self

    # --- construction --------------------------------------------------------
    @classmethod
    def build(cls, low_priority: Mapping[str, Any] | None = None, /, **values: Any) -> Settings:
        """``Settings(**values)``, with ``low_priority`` field values consulted after the
        environment and before the defaults (a config file's values, a command's defaults)."""
        token = _LOW_PRIORITY.set(dict(low_priority or {}))
        try:
            return cls(**values)
        finally:
            _LOW_PRIORITY.reset(token)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _LowPrioritySource(settings_cls)

    # --- derived values (pure) -----------------------------------------------
    def app_insights_active(self) -> bool:
        """App Insights as the reference decides it: switched on and a key shaped like a UUID."""
        key = self.app_insights_key.get_secret_value() if self.app_insights_key else ""
        return self.app_insights_enabled and bool(_UUID.match(key))

    def slots_for(self, worker_index: int) -> int:
        """Concurrency slots of one worker: the container limit spread evenly."""
        base, extra = divmod(self.max_concurrent_requests, self.workers)
        return base + (1 if worker_index < extra else 0)

    def resolved_app_root(self, cwd: str) -> str:
        root = os.path.join(cwd, os.path.expanduser(self.app_root)) if self.app_root else cwd
        return os.path.abspath(root)

    def resolved_entry_script(self, cwd: str) -> str | None:
        if not self.entry_script:
            return None
        root = self.resolved_app_root(cwd)
        return os.path.normpath(os.path.join(root, os.path.expanduser(self.entry_script)))


# --- the process-wide settings --------------------------------------------------
_installed: Settings | None = None


def install(settings: Settings) -> None:
    """Make ``settings`` the process-wide object (a worker installs the HTTP process's)."""
    global _installed
    _installed = settings


def current() -> Settings:
    """The installed settings; outside a server process, the environment's."""
    return _installed if _installed is not None else Settings()
