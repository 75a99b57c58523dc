"""OpenTelemetry tracing: the request's span in the HTTP process (the SDK's in-memory exporter),
run()'s span in the worker and the script's own span under it (OTLP to a local receiver),
one trace across the process boundary; log lines carry the ids; nothing is loaded when off."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import plain_http
import pytest
from conftest import SCRIPTS, wait_pool_ready
from onnx_models import make_mlp
from receivers import OtlpReceiver, running

from server import tracing
from server.http.app import create_app
from server.settings import Settings
from server.workers.pool import WorkerPool

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BLRP_SCHEDULE_DELAY": "50"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Traced = tuple[httpx.AsyncClient, InMemorySpanExporter, OtlpReceiver]


@contextlib.asynccontextmanager
async def traced_client(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter, OtlpReceiver]]:
    """An in-process app with tracing and a ready worker: the HTTP side exports to the SDK's
    in-memory exporter only, the worker over OTLP/HTTP to a receiver."""
    memory = InMemorySpanExporter()
    telemetry = tracing.setup(settings, {"OTEL_TRACES_EXPORTER": "none"}, role="http", exporter=memory)
    assert telemetry is not None
    with running(OtlpReceiver()) as receiver:
        pool = WorkerPool(settings)
        pool.worker_env = {**os.environ, **FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
        app = create_app(settings, pool, manage_pool=False, telemetry=telemetry)
        await pool.start()
        try:
            await wait_pool_ready(pool)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                yield client, memory, receiver
        finally:
            await pool.stop(5)
            telemetry.shutdown()


@pytest.mark.anyio
async def test_scripts_span_is_a_child_of_run_across_the_process_boundary(capfd: pytest.CaptureFixture[str]) -> None:
    settings = Settings(entry_script=str(SCRIPTS / "traced.py"), access_log=False, tracing=True, log_format="json")
    async with traced_client(settings) as (client, memory, receiver):
        reply = (await client.post("/score", content=b"hello", headers={"traceparent": TRACEPARENT})).json()
        assert receiver.wait(lambda: {"run", "user work"} <= {s["name"] for s in receiver.spans()})
        worker_spans = {s["name"]: s for s in receiver.spans()}
    http_spans = {s.name: s for s in memory.get_finished_spans()}
    request, queue = http_spans["POST /score"], http_spans["queue wait"]
    run, user = worker_spans["run"], worker_spans["user work"]
    # One trace, continued from the client's traceparent.
    assert {f"{request.context.trace_id:032x}", run["trace_id"], user["trace_id"], reply["trace_id"]} == {TRACE_ID}
    assert request.kind is SpanKind.SERVER and f"{request.parent.span_id:016x}" == CLIENT_SPAN
    assert request.attributes["http.response.status_code"] == 200
    assert queue.parent.span_id == request.context.span_id and queue.end_time >= queue.start_time
    # Across the process boundary: run() is the request's child, the script's span is run()'s.
    assert run["parent_id"] == f"{request.context.span_id:016x}"
    assert user["parent_id"] == run["span_id"] and user["span_id"] == reply["span_id"]
    assert run["attributes"]["scorehost.request_id"] and run["resource"]["scorehost.role"] == "worker"
    assert run["resource"]["service.name"] == "scorehost"
    # The script's log line carries the trace and span ids (JSON lines).
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    (line,) = [entry for entry in lines if entry.get("message") == "inside user work"]
    assert line["trace_id"] == TRACE_ID and line["span_id"] == reply["span_id"]


@pytest.mark.slow
def test_a_live_server_exports_both_processes_spans_and_logs_ids(start_server) -> None:  # type: ignore[no-untyped-def]
    with running(OtlpReceiver()) as receiver:
        env = {"SCOREHOST_TRACING": "true", "SCOREHOST_LOG_FORMAT": "json", "OTEL_SERVICE_NAME": "shop",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **FAST_EXPORT}  # fmt: skip
        server = start_server("traced.py", **env)
        reply = plain_http.post(server.url + "/score", content=b"x", headers={"traceparent": TRACEPARENT}).json()
        plain = plain_http.post(server.url + "/score", content=b"y").json()  # no traceparent: a new trace
        assert receiver.wait(lambda: sum(s["name"] == "user work" for s in receiver.spans()) == 2
                             and sum(s["name"] == "POST /score" for s in receiver.spans()) == 2)  # fmt: skip
        spans = receiver.spans()
    by_trace: dict[str, dict[str, Any]] = {}
    for span in spans:
        by_trace.setdefault(span["trace_id"], {})[span["name"]] = span
    assert set(by_trace) == {TRACE_ID, plain["trace_id"]}
    for trace in by_trace.values():
        request, queue, run, user = (trace[n] for n in ("POST /score", "queue wait", "run", "user work"))
        assert request["kind"] == 2 and request["resource"]["scorehost.role"] == "http"  # SPAN_KIND_SERVER
        assert queue["parent_id"] == request["span_id"] == run["parent_id"] and user["parent_id"] == run["span_id"]
        assert request["resource"]["service.name"] == "shop"
    assert by_trace[TRACE_ID]["POST /score"]["parent_id"] == CLIENT_SPAN
    time.sleep(0.3)
    logged = [json.loads(line) for line in server.lines if line.startswith("{")]
    user_lines = [entry for entry in logged if entry.get("message") == "inside user work"]
    assert {(e["trace_id"], e["span_id"]) for e in user_lines} == {
        (TRACE_ID, reply["span_id"]), (plain["trace_id"], plain["span_id"])}  # fmt: skip
    access = [e for e in logged if e.get("logger") == "scorehost.access"]
    assert {e["trace_id"] for e in access} == {TRACE_ID, plain["trace_id"]}


@pytest.mark.slow
def test_nothing_is_loaded_in_a_worker_when_tracing_is_off(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("loaded_modules.py")
    wanted = ["opentelemetry", "prometheus_client", "azure", "grpc"]
    assert plain_http.post(server.url + "/score", json=wanted).json() == []


def test_app_insights_connection_string_from_the_references_names() -> None:
    key = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    on = Settings(app_insights_enabled=True, app_insights_key=key)
    assert tracing.app_insights_connection_string(on, {}) == f"InstrumentationKey={key}"
    off = Settings(app_insights_enabled=False, app_insights_key=key)
    assert tracing.app_insights_connection_string(off, {}) is None
    bad_key = Settings(app_insights_enabled=True, app_insights_key="x")
    assert tracing.app_insights_connection_string(bad_key, {}) is None
    explicit = {tracing.AI_CONNECTION_ENV: "InstrumentationKey=abc;IngestionEndpoint=http://127.0.0.1:9/"}
    assert tracing.app_insights_connection_string(Settings(), explicit) == explicit[tracing.AI_CONNECTION_ENV]
    env = tracing.worker_environment(on, {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "false"})
    assert env[tracing.AI_CONNECTION_ENV] == f"InstrumentationKey={key}"
    assert "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL" not in env  # the environment's own choice stays
    assert env["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] == "true"
    assert tracing.setup(Settings(), {}, role="http") is None and not tracing.enabled(Settings(), {})


@pytest.mark.anyio
async def test_v2_inference_gets_its_span_and_route_on_the_fast_path(tmp_path: Path) -> None:
    make_mlp(tmp_path / "mlp" / "1" / "model.onnx")
    settings = Settings(model_dir=str(tmp_path), access_log=False, tracing=True)
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    async with traced_client(settings) as (client, memory, _):
        ok = await client.post("/v2/models/mlp/infer", json=body, headers={"traceparent": TRACEPARENT})
        missing = await client.post("/v2/models/nope/versions/2/infer", json=body)
    assert (ok.status_code, missing.status_code) == (200, 404)
    spans = [s for s in memory.get_finished_spans() if s.name == "POST /v2/models/{model}/infer"]
    assert len(spans) == 2
    traced, plain = sorted(spans, key=lambda s: s.attributes["http.response.status_code"])
    assert traced.kind is SpanKind.SERVER and f"{traced.parent.span_id:016x}" == CLIENT_SPAN
    assert traced.attributes["http.route"] == "/v2/models/{model}/infer"
    assert traced.attributes["url.path"] == "/v2/models/mlp/infer"
    assert (traced.attributes["http.response.status_code"], plain.attributes["http.response.status_code"]) == (200, 404)
    assert plain.attributes["url.path"] == "/v2/models/nope/versions/2/infer" and plain.parent is None
