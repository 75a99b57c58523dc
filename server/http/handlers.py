"""HTTP handlers: parse the request, call the pool, render the reply. Nothing else.

Every handler answers; no exception escapes to the client as a dropped
connection. Request ids follow the reference: ``x-request-id`` is echoed (or a
uuid4 is made), ``x-ms-client-request-id`` (legacy ``x-ms-request-id``) becomes
``x-ms-request-id``, ``TraceId`` is echoed; any of them over 100 characters is 431.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from server.errors import (
    BadRequest,
    ClientDisconnected,
    HeaderTooLarge,
    MethodNotAllowed,
    NotFound,
    NotReady,
    PayloadTooLarge,
    ScoreHostError,
)
from server.http import swagger
from server.http.auth import Authenticator
from server.http.connection import ABORTED
from server.http.responses import (
    RawResponse,
    StreamEnd,
    json_response,
    render_error,
    render_reply,
    render_stream,
)
from server.log import AccessLog
from server.settings import Settings
from server.workers.pool import WorkerPool
from server.workers.protocol import Call, MetaLevel, Reply, RunMode, Target
from server.workers.relay import Answer

if TYPE_CHECKING:
    from server.collect.writer import PayloadCollector

logger = logging.getLogger("scorehost.http")

MAX_ID_LENGTH = 100
SCORE_METHODS = ("GET", "POST", "OPTIONS")
V2_METHODS = ("GET", "POST")
Ids = tuple[str, str | None, str | None]
Work = Callable[[Request, Ids, dict[bytes, bytes]], Awaitable[Response]]

_X_REQUEST_ID = b"x-request-id"
_CLIENT_IDS = (b"x-ms-client-request-id", b"x-ms-request-id")
_TRACE = b"traceid"
_AUTH = b"authorization"
_CTYPE = b"content-type"
_CLEN = b"content-length"
# The only request headers the V2 handler reads (server/store/v2.py); a V2 call carries no others.
_V2_HEADERS = (b"content-encoding", b"inference-header-content-length")
_COLLECT_BODY = "scorehost.collect_body"


class RequestIds:
    """Random (version 4) UUIDs for requests that bring no ``x-request-id``.

    ``uuid.uuid4()`` reads the kernel's random source once per id (a system call per
    request) and builds a 128-bit integer to format it; this draws 4 KiB at a time and
    formats the bytes directly. Same distribution and format as ``str(uuid.uuid4())``.
    """

    __slots__ = ("_pool", "_used")
    _BATCH = 256  # ids per read of os.urandom

    def __init__(self) -> None:
        self._pool = b""
        self._used = self._BATCH
        os.register_at_fork(after_in_child=self._reset)  # a forked child must not repeat our ids

    def _reset(self) -> None:
        self._used = self._BATCH

    def new(self) -> str:
        used = self._used
        if used == self._BATCH:
            self._pool = os.urandom(16 * self._BATCH)
            used = 0
        self._used = used + 1
        raw = bytearray(self._pool[16 * used : 16 * used + 16])
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Handlers:
    def __init__(self, settings: Settings, pool: WorkerPool, auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.max_body = settings.max_request_bytes
        self.log_access = settings.access_log
        self.log_probes = settings.access_log_probes
        self.log_query = settings.access_log_query
        # auth_mode (server.http.auth): None when nothing is required.
        self.auth = auth if auth is not None else Authenticator.from_settings(settings)
        self._auth_check = self.auth.check if self.auth is not None else None
        self.access = AccessLog(settings.log_format)
        self._new_id = RequestIds().new
        # Bodies that ended before their declared length (the client went away): never run.
        self.incomplete_bodies = 0
        self.on_error: Callable[[ScoreHostError], None] | None = None  # /metrics (server.http.observe)
        self.collect: PayloadCollector | None = None  # model data collection (server.collect), set by the app

    # --- helpers -------------------------------------------------------------
    def _scan(self, request: Request) -> tuple[Ids, dict[bytes, bytes]]:
        """One pass over the raw headers: ids, auth, content type and length."""
        rid = client = trace = None
        found: dict[bytes, bytes] = {}
        for name, value in request.scope["headers"]:
            if name == _X_REQUEST_ID:
                rid = value.decode("latin-1")
            elif name in _CLIENT_IDS:
                if client is None or name == _CLIENT_IDS[0]:
                    client = value.decode("latin-1")
            elif name == _TRACE:
                trace = value.decode("latin-1")
            elif name in (_AUTH, _CTYPE, _CLEN):
                if name == _AUTH and name in found:  # a singleton field: which one would count?
                    raise BadRequest("The Authorization header must not be repeated.")
                found[name] = value
        if rid is None:
            rid = self._new_id()
        ids: Ids = (rid, client, trace)
        for label, value in (("x-request-id", rid), ("x-ms-client-request-id", client), ("TraceId", trace)):
            if value is not None and len(value) > MAX_ID_LENGTH:
                raise _IdTooLong(HeaderTooLarge(f"{label} must not exceed {MAX_ID_LENGTH} characters"))
        return ids, found

    def _check_auth(self, found: dict[bytes, bytes]) -> None:
        check = self._auth_check
        if check is not None:
            check(found.get(_AUTH))  # Unauthorized (401) unless the key or token is good

    async def _body(self, request: Request, found: dict[bytes, bytes]) -> bytes:
        limit = self.max_body
        declared = found.get(_CLEN)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body of {int(declared)} bytes exceeds the limit of {limit} bytes.")
        receive = request.receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise self._cut_short(request, size, declared)
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _cut_short(self, request: Request, size: int, declared: bytes | None) -> ScoreHostError:
        """The error for a body that ended early: the connection layer's reason (a read timeout,
        a malformed body) if it ended the request, else the client closed the connection."""
        aborted = request.scope.get(ABORTED)
        if isinstance(aborted, ScoreHostError):
            return aborted
        self.incomplete_bodies += 1
        expected = f"{int(declared)} declared" if declared is not None and declared.isdigit() else "more expected"
        return ClientDisconnected(
            f"Client disconnected after {size} byte(s) of the request body ({expected}); run() was not called. "
            f"Incomplete bodies so far: {self.incomplete_bodies}."
        )

    def _log(self, request: Request, status: int, started: float, rid: str, size: int) -> None:
        path = request.scope["path"]
        if self.log_query:
            qs = request.scope["query_string"]
            if qs:
                path = f"{path}?{qs.decode('latin-1')}"
        self.access.write(request.scope["method"], path, status, (time.perf_counter() - started) * 1000.0, size, rid)

    # --- /score and /v2 ---------------------------------------------------------
    async def _handle(self, request: Request, work: Work, *, v2: bool) -> Response:
        """What both forwarding routes share: ids, errors rendered, the access line."""
        started = time.perf_counter()
        ids: Ids | None = None
        try:
            ids, found = self._scan(request)
            response = await work(request, ids, found)
        except _IdTooLong as exc:
            response = render_error(exc.error, v2=v2)
        except ScoreHostError as exc:
            response = self._error(request, exc, ids, v2=v2)
        # A streamed reply writes its access line when it ends (see _stream_logger).
        if self.log_access and not isinstance(response, StreamingResponse):
            self._log(request, response.status_code, started, ids[0] if ids else "-", len(response.body))
        if self.collect is not None and ids is not None and _COLLECT_BODY in request.scope:
            self._collect(self.collect, request, ids, response, started)
        return response

    @staticmethod
    def _collect(collect: PayloadCollector, request: Request, ids: Ids, response: Response, started: float) -> None:
        """Model data collection, after the response is known (a streamed reply: its request only)."""
        body, ctype = request.scope[_COLLECT_BODY]
        streamed = isinstance(response, StreamingResponse)
        reply = None if streamed else bytes(response.body)
        headers = None if streamed else response.raw_headers
        collect.score(request.scope["method"], ids, ctype, body, response.status_code, reply, headers, started)

    async def score(self, request: Request) -> Response:
        return await self._handle(request, self._score, v2=False)

    async def v2(self, request: Request) -> Response:
        return await self._handle(request, self._v2, v2=True)

    async def _score(self, request: Request, ids: Ids, found: dict[bytes, bytes]) -> Response:
        method = request.scope["method"]
        if method not in SCORE_METHODS:
            raise MethodNotAllowed("The method is not allowed for the requested URL.", allow=SCORE_METHODS)
        self._check_auth(found)
        script = self.pool.script
        if method == "OPTIONS" and (script is None or script.mode is not RunMode.RAW):
            return render_reply(Reply(200, b"", None), ids)
        body = await self._body(request, found)
        if self.collect is not None:  # the payload to record (GET: its query string), see _collect
            request.scope[_COLLECT_BODY] = (
                body if method != "GET" else request.scope["query_string"],
                found.get(_CTYPE),
            )
        level = script.meta_level if script else MetaLevel.NONE
        call = self._call(request, Target.SCORE, method, ids[0], body, level, found, self._auth_check is not None)
        answer = await self.pool.call(call)
        return self._render(request, answer, ids)

    async def _v2(self, request: Request, ids: Ids, found: dict[bytes, bytes]) -> Response:
        method = request.scope["method"]
        if method not in V2_METHODS:
            raise MethodNotAllowed("The method is not allowed for the requested URL.", allow=V2_METHODS)
        self._check_auth(found)
        body = await self._body(request, found)
        call = self._call(request, Target.V2, method, ids[0], body, MetaLevel.FULL, found, keep=_V2_HEADERS)
        answer = await self.pool.call(call)
        return self._render(request, answer, ids)

    def _render(self, request: Request, answer: Answer, ids: Ids) -> Response:
        if isinstance(answer, Reply):
            return render_reply(answer, ids)
        return render_stream(answer, ids, self._stream_logger(request, ids[0]))

    def _stream_logger(self, request: Request, rid: str) -> StreamEnd:
        """The access line of a streamed reply, written when its last byte is sent."""
        started = time.perf_counter()

        def done(status: int, size: int, failure: str | None) -> None:
            if failure is not None:
                logger.warning("Stream ended early: %s", failure, extra={"request_id": rid})
            if self.log_access:
                self._log(request, status, started, rid, size)

        return done

    @staticmethod
    def _call(
        request: Request, target: Target, method: str, rid: str, body: bytes, level: MetaLevel,
        found: dict[bytes, bytes], hide_auth: bool = False, keep: tuple[bytes, ...] | None = None,
    ) -> Call:  # fmt: skip
        """The call for the worker: only the metadata its script asked for. ``hide_auth``: the server
        checked the Authorization header (auth_mode), so the key or token in it stays here. ``keep``:
        the only headers the worker reads (the others cost framing on both sides for nothing)."""
        scope = request.scope
        call = Call(0, target, method, rid, body, 0.0)
        if level is MetaLevel.NONE:
            if method == "GET":
                call.query = scope["query_string"].decode("latin-1")
            return call
        call.query = scope["query_string"].decode("latin-1")
        call.content_type = found.get(_CTYPE, b"").decode("latin-1")
        if level is MetaLevel.FULL:
            call.path = scope["path"]
            headers = scope["headers"]
            if keep is not None:
                headers = [(k, v) for k, v in headers if k in keep]
            elif hide_auth and _AUTH in found:
                headers = [(k, v) for k, v in headers if k != _AUTH]
            call.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
        return call

    def _error(self, request: Request, exc: ScoreHostError, ids: Ids | None, *, v2: bool = False) -> RawResponse:
        if self.on_error is not None:
            self.on_error(exc)
        level = logging.WARNING if exc.status_code >= 500 else logging.INFO
        logger.log(
            level,
            "%s %s -> %d: %s",
            request.scope["method"],
            request.scope["path"],
            exc.status_code,
            exc.message,
            extra={"request_id": ids[0] if ids else "-"},
        )
        return render_error(exc, ids, v2=v2)

    # --- swagger -------------------------------------------------------------
    async def swagger(self, request: Request) -> Response:
        version = request.query_params.get("version", "2")
        try:
            if self.pool.script is None and not self.pool.ready():
                raise NotReady("Server is starting: the swagger document is not available yet.")
            doc = swagger.build(version, self.settings, self.pool.script)
        except ScoreHostError as exc:
            return render_error(exc)
        return json_response(200, doc)

    async def not_found(self, request: Request) -> Response:
        return render_error(
            NotFound(
                "The requested URL was not found on the server. If you entered the URL "
                "manually please check your spelling and try again."
            ),
            v2=request.scope["path"].startswith("/v2"),
        )


class _IdTooLong(Exception):
    def __init__(self, error: HeaderTooLarge) -> None:
        super().__init__(error.message)
        self.error = error
