"""Public API for entry scripts: ``from server.batching import batch`` (or ``from scorehost import batch``).

A stable re-export of :mod:`server.entry.batching`; scripts may import either path.
"""

from server.entry.batching import batch

__all__ = ["batch"]
