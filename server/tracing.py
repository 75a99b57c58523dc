"""OpenTelemetry tracing, and Application Insights export (optional extras).

Off by default, and free when off: nothing imports ``opentelemetry`` until :func:`setup`
finds ``settings.tracing`` on or Application Insights configured; the HTTP layer and the
pool test one attribute for ``None`` per request.

Spans, per ``/score`` or ``/v2`` request:

* HTTP process: ``"{METHOD} {route}"`` (kind SERVER), the child of the W3C ``traceparent``
  the client sent, if any; and ``"queue wait"``, its child, from the call's arrival at the
  pool to the worker starting it;
* worker: ``"run"`` (``"v2"`` for the model store), a child of the request's span: the
  HTTP process carries its ``traceparent`` in the CALL frame (:attr:`Call.traceparent`).
  ``run()`` executes with that span current, so the script's own spans nest under it and
  its log lines carry its trace and span ids (:func:`server.log.set_trace_ids`).

Export: with ``settings.tracing``, OTLP as the standard variables say
(``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``..._HEADERS``, ``..._PROTOCOL``: ``http/protobuf``
by default, ``grpc``; ``OTEL_TRACES_EXPORTER=console|none``; ``OTEL_TRACES_SAMPLER``;
``OTEL_SERVICE_NAME``, default ``scorehost``). With Application Insights
(``AML_APP_INSIGHTS_ENABLED`` + ``AML_APP_INSIGHTS_KEY``, the reference's names, or
``APPLICATIONINSIGHTS_CONNECTION_STRING``): the same spans (SERVER spans become request
telemetry) and the log records of both processes, through azure-monitor-opentelemetry-exporter.
Its calls home (statsbeat, SDK stats, the control plane) stay off unless the environment
turns them on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from server import log
from server.workers.protocol import Call, Reply, Target

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from server.settings import Settings
    from server.workers.relay import Answer

logger = logging.getLogger("scorehost.tracing")

AI_CONNECTION_ENV = "APPLICATIONINSIGHTS_CONNECTION_STRING"
# The Azure Monitor exporter's own traffic besides the telemetry: off unless set otherwise.
AZURE_QUIET = {
    "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
    "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
}
# Loggers never exported to App Insights: the exporters' own (an export would log an export).
_NOT_EXPORTED = ("azure", "opentelemetry", "urllib3", "grpc")
R = TypeVar("R")


def app_insights_connection_string(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The connection string to export to: ``APPLICATIONINSIGHTS_CONNECTION_STRING``, else the
    reference's switch and key (``AML_APP_INSIGHTS_ENABLED`` + ``AML_APP_INSIGHTS_KEY``)."""
    explicit = environ.get(AI_CONNECTION_ENV, "").strip()
    if explicit:
        return explicit
    if settings.app_insights_active() and settings.app_insights_key is not None:
        return f"InstrumentationKey={settings.app_insights_key.get_secret_value()}"
    return None


def enabled(settings: Settings, environ: Mapping[str, str]) -> bool:
    return settings.tracing or app_insights_connection_string(settings, environ) is not None


def worker_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """What the workers' environment needs so that they export where the HTTP process does."""
    connection = app_insights_connection_string(settings, environ)
    if connection is None:
        return {}
    return {AI_CONNECTION_ENV: connection, **{k: v for k, v in AZURE_QUIET.items() if k not in environ}}


class Telemetry:
    """One process's tracer provider (and, for App Insights, its logger provider)."""

    def __init__(self, provider: TracerProvider, logs: LoggerProvider | None = None) -> None:
        self.provider = provider
        self.logs = logs
        self.tracer = provider.get_tracer("scorehost")

    def flush(self) -> None:
        self.provider.force_flush(5000)
        if self.logs is not None:
            self.logs.force_flush(5000)

    def shutdown(self) -> None:
        self.provider.shutdown()
        if self.logs is not None:
            self.logs.shutdown()
        log.set_trace_ids(None)


