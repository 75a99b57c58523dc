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

``handle`` never raises: every failure is a Reply rendered by
:func:`server.errors.error_body`, ``{"message": "...", "error": "..."}`` (``error`` is what
tritonclient parses). Every part of a request is untrusted: a malformed one is a 4xx naming
what is wrong, never a 500, and nothing is allocated from a client's size before it is
checked against the body (tensor decoding: :mod:`server.store.tensors`). This module knows
nothing of the HTTP server.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
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
from server.store.sessions import shape_fits
from server.store.store import Model, ModelState, ModelStore
from server.store.tensors import (
    DATATYPES,
    Span,
    check_shape,
    from_binary,
    from_json,
    from_span,
    loads,
    pack_strings,
    parse_request,
    show,
)
from server.workers.protocol import Reply

logger = logging.getLogger(__name__)

_JSON = "application/json"
_BINARY = "application/octet-stream"
_HEADER_LENGTH = "inference-header-content-length"

_NUMPY_TO_V2 = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
_MAX_HEADER_DIGITS = 19  # Inference-Header-Content-Length: any body length fits

__all__ = ["DATATYPES", "InferRequest", "V2Handler", "error_reply"]


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
        except Exception as exc:
            return error_reply(exc, method, path)

    @property
    def store(self) -> ModelStore:
        return self._store

    # --- routing -------------------------------------------------------------------------
    @staticmethod
    def infer_route(method: str, path: str) -> tuple[str, str | None] | None:
        """(model, version or None) when ``method path`` is an inference request, else None."""
        if method != "POST" or not path.endswith("infer"):
            return None
        parts = [p for p in path.split("/") if p]
        if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "infer":
            return parts[2], None
        if len(parts) == 6 and parts[:2] == ["v2", "models"] and parts[3] == "versions" and parts[5] == "infer":
            return parts[2], parts[4]
        return None

    def _route(self, method: str, path: str, body: bytes, headers: Mapping[str, str], request_id: str | None) -> Reply:
        parts = path.strip("/").split("/")
        if "" in parts:  # a doubled slash, or the path "/"
            parts = [p for p in parts if p]
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
        payload: dict[str, Any] = {
            "name": md.name,
            "versions": self._store.versions(name),
            "platform": md.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.outputs],
        }
        if md.batching is not None:
            payload["parameters"] = {"batching": md.batching.as_dict()}
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
        request = loads(body) if body.strip() else {}
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
        request = self.decode(self._store.get(name, version), body, headers, call_id)
        started = time.perf_counter()
        results = request.model.run(request.feed, request.names)
        exec_ms = (time.perf_counter() - started) * 1000.0
        request.feed = {}  # the inputs are no longer needed while the answer is encoded
        return self.encode(request, results, exec_ms)

    def decode(self, model: Model, body: bytes, headers: Mapping[str, str], call_id: str | None) -> InferRequest:
        """An inference request's body as checked arrays for ``model``; raises ScoreHostError (4xx)."""
        lowered = {k.lower(): v for k, v in headers.items()} if headers else {}
        body = self._decompress(body, lowered.get("content-encoding"))
        header_length = lowered.get(_HEADER_LENGTH)
        binary: memoryview | None = None
        if header_length is not None:
            text = header_length.strip()
            # int() alone would also take "1_0", non-ASCII digits and 4,000-digit numbers.
            if not (text.isascii() and text.isdigit() and len(text) <= _MAX_HEADER_DIGITS):
                raise BadRequest(f"Inference-Header-Content-Length is not a number: {show(header_length)}")
            split = int(text)
            if split > len(body):
                raise BadRequest(f"Inference-Header-Content-Length {split} is outside the {len(body)}-byte body")
            binary = memoryview(body)[split:]
            request, spans = parse_request(body[:split])
        else:
            request, spans = parse_request(body)
        if not isinstance(request, dict):
            raise BadRequest("the inference request must be a JSON object")
        request_id = request.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise BadRequest(f"'id' must be a string, not {show(request_id)}")
        parameters = _object(request.get("parameters"), "parameters")
        binary_default = parameters.get("binary_data_output")
        if binary_default is not None:
            binary_default = _flag(parameters, "binary_data_output", "parameters")
        names, as_binary = _requested_outputs(model, request.get("outputs"), binary_default)
        items = request.pop("inputs", None)
        del request  # the decoded inputs replace the parsed data; keep neither twice
        feed = self._decode_inputs(model, items, binary, body, spans)
        if request_id is None:
            request_id = call_id or lowered.get("x-request-id") or str(uuid.uuid4())
        return InferRequest(model, feed, names, as_binary, request_id)

    @staticmethod
    def encode(request: InferRequest, results: Mapping[str, Any], exec_ms: float) -> Reply:
        """The answer to a decoded request, from its outputs."""
        model = request.model
        outputs: list[dict[str, Any]] = []
        blobs: list[Any] = []
        for out_name, value in results.items():
            outputs.append(_encode_output(out_name, value, out_name in request.as_binary, blobs))
        payload = {
            "model_name": model.name,
            "model_version": model.version,
            "id": request.request_id,
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

    def _decode_inputs(
        self, model: Model, items: Any, binary: memoryview | None, body: bytes, spans: dict[str, Span]
    ) -> dict[str, Any]:
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
                raise InvalidInput(f"model {model.name!r} has no input {show(name)}; inputs: {list(model.inputs)}")
            if name in feed:
                raise InvalidInput(f"input {name!r} is given twice")
            shape, count = check_shape(name, item.get("shape"), self._max_bytes)
            datatype = item.get("datatype")
            if not isinstance(datatype, str) or datatype not in DATATYPES:
                raise InvalidInput(f"input {name!r}: unknown datatype {show(datatype)}; known: {list(DATATYPES)}")
            if datatype != spec.datatype:
                raise InvalidInput(
                    f"input {name!r} has datatype {datatype}; model {model.name!r} expects {spec.datatype}"
                )
            if spec.shape and not shape_fits(shape, spec.shape):
                # Model.run checks this too; here it comes before any array is made.
                raise InvalidInput(
                    f"input {name!r} has shape {shape}; model {model.name!r} expects {list(spec.shape)} (-1: any size)"
                )
            size = None
            if (parameters := item.get("parameters")) is not None:  # no message built on the hot path
                size = _object(parameters, f"input {name!r} parameters").get("binary_data_size")
            try:
                if size is not None:
                    if binary is None:
                        raise BadRequest(
                            f"input {name!r} has binary_data_size but the request has no "
                            "Inference-Header-Content-Length header"
                        )
                    if type(size) is not int or size < 0:
                        raise InvalidInput(f"input {name!r}: binary_data_size must be an integer >= 0")
                    if offset + size > len(binary):
                        raise InvalidInput(f"input {name!r}: binary data runs past the end of the body")
                    feed[name] = from_binary(name, datatype, shape, count, binary[offset : offset + size])
                    offset += size
                elif "data" in item:
                    data = item.pop("data")
                    if spans and type(data) is str and data in spans:
                        feed[name] = from_span(name, datatype, shape, count, body, spans[data])
                    else:
                        feed[name] = from_json(name, datatype, shape, count, data)
                    del data
                else:
                    raise InvalidInput(f"input {name!r} has neither data nor binary_data_size")
            except MemoryError:
                raise PayloadTooLarge(f"input {name!r}: {count} {datatype} values do not fit in memory") from None
            except (TypeError, ValueError, OverflowError) as exc:
                # Not expected (every value was checked): still the client's input, and a 400.
                logger.warning("V2 input %r of model %r: %s", name, model.name, exc)
                raise InvalidInput(f"input {name!r}: data does not fit shape {shape} of {datatype}") from None
        if binary is not None and offset != len(binary):
            raise BadRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
        return feed

    def _decompress(self, body: bytes, encoding: str | None) -> bytes:
        if encoding is None:
            return body
        encoding = encoding.strip().lower()
        if encoding in ("identity", ""):
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


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request: the model, its checked inputs, and how to answer."""

    model: Model
    feed: dict[str, Any]
    names: list[str] | None  # None: every output
    as_binary: set[str]
    request_id: str


def error_reply(exc: BaseException, method: str, path: str) -> Reply:
    """The V2 answer for an exception while handling ``method path``."""
    if isinstance(exc, ScoreHostError):
        return Reply.from_error(exc, v2=True)
    if isinstance(exc, MemoryError):
        # Every allocation here is bounded by the body's size; this one still did not fit.
        logger.warning("V2 %s %s: out of memory", method, path)
        return Reply.from_error(PayloadTooLarge("the request does not fit in the memory available"), v2=True)
    # Internal text (paths, exception details) goes to the log, not to the client.
    logger.error("V2 %s %s failed", method, path, exc_info=exc)
    return Reply.from_error(exc, v2=True)


# --- request decoding ------------------------------------------------------------------------
def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and type(value) is not bool:
        raise BadRequest(f"{what}.{key} must be true or false, not {show(value)}")
    return value


def _requested_outputs(model: Model, items: Any, binary_default: bool | None) -> tuple[list[str] | None, set[str]]:
    """Output names to compute (None: all) and the ones to send as binary."""
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
            raise InvalidInput(f"model {model.name!r} has no output {show(name)}; outputs: {list(model.outputs)}")
        what = f"output {name!r} parameters"
        flag = _flag(_object(item.get("parameters"), what), "binary_data", what)
        if flag is True or (flag is None and binary_default):
            as_binary.add(name)
        if name not in names:
            names.append(name)
    return names, as_binary


# --- response encoding ---------------------------------------------------------------------------
def _encode_output(name: str, value: Any, binary: bool, blobs: list[Any]) -> dict[str, Any]:
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
        # A contiguous array's memoryview: the one copy is the response's join.
        raw = pack_strings(value) if strings else np.ascontiguousarray(value).data.cast("B")
        out["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    elif strings:
        out["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.flat]
    else:
        out["data"] = value.ravel()  # C order, contiguous (a view when it can be): what orjson writes
    return out


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(f"Method {method} not allowed; use {allowed}", allow=(allowed,))
