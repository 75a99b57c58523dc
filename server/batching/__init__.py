"""Dynamic batching, shared by the model store and the entry-script decorator.

* :mod:`.queue`    the batching rule (run at once when alone; fill, or wait the delay) and the
                   thread batcher;
* :mod:`.stats`    batch sizes and queue delays, counted in the worker;
* :mod:`.metrics`  their Prometheus series, in the HTTP process;
* :mod:`.settings` the global defaults (a base of :class:`server.settings.Settings`).

Public API for entry scripts: ``from server.batching import batch`` (or ``from scorehost import
batch``), a stable re-export of :func:`server.entry.batching.batch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.entry.batching import batch

__all__ = ["batch"]


def __getattr__(name: str) -> Any:
    # Lazy: server.settings imports .settings, and the decorator's module imports the settings.
    if name == "batch":
        from server.entry.batching import batch

        return batch
    raise AttributeError(f"module 'server.batching' has no attribute {name!r}")
