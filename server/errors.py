"""The exception tree. Every error the server answers with is one of these.

    ScoreHostError                 root; carries status_code, code, headers
    ├── BadRequest                 400  bad input (JSON, UTF-8, V2 tensors)
    │   └── InvalidInput           400  a model input with the wrong name, dtype or shape
    ├── Unauthorized               401  missing or wrong API key or token (WWW-Authenticate: Bearer)
    ├── NotFound                   404  unknown path
    │   └── ModelNotFound          404  unknown model or version
    ├── MethodNotAllowed           405
    ├── RequestTimeout             408  the request head or body was not complete within its read timeout
    ├── PayloadTooLarge            413  body above max_request_bytes
    ├── UnsupportedMediaType       415  schema-decorated run() without application/json
    ├── HeaderTooLarge             431  request-id header over 100 characters; request head over
    │                                   max_header_bytes, or more than max_headers fields
    ├── ClientDisconnected         499  the client closed the connection before its body was complete
    │                                   (nothing can be sent; the status is for the access log)
    ├── ScriptError                500  run() raised, or its process died (x-ms-run-function-failed: True)
    ├── InternalError              500  the server failed, e.g. run() returned something unserialisable
    ├── ConfigError                500  a config file is invalid: <model>.scorehost.json (that model fails)
    │   │                               or a deployment config (`scorehost k8s` exits 2); also a ValueError
    │   ├── LoggingFileError       500  a logging.json that cannot be read or applied (start-up fails)
    │   └── SettingsError          500  settings that cannot be used (the CLI prints the line, exits 2)
    ├── StreamFailed               500  a streamed reply ended midway (run() raised, worker died, idle):
    │                                   the response is cut off, since its status was already sent
    ├── DiscoveryError             500  model_dir is missing or unusable (the model store cannot start)
    ├── ServiceUnavailable         503  with Retry-After
    │   ├── Overloaded             503  queue full, or the queue wait ran out
    │   ├── NotReady               503  no worker ready (starting, restarting, draining)
    │   └── ModelNotReady          503  model still loading or failed to load
    ├── ScoringTimeout             504  run() passed scoring_timeout_ms
    ├── EntryScriptError           500  the script could not be loaded, or init() failed (fatal for a worker)
    └── ModelStoreError            500  the model store cannot start (no model_dir, no model, too many)

:func:`error_body` is the one renderer: any exception (ours, or an unexpected one,
which becomes a 500 with a generic message) to its status, JSON body and headers. The
worker, ``/score`` and ``/v2`` all answer errors through it.

Foreign exceptions (onnxruntime, user scripts) are translated where they are caught
with ``raise ... from exc``. This module imports nothing from the HTTP layer.
"""

from __future__ import annotations

import orjson

INTERNAL_ERROR_MESSAGE = "An unexpected internal error occurred. Check the logs for more info."


class ScoreHostError(Exception):
    """Root of every error scorehost answers with."""

    status_code: int = 500
    code: str = "internal_error"
    run_failed: bool = False

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(ScoreHostError):
    status_code = 400
    code = "bad_request"


class InvalidInput(BadRequest):
    code = "invalid_input"


class Unauthorized(ScoreHostError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "Missing or invalid API key.", *, challenge: str = "Bearer") -> None:
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class NotFound(ScoreHostError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ScoreHostError):
    status_code = 405
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(message, headers={"Allow": ", ".join(allow)} if allow else None)


class PayloadTooLarge(ScoreHostError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ScoreHostError):
    status_code = 415
    code = "unsupported_media_type"


class RequestTimeout(ScoreHostError):
    status_code = 408
    code = "request_timeout"


class HeaderTooLarge(ScoreHostError):
    status_code = 431
    code = "header_too_large"


class ClientDisconnected(ScoreHostError):
    """The body ended before its declared length: the client closed the connection. ``run()``
    is never called with such a body. 499 is nginx's "client closed request"; it only shows in
    the log, as nobody is left to read it."""

    status_code = 499
    code = "client_disconnected"


class ScriptError(ScoreHostError):
    """run() failed: it raised, or the worker process running it died."""

    status_code = 500
    code = "script_error"
    run_failed = True


class InternalError(ScoreHostError):
    status_code = 500
    code = "internal_error"


class ConfigError(ScoreHostError, ValueError):
    """A config file is not usable; the message names the file or field and says why.

    Also a ValueError, as it was before it joined this tree (and as pydantic's ValidationError is).
    """

    status_code = 500
    code = "config_error"


class LoggingFileError(ConfigError):
    """A logging.json that cannot be read or applied."""

    code = "logging_file_error"


class SettingsError(ConfigError):
    """Settings that cannot be used; the message is the one line to print."""

    code = "settings_error"


class StreamFailed(ScoreHostError):
    """A streamed reply ended abnormally: run() raised midway, its worker died, or it went idle."""

    code = "stream_failed"


class DiscoveryError(ScoreHostError):
    """model_dir is missing or unusable."""

    status_code = 500
    code = "discovery_error"


class ServiceUnavailable(ScoreHostError):
    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class NotReady(ServiceUnavailable):
    code = "not_ready"


class ModelNotReady(ServiceUnavailable):
    code = "model_not_ready"


class ScoringTimeout(ScoreHostError):
    status_code = 504
    code = "scoring_timeout"
    run_failed = True

    def __init__(self, timeout_ms: int, message: str | None = None) -> None:
        super().__init__(message or f"Scoring timeout after {timeout_ms} ms")
        self.timeout_ms = timeout_ms


class EntryScriptError(ScoreHostError):
    """The script could not be loaded, or its init() failed. Fatal for the worker."""

    code = "entry_script_error"


class ModelStoreError(ScoreHostError):
    """The store cannot start: model_dir is missing, holds no model, or more than max_models."""

    code = "model_store_error"


def error_body(exc: BaseException, *, v2: bool = False) -> tuple[int, bytes, dict[str, str], bool]:
    """Status, JSON body, headers and run-failed flag for any exception.

    The body is ``{"message": ...}`` as the reference server writes it; under ``/v2``
    also ``"error"``, which is what V2 clients such as tritonclient read. Anything
    that is not a :class:`ScoreHostError` is a bug of ours and gets a generic 500:
    its text may hold paths or internals, so it goes to the log, never to the client.
    """
    if not isinstance(exc, ScoreHostError):
        exc = InternalError(INTERNAL_ERROR_MESSAGE)
    payload = {"message": exc.message, "error": exc.message} if v2 else {"message": exc.message}
    return exc.status_code, orjson.dumps(payload), exc.headers, exc.run_failed
