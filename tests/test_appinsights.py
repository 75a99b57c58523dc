"""Application Insights export, against a local receiver standing in for the ingestion endpoint:
request telemetry, the spans of both processes and log records arrive, correlated by trace id."""

from __future__ import annotations

import time
from typing import Any

import plain_http
import pytest
from receivers import AppInsightsReceiver, running

pytest.importorskip("azure.monitor.opentelemetry.exporter")
pytestmark = pytest.mark.slow

KEY = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def _kind(envelope: dict[str, Any]) -> str:
    return str(envelope.get("name", "")).rsplit(".", 1)[-1]


def test_requests_spans_and_logs_reach_app_insights(start_server) -> None:  # type: ignore[no-untyped-def]
    with running(AppInsightsReceiver()) as receiver:
        connection = f"InstrumentationKey={KEY};IngestionEndpoint={receiver.url}/"
        server = start_server("traced.py", APPLICATIONINSIGHTS_CONNECTION_STRING=connection,
                              OTEL_BSP_SCHEDULE_DELAY="50", OTEL_BLRP_SCHEDULE_DELAY="50")  # fmt: skip
        headers = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
        assert plain_http.post(server.url + "/score", content=b"x", headers=headers).status_code == 200

        def arrived() -> bool:
            kinds = [(_kind(e), e["data"]["baseData"].get("name") or e["data"]["baseData"].get("message"))
                     for e in receiver.envelopes()]  # fmt: skip
            return ("Request", "POST /score") in kinds and ("Message", "inside user work") in kinds and (
                "RemoteDependency", "user work") in kinds  # fmt: skip

        assert receiver.wait(arrived), [_kind(e) for e in receiver.envelopes()]
        server.stop()
        time.sleep(0.2)
        envelopes = receiver.envelopes()
    assert all(e["iKey"] == KEY for e in envelopes)
    assert not [line for line in server.lines if " E [" in line and "azure" in line], server.log
    ours = [e for e in envelopes if e["tags"].get("ai.operation.id") == TRACE_ID]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for e in ours:
        by_kind.setdefault(_kind(e), []).append(e["data"]["baseData"])
    (request,) = by_kind["Request"]
    assert request["name"] == "POST /score" and request["responseCode"] == "200" and request["success"] is True
    assert {"run", "queue wait", "user work"} <= {d["name"] for d in by_kind["RemoteDependency"]}
    assert "inside user work" in {m["message"] for m in by_kind["Message"]}  # the script's log line
    # The server's own log records go too (not correlated to a request).
    assert any("is ready" in str(e["data"]["baseData"].get("message")) for e in envelopes)
    # The roles tell the two processes apart.
    assert {e["tags"].get("ai.cloud.role") for e in ours} == {"scorehost"}
