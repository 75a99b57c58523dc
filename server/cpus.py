"""How many CPUs this container may use: measured once, at start-up, by the CLI.

Kept out of :mod:`server.settings`, which does no I/O: this reads the cgroup files.
"""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask, then the cgroup v2 quota)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)
