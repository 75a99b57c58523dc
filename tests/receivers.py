"""Local HTTP receivers that record what exporters post: OTLP/HTTP traces and Application
Insights' ingestion API. They listen on 127.0.0.1 only; no test sends anything further."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class _Receiver:
    def __init__(self, handle: Callable[[str, bytes], bytes]) -> None:
        self.posts: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver.lock:
                    receiver.posts.append((self.path, body))
                answer = handle(self.path, body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait(self, check: Callable[[], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.05)
        return check()


class OtlpReceiver(_Receiver):
    """OTLP/HTTP (protobuf) trace receiver: ``spans()`` decodes every span posted so far."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        empty = ExportTraceServiceResponse().SerializeToString()
        super().__init__(lambda path, body: empty)

    def spans(self) -> list[dict[str, Any]]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        out: list[dict[str, Any]] = []
        with self.lock:
            posts = list(self.posts)
        for path, body in posts:
            if not path.endswith("/v1/traces"):
                continue
            request = ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                resource = {kv.key: _any(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append({
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "attributes": {kv.key: _any(kv.value) for kv in span.attributes},
                            "resource": resource,
                        })  # fmt: skip
        return out


class AppInsightsReceiver(_Receiver):
    """Application Insights' track endpoint: ``envelopes()`` are the telemetry items posted."""

    def __init__(self) -> None:
        def accept(path: str, body: bytes) -> bytes:
            items = _envelopes(body)
            return json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()

        super().__init__(accept)

    def envelopes(self) -> list[dict[str, Any]]:
        with self.lock:
            posts = list(self.posts)
        return [e for path, body in posts if path.endswith("/track") for e in _envelopes(body)]


def _envelopes(body: bytes) -> list[dict[str, Any]]:
    text = body.decode("utf-8").strip()
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _any(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@contextmanager
def running(receiver: _Receiver) -> Iterator[Any]:
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
