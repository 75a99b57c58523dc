"""Every message that crosses the socket between the HTTP process and a worker.

Each message is a frame: a 4-byte little-endian length, a 1-byte :class:`Kind`, and a
kind-specific payload. Frames travel over a Unix socket pair, so a request costs one
write in each direction, and many requests share one system call under load.

    CALL    front -> worker   a request to run (:class:`Call`)
    CANCEL  front -> worker   the client went away: stop a streaming call
    CREDIT  front -> worker   a stream's client consumed this many bytes
    STOP    front -> worker   finish in-flight calls and exit
    READY   worker -> front   init() finished (:class:`ScriptInfo`, model state)
    FAILED  worker -> front   loading or init() failed, with the message
    STATE   worker -> front   start-up progress (models loaded so far)
    STATS   worker -> front   model-store counters for /metrics, changes only, about once a second
    REPLY   worker -> front   the answer to one CALL (:class:`Reply`); with ``stream``
                              set, only its head: CHUNK frames and one END follow
    CHUNK   worker -> front   a piece of a streamed reply
    END     worker -> front   a streamed reply is complete (or failed midway)
    COLLECT worker -> front   a record from a script's data collector (:class:`Collected`)

This module is pure: no sockets, no event loop, no HTTP.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from server.errors import error_body


class Kind(enum.IntEnum):
    CALL = 0x43  # "C"
    CANCEL = 0x58  # "X"
    CREDIT = 0x4B  # "K"
    STOP = 0x53  # "S"
    READY = 0x52  # "R"
    FAILED = 0x46  # "F"
    STATE = 0x50  # "P"
    STATS = 0x4D  # "M"
    REPLY = 0x41  # "A"
    CHUNK = 0x44  # "D"
    END = 0x45  # "E"
    COLLECT = 0x4C  # "L"


class Target(enum.IntEnum):
    """Which handler in the worker serves a call."""

    SCORE = 0
    V2 = 1


class RunMode(enum.StrEnum):
    """How ``run()`` takes its input (decided once, when the script loads)."""

    STRING = "string"  # the body as a str (GET: the query arguments as JSON)
    SCHEMA = "schema"  # inference-schema: the JSON body's keys as keyword arguments
    RAW = "raw"  # @rawhttp: an AMLRequest


class MetaLevel(enum.IntEnum):
    """How much request metadata the HTTP process sends with each call."""

    NONE = 0  # the body (and the query string for GET)
    CONTENT_TYPE = 1  # + query string and content type
    FULL = 2  # + path and every header


# The environment variable that carries a worker's settings (JSON, secrets left out).
SETTINGS_ENV = "SCOREHOST_WORKER_SETTINGS"

METHODS = ("GET", "POST", "OPTIONS", "PUT", "DELETE", "PATCH", "HEAD")
_METHOD_CODE = {m: i for i, m in enumerate(METHODS)}
NO_START_BY = math.inf

_LEN = struct.Struct("<I")
# kind, call_id, target, method, deadline, start_by, rid_len, ctype_len, path_len, query_len, headers_len,
# traceparent_len
_CALL = struct.Struct("<BIBBddBHHIIB")
# kind, call_id, status, flags, exec_ms, started_at, ctype_len, headers_len
_REPLY = struct.Struct("<BIHBddHI")
# kind, call_id (+ data for CHUNK)
_ID = struct.Struct("<BI")
# kind, call_id, flags
_END = struct.Struct("<BIB")
# kind, call_id, bytes consumed
_CREDIT = struct.Struct("<BIQ")

_FLAG_RUN_FAILED = 1
_FLAG_STREAM = 2
_END_FAILED = 1


@dataclass(slots=True)
class Call:
    """One request as the worker sees it.

    ``deadline`` and ``start_by`` are ``time.monotonic()`` values, which are the same
    clock in every process of one machine. ``deadline`` comes from
    :func:`server.deadline.call_deadline`; ``start_by`` is finite only for a call sent
    ahead into a busy worker's pipeline: if it has not started by then it is skipped
    (the HTTP process has answered it 503).
    """

    call_id: int
    target: Target
    method: str
    request_id: str
    body: bytes
    deadline: float
    start_by: float = NO_START_BY
    query: str = ""
    content_type: str = ""
    path: str = ""
    # Sent only when the worker asked for them (MetaLevel.FULL).
    headers: list[tuple[str, str]] = field(default_factory=list)
    # W3C traceparent of the HTTP request's span, when tracing is on: run()'s span is its child.
    traceparent: str = ""


@dataclass(slots=True)
class Reply:
    """One answer, as produced in a worker and rendered by the HTTP layer.

    ``stream`` set: ``body`` is empty and the content follows as CHUNK frames.
    """

    status: int
    body: bytes
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    run_failed: bool = False
    exec_ms: float | None = None
    stream: bool = False
    # time.monotonic() when the worker began the call (the end of its queue wait), if it did.
    started_at: float | None = None

    @classmethod
    def from_error(cls, exc: BaseException, *, v2: bool = False) -> Reply:
        """The reply for any exception, rendered by :func:`server.errors.error_body`."""
        status, body, headers, run_failed = error_body(exc, v2=v2)
        return cls(status, body, headers=list(headers.items()), run_failed=run_failed)


@dataclass(slots=True)
class ScriptInfo:
    """What the HTTP process needs to know about the loaded entry script."""

    mode: RunMode
    is_async: bool
    meta_level: MetaLevel
    param_names: list[str] = field(default_factory=list)
    input_schema: Any = None
    output_schema: Any = None
    swagger_versions: list[str] = field(default_factory=list)
    # The run() parameters without a default (request_headers left out): a schema run()
    # answers 400 when one is missing, so the swagger document marks them required.
    required_params: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "is_async": self.is_async,
            "meta_level": int(self.meta_level),
            "param_names": self.param_names,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "swagger_versions": self.swagger_versions,
            "required_params": self.required_params,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScriptInfo:
        return cls(
            RunMode(data["mode"]),
            bool(data["is_async"]),
            MetaLevel(data["meta_level"]),
            list(data.get("param_names", [])),
            data.get("input_schema"),
            data.get("output_schema"),
            list(data.get("swagger_versions", [])),
            list(data.get("required_params", [])),
        )


@dataclass(slots=True)
class Ready:
    """READY: the worker finished loading."""

    pid: int
    script: ScriptInfo | None = None
    models: dict[str, Any] | None = None


@dataclass(slots=True)
class Collected:
    """COLLECT: one record from an entry script's collector (:mod:`server.entry.monitoring`), for
    the HTTP process's writer (:mod:`server.collect`). ``data`` is JSON text unless ``truncated``."""

    collection: str
    type: str
    data: bytes
    time: float  # time.time()
    correlation_id: str = ""
    request_id: str = ""
    model: str = ""
    model_version: str = ""
    data_type: str = ""
    size: int = 0  # of the data before truncation
    truncated: bool = False
    dropped: int = 0  # records the worker dropped (outbound buffer full) since its previous COLLECT


