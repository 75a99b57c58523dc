"""Open Inference Protocol tensors: untrusted request data to numpy, strictly.

    shape = check_shape(name, item.get("shape"), limit)      list[int], else InvalidInput
    request, spans = parse_request(body)                     the JSON document; large numeric
                                                             "data" arrays left as Spans
    array = from_json(name, datatype, shape, data)           a parsed list (flat or nested)
    array = from_span(name, datatype, shape, body, span)     a Span, parsed in chunks
    array = from_binary(name, datatype, shape, chunk)        binary tensor extension

What a value must be, per datatype (anything else is InvalidInput naming the input, the
datatype, the value and its index in row-major order; nothing is rounded to fit):

    BOOL                     JSON true or false; binary bytes 0 or 1
    UINT8 ... INT64          JSON integers (not 1.0, not true) inside the datatype's range
    FP16, FP32, FP64         JSON numbers (not "1", not true, not null) finite in the datatype
    BYTES                    JSON strings; binary: each a 4-byte little-endian length + UTF-8

Sizes come from the client, so nothing is allocated from one before it is checked: a
shape may have at most MAX_DIMS dimensions and describe at most ``limit`` values (the
request byte limit: no request can carry more), and its value count must equal the
data's before an array is made.

Memory: a JSON number becomes a 32-byte Python object in the parsed document (ten times
a float32). ``parse_request`` leaves every large numeric ``data`` array out of the
document and ``from_span`` parses it a chunk at a time straight into the final array,
so a request needs about its own size again, not five to ten times it. BYTES data and
arrays nested deeper than [rows][values] are parsed whole.
"""

from __future__ import annotations

import re
import reprlib
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from server.errors import BadRequest, InvalidInput
from server.store.sessions import ONNX_TYPES

# Open Inference Protocol datatype -> numpy dtype: the ONNX type table, read the other way.
DATATYPES: dict[str, np.dtype[Any]] = dict(ONNX_TYPES.values())

MAX_DIMS = 64  # numpy's own limit; ONNX models have far fewer
SPAN_MIN_BODY = 256 * 1024  # smaller bodies are parsed whole (the hot path)
SPAN_MIN_BYTES = 64 * 1024  # smaller "data" arrays stay in the document
CHUNK_BYTES = 1024 * 1024  # JSON text parsed per step of from_span (~100k numbers)
_VECTOR_MIN = 1024  # longer FP16/FP32 lists are range-checked with numpy, shorter ones by struct

_INT_TYPES = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
_ALLOWED: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    **{t: frozenset({int}) for t in _INT_TYPES},
    "FP16": frozenset({int, float}),
    "FP32": frozenset({int, float}),
    "FP64": frozenset({int, float}),
    "BYTES": frozenset({str}),
}
_KIND = {
    "BOOL": "true or false",
    **{t: "JSON integers" for t in _INT_TYPES},
    "FP16": "JSON numbers",
    "FP32": "JSON numbers",
    "FP64": "JSON numbers",
    "BYTES": "JSON strings",
}
_JSON_TYPE = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    type(None): "null",
    list: "an array",
    dict: "an object",
}
# FP16 / FP32 lists shorter than _VECTOR_MIN are packed with struct (cached per length).
_PACK_CODES = {"FP16": "e", "FP32": "f"}
_PACKERS: dict[tuple[str, int], struct.Struct] = {}
# Magnitudes at or above which a float may not fit FP16 / FP32 (half their overflow
# thresholds): only then is a long list's converted array checked for infinities.
_LISTS = {list}
_INTEGERS = frozenset(_INT_TYPES)
_NUMBERS = _INTEGERS | {"FP16", "FP32", "FP64"}
_NEAR_OVERFLOW = {"FP16": 65520.0 / 2, "FP32": float(np.finfo(np.float32).max) / 2}
# Letters that only true, false or null bring into a span of JSON numbers, and those of a float.
_LITERAL_MARKS = (b"u", b"a")
_FLOAT_MARKS = (b".", b"e", b"E")
_U32 = struct.Struct("<I")
_NOT_JSON = "the request body is not valid JSON"
_DATA_KEY = re.compile(rb'"data"[ \t\n\r]*:[ \t\n\r]*\[')


