"""The exception tree. Every error the server answers with is one of these.

    ScoreHostError                 root; carries status_code, code, headers
    ├── BadRequest                 400  bad input (JSON, UTF-8, V2 tensors)
    │   └── InvalidInput           400  a model input with the wrong name, dtype or shape
    ├── Unauthorized               401  missing or wrong API key
    ├── NotFound                   404  unknown path
    │   └── ModelNotFound          404  unknown model or version
    ├── MethodNotAllowed           405
    ├── PayloadTooLarge            413  body above max_request_bytes
    ├── UnsupportedMediaType       415  schema-decorated run() without application/json
    ├── HeaderTooLarge             431  request-id header over 100 characters
    ├── ScriptError                500  run() raised, or its process died (x-ms-run-function-failed: True)
    ├── InternalError              500  the server failed, e.g. run() returned something unserialisable
    ├── ServiceUnavailable         503  with Retry-After
    │   ├── Overloaded             503  queue full, or the queue wait ran out
    │   ├── NotReady               503  no worker ready (starting, restarting, draining)
    │   └── ModelNotReady          503  model still loading or failed to load
    └── ScoringTimeout             504  run() passed scoring_timeout_ms

Foreign exceptions (onnxruntime, user scripts) are translated where they are caught
with ``raise ... from exc``. This module imports nothing from the HTTP layer.
"""

from __future__ import annotations


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

    def __init__(self, message: str = "Missing or invalid API key.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ScoreHostError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(ScoreHostError):
    status_code = 405
    code = "method_not_allowed"


class PayloadTooLarge(ScoreHostError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ScoreHostError):
    status_code = 415
    code = "unsupported_media_type"


class HeaderTooLarge(ScoreHostError):
    status_code = 431
    code = "header_too_large"


class ScriptError(ScoreHostError):
    """run() failed: it raised, or the worker process running it died."""

    status_code = 500
    code = "script_error"
    run_failed = True


class InternalError(ScoreHostError):
    status_code = 500
    code = "internal_error"


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

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"Scoring timeout after {timeout_ms} ms")
        self.timeout_ms = timeout_ms