# kind, time, size, dropped, truncated, then the byte lengths of _COLLECT_TEXT's fields
_COLLECT = struct.Struct("<BdQIB7H")
_COLLECT_TEXT = ("collection", "type", "correlation_id", "request_id", "model", "model_version", "data_type")


# --- encoding -------------------------------------------------------------------
def encode_call(call: Call) -> bytes:
    rid = call.request_id.encode()
    ctype = call.content_type.encode("latin-1")
    path = call.path.encode("latin-1")
    query = call.query.encode("latin-1")
    headers = orjson.dumps(call.headers) if call.headers else b""
    trace = call.traceparent.encode("latin-1")
    head = _CALL.pack(
        Kind.CALL,
        call.call_id,
        call.target,
        _METHOD_CODE.get(call.method, 0),
        call.deadline,
        call.start_by,
        len(rid),
        len(ctype),
        len(path),
        len(query),
        len(headers),
        len(trace),
    )
    size = len(head) + len(rid) + len(ctype) + len(path) + len(query) + len(headers) + len(trace) + len(call.body)
    return b"".join((_LEN.pack(size), head, rid, ctype, path, query, headers, trace, call.body))


def encode_reply(call_id: int, reply: Reply) -> bytes:
    ctype = (reply.content_type or "").encode()
    headers = orjson.dumps(reply.headers) if reply.headers else b""
    exec_ms = math.nan if reply.exec_ms is None else reply.exec_ms
    started_at = math.nan if reply.started_at is None else reply.started_at
    flags = (_FLAG_RUN_FAILED if reply.run_failed else 0) | (_FLAG_STREAM if reply.stream else 0)
    head = _REPLY.pack(Kind.REPLY, call_id, reply.status, flags, exec_ms, started_at, len(ctype), len(headers))
    size = len(head) + len(ctype) + len(headers) + len(reply.body)
    return b"".join((_LEN.pack(size), head, ctype, headers, reply.body))


