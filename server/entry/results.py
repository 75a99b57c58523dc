"""Turning what ``run()`` returned into a reply, as the reference does.

A plain value is serialised to JSON; an :class:`~server.entry.aml.AMLResponse` passes
through; a generator (sync or async, returned directly or as an ``AMLResponse``
body) becomes a :class:`Stream`, whose items the worker sends as they are yielded.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from server.entry import aml
from server.errors import INTERNAL_ERROR_MESSAGE, InternalError
from server.workers.protocol import Reply

logger = logging.getLogger("scorehost.entry")

# Flask's default for a response built from a generator, which is what the reference answers.
STREAM_CONTENT_TYPE = "text/html; charset=utf-8"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Stream:
    """A streamed answer: the reply's head (status, headers) and the items to send."""

    head: Reply
    items: Iterator[Any] | AsyncIterator[Any]

    @property
    def is_async(self) -> bool:
        return inspect.isasyncgen(self.items) or not hasattr(self.items, "__next__")


def _json_default(obj: Any) -> Any:
    # NOTE: orjson serialises C-contiguous numpy arrays natively; this catches the
    # rest (non-contiguous arrays, numpy scalars of odd types, objects with tolist).
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def to_json(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=_NUMPY)


def chunk_bytes(item: Any) -> bytes:
    """One yielded item as the bytes of one chunk: text as UTF-8, bytes as they are, else JSON."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    return to_json(item)


def is_stream(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def render(result: Any, exec_ms: float) -> Reply | Stream:
    """The reply for ``run()``'s result; never raises."""
    if isinstance(result, aml.AMLResponse):
        failed = result.run_function_failed or result.status_code >= 500
        reply = Reply(result.status_code, result.data, result.mimetype, result.headers, failed, exec_ms)
        if result.stream is not None:
            reply.stream = True
            reply.content_type = reply.content_type or None
            return Stream(reply, result.stream)
        return reply
    if is_stream(result):
        return Stream(Reply(200, b"", STREAM_CONTENT_TYPE, exec_ms=exec_ms, stream=True), result)
    if result is None:
        return Reply(200, b"{}", exec_ms=exec_ms)
    try:
        body = to_json(result)
    except TypeError:
        logger.exception("run() returned a value that cannot be serialised to JSON")
        return Reply.from_error(InternalError(INTERNAL_ERROR_MESSAGE))
    return Reply(200, body, exec_ms=exec_ms)
