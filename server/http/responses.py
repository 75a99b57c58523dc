"""Responses: a thin Starlette response built from ready-made raw headers, and the
renderers for replies and errors. Error bodies are ``{"message": ...}`` as the
reference server writes them (``{"error": ...}`` too under ``/v2``, which is what
V2 clients such as tritonclient read)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from server import __version__
from server.errors import ScoreHostError
from server.workers.protocol import Reply

SERVER_VERSION = ("x-ms-server-version", f"scorehost/{__version__}")
_RAW_VERSION = (b"x-ms-server-version", SERVER_VERSION[1].encode())
_TRUE, _FALSE = b"True", b"False"
_JSON = b"application/json"


class RawResponse(Response):
    """A response whose header list is already encoded; skips per-header work."""

    def __init__(self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        raw_headers.append((b"content-length", str(len(body)).encode()))
        self.raw_headers = raw_headers


def id_headers(ids: tuple[str, str | None, str | None]) -> list[tuple[bytes, bytes]]:
    """x-request-id, x-ms-request-id, x-ms-client-request-id (and TraceId) as the reference echoes them."""
    rid, client_rid, trace = ids
    rid_b = rid.encode()
    client_b = client_rid.encode() if client_rid else rid_b
    headers = [
        (b"x-request-id", rid_b),
        (b"x-ms-request-id", client_b),
        (b"x-ms-client-request-id", client_b),
        _RAW_VERSION,
    ]
    if trace:
        headers.append((b"traceid", trace.encode()))
    return headers


def render_reply(reply: Reply, ids: tuple[str, str | None, str | None]) -> RawResponse:
    headers = id_headers(ids)
    if reply.content_type:
        headers.append((b"content-type", reply.content_type.encode()))
    headers.append((b"x-ms-run-function-failed", _TRUE if reply.run_failed else _FALSE))
    if reply.exec_ms is not None and reply.status < 400:
        headers.append((b"x-ms-run-fn-exec-ms", b"%.3f" % reply.exec_ms))
    for name, value in reply.headers:
        headers.append((name.lower().encode(), str(value).encode("latin-1", "replace")))
    return RawResponse(reply.status, reply.body, headers)


def render_error(
    exc: ScoreHostError, ids: tuple[str, str | None, str | None] | None = None, *, v2: bool = False
) -> RawResponse:
    payload = {"message": exc.message, "error": exc.message} if v2 else {"message": exc.message}
    headers = id_headers(ids) if ids else [_RAW_VERSION]
    headers.append((b"content-type", _JSON))
    headers.append((b"x-ms-run-function-failed", _TRUE if exc.run_failed else _FALSE))
    for name, value in exc.headers.items():
        headers.append((name.lower().encode(), value.encode()))
    return RawResponse(exc.status_code, orjson.dumps(payload), headers)


def json_response(status: int, payload: object, extra: list[tuple[bytes, bytes]] | None = None) -> RawResponse:
    headers = [(b"content-type", _JSON), _RAW_VERSION, *(extra or [])]
    return RawResponse(status, orjson.dumps(payload), headers)


def text_response(status: int, text: str, content_type: bytes = b"text/html; charset=utf-8") -> RawResponse:
    return RawResponse(status, text.encode(), [(b"content-type", content_type), _RAW_VERSION])