def encode_chunk(call_id: int, data: bytes) -> bytes:
    return b"".join((_LEN.pack(_ID.size + len(data)), _ID.pack(Kind.CHUNK, call_id), data))


def encode_end(call_id: int, *, failed: bool = False) -> bytes:
    return _LEN.pack(_END.size) + _END.pack(Kind.END, call_id, _END_FAILED if failed else 0)


def encode_cancel(call_id: int) -> bytes:
    return _LEN.pack(_ID.size) + _ID.pack(Kind.CANCEL, call_id)


def encode_credit(call_id: int, consumed: int) -> bytes:
    return _LEN.pack(_CREDIT.size) + _CREDIT.pack(Kind.CREDIT, call_id, consumed)


def encode_ready(ready: Ready) -> bytes:
    payload = {"pid": ready.pid, "script": ready.script.to_dict() if ready.script else None, "models": ready.models}
    return encode_message(Kind.READY, payload)


def encode_collect(record: Collected) -> bytes:
    texts = [getattr(record, name).encode()[:0xFFFF] for name in _COLLECT_TEXT]
    head = _COLLECT.pack(Kind.COLLECT, record.time, record.size, record.dropped, record.truncated, *map(len, texts))
    size = len(head) + sum(map(len, texts)) + len(record.data)
    return b"".join((_LEN.pack(size), head, *texts, record.data))


def encode_message(kind: Kind, payload: dict[str, Any] | None = None) -> bytes:
    data = bytes((kind,)) + (orjson.dumps(payload) if payload is not None else b"")
    return _LEN.pack(len(data)) + data


# --- decoding -------------------------------------------------------------------
def decode_call(frame: memoryview) -> Call:
    (_, call_id, target, method, deadline, start_by, rid_len, ctype_len, path_len, query_len, headers_len,
     trace_len) = _CALL.unpack_from(frame)  # fmt: skip
    pos = _CALL.size
    rid = bytes(frame[pos : pos + rid_len]).decode()
    pos += rid_len
    ctype = bytes(frame[pos : pos + ctype_len]).decode("latin-1")
    pos += ctype_len
    path = bytes(frame[pos : pos + path_len]).decode("latin-1")
    pos += path_len
    query = bytes(frame[pos : pos + query_len]).decode("latin-1")
    pos += query_len
    headers = [(k, v) for k, v in orjson.loads(frame[pos : pos + headers_len])] if headers_len else []
    pos += headers_len
    trace = bytes(frame[pos : pos + trace_len]).decode("latin-1") if trace_len else ""
    pos += trace_len
    return Call(
        call_id,
        Target(target),
        METHODS[method],
        rid,
        bytes(frame[pos:]),
        deadline,
        start_by,
        query,
        ctype,
        path,
        headers,
        trace,
    )


def decode_reply(frame: memoryview) -> tuple[int, Reply]:
    _, call_id, status, flags, exec_ms, started_at, ctype_len, headers_len = _REPLY.unpack_from(frame)
    pos = _REPLY.size
    ctype = bytes(frame[pos : pos + ctype_len]).decode() if ctype_len else None
    pos += ctype_len
    headers = [(k, v) for k, v in orjson.loads(frame[pos : pos + headers_len])] if headers_len else []
    pos += headers_len
    reply = Reply(
        status,
        bytes(frame[pos:]),
        ctype,
        headers,
        bool(flags & _FLAG_RUN_FAILED),
        None if math.isnan(exec_ms) else exec_ms,
        bool(flags & _FLAG_STREAM),
        None if math.isnan(started_at) else started_at,
    )
    return call_id, reply


