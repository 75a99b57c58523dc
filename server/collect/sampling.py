"""Which requests are recorded: decided from the request id, the same way in every process.

The HTTP process (payloads) and the workers (script collectors) decide alone, without a message
between them, and agree: a request's payloads and the records its ``run()`` made are kept or left
out together. A client that sends the same ``x-request-id`` every time is always in or always out.
"""

from __future__ import annotations

import zlib

_SPAN = 1 << 32


def sampled(request_id: str, rate: float) -> bool:
    """True when the request with this id is recorded at ``rate`` (0..1)."""
    if rate >= 1.0:
        return True
    return rate > 0.0 and zlib.crc32(request_id.encode()) < rate * _SPAN