# --- shapes ----------------------------------------------------------------------------------
def check_shape(name: str, shape: Any, limit: int) -> tuple[list[int], int]:
    """The shape and its value count; InvalidInput unless it is a shape some request could fill."""
    if type(shape) is not list or len(shape) > MAX_DIMS:
        raise _bad_shape(name, shape)
    count = extent = 1  # extent: the product of the non-zero dimensions
    for d in shape:
        if type(d) is not int or d < 0:  # type(): bool is not a dimension
            raise _bad_shape(name, shape)
        if d:
            extent *= d
        else:
            count = 0
    if extent > limit:
        # Also for an empty tensor: [0, 2**62, 2**62] holds nothing but no array can have it.
        raise InvalidInput(
            f"input {name!r}: shape {shape} is larger than any request can fill "
            f"(at most {limit} values: the request size limit)"
        )
    return shape, extent if count else 0


def _bad_shape(name: str, shape: Any) -> InvalidInput:
    return InvalidInput(f"input {name!r}: shape must be a list of at most {MAX_DIMS} integers >= 0, not {show(shape)}")


# --- the request document ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Span:
    """A flat JSON array in the body, ``body[start]`` is its ``[`` and ``body[end]`` its ``]``."""

    start: int
    end: int


def loads(body: bytes | bytearray | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{_NOT_JSON}: {exc}") from exc


def parse_request(body: bytes) -> tuple[Any, dict[str, Span]]:
    """The JSON document, with each large ``inputs[i].data`` array replaced by a key of ``spans``.

    An array qualifies when it holds no ``"`` or ``{`` (numbers, true, false, null and
    arrays of them). Its end is the last ``]`` before the next ``"`` or ``}``, where valid
    JSON must go on after it; ``from_span`` checks that it is one whole array. The
    replacement keys carry a random nonce, and the result is used only if every key turns up
    as some ``inputs[i].data``: otherwise (a ``"data"`` key somewhere else, an odd document)
    the body is parsed whole, so the answer never depends on this shortcut.
    """
    if len(body) < SPAN_MIN_BODY:
        return loads(body), {}
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    spans: dict[str, Span] = {}
    last = pos = 0
    while (found := body.find(b'"data"', pos)) != -1:
        match = _DATA_KEY.match(body, found)
        pos = found + 6
        if match is None:
            continue
        start = match.end() - 1
        stops = [i for i in (body.find(b'"', start), body.find(b"}", start)) if i != -1]
        end = body.rfind(b"]", start, min(stops)) if stops else -1
        if end - start < SPAN_MIN_BYTES or body.find(b"{", start, end) != -1:
            continue
        key = f"\x00{nonce}:{len(spans)}"
        pieces += (body[last:start], orjson.dumps(key))
        spans[key] = Span(start, end)
        last = pos = end + 1
    if not spans:
        return loads(body), {}
    pieces.append(body[last:])
    try:
        request = orjson.loads(b"".join(pieces))
    except orjson.JSONDecodeError:
        return loads(body), {}
    items = request.get("inputs") if isinstance(request, dict) else None
    placed = [
        item["data"]
        for item in (items if isinstance(items, list) else ())
        if isinstance(item, dict) and isinstance(item.get("data"), str) and item["data"] in spans
    ]
    if len(placed) != len(spans) or set(placed) != spans.keys():
        return loads(body), {}
    return request, spans


# --- JSON data -----------------------------------------------------------------------------------
def from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> Any:
    """``data`` (a list, flat or nested in any way, values in row-major order) as an array of ``shape``."""
    flat, types = _values(data if type(data) is list else [data])
    if len(flat) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {len(flat)}")
    return _typed(name, datatype, flat, 0, types).reshape(shape)


def from_span(name: str, datatype: str, shape: list[int], count: int, body: bytes, span: Span) -> Any:
    """An array of the body, parsed about ``CHUNK_BYTES`` at a time into the one final array."""
    start, end = span.start, span.end
    nested = body.find(b"[", start + 1, end) != -1
    commas = body.count(b",", start, end)
    most = commas + 1 if commas or body[start + 1 : end].strip() else 0  # values are comma-separated
    if count > most or (count != most and not nested):
        have = f"at most {most}" if nested else str(most)
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {have}")
    # Numbers only (no true, false, null), and no float for an integer datatype: flat
    # chunks then need no per-value type check, only the range checks.
    marks = _LITERAL_MARKS + (_FLOAT_MARKS if datatype in _INTEGERS else ())
    clean = datatype in _NUMBERS and all(body.find(m, start, end) == -1 for m in marks)
    out = np.empty(count, DATATYPES[datatype])
    filled = 0
    types: set[type] | None
    try:
        for chunk in _chunks(body, span, nested):
            if nested:
                flat, types = _values(chunk)
            else:
                flat, types = chunk, None if clean else set(map(type, chunk))
            if filled + len(flat) > count:
                raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has more")
            out[filled : filled + len(flat)] = _typed(name, datatype, flat, filled, types)
            filled += len(flat)
    except _Unchunked:
        # Bad JSON, or nesting deeper than the cuts assumed: parse the whole array at once.
        del out
        try:
            data = orjson.loads(memoryview(body)[start : end + 1])
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"{_NOT_JSON}: input {name!r} data (at byte {start}): {exc}") from None
        return from_json(name, datatype, shape, count, data)
    if filled != count:
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {filled}")
    return out.reshape(shape)


