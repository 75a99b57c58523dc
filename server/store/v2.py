"""The Open Inference Protocol (KServe V2) over REST, served from the model store.

    handler = V2Handler(store, settings)
    reply = handler.handle("POST", "/v2/models/fraud/infer", "", body, headers=headers)

Routes (``path`` is the decoded path, as in an ASGI scope; ``query`` is ignored):

    GET  /v2                                         server metadata
    GET  /v2/health/live | /v2/health/ready          also answered here, for completeness
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready         200, 503 (loading / failed), 404
    POST /v2/models/{m}[/versions/{v}]/infer         inference, JSON or binary tensors
    POST /v2/repository/index                        every model with its state

Tensors travel as JSON ``data`` or, with the binary tensor extension that
tritonclient uses by default, as raw bytes after the JSON header: the request's
``Inference-Header-Content-Length`` header gives the JSON length and each input's
``parameters.binary_data_size`` its byte count; outputs come back binary when the
request sets ``parameters.binary_data_output`` or an output's ``parameters.binary_data``.

``handle`` never raises: every failure is a Reply with ``{"error": "..."}``, the
body tritonclient parses. This module knows nothing of the HTTP server.
"""

from __future__ import annotations

import logging
import struct
import time
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from server import __version__
from server.errors import (
    BadRequest,
    InternalError,
    InvalidInput,
    MethodNotAllowed,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    ScoreHostError,
    UnsupportedMediaType,
)
from server.settings import Settings
from server.store.sessions import ONNX_TYPES
from server.store.store import Model, ModelState, ModelStore
from server.workers.protocol import Reply

logger = logging.getLogger(__name__)

_JSON = "application/json"
_BINARY = "application/octet-stream"
_HEADER_LENGTH = "inference-header-content-length"

# Open Inference Protocol datatype -> numpy dtype: the ONNX type table, read the other way.
DATATYPES: dict[str, np.dtype[Any]] = dict(ONNX_TYPES.values())
_NUMPY_TO_V2 = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
_U32 = struct.Struct("<I")


