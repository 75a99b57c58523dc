"""The record format (docs/collect.md): one JSON object per line, the same fields in every record.

The fields follow the managed platform's payload records (``specversion``, ``id``, ``type``,
``time``, ``datacontenttype``, ``data``, ``correlationid``, ``xrequestid``, ``modelversion``,
``collectdatatype``, ``agent``), plus the request's outcome (``status``, ``latency_ms``, for the
server's own request/response records) and ``truncated`` / ``datasize``. Runs on the writer thread
only: the request path hands over references, nothing is serialised there.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from server.workers.protocol import Collected

# The fields of every record, in order (the Parquet schema in .parquet follows it).
FIELDS = (
    "specversion", "id", "type", "collection", "time", "datacontenttype", "data", "dataencoding",
    "truncated", "datasize", "xrequestid", "correlationid", "path", "method", "status", "latency_ms",
    "model", "deployment", "modelversion", "collectdatatype", "agent",
)  # fmt: skip
REQUEST, RESPONSE = "request", "response"
MDC_TYPE = "azureml.monitoring."
_JSON_START = frozenset(b'{["-0123456789tfn ')
_FRAGMENT: Any = getattr(orjson, "Fragment", None)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

# A score entry, as PayloadCollector.score queues it (a tuple: the request path builds no object):
# (size, time, latency_ms, status, rid, client, method, ctype, body, body_size, reply, reply_size, reply_headers)
ScoreEntry = tuple[
    int, float, float, int, str, "str | None", str, "bytes | None", "bytes | None", int, "bytes | None", int,
    "list[tuple[bytes, bytes]] | None",
]  # fmt: skip


def safe_name(part: str) -> str:
    """One path segment from a collection or model name: never empty, never ``..``, no separators."""
    clean = _UNSAFE.sub("_", part)[:100]
    return clean if clean.strip(".") else "_"


def host_tag() -> str:
    """This host's name as it appears in file names (recovery only touches its own files)."""
    return safe_name(socket.gethostname() or "host")


def model_identity(model_dir: str | None) -> tuple[str, str]:
    """(model name, version) from ``AZUREML_MODEL_DIR``: ``.../azureml-models/<name>/<version>`` as
    Azure lays registered models out, else the folder's name and no version."""
    if not model_dir:
        return "", ""
    path = os.path.normpath(model_dir)
    parent = os.path.dirname(path)
    if os.path.basename(os.path.dirname(parent)) == "azureml-models":
        return os.path.basename(parent), os.path.basename(path)
    return os.path.basename(path), ""


def folder_of(record: Collected) -> str:
    """Where a script's records go: the Collector's name, or ``mdc/<model>/<designation>``."""
    if record.type.startswith(MDC_TYPE):
        return f"mdc/{safe_name(record.model)}/{safe_name(record.collection)}"
    return safe_name(record.collection)


def _text(body: bytes, truncated: bool) -> tuple[str, str | None]:
    try:
        return body.decode(), None
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(body) - 3:  # cut inside the last character
            return body[: exc.start].decode(errors="replace"), None
    return base64.b64encode(body).decode(), "base64"


def payload(body: bytes, ctype: str, truncated: bool) -> tuple[Any, str | None]:
    """The value of ``data`` and of ``dataencoding``: JSON embedded as JSON, text as a string,
    anything else in base64. A truncated payload is never parsed (it is text, or base64)."""
    if not body:
        return None, None
    if not truncated and (body[0] in _JSON_START or "json" in ctype):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:  # embed the client's own bytes unless they would break the line
            if _FRAGMENT is not None and not _breaks_line(body):
                return _FRAGMENT(body), None
            return value, None
    return _text(body, truncated)


def _breaks_line(data: bytes) -> bool:
    # NOTE: find(), not "in": bytes.__contains__ tries the needle as an int first, and raising
    # and clearing that TypeError costs more than the search.
    return data.find(b"\n") >= 0 or data.find(b"\r") >= 0


def payload_json(body: bytes, ctype: bytes, truncated: bool, embed: bool = True) -> tuple[bytes, bool]:
    """The value of ``data`` as JSON text for the line, and whether it is base64. The payload as a
    string (its text exactly as sent), or with ``embed`` (``collect_embed_json``) valid JSON as
    JSON: the client's own bytes, validated (parsed once), never re-serialised."""
    if not body:
        return b"null", False
    if embed and not truncated and (body[0] in _JSON_START or ctype.find(b"json") >= 0):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return (orjson.dumps(value) if _breaks_line(body) else body), False
    text, encoding = _text(body, truncated)
    return orjson.dumps(text), encoding is not None