class _Unchunked(Exception):
    """A chunk of a span is not JSON on its own."""


def _chunks(body: bytes, span: Span, nested: bool) -> Iterator[list[Any]]:
    """The span's top-level values, about CHUNK_BYTES of text at a time, each chunk parsed as an array.

    A flat array is cut at any comma; a nested one only at ``],``. Every chunk must parse on
    its own, which it can only if its brackets balance: so every cut fell between two
    top-level values and the chunks' values, in order, are the array's. Otherwise
    ``_Unchunked`` (nesting deeper than two levels, or bad JSON).
    """
    view = memoryview(body)
    sep = b"]," if nested else b","
    pos, end = span.start + 1, span.end
    while pos < end:
        cut = body.find(sep, min(pos + CHUNK_BYTES, end), end)
        cut = end if cut == -1 else cut + len(sep) - 1  # the comma
        text = bytearray(b"[")
        text += view[pos:cut]
        text += b"]"
        try:
            values = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise _Unchunked from None
        if not values:  # "[1,]", or a cut at a trailing comma
            raise _Unchunked
        yield values
        pos = cut + 1
        if cut < end and pos >= end:  # a trailing comma
            raise _Unchunked


def _values(data: list[Any]) -> tuple[list[Any], set[type]]:
    """Lists nested in any way -> one flat list in row-major order, and the set of its values' types."""
    flat = data
    types = set(map(type, flat))
    while types == _LISTS:  # the common nesting: every level a list of lists
        flat = list(chain.from_iterable(flat))
        types = set(map(type, flat))
    if list in types:  # mixed or ragged nesting
        flat = _flatten(flat)
        types = set(map(type, flat))
    return flat, types