def decode_id(frame: memoryview) -> int:
    """The call id of a CHUNK or CANCEL frame."""
    return int(_ID.unpack_from(frame)[1])


def chunk_data(frame: memoryview) -> bytes:
    return bytes(frame[_ID.size :])


def decode_end(frame: memoryview) -> tuple[int, bool]:
    """(call id, failed) of an END frame."""
    _, call_id, flags = _END.unpack_from(frame)
    return call_id, bool(flags & _END_FAILED)


def decode_credit(frame: memoryview) -> tuple[int, int]:
    _, call_id, consumed = _CREDIT.unpack_from(frame)
    return call_id, consumed


def decode_ready(frame: memoryview) -> Ready:
    data = decode_message(frame)
    script = data.get("script")
    return Ready(int(data["pid"]), ScriptInfo.from_dict(script) if script else None, data.get("models"))


def decode_collect(frame: memoryview | bytes) -> Collected:
    _, at, size, dropped, truncated, *lengths = _COLLECT.unpack_from(frame)
    pos = _COLLECT.size
    texts: list[str] = []
    for n in lengths:
        texts.append(bytes(frame[pos : pos + n]).decode(errors="replace"))
        pos += n
    collection, kind, correlation, rid, model, version, data_type = texts
    data = bytes(frame[pos:])
    return Collected(
        collection, kind, data, at, correlation, rid, model, version, data_type, size, bool(truncated), dropped
    )


def decode_message(frame: memoryview) -> dict[str, Any]:
    return orjson.loads(frame[1:]) if len(frame) > 1 else {}  # type: ignore[no-any-return]


class FrameBuffer:
    """Accumulates bytes from a stream and yields whole frames, in linear time.

    Frames are views into the received chunk (no copy) when they arrive whole. A frame
    that straddles reads is assembled in a buffer preallocated to its declared size,
    so a 100 MB body costs one copy, not one per received chunk.
    """

    __slots__ = ("_fill", "_partial", "_prefix")

    def __init__(self) -> None:
        self._prefix = b""  # fewer than 4 bytes of a length prefix
        self._partial: bytearray | None = None  # the frame being assembled
        self._fill = 0

    def feed(self, data: bytes) -> list[memoryview]:
        frames: list[memoryview] = []
        view = memoryview(data)
        pos = 0
        end = len(data)
        if self._partial is not None:
            need = len(self._partial) - self._fill
            take = min(need, end)
            self._partial[self._fill : self._fill + take] = view[:take]
            self._fill += take
            pos = take
            if self._fill < len(self._partial):
                return frames
            frames.append(memoryview(self._partial))
            self._partial = None
        elif self._prefix:
            missing = 4 - len(self._prefix)
            if end < missing:
                self._prefix += bytes(view)
                return frames
            head = self._prefix + bytes(view[:missing])
            self._prefix = b""
            pos = missing
            (size,) = _LEN.unpack(head)
            return self._start_partial(size, view, pos, end, frames)
        unpack = _LEN.unpack_from
        while end - pos >= 4:
            (size,) = unpack(view, pos)
            if end - pos - 4 < size:
                return self._start_partial(size, view, pos + 4, end, frames)
            frames.append(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if pos < end:
            self._prefix = bytes(view[pos:])
        return frames

    def _start_partial(
        self, size: int, view: memoryview, pos: int, end: int, frames: list[memoryview]
    ) -> list[memoryview]:
        if end - pos >= size:  # the whole frame was here after all (prefix completed)
            frames.append(view[pos : pos + size])
            return frames + self.feed(bytes(view[pos + size :])) if pos + size < end else frames
        self._partial = bytearray(size)
        have = end - pos
        self._partial[:have] = view[pos:end]
        self._fill = have
        return frames
