"""CPU pinning and CPU-time accounting of process trees, read from /proc (Linux).

The benchmarks pin servers and load generators to separate cores, and charge each
cell the CPU time its server tree, its generator and everything else on the box used.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess

log = logging.getLogger("loadtests")

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def taskset_prefix(cpus: str | None) -> list[str]:
    """``taskset -c CPUS`` to put before a command; nothing when unpinned or taskset is missing."""
    if not cpus:
        return []
    if shutil.which("taskset") is None:
        log.warning("taskset not found; running unpinned")
        return []
    return ["taskset", "-c", cpus]


def cpu_set(spec: str) -> set[int]:
    """A taskset CPU list (``0,2-3``) as a set."""
    out: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    # Bounded: a pid is visited once, and there are finitely many in /proc.
    while todo and len(out) < 100_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pin_tree(root: int, cpus: str) -> None:
    """Re-pin every thread of every process in the tree.

    Needed after start-up: onnxruntime pins its intra-op pool threads itself, which
    overrides the affinity inherited from ``taskset -c`` (seen in /proc/PID/task/*/status).
    """
    for pid in tree_pids(root):
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cpus, str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=10,
        )


def tree_pinned(root: int, cpus: str | None) -> bool:
    """Every thread of the tree is allowed on ``cpus`` only (True when nothing was asked)."""
    if not cpus:
        return True
    want = cpu_set(cpus)
    for pid in tree_pids(root):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                allowed = os.sched_getaffinity(int(tid))
            except OSError:
                continue
            if allowed != want:
                return False
    return True


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads); 0.0 when it is gone."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of every process (all threads) in the tree."""
    return sum(process_cpu_seconds(pid) for pid in tree_pids(root))


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def own_cpu_seconds() -> float:
    """CPU time of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (the load generators)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime
