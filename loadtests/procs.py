"""Starting, pinning, measuring and stopping the local servers a load test runs against.

Everything here talks to 127.0.0.1 only, and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("loadtests")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LISTENING = re.compile(r"Listening on (?:at: )?http://([\w.\-\[\]:]+):(\d+)")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def venv_python() -> str:
    """The interpreter of this checkout's virtualenv (the one running us, normally)."""
    local = REPO / ".venv" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def scorehost_bin() -> str | None:
    """``scorehost`` next to the running interpreter, in ``.venv``, or on PATH."""
    for cand in (Path(sys.executable).parent / "scorehost", REPO / ".venv" / "bin" / "scorehost"):
        if cand.exists():
            return str(cand)
    return shutil.which("scorehost")


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (closed again, so a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 5.0,
) -> int:
    """Status of one request; 0 when no HTTP answer came (refused, reset, timed out)."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


# --- /proc accounting --------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children = _children_map()
    out: list[int] = []
    todo = [root]
    # Bounded: a pid is visited once, and there are finitely many in /proc.
    while todo and len(out) < 100_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads); 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(root: int) -> float:
    return sum(process_cpu_seconds(pid) for pid in tree_pids(root))


def system_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


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


def taskset_prefix(cpus: str | None) -> list[str]:
    if not cpus:
        return []
    if shutil.which("taskset") is None:
        log.warning("taskset not found; running unpinned")
        return []
    return ["taskset", "-c", cpus]


# --- servers -------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path
    cpus: str | None
    ready_path: str
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_server(
    name: str,
    cmd: list[str],
    *,
    port: int,
    log_path: Path,
    env: dict[str, str] | None = None,
    cpus: str | None = None,
    ready_path: str = "/health/ready",
    timeout_s: float = 90.0,
    cwd: Path | None = None,
) -> Server:
    """Start a server, wait until ``ready_path`` answers 200, then pin all its threads."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop_server
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_cmd = taskset_prefix(cpus) + cmd
    log.info("starting %s: %s", name, " ".join(full_cmd))
    proc = subprocess.Popen(
        full_cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        cwd=str(cwd or REPO),
        # Own process group, so stopping it also stops the workers it forked.
        start_new_session=True,
    )
    server = Server(name, proc, f"http://127.0.0.1:{port}", log_path, cpus, ready_path, log_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            stop_server(server)
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{server.log_tail()}")
        if http_status(server.url + ready_path, timeout_s=2.0) == 200:
            break
        time.sleep(0.1)
    else:
        tail = server.log_tail()
        stop_server(server)
        raise RuntimeError(f"{name} not ready on {server.url}{ready_path} after {timeout_s:.0f} s:\n{tail}")
    if cpus and shutil.which("taskset"):
        pin_tree(proc.pid, cpus)
    log.info("%s ready on %s (pid %d)", name, server.url, proc.pid)
    return server


def stop_server(server: Server, timeout_s: float = 15.0) -> None:
    """SIGTERM the server (its graceful path), then SIGKILL its process group if it lingers."""
    proc = server.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing its process group", server.name, timeout_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Workers that outlived their parent would still hold the port and CPU.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if server._log_file is not None:
        server._log_file.close()
        server._log_file = None


def scorehost_cmd(
    *, entry_script: Path | None, model_dir: Path | None, port: int, workers: int | None = None
) -> list[str]:
    exe = scorehost_bin()
    if exe is None:
        raise RuntimeError("scorehost is not installed here (expected .venv/bin/scorehost); pip install -e .")
    cmd = [exe, "serve", "--port", str(port), "--host", "127.0.0.1"]
    if entry_script is not None:
        cmd += ["--entry_script", str(entry_script)]
    if model_dir is not None:
        cmd += ["--model_dir", str(model_dir)]
    if workers:
        cmd += ["--worker_count", str(workers)]
    return cmd
