"""Responses: a thin Starlette response built from ready-made raw headers, and the
renderers for replies and errors. Error bodies are ``{"message": ...}`` as the
reference server writes them (``{"error": ...}`` too under ``/v2``, which is what
V2 clients such as tritonclient read)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HEADER_VALUE_RE, STATUS_LINE, RequestResponseCycle

from server import __version__
from server.errors import StreamFailed, error_body
from server.workers.protocol import Reply
from server.workers.relay import ReplyStream

# Called when a streamed reply ends: (status, bytes sent, failure or None).
StreamEnd = Callable[[int, int, str | None], None]

SERVER_VERSION = ("x-ms-server-version", f"scorehost/{__version__}")
_RAW_VERSION = (b"x-ms-server-version", SERVER_VERSION[1].encode())
# The server-version header on every response, or none (SERVER_VERSION_LOG_RESPONSE_ENABLED=false).
_VERSION: tuple[tuple[bytes, bytes], ...] = (_RAW_VERSION,)


def send_server_version(enabled: bool) -> None:
    """Set once at start-up from ``settings.server_version_header``."""
    global _VERSION
    _VERSION = (_RAW_VERSION,) if enabled else ()


_TRUE, _FALSE = b"True", b"False"
_JSON = b"application/json"


class RawResponse(Response):
    """A response whose header list is already encoded; skips per-header work.

    ``trusted``: every header name is ours and none is framing (content-length,
    transfer-encoding, connection) but the content-length added here; such a response
    is written whole by :func:`write_whole` when uvicorn's cycle is the sender.
    """

    def __init__(
        self, status: int, body: bytes, raw_headers: list[tuple[bytes, bytes]], *, trusted: bool = True
    ) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        raw_headers.append((b"content-length", str(len(body)).encode()))
        self.raw_headers = raw_headers
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (self.trusted and write_whole(send, self.status_code, self.raw_headers, self.body)):
            await super().__call__(scope, receive, send)


def write_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes | memoryview) -> bool:
    """Write a complete response in one ``transport.write``, as uvicorn's two ASGI sends would.

    uvicorn's ``send`` does per-header regular-expression checks and two writes: at one
    connection, a sixth of the HTTP process's time per request. The header names here are
    ours (``RawResponse.trusted``), so only the values are checked, in one search. Returns
    False (nothing done) when the sender is not a plain uvicorn cycle, the response has
    started, or the transport asks us to wait: the ASGI path handles those.
    """
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle or cycle.response_started or cycle.flow.write_paused:
        return False
    if cycle.disconnected:
        return True  # as uvicorn's send: nobody to write to
    content: list[bytes | memoryview] = [STATUS_LINE[status]]
    values: list[bytes] = []
    for name, value in (*cycle.default_headers, *headers):
        content += (name, b": ", value, b"\r\n")
        values.append(value)
    if HEADER_VALUE_RE.search(b"\t".join(values)):  # tab is allowed, so it cannot match
        return False  # uvicorn's path refuses it (500)
    keep_alive = cycle.keep_alive
    if not keep_alive:
        content.append(b"connection: close\r\n")
    content.append(b"\r\n")
    if cycle.scope["method"] != "HEAD":
        content.append(body)
    cycle.response_started = cycle.response_complete = True
    cycle.waiting_for_100_continue = False
    transport = cycle.transport
    # Whole, so nothing of this connection's would join it: out now, not at the end of the
    # loop iteration (CoalescingTransport), which saves the iteration.
    write_now = getattr(transport, "write_now", None)
    (write_now or transport.write)(b"".join(content))
    cycle.message_event.set()
    if not keep_alive:
        transport.close()
    cycle.on_response()
    return True


def id_headers(ids: tuple[str, str | None, str | None]) -> list[tuple[bytes, bytes]]:
    """x-request-id, x-ms-request-id, x-ms-client-request-id (and TraceId) as the reference echoes them."""
    rid, client_rid, trace = ids
    rid_b = rid.encode()
    client_b = client_rid.encode() if client_rid else rid_b
    headers = [
        (b"x-request-id", rid_b),
        (b"x-ms-request-id", client_b),
        (b"x-ms-client-request-id", client_b),
        *_VERSION,
    ]
    if trace:
        headers.append((b"traceid", trace.encode()))
    return headers


def render_reply(reply: Reply, ids: tuple[str, str | None, str | None]) -> RawResponse:
    # Headers set by run() (AMLResponse) may be framing headers: uvicorn's checks apply.
    return RawResponse(reply.status, reply.body, _reply_headers(reply, ids), trusted=not reply.headers)


def _reply_headers(reply: Reply, ids: tuple[str, str | None, str | None]) -> list[tuple[bytes, bytes]]:
    headers = id_headers(ids)
    if reply.content_type:
        headers.append((b"content-type", reply.content_type.encode()))
    headers.append((b"x-ms-run-function-failed", _TRUE if reply.run_failed else _FALSE))
    if reply.exec_ms is not None and reply.status < 400:
        headers.append((b"x-ms-run-fn-exec-ms", b"%.3f" % reply.exec_ms))
    for name, value in reply.headers:
        headers.append((name.lower().encode(), str(value).encode("latin-1", "replace")))
    return headers


def render_stream(stream: ReplyStream, ids: tuple[str, str | None, str | None], on_end: StreamEnd) -> Response:
    """A streamed reply, sent with chunked transfer encoding as the worker yields it.

    A stream that fails midway (run() raised, the worker died, it went idle) is cut
    off without its terminating chunk, so the client sees an incomplete response
    rather than a short one that looks whole.
    """
    head = stream.head
    headers = _reply_headers(head, ids)

    async def body() -> AsyncIterator[bytes]:
        failure: str | None = None
        try:
            async for chunk in stream:
                yield chunk
        except StreamFailed as exc:
            failure = str(exc)
            raise
        finally:
            on_end(head.status, stream.sent_bytes, failure)

    response = StreamingResponse(body(), status_code=head.status)
    response.raw_headers = headers
    return response


def render_error(
    exc: BaseException, ids: tuple[str, str | None, str | None] | None = None, *, v2: bool = False
) -> RawResponse:
    """The one renderer of errors: any exception, via :func:`server.errors.error_body`."""
    status, body, extra, run_failed = error_body(exc, v2=v2)
    headers = id_headers(ids) if ids else [*_VERSION]
    headers.append((b"content-type", _JSON))
    headers.append((b"x-ms-run-function-failed", _TRUE if run_failed else _FALSE))
    for name, value in extra.items():
        headers.append((name.lower().encode(), value.encode()))
    return RawResponse(status, body, headers)


def json_response(status: int, payload: object, extra: list[tuple[bytes, bytes]] | None = None) -> RawResponse:
    headers = [(b"content-type", _JSON), *_VERSION, *(extra or [])]
    return RawResponse(status, orjson.dumps(payload), headers)


def text_response(status: int, text: str, content_type: bytes = b"text/html; charset=utf-8") -> RawResponse:
    return RawResponse(status, text.encode(), [(b"content-type", content_type), *_VERSION])
