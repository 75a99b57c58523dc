"""The one deadline rule.

A scoring call's deadline is decided once, by the worker pool in the HTTP process,
when the call is sent to a worker: ``now + scoring_timeout_ms``
(:func:`call_deadline`). It travels with the call; the pool answers 504 at it, the
worker does not start a call whose deadline has passed, and code running inside a
call (the model store's lazy loads) waits no longer than :func:`remaining`.
``time.monotonic()`` is one clock for every process of a machine, so the value means
the same on both sides of the socket.
"""

from __future__ import annotations

import contextvars
import time

current: contextvars.ContextVar[float | None] = contextvars.ContextVar("scorehost_deadline", default=None)


def call_deadline(now: float, scoring_timeout_ms: int) -> float:
    return now + scoring_timeout_ms / 1000.0


def remaining(default_s: float) -> float:
    """Seconds left before the current call's deadline; ``default_s`` outside a call."""
    deadline = current.get()
    if deadline is None:
        return default_s
    return max(0.0, deadline - time.monotonic())