def _flatten(data: list[Any]) -> list[Any]:
    """Any nesting of lists -> one flat list in row-major order, without recursion (JSON allows 1,024 levels)."""
    out: list[Any] = []
    stack: list[Iterator[Any]] = [iter(data)]
    while stack:
        for v in stack[-1]:
            if type(v) is list:
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _typed(name: str, datatype: str, flat: list[Any], base: int, types: set[type] | None) -> Any:
    """A flat list of JSON values -> a 1-D array of the datatype, or InvalidInput naming the value.

    ``types``: the set of the values' types; None when the caller knows they fit the datatype.
    """
    allowed = _ALLOWED[datatype]
    if types is not None and not types <= allowed:
        index, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
        raise InvalidInput(
            f"input {name!r}: {datatype} data must be {_KIND[datatype]}; {show(value)} at index {base + index} "
            f"is {_JSON_TYPE.get(type(value), type(value).__name__)}"
        )
    dtype = DATATYPES[datatype]
    code = _PACK_CODES.get(datatype)
    if code is not None and flat:  # FP16, FP32: a float may overflow to infinity
        if len(flat) < _VECTOR_MIN:
            # struct rounds as numpy does, and raises OverflowError where numpy gives inf.
            packer = _PACKERS.get((code, len(flat))) or _PACKERS.setdefault(
                (code, len(flat)), struct.Struct(f"<{len(flat)}{code}")
            )
            try:
                return np.frombuffer(packer.pack(*flat), dtype)
            except OverflowError:
                _check_finite(name, datatype, flat, base)
                raise InvalidInput(f"input {name!r}: a value is outside the {datatype} range") from None
        near = _NEAR_OVERFLOW[datatype]
        wide = np.array(flat, np.float64)  # exact for JSON floats; ints round as a direct cast does
        if wide.max() >= near or wide.min() <= -near:
            _check_finite(name, datatype, flat, base)
        return wide.astype(dtype)
    try:
        return np.array(flat, dtype)
    except OverflowError:  # an integer outside the datatype's range
        info = np.iinfo(dtype)
        index, value = next((i, v) for i, v in enumerate(flat) if not info.min <= v <= info.max)
        raise InvalidInput(
            f"input {name!r}: {value} at index {base + index} is outside the {datatype} range [{info.min}, {info.max}]"
        ) from None


def _check_finite(name: str, datatype: str, values: list[Any], base: int) -> None:
    dtype = DATATYPES[datatype]
    with np.errstate(over="ignore"):
        narrow = np.array(values, dtype)
    bad = np.flatnonzero(np.isinf(narrow))
    if bad.size:
        index = int(bad[0])
        raise InvalidInput(
            f"input {name!r}: {show(values[index])} at index {base + index} is outside the {datatype} range "
            f"(largest finite value {float(np.finfo(dtype).max)})"
        )


# --- binary data ---------------------------------------------------------------------------------
def from_binary(name: str, datatype: str, shape: list[int], count: int, chunk: memoryview) -> Any:
    if datatype == "BYTES":
        values = _unpack_strings(name, count, chunk)
        if len(values) != count:
            raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {len(values)}")
        return np.array(values, dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got {len(chunk)}"
        )
    if datatype == "BOOL" and count:
        raw = np.frombuffer(chunk, np.uint8)
        if raw.max() > 1:
            index = int(np.argmax(raw > 1))
            raise InvalidInput(f"input {name!r}: BOOL byte {raw[index]} at index {index} is not 0 or 1")
    # Zero-copy and read-only; onnxruntime only reads inputs.
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _unpack_strings(name: str, count: int, chunk: memoryview) -> list[str]:
    values: list[str] = []
    pos, end = 0, len(chunk)
    if count * 4 > end:
        raise InvalidInput(f"input {name!r}: {count} BYTES values need at least {count * 4} bytes, got {end}")
    try:
        while pos < end and len(values) <= count:
            (length,) = _U32.unpack_from(chunk, pos)
            pos += 4
            if pos + length > end:
                raise ValueError("an element runs past the end of its data")
            values.append(bytes(chunk[pos : pos + length]).decode("utf-8"))
            pos += length
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(f"input {name!r}: malformed BYTES data ({exc})") from None
    return values


def pack_strings(value: Any) -> bytes:
    parts: list[bytes] = []
    for v in value.flat:
        raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts.append(_U32.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 40
_SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 4, 3, 2


def show(value: Any) -> str:
    """A client value for an error message, as JSON writes true, false and null, cut short:
    a body may hold a 50 MB string."""
    if value is None or type(value) is bool:
        return "true" if value is True else "false" if value is False else "null"
    return _SHORT.repr(value)
