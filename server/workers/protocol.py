"""The wire format between the HTTP process and its worker processes.

Each message is a frame: a 4-byte little-endian length, then a 1-byte kind and a
kind-specific payload. Frames travel over a Unix socket pair, so a request costs
one write in each direction, and many requests share one system call under load.

    CALL   front -> worker   a request to run (target score or v2)
    STOP   front -> worker   finish in-flight calls and exit
    READY  worker -> front   init() finished; JSON describing the script
    FAILED worker -> front   loading or init() failed; JSON with the message
    STATE  worker -> front   start-up progress (models loaded so far), JSON
    REPLY  worker -> front   the answer to one CALL

This module is pure: no sockets, no event loop, no HTTP.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

CALL = 0x43  # "C"
STOP = 0x53  # "S"
READY = 0x52  # "R"
FAILED = 0x46  # "F"
STATE = 0x50  # "P"
REPLY = 0x41  # "A"

TARGET_SCORE = 0
TARGET_V2 = 1

METHODS = ("GET", "POST", "OPTIONS", "PUT", "DELETE", "PATCH", "HEAD")
_METHOD_CODE = {m: i for i, m in enumerate(METHODS)}

_LEN = struct.Struct("<I")
# kind, call_id, target, method, rid_len, meta_len
_CALL = struct.Struct("<BIBBBI")
# kind, call_id, status, flags, exec_ms, ctype_len, headers_len
_REPLY = struct.Struct("<BIHBdHI")

_FLAG_RUN_FAILED = 1


@dataclass(slots=True)
class Call:
    """One request as the worker sees it."""

    call_id: int
    target: int
    method: str
    request_id: str
    body: bytes
    # Path, query string and headers; only sent when the worker asked for them
    # (rawhttp, a request_headers parameter, or /v2 routing).
    meta: dict[str, Any] | None = None


@dataclass(slots=True)
class Reply:
    """One answer, as produced in a worker and rendered by the HTTP layer."""

    status: int
    body: bytes
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    run_failed: bool = False
    exec_ms: float | None = None

    @classmethod
    def error(cls, status: int, message: str, *, run_failed: bool = False) -> Reply:
        return cls(status, orjson.dumps({"message": message}), run_failed=run_failed)


def encode_call(call_id: int, target: int, method: str, request_id: str, body: bytes, meta: bytes = b"") -> bytes:
    rid = request_id.encode()
    head = _CALL.pack(CALL, call_id, target, _METHOD_CODE.get(method, 0), len(rid), len(meta))
    size = len(head) + len(rid) + len(meta) + len(body)
    return b"".join((_LEN.pack(size), head, rid, meta, body))


def encode_reply(call_id: int, reply: Reply) -> bytes:
    ctype = (reply.content_type or "").encode()
    headers = orjson.dumps(reply.headers) if reply.headers else b""
    exec_ms = math.nan if reply.exec_ms is None else reply.exec_ms
    flags = _FLAG_RUN_FAILED if reply.run_failed else 0
    head = _REPLY.pack(REPLY, call_id, reply.status, flags, exec_ms, len(ctype), len(headers))
    size = len(head) + len(ctype) + len(headers) + len(reply.body)
    return b"".join((_LEN.pack(size), head, ctype, headers, reply.body))


def encode_message(kind: int, payload: dict[str, Any] | None = None) -> bytes:
    data = bytes((kind,)) + (orjson.dumps(payload) if payload is not None else b"")
    return _LEN.pack(len(data)) + data


def decode_call(frame: memoryview) -> Call:
    _, call_id, target, method, rid_len, meta_len = _CALL.unpack_from(frame)
    pos = _CALL.size
    rid = bytes(frame[pos : pos + rid_len]).decode()
    pos += rid_len
    meta = orjson.loads(frame[pos : pos + meta_len]) if meta_len else None
    pos += meta_len
    return Call(call_id, target, METHODS[method], rid, bytes(frame[pos:]), meta)


def decode_reply(frame: memoryview) -> tuple[int, Reply]:
    _, call_id, status, flags, exec_ms, ctype_len, headers_len = _REPLY.unpack_from(frame)
    pos = _REPLY.size
    ctype = bytes(frame[pos : pos + ctype_len]).decode() if ctype_len else None
    pos += ctype_len
    headers = [tuple(h) for h in orjson.loads(frame[pos : pos + headers_len])] if headers_len else []
    pos += headers_len
    reply = Reply(
        status,
        bytes(frame[pos:]),
        ctype,
        headers,  # type: ignore[arg-type]
        bool(flags & _FLAG_RUN_FAILED),
        None if math.isnan(exec_ms) else exec_ms,
    )
    return call_id, reply


def decode_message(frame: memoryview) -> dict[str, Any]:
    return orjson.loads(frame[1:]) if len(frame) > 1 else {}  # type: ignore[no-any-return]


class FrameBuffer:
    """Accumulates bytes from a stream and yields whole frames.

    Frames are views into the received chunk (no copy) unless a frame straddles
    two reads, which only the rare partial read pays for.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[memoryview]:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        view = memoryview(data)
        pos = 0
        end = len(data)
        frames: list[memoryview] = []
        unpack = _LEN.unpack_from
        while end - pos >= 4:
            (size,) = unpack(view, pos)
            if end - pos - 4 < size:
                break
            frames.append(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
        if pos < end:
            self._buf += view[pos:]
        return frames
