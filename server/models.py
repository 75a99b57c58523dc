"""Public API for entry scripts: ``from server.models import get_store``.

A stable re-export of :mod:`server.store.store` (the names in its ``__all__``); see
docs/models.md.
"""

from server.store.store import *  # noqa: F403
from server.store.store import __all__ as __all__