class V2Handler:
    """Answers ``/v2`` requests from a ModelStore. ``handle`` is synchronous and thread-safe."""

    def __init__(self, store: ModelStore, settings: Settings) -> None:
        self._store = store
        self._max_bytes = settings.max_request_bytes
        self._server_metadata = orjson.dumps(
            {"name": "scorehost", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    def handle(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """One request -> one Reply. Never raises.

        ``request_id`` (the front's x-request-id) becomes the response ``id`` when the
        request body has none.
        """
        try:
            return self._route(method, path, body, headers or {}, request_id)
        except ScoreHostError as exc:
            return Reply.from_error(exc, v2=True)
        except Exception as exc:
            # Internal text (paths, exception details) goes to the log, not to the client.
            logger.exception("V2 %s %s failed", method, path)
            return Reply.from_error(exc, v2=True)

    # --- routing -------------------------------------------------------------------------
    def _route(self, method: str, path: str, body: bytes, headers: Mapping[str, str], request_id: str | None) -> Reply:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "v2":
            raise NotFound(f"Unknown path {path}")
        if len(parts) == 1:
            _allow(method, "GET")
            return Reply(200, self._server_metadata)
        head = parts[1]
        if head == "models" and len(parts) >= 3:
            name, rest, version = parts[2], parts[3:], None
            if len(rest) >= 2 and rest[0] == "versions":
                version, rest = rest[1], rest[2:]
            if not rest:
                _allow(method, "GET")
                return self._model_metadata(name, version)
            if rest == ["ready"]:
                _allow(method, "GET")
                return self._model_ready(name, version)
            if rest == ["infer"]:
                _allow(method, "POST")
                return self._infer(name, version, body, headers, request_id)
        elif head == "health" and len(parts) == 3 and parts[2] in ("live", "ready"):
            _allow(method, "GET")
            return self._health(parts[2])
        elif head == "repository" and parts[2:] == ["index"]:
            _allow(method, "POST")
            return self._index(body)
        raise NotFound(f"Unknown path {path}")

    # --- metadata, readiness, index ---------------------------------------------------------
    def _model_metadata(self, name: str, version: str | None) -> Reply:
        md = self._store.metadata(name, version)
        payload = {
            "name": md.name,
            "versions": self._store.versions(name),
            "platform": md.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.outputs],
        }
        return Reply(200, orjson.dumps(payload))

    def _model_ready(self, name: str, version: str | None) -> Reply:
        info = self._store.status(name, version)
        if info.state is ModelState.READY or info.state is ModelState.UNLOADED:
            # UNLOADED only exists in lazy mode, where the next request loads the model.
            return Reply(200, b"", None)
        if info.state is ModelState.FAILED:
            raise ModelNotReady(f"Model {info.name} version {info.version} failed to load: {info.reason}")
        raise ModelNotReady(f"Model {info.name} version {info.version} is still loading")

    def _health(self, which: str) -> Reply:
        if which == "live":
            return Reply(200, b"", None)
        ready, progress = self._store.readiness()
        if ready:
            return Reply(200, b"", None)
        raise ModelNotReady(
            f"models not ready: {progress['loaded']}/{progress['total']} loaded, {progress['failed']} failed"
        )

    def _index(self, body: bytes) -> Reply:
        request = _parse_json(body) if body.strip() else {}
        if not isinstance(request, dict):
            raise BadRequest("the repository index request must be a JSON object")
        only_ready = bool(request.get("ready", False))
        servable = (ModelState.READY, ModelState.UNLOADED)
        rows = [
            {"name": m.name, "version": m.version, "state": m.state.value, "reason": m.reason or ""}
            for m in self._store.list()
            if not only_ready or m.state in servable
        ]
        return Reply(200, orjson.dumps(rows))

    # --- inference -------------------------------------------------------------------------
    def _infer(
        self, name: str, version: str | None, body: bytes, headers: Mapping[str, str], call_id: str | None
    ) -> Reply:
        model = self._store.get(name, version)
        lowered = {k.lower(): v for k, v in headers.items()} if headers else {}
        body = self._decompress(body, lowered.get("content-encoding"))
        header_length = lowered.get(_HEADER_LENGTH)
        binary: memoryview | None = None
        if header_length is not None:
            try:
                split = int(header_length)
            except ValueError:
                raise BadRequest(f"Inference-Header-Content-Length is not a number: {header_length!r}") from None
            if not 0 <= split <= len(body):
                raise BadRequest(f"Inference-Header-Content-Length {split} is outside the {len(body)}-byte body")
            binary = memoryview(body)[split:]
            body = body[:split]
        request = _parse_json(body)
        if not isinstance(request, dict):
            raise BadRequest("the inference request must be a JSON object")
        parameters = _object(request.get("parameters"), "parameters")
        feed = _decode_inputs(model, request.get("inputs"), binary)
        names, as_binary = _requested_outputs(model, request.get("outputs"), parameters)
        started = time.perf_counter()
        results = model.run(feed, names)
        exec_ms = (time.perf_counter() - started) * 1000.0
        request_id = request.get("id")
        if request_id is None:
            request_id = call_id or lowered.get("x-request-id") or str(uuid.uuid4())
        outputs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for out_name, value in results.items():
            outputs.append(_encode_output(out_name, value, out_name in as_binary, blobs))
        payload = {
            "model_name": model.name,
            "model_version": model.version,
            "id": str(request_id),
            "outputs": outputs,
        }
        head = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        if not blobs:
            return Reply(200, head, exec_ms=exec_ms)
        return Reply(
            200,
            b"".join((head, *blobs)),
            _BINARY,
            [("Inference-Header-Content-Length", str(len(head)))],
            exec_ms=exec_ms,
        )

    def _decompress(self, body: bytes, encoding: str | None) -> bytes:
        if encoding is None or encoding in ("identity", ""):
            return body
        if encoding not in ("gzip", "deflate"):
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
        # NOTE: bounded, so a small compressed body cannot expand past max_request_bytes.
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            data = inflater.decompress(body, self._max_bytes)
        except zlib.error as exc:
            raise BadRequest(f"the {encoding} body could not be decompressed: {exc}") from exc
        if inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the decompressed body is larger than {self._max_bytes} bytes")
        return data


# --- request decoding ------------------------------------------------------------------------
def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _decode_inputs(model: Model, items: Any, binary: memoryview | None) -> dict[str, Any]:
    if not isinstance(items, list) or not items:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    feed: dict[str, Any] = {}
    offset = 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each input must be an object with a name, shape, datatype and data")
        name: str = item["name"]
        spec = model.inputs.get(name)
        if spec is None:
            raise InvalidInput(f"model {model.name!r} has no input {name!r}; inputs: {list(model.inputs)}")
        if name in feed:
            raise InvalidInput(f"input {name!r} is given twice")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInput(f"input {name!r}: shape must be a list of integers >= 0")
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; known: {list(DATATYPES)}")
        if datatype != spec.datatype:
            raise InvalidInput(f"input {name!r} has datatype {datatype}; model {model.name!r} expects {spec.datatype}")
        size = _object(item.get("parameters"), f"input {name!r} parameters").get("binary_data_size")
        if size is not None:
            if binary is None:
                raise BadRequest(
                    f"input {name!r} has binary_data_size but the request has no Inference-Header-Content-Length header"
                )
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be an integer >= 0")
            if offset + size > len(binary):
                raise InvalidInput(f"input {name!r}: binary data runs past the end of the body")
            feed[name] = _from_binary(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            feed[name] = _from_json(name, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input {name!r} has neither data nor binary_data_size")
    if binary is not None and offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    return feed


def _from_json(name: str, datatype: str, shape: list[int], data: Any) -> Any:
    count = _count(shape)
    try:
        if datatype == "BYTES":
            array = np.array(data, dtype=object)
            if not all(isinstance(v, str) for v in array.flat):
                raise ValueError("BYTES data must be strings")
        else:
            array = np.asarray(data, dtype=DATATYPES[datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"input {name!r}: data is not a list of {datatype} values ({exc})") from exc
    if array.size != count:
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {array.size}")
    return array.reshape(shape)


def _from_binary(name: str, datatype: str, shape: list[int], chunk: memoryview) -> Any:
    count = _count(shape)
    if datatype == "BYTES":
        values = _unpack_strings(name, chunk)
        if len(values) != count:
            raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {len(values)}")
        return np.array(values, dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {len(chunk)}"
        )
    # Zero-copy and read-only; onnxruntime only reads inputs.
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _unpack_strings(name: str, chunk: memoryview) -> list[str]:
    values: list[str] = []
    pos, end = 0, len(chunk)
    try:
        while pos < end:
            (length,) = _U32.unpack_from(chunk, pos)
            pos += 4
            if pos + length > end:
                raise ValueError("an element runs past the end of its data")
            values.append(bytes(chunk[pos : pos + length]).decode("utf-8"))
            pos += length
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(f"input {name!r}: malformed BYTES data ({exc})") from exc
    return values


def _count(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def _requested_outputs(model: Model, items: Any, parameters: dict[str, Any]) -> tuple[list[str] | None, set[str]]:
    """Output names to compute (None: all) and the ones to send as binary."""
    binary_default = parameters.get("binary_data_output") is True
    if items is None:
        return None, set(model.outputs) if binary_default else set()
    if not isinstance(items, list):
        raise BadRequest("'outputs' must be a list")
    names: list[str] = []
    as_binary: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest("each requested output must be an object with a name")
        name: str = item["name"]
        if name not in model.outputs:
            raise InvalidInput(f"model {model.name!r} has no output {name!r}; outputs: {list(model.outputs)}")
        flag = _object(item.get("parameters"), f"output {name!r} parameters").get("binary_data")
        if flag is True or (flag is None and binary_default):
            as_binary.add(name)
        if name not in names:
            names.append(name)
    return names, as_binary


# --- response encoding ---------------------------------------------------------------------------
def _encode_output(name: str, value: Any, binary: bool, blobs: list[bytes]) -> dict[str, Any]:
    if not isinstance(value, np.ndarray):
        raise InternalError(
            f"output {name!r} is a {type(value).__name__} (an ONNX sequence or map), which the Open "
            "Inference Protocol cannot carry; export the model with tensor outputs (skl2onnx: zipmap=False)"
        )
    strings = value.dtype.kind in "OUS"
    datatype = "BYTES" if strings else _NUMPY_TO_V2.get(value.dtype)
    if datatype is None:
        raise InternalError(f"output {name!r} has dtype {value.dtype}, which has no V2 datatype")
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
    if binary:
        raw = _pack_strings(value) if strings else np.ascontiguousarray(value).tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    elif strings:
        out["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.flat]
    else:
        out["data"] = np.ascontiguousarray(value).reshape(-1)
    return out


def _pack_strings(value: Any) -> bytes:
    parts: list[bytes] = []
    for v in value.flat:
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(_U32.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"Method {method} not allowed; use {allowed}", allow=(allowed,))
