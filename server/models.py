"""Public API for entry scripts: ``from server.models import get_store``.

A stable re-export of :mod:`server.store.store`; see docs/models.md.
"""

from server.store.store import (
    Model,
    ModelInfo,
    ModelMetadata,
    ModelState,
    ModelStore,
    ModelStoreError,
    TensorSpec,
    current_store,
    get_store,
    open_store,
)

__all__ = [
    "Model",
    "ModelInfo",
    "ModelMetadata",
    "ModelState",
    "ModelStore",
    "ModelStoreError",
    "TensorSpec",
    "current_store",
    "get_store",
    "open_store",
]
