"""Streaming entry script for the streaming profile: run() yields tokens, like an LLM.

The JSON body shapes the stream: ``{"n": 32, "delay_ms": 5, "size": 16}`` yields ``n``
tokens of exactly ``size`` bytes, sleeping ``delay_ms`` between them (not before the
first, so the time to the first chunk is the server's own overhead). Every token is
distinct and of a known length, so a client can check that the whole stream came.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

# Bounds, so one request can never hold a worker thread or its memory for long,
# whatever it asks for.
MAX_TOKENS = 100_000
MAX_DELAY_MS = 10_000.0
MAX_SIZE = 1024 * 1024


def init() -> None:
    pass


def _token(i: int, size: int) -> str:
    # "t<i>" padded with dots to ``size`` bytes, cut when ``size`` is shorter than the label.
    label = f"t{i}"
    return (label + "." * size)[:size]


def _tokens(n: int, delay_s: float, size: int) -> Iterator[str]:
    for i in range(n):
        if i and delay_s:
            time.sleep(delay_s)
        yield _token(i, size)


def run(raw_data: str) -> Iterator[str]:
    request = json.loads(raw_data or "{}")
    n = min(max(int(request.get("n", 32)), 0), MAX_TOKENS)
    delay_ms = min(max(float(request.get("delay_ms", 5.0)), 0.0), MAX_DELAY_MS)
    size = min(max(int(request.get("size", 16)), 1), MAX_SIZE)
    return _tokens(n, delay_ms / 1000.0, size)
