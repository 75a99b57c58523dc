"""``@rawhttp``, ``AMLRequest`` and ``AMLResponse`` without Flask.

Entry scripts import these from ``azureml_inference_server_http.api.aml_request``
/ ``.aml_response`` or the legacy ``azureml.contrib.services.*`` paths; the
worker makes those names resolve here (see :mod:`server.entry.compat`) when the real
package is not installed. ``AMLRequest`` offers the part of Flask's ``Request``
API that scoring scripts use; ``AMLResponse`` keeps the reference's signature.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from server.errors import BadRequest, UnsupportedMediaType

F = TypeVar("F", bound=Callable[..., Any])

# NOTE: the reference marks rawhttp with a module-level flag rather than on the
# function (driver modules may re-wrap run()), so we do the same.
_raw_http_requested = False


def rawhttp(func: F) -> F:
    """Mark ``run()`` as taking the raw request (an :class:`AMLRequest`)."""
    global _raw_http_requested
    _raw_http_requested = True
    return func


def raw_http_requested() -> bool:
    return _raw_http_requested


def _title(name: str) -> str:
    # Flask/werkzeug present header names as "X-Request-Id"; scripts index them so.
    return "-".join(part.capitalize() for part in name.split("-"))


class Headers:
    """Case-insensitive, ordered request headers; iterates as ``(name, value)`` pairs."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = [(_title(k), v) for k, v in pairs]

    def get(self, name: str, default: Any = None) -> Any:
        lower = name.lower()
        for k, v in self._pairs:
            if k.lower() == lower:
                return v
        return default

    def getlist(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for k, v in self._pairs if k.lower() == lower]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def keys(self) -> list[str]:
        return [k for k, _ in self._pairs]

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def to_dict(self) -> dict[str, str]:
        return dict(self._pairs)


class Args:
    """Query arguments with werkzeug's ``MultiDict`` reading API."""

    def __init__(self, query: str) -> None:
        self._pairs = parse_qsl(query, keep_blank_values=True)

    def get(self, key: str, default: Any = None, type: Callable[[str], Any] | None = None) -> Any:
        for k, v in self._pairs:
            if k == key:
                if type is None:
                    return v
                try:
                    return type(v)
                except (ValueError, TypeError):
                    return default
        return default

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key]

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _ in self._pairs))

    def items(self) -> list[tuple[str, str]]:
        return [(k, self.getlist(k)[0]) for k in self.keys()]

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        return {k: (self.getlist(k)[0] if flat else self.getlist(k)) for k in self.keys()}

    def __getitem__(self, key: str) -> str:
        values = self.getlist(key)
        if not values:
            raise KeyError(key)
        return values[0]

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self._pairs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


class AMLRequest:
    """The request given to a ``@rawhttp`` ``run()``."""

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        base_url: str = "http://localhost",
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query.encode()
        self.headers = Headers(headers)
        self.args = Args(query)
        self._body = body
        self.full_path = f"{path}?{query}"
        self.base_url = base_url.rstrip("/") + path
        self.url = self.base_url + (f"?{query}" if query else "")
        self.url_root = base_url.rstrip("/") + "/"

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("Content-Type")
        return None if value is None else str(value)

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    @property
    def is_json(self) -> bool:
        mt = self.mimetype
        return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))

    @property
    def data(self) -> bytes:
        return self._body

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        return self._body.decode("utf-8", "replace") if as_text else self._body

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not (force or self.is_json):
            if silent:
                return None
            raise UnsupportedMediaType(
                "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
            )
        try:
            return json.loads(self._body)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested past the stack
            if silent:
                return None
            raise BadRequest(f"Failed to decode JSON object: {exc}") from exc

    @property
    def json(self) -> Any:
        return self.get_json()

    def __repr__(self) -> str:
        return f"<AMLRequest {self.method} {self.url!r}>"


class AMLResponse:
    """What a ``@rawhttp`` ``run()`` returns: body, status and headers passed through.

    Same signature as the reference: ``json_str=True`` JSON-encodes ``message``,
    ``None`` gives ``{}``, and a comma in a header value makes repeated headers.
    """

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: dict[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        response_headers = response_headers or {}
        self.status_code = int(status_code)
        self.run_function_failed = bool(run_function_failed)
        self.mimetype: str | None
        # A generator body is streamed, chunk by chunk, as the reference does.
        self.stream: Iterator[Any] | AsyncIterator[Any] | None = None
        if inspect.isgenerator(message) or inspect.isasyncgen(message):
            self.data, self.mimetype, self.stream = b"", "text/html; charset=utf-8", message
        elif message is None:
            self.data, self.mimetype = b"{}", "application/json"
        elif json_str:
            self.data, self.mimetype = json.dumps(message).encode(), "application/json"
        else:
            if isinstance(message, bytes | bytearray | memoryview):
                self.data = bytes(message)
            else:
                self.data = str(message).encode()
            self.mimetype = "text/html; charset=utf-8"
        self.headers: list[tuple[str, str]] = []
        for name, value in response_headers.items():
            if name.lower() == "content-type":
                self.mimetype = None
            for part in str(value).split(","):
                self.headers.append((name, part.strip()))

    def get_data(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return f"<AMLResponse {self.status_code} {len(self.data)} bytes>"
