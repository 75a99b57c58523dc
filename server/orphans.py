"""No orphans: a child process (a worker, an HTTP front) dies with the process that started it.

Shared by :mod:`server.workers.main` and :mod:`server.http.fronts`; it imports nothing of
either side, so neither loads the other's code to use it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger("scorehost")

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, fallback: str) -> None:
    """Ask Linux to SIGKILL this process when ``parent`` dies, even by ``kill -9``.

    Without it a child stuck in a C call is re-parented and burns a core forever.
    ``fallback``: what happens instead where ``prctl`` is unavailable (logged as a warning).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        logger.warning("PR_SET_PDEATHSIG is unavailable; %s", fallback)
        return
    if parent and os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)