def setup(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    role: str,
    worker: int | None = None,
    exporter: SpanExporter | None = None,
    install_global: bool = False,
) -> Telemetry | None:
    """The process's telemetry, or None when tracing is off (or its packages are missing).

    ``exporter``: one more span exporter, exported to synchronously (tests pass an in-memory
    one). ``install_global``: make it the process's tracer provider (a worker: the script's
    ``trace.get_tracer()`` must use it)."""
    connection = app_insights_connection_string(settings, environ)
    if not settings.tracing and connection is None and exporter is None:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        logger.error("Tracing is on but OpenTelemetry is not installed: pip install 'scorehost[tracing]'")
        return None
    if connection is not None:  # read by the Azure exporter, here and in the workers (worker_environment)
        for key, value in AZURE_QUIET.items():
            os.environ.setdefault(key, value)
    attributes: dict[str, Any] = {"scorehost.role": role, "process.pid": os.getpid()}
    if worker is not None:
        attributes["scorehost.worker"] = worker
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = "scorehost"
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource)
    if settings.tracing:
        otlp = _otlp_exporter(environ)
        if otlp is not None:
            provider.add_span_processor(BatchSpanProcessor(otlp))
    logs = None
    if connection is not None:
        logs = _app_insights(provider, resource, connection)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if install_global:
        trace.set_tracer_provider(provider)
    log.set_trace_ids(_current_ids)
    return Telemetry(provider, logs)


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter | None:
    kind = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    try:
        if (protocol or "").strip().lower() == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

            return Grpc()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http()
    except ImportError:
        logger.error("The OTLP exporter is not installed: pip install 'scorehost[tracing]'")
        return None


def _app_insights(provider: TracerProvider, resource: Any, connection: str) -> LoggerProvider | None:
    try:
        from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter, AzureMonitorTraceExporter
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.error("Application Insights is configured but its exporter is not installed: "
                     "pip install 'scorehost[appinsights]'")  # fmt: skip
        return None
    options: dict[str, Any] = {"connection_string": connection, "disable_offline_storage": True}
    provider.add_span_processor(BatchSpanProcessor(AzureMonitorTraceExporter(tracer_provider=provider, **options)))
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(BatchLogRecordProcessor(AzureMonitorLogExporter(**options)))
    handler = LoggingHandler(logger_provider=logs)
    handler.addFilter(lambda record: not record.name.startswith(_NOT_EXPORTED))
    logging.getLogger().addHandler(handler)
    for name in ("azure", "urllib3"):  # their request lines would drown the server's own
        logging.getLogger(name).setLevel(logging.WARNING)
    return logs


def _current_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _epoch_ns(monotonic_s: float) -> int:
    """A ``time.monotonic()`` value as the wall-clock nanoseconds spans are stamped with."""
    return time.time_ns() - time.monotonic_ns() + int(monotonic_s * 1e9)


class HttpTracing:
    """The HTTP process's spans: one per request, its queue wait, and the traceparent for the worker."""

    def __init__(self, telemetry: Telemetry) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self._context = context
        self._trace = trace
        self._server = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        self._propagator = TraceContextTextMapPropagator()

    def start(self, scope: Mapping[str, Any], route: str) -> tuple[Span, object]:
        """Start the request's span (current until :meth:`end`)."""
        carrier = {}
        for name, value in scope["headers"]:
            if name == b"traceparent" or name == b"tracestate":
                carrier[name.decode()] = value.decode("latin-1")
        parent: Context | None = self._propagator.extract(carrier) if carrier else None
        method = scope["method"]
        span = self.tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=self._server,
            attributes={"http.request.method": method, "http.route": route, "url.path": scope["path"]},
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end(self, span: Span, token: object, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._error)
        self._context.detach(token)  # type: ignore[arg-type]
        span.end()

    # --- CallTracer (server.workers.pool) ------------------------------------------
    def traceparent(self) -> str:
        ctx = self._trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return ""
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    def queued(self, arrived: float, answer: Answer) -> None:
        head = answer if isinstance(answer, Reply) else answer.head
        if head.started_at is None:
            return
        span = self.tracer.start_span("queue wait", start_time=_epoch_ns(arrived))
        span.end(end_time=_epoch_ns(max(head.started_at, arrived)))


class WorkerTracing:
    """The worker's ``run`` span, the parent of whatever the script traces."""

    def __init__(self, telemetry: Telemetry) -> None:
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self._error = Status(StatusCode.ERROR)
        self._propagator = TraceContextTextMapPropagator()

    def _start(self, call: Call) -> Any:
        parent = self._propagator.extract({"traceparent": call.traceparent})
        name = "run" if call.target is Target.SCORE else "v2"
        return self.tracer.start_as_current_span(name, context=parent, attributes={
            "scorehost.request_id": call.request_id})  # fmt: skip

    def _finish(self, span: Span, result: Any) -> None:
        head = result.head if hasattr(result, "head") else result
        if isinstance(head, Reply):
            span.set_attribute("scorehost.status", head.status)
            if head.status >= 500:
                span.set_status(self._error)

    def run(self, call: Call, handle: Callable[[Call], R]) -> R:
        with self._start(call) as span:
            result = handle(call)
            self._finish(span, result)
            return result

    async def run_async(self, call: Call, handle: Callable[[Call], Awaitable[R]]) -> R:
        with self._start(call) as span:
            result = await handle(call)
            self._finish(span, result)
            return result