# The constant pieces of a payload line (joined, not %-formatted: measured cheaper).
_MS = [b".%03dZ" % ms for ms in range(1000)]
_CTYPE, _DATA = b'","datacontenttype":', b',"data":'
# dataencoding, truncated and the start of datasize, by (base64, truncated)
_FLAGS = {
    (b64, cut): b',"dataencoding":%s,"truncated":%s,"datasize":'
    % (b'"base64"' if b64 else b"null", b"true" if cut else b"false")
    for b64 in (False, True)
    for cut in (False, True)
}
_RID, _CID, _METHOD = b',"xrequestid":', b',"correlationid":', b',"path":"/score","method":'
_STATUS, _LATENCY = b',"status":', b',"latency_ms":'


def _content_type(headers: list[tuple[bytes, bytes]] | None) -> bytes:
    for name, value in headers or ():
        if name == b"content-type":
            return value
    return b""


class RecordMaker:
    """Turns queued entries into lines. Owned by the writer thread (not thread-safe)."""

    def __init__(
        self, model_dir: str | None, deployment: str, version: str, payloads: Sequence[str], embed_json: bool = False
    ) -> None:
        self.model, self.model_version = model_identity(model_dir)
        self.deployment = deployment
        self.agent = f"scorehost/{version}"
        self.requests = REQUEST in payloads
        self.embed_json = embed_json
        self.responses = RESPONSE in payloads
        hex_ = uuid.uuid4().hex  # ids: a random prefix per process and a counter
        self._id_prefix = f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-"
        self._id_bytes = self._id_prefix.encode()
        self._ids = 0
        self._second = -1
        self._second_text = ""
        self._second_bytes = b""
        self._strings: dict[bytes, bytes] = {}
        self.last_error: Exception | None = None
        # The constant parts of a payload record, serialised once.
        self._heads = {
            name: (b'{"specversion":"1.0","id":"', b'","type":"azureml.inference.%s","collection":"%s","time":"'
                   % (name.encode(), name.encode()))
            for name in (REQUEST, RESPONSE)
        }  # fmt: skip
        static = {"model": self.model, "deployment": deployment, "modelversion": self.model_version,
                  "collectdatatype": None, "agent": self.agent}  # fmt: skip
        self._static_tail = b"," + orjson.dumps(static)[1:] + b"\n"

    def _id(self) -> str:
        self._ids += 1
        return f"{self._id_prefix}{self._ids:012x}"

    def iso(self, at: float) -> str:
        """RFC 3339 UTC with milliseconds; the formatting of the second is cached."""
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second_bytes = self._second_text.encode()
        return f"{self._second_text}.{int((at - second) * 1000):03d}Z"

    def _line(self, collection: str, kind: str, at: float, **fields: Any) -> bytes:
        record = {
            "specversion": "1.0",
            "id": self._id(),
            "type": kind,
            "collection": collection,
            "time": self.iso(at),
            **fields,
            "agent": self.agent,
        }
        return orjson.dumps(record) + b"\n"

    def score(self, entry: ScoreEntry, step: int = 1) -> list[tuple[str, int, bytes]]:
        """(folder, period start, line) for the records of one ``/score`` call (see :meth:`score_batch`)."""
        groups: dict[tuple[str, int], list[bytes]] = {}
        self.score_batch([entry], step, groups)
        return [(folder, period, line) for (folder, period), lines in groups.items() for line in lines]

    def score_batch(self, entries: Iterable[ScoreEntry], step: int, groups: dict[tuple[str, int], list[bytes]]) -> int:
        """Add the request and response lines of ``/score`` calls to ``groups``, keyed by folder and
        the start of their period (``step`` seconds); returns how many calls could not be written.

        The writer's hot loop, so lines are formatted, not built as dicts: the fields a call's two
        records share are serialised once, the constant ones at start-up, and every string that
        comes from the client goes through orjson (same fields, same order as :meth:`_line`)."""
        dumps, text, strings, loads = orjson.dumps, self._json, self._strings, orjson.loads
        requests, responses, embed = self.requests, self.responses, self.embed_json
        (q0, q1), (p0, p1) = self._heads[REQUEST], self._heads[RESPONSE]
        idb, static = self._id_bytes, self._static_tail
        ids = self._ids
        failed = 0
        period = -1
        request_lines: list[bytes] = []
        response_lines: list[bytes] = []
        for entry in entries:
            try:
                _, at, latency_ms, status, rid, client, method, ctype, body, body_size, reply, reply_size, headers = (
                    entry
                )
                second = int(at)
                if second != self._second:
                    self._second = second
                    self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
                    self._second_bytes = self._second_text.encode()
                if at >= period + step or at < period:  # another period: its own lists
                    period = int(at // step) * step
                    request_lines = groups.setdefault((REQUEST, period), [])
                    response_lines = groups.setdefault((RESPONSE, period), [])
                stamp = self._second_bytes + _MS[int((at - second) * 1000)]
                rid_json = dumps(rid)
                tail = b"".join((_RID, rid_json, _CID, dumps(client) if client else rid_json, _METHOD,
                                 strings.get(method.encode()) or text(method.encode()), _STATUS,
                                 str(status).encode(), _LATENCY, f"{latency_ms:.3f}".encode(), static))  # fmt: skip
                if requests and body is not None:
                    ctype = ctype or b""
                    cut = body_size > len(body)
                    # The common cases inline (see payload_json): text; JSON, not cut, no line break.
                    if not embed and not cut:
                        try:
                            data, base64_ = dumps(body.decode()) if body else b"null", False
                        except UnicodeDecodeError:
                            data, base64_ = payload_json(body, ctype, cut, False)
                    elif not cut and body and (body[0] in _JSON_START or ctype.find(b"json") >= 0):
                        try:
                            loads(body)
                        except orjson.JSONDecodeError:
                            as_text, encoding = _text(body, cut)
                            data, base64_ = dumps(as_text), encoding is not None
                        else:
                            data, base64_ = (body, False) if not _breaks_line(body) else payload_json(body, ctype, cut)
                    else:
                        data, base64_ = payload_json(body, ctype, cut, embed)
                    ids += 1
                    request_lines.append(b"".join((q0, idb, f"{ids:012x}".encode(), q1, stamp, _CTYPE,
                                                   strings.get(ctype) or text(ctype), _DATA, data,
                                                   _FLAGS[base64_, cut], str(body_size).encode(), tail)))  # fmt: skip
                if responses and reply is not None:
                    reply_type = _content_type(headers)
                    cut = reply_size > len(reply)
                    data, base64_ = payload_json(reply, reply_type, cut, embed)
                    ids += 1
                    response_lines.append(b"".join((p0, idb, f"{ids:012x}".encode(), p1, stamp, _CTYPE,
                                                    strings.get(reply_type) or text(reply_type), _DATA, data,
                                                    _FLAGS[base64_, cut], str(reply_size).encode(), tail)))  # fmt: skip
            except Exception as exc:  # a record we cannot serialise must not stop the writer
                failed += 1
                self.last_error = exc
        for key in [k for k, lines in groups.items() if not lines]:
            del groups[key]
        self._ids = ids
        return failed

    def _json(self, text: bytes) -> bytes:
        """A short string that repeats (a method, a content type) as JSON, cached; "" is null."""
        found = self._strings.get(text)
        if found is None:
            found = orjson.dumps(text.decode("latin-1")) if text else b"null"
            if len(self._strings) < 256:
                self._strings[text] = found
        return found

    def script(self, record: Collected) -> tuple[str, float, bytes]:
        """(folder, time, line) for a record made by a script's collector in a worker."""
        if record.truncated:
            data, encoding = payload(record.data, "", True)
        else:  # JSON text made by the worker (orjson or pandas): embedded as it is
            raw = record.data
            data = _FRAGMENT(raw) if _FRAGMENT is not None and not _breaks_line(raw) else orjson.loads(raw)
            encoding = None
        line = self._line(
            record.collection,
            record.type,
            record.time,
            datacontenttype="application/json",
            data=data,
            dataencoding=encoding,
            truncated=record.truncated,
            datasize=record.size,
            xrequestid=record.request_id or None,
            correlationid=record.correlation_id or None,
            path=None,
            method=None,
            status=None,
            latency_ms=None,
            model=record.model or self.model,
            deployment=self.deployment,
            modelversion=record.model_version or self.model_version,
            collectdatatype=record.data_type or None,
        )
        return folder_of(record), record.time, line
