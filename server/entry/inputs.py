"""Turning an untrusted request into ``run()``'s arguments.

Everything here parses client input inside a worker process, so every failure must
become a :class:`~server.errors.BadRequest` (or 415), never an exception that escapes:
deep JSON raises ``RecursionError`` in :func:`json.loads`, which is not a ``ValueError``.
"""

from __future__ import annotations

import inspect
import json
from typing import Any
from urllib.parse import parse_qsl

import orjson

from server.errors import BadRequest, UnsupportedMediaType
from server.workers.protocol import Call


def parse_query_value(value: str) -> Any:
    """A GET argument parsed as JSON when it is JSON, else kept as the string (the reference's rule).

    JSON nested past the interpreter's stack is refused: kept as a string it would fail
    again wherever the script parses it, and json.loads raising RecursionError once
    killed the worker.
    """
    try:
        return json.loads(value)
    except ValueError:
        return value
    except RecursionError:
        raise BadRequest("A query argument is JSON nested too deeply to parse.") from None


def query_to_dict(query: str) -> dict[str, Any]:
    """The reference's GET mapping: values parsed as JSON, repeated keys as lists."""
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        grouped.setdefault(key, []).append(value)
    return {
        k: parse_query_value(v[0]) if len(v) == 1 else [parse_query_value(x) for x in v] for k, v in grouped.items()
    }


def query_as_json(query: str) -> str:
    """What a plain ``run(data)`` gets for a GET: the query arguments as a JSON string."""
    return json.dumps(query_to_dict(query))


def body_as_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"Input cannot be decoded as UTF-8: {exc}") from None


def schema_payload(call: Call) -> dict[str, Any]:
    """The JSON object whose keys become an inference-schema ``run()``'s arguments."""
    if call.method == "GET":
        return query_to_dict(call.query)
    ctype = call.content_type.split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType("Expects Content-Type to be application/json")
    if not call.body.strip():
        raise BadRequest("POST body is empty. Expecting a JSON dictionary.")
    try:
        payload = orjson.loads(call.body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"POST body could not be decoded as JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("POST body should be a JSON dictionary.")
    return payload


def schema_arguments(params: list[inspect.Parameter], payload: dict[str, Any]) -> dict[str, Any]:
    kwargs = {}
    for param in params:
        if param.name in payload:
            kwargs[param.name] = payload[param.name]
        elif param.default is inspect.Parameter.empty:
            raise BadRequest(f"A value is not provided for the '{param.name}' parameter.")
        else:
            # NOTE: inference-schema's decorator indexes every declared parameter,
            # so defaults are passed explicitly rather than left out.
            kwargs[param.name] = param.default
    return kwargs


def header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    """A ``request_headers`` argument: names in the reference's Title-Case."""
    return {"-".join(p.capitalize() for p in k.split("-")): v for k, v in headers}
