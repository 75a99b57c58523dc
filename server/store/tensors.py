"""Open Inference Protocol tensors: untrusted request data to numpy, strictly.

    shape, count = check_shape(name, item["shape"], limit)         else InvalidInput
    request, spans = parse_request(body)                            the JSON document; large
                                                                    "data" arrays left as Spans
    array = from_json(name, datatype, shape, count, data)           a parsed list, flat or nested
    array = from_span(name, datatype, shape, count, body, span)     a Span, parsed in chunks
    array = from_binary(name, datatype, shape, count, chunk)        binary tensor extension

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
CHUNK_BYTES = 256 * 1024  # JSON text parsed per step of from_span (~25k numbers)
_MAX_DATA_KEYS = 256  # "data" keys looked at per body; the arrays of any further ones are parsed whole
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
_INTEGERS = frozenset(_INT_TYPES)
_NUMBERS = _INTEGERS | {"FP16", "FP32", "FP64"}
# Magnitudes at or above which a float may not fit FP16 / FP32 (half their overflow
# thresholds): only then is a long list's converted array checked for infinities.
_NEAR_OVERFLOW = {"FP16": 65520.0 / 2, "FP32": float(np.finfo(np.float32).max) / 2}
# Letters that only true, false or null bring into a span of JSON numbers, and those of a float.
_LITERAL_MARKS = (b"u", b"a")
_FLOAT_MARKS = (b".", b"e", b"E")
_U32 = struct.Struct("<I")
_NOT_JSON = "the request body is not valid JSON"
_NO_SPANS: dict[str, Span] = {}  # shared, never written
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
    """A JSON array in the body (numbers, true, false, null, arrays): ``body[start]`` is its ``[``,
    ``body[end]`` its ``]``."""

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
        return loads(body), _NO_SPANS
    nonce = secrets.token_hex(8)
    pieces: list[bytes] = []
    spans: dict[str, Span] = {}
    last = pos = 0
    for _ in range(_MAX_DATA_KEYS):  # a body of nothing but '"data":[' must not cost a loop turn per key
        if (found := body.find(b'"data"', pos)) == -1:
            break
        match = _DATA_KEY.match(body, found)
        pos = found + 6
        if match is None:
            continue
        start = match.end() - 1
        stop = body.find(b'"', start)  # scans only as far as the next quote: no key is scanned past
        brace = body.find(b"}", start, len(body) if stop == -1 else stop)
        end = body.rfind(b"]", start, brace if brace != -1 else stop if stop != -1 else len(body))
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
    # The hot path (small tensors) is written out here, without helper calls.
    flat = data if type(data) is list else [data]
    while flat and type(flat[0]) is list and (joined := _join(flat)) is not None:
        flat = joined  # the common nesting: every level a list of lists
    types = set(map(type, flat))
    if list in types:  # mixed or ragged nesting
        flat = _flatten(flat)
        types = set(map(type, flat))
    if len(flat) != count:
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {len(flat)}")
    if not types <= _ALLOWED[datatype]:
        raise _type_error(name, datatype, flat, 0)
    code = _PACK_CODES.get(datatype)
    if code is None:  # BOOL, integers, FP64, BYTES: numpy converts exactly, or raises OverflowError
        try:
            return np.array(flat, DATATYPES[datatype]).reshape(shape)
        except OverflowError:
            raise _range_error(name, datatype, flat, 0) from None
    if not 0 < count < _VECTOR_MIN:
        return _typed(name, datatype, flat, 0).reshape(shape)
    # FP16, FP32: struct rounds as numpy does, and raises OverflowError where numpy gives inf.
    packer = _PACKERS.get((code, count)) or _PACKERS.setdefault((code, count), struct.Struct(f"<{count}{code}"))
    out = np.empty(shape, DATATYPES[datatype])  # owned and writable: onnxruntime copies read-only inputs
    try:
        packer.pack_into(out, 0, *flat)  # type: ignore[arg-type]  # an ndarray is a writable buffer
    except (OverflowError, struct.error):  # FP16 ("e") refuses an int past its range with struct.error
        return _check_finite(name, datatype, flat, 0).reshape(shape)
    return out


def from_span(name: str, datatype: str, shape: list[int], count: int, body: bytes, span: Span) -> Any:
    """An array of the body, parsed about ``CHUNK_BYTES`` at a time into the one final array."""
    start, end = span.start, span.end
    nested = body.find(b"[", start + 1, end) != -1
    commas = body.count(b",", start, end)
    most = commas + 1 if commas or body[start + 1 : end].strip() else 0  # values are comma-separated
    if count > most or (count != most and not nested):
        # Refused before the array is made; counted (a chunk at a time) to say how many there are.
        have = _count_values(name, body, span, nested)
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
            if types is not None and not types <= _ALLOWED[datatype]:
                raise _type_error(name, datatype, flat, filled)
            out[filled : filled + len(flat)] = _typed(name, datatype, flat, filled)
            filled += len(flat)
    except _Unchunked:
        # Bad JSON, or nesting deeper than the cuts assumed: parse the whole array at once.
        del out
        return from_json(name, datatype, shape, count, _whole(name, body, span))
    if filled != count:
        raise InvalidInput(f"input {name!r}: shape {shape} holds {count} values but data has {filled}")
    return out.reshape(shape)


def _count_values(name: str, body: bytes, span: Span, nested: bool) -> int:
    try:
        return sum(len(_values(chunk)[0] if nested else chunk) for chunk in _chunks(body, span, nested))
    except _Unchunked:
        return len(_values(_whole(name, body, span))[0])


def _whole(name: str, body: bytes, span: Span) -> list[Any]:
    """The span parsed in one piece: the general path's memory, and orjson's word on bad JSON."""
    try:
        data: list[Any] = orjson.loads(memoryview(body)[span.start : span.end + 1])
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{_NOT_JSON}: input {name!r} data (at byte {span.start}): {exc}") from None
    return data


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
    while flat and type(flat[0]) is list and (joined := _join(flat)) is not None:
        flat = joined  # the common nesting: every level a list of lists
    types = set(map(type, flat))
    if list in types:  # mixed or ragged nesting
        flat = _flatten(flat)
        types = set(map(type, flat))
    return flat, types


def _join(rows: list[Any]) -> list[Any] | None:
    """A list of lists with one level of nesting removed; None if some row is not a list.

    Only all-list levels are joined, so each value is copied once (a mixed list would be
    copied again at every level below: ``_flatten`` takes those).
    """
    out: list[Any] = []
    for row in rows:
        if type(row) is not list:
            return None
        out += row
    return out


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


def _typed(name: str, datatype: str, flat: list[Any], base: int) -> Any:
    """A flat list of values of the right JSON types -> a 1-D array of the datatype.

    InvalidInput names a value outside the datatype's range; ``base``: the index of ``flat[0]``.
    """
    dtype = DATATYPES[datatype]
    near = _NEAR_OVERFLOW.get(datatype)
    if near is not None and flat:  # FP16, FP32: a float may overflow to infinity
        wide = np.array(flat, np.float64)  # exact for JSON floats; ints round as a direct cast does
        if wide.max() >= near or wide.min() <= -near:
            _check_finite(name, datatype, flat, base)
        return wide.astype(dtype)
    try:
        return np.array(flat, dtype)
    except OverflowError:
        raise _range_error(name, datatype, flat, base) from None


def _range_error(name: str, datatype: str, flat: list[Any], base: int) -> InvalidInput:
    """The first integer outside the datatype's range (what made numpy raise OverflowError)."""
    info = np.iinfo(DATATYPES[datatype])
    index, value = next((i, v) for i, v in enumerate(flat) if not info.min <= v <= info.max)
    return InvalidInput(
        f"input {name!r}: {value} at index {base + index} is outside the {datatype} range [{info.min}, {info.max}]"
    )


def _type_error(name: str, datatype: str, flat: list[Any], base: int) -> InvalidInput:
    allowed = _ALLOWED[datatype]
    index, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
    return InvalidInput(
        f"input {name!r}: {datatype} data must be {_KIND[datatype]}; {show(value)} at index {base + index} "
        f"is {_JSON_TYPE.get(type(value), type(value).__name__)}"
    )


def _check_finite(name: str, datatype: str, values: list[Any], base: int) -> Any:
    """``values`` as a 1-D FP16/FP32 array; InvalidInput naming the first one that overflows."""
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
    return narrow


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
