"""The load generators: wrk (peak rates, exact percentiles) and Locust (the profiles).

Both run as child processes, pinned with taskset when asked, with a hard deadline, so
a stuck generator can never hang a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadtests import HERE, REPO, analysis, cpu

log = logging.getLogger("loadtests")

GENERATORS = ("wrk", "locust")
LOCUSTFILE = HERE / "locustfile.py"
LUA = HERE / "wrk" / "post.lua"
# Grace past a generator's own run time before it is killed: wrk stops itself after -d,
# Locust needs longer to start its users and write its reports.
WRK_GRACE_S = 30.0
LOCUST_GRACE_S = 60.0


@dataclass
class Load:
    """What one generator run measured."""

    requests: int = 0
    rps: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)  # by kind (wrk) or HTTP status (Locust)


def _watch(proc: subprocess.Popen[str], timeout_s: float) -> threading.Timer:
    # Reading a pipe blocks, so a timer enforces the deadline.
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    return timer


# --- wrk ------------------------------------------------------------------------------------


def ensure_wrk(install: bool) -> str | None:
    """Path of wrk; installed with apt-get first when missing, allowed and possible (root)."""
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.error("wrk is missing: install it with `apt-get update && apt-get install -y wrk` (as root)")
        return None
    log.info("installing wrk with apt-get (Debian package wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env, timeout=600)
    return shutil.which("wrk")


def wrk_version() -> str:
    res = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False, timeout=10)
    return (res.stdout or res.stderr).split("[")[0].replace("wrk", "").strip()


def run_wrk(
    url: str,
    body: Path,
    conns: int,
    seconds: float,
    cpus: str | None,
    headers: Sequence[str] = (),
    path: str = "/score",
) -> Load | str:
    """POST ``body`` to ``url`` + ``path`` over ``conns`` connections; the figures, or why it failed.

    ``loadtests/wrk/post.lua`` reads the body once and prints exact percentiles from
    wrk's histogram as one ``WRKJSON`` line. ``headers``: extra ``"Name: value"`` lines sent
    with every request (an ``Authorization`` header for a server with key auth).
    """
    cmd = [
        *cpu.taskset_prefix(cpus),
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{seconds:g}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url + path,
        "--",
        str(body),
        *headers,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
    timer = _watch(proc, seconds + WRK_GRACE_S)
    try:
        out, _ = proc.communicate()
    finally:
        timer.cancel()
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        return f"wrk exit {proc.returncode}: {out.strip()[-300:]}"
    r = json.loads(line[len("WRKJSON ") :])
    wall = r["duration_us"] / 1e6
    errors = {k[4:]: int(r[k]) for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")}
    p50, p90, p99, top = (r[k] / 1000.0 for k in ("p50_us", "p90_us", "p99_us", "max_us"))
    return Load(
        requests=int(r["requests"]),
        rps=int(r["requests"]) / wall if wall > 0 else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        max_ms=top,
        errors=sum(errors.values()),
        error_detail={k: v for k, v in errors.items() if v},
    )


# --- Locust ---------------------------------------------------------------------------------


def locust_command(host: str, users: int, seconds: float, cpus: str | None, *extra: str) -> list[str]:
    """Headless Locust on ``loadtests/locustfile.py``; ``extra`` adds reports and ``--lt-*`` parameters."""
    return [
        *cpu.taskset_prefix(cpus),
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-t",
        f"{max(math.ceil(seconds), 1)}s",
        "--only-summary",
        # Non-2xx answers are what some profiles expect; the checks judge them, not the exit code.
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        "0",
        *extra,
    ]


def run_locust(cmd: list[str], log_path: Path, timeout_s: float, quiet: bool) -> int:
    """Run Locust, keep its whole output in ``log_path`` and echo its progress lines unless quiet."""
    tty = sys.stdout.isatty()
    with open(log_path, "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(REPO),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        timer = _watch(proc, timeout_s)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                if quiet:
                    continue
                if line.startswith("[progress]"):
                    text = line[len("[progress]") :].rstrip()
                    # On a terminal the progress line rewrites itself; in a log, one line a second.
                    sys.stdout.write("\r\x1b[2K" + text if tty else text + "\n")
                    sys.stdout.flush()
                elif "ERROR" in line or "Traceback" in line:
                    sys.stderr.write(line)
            rc = proc.wait()
        finally:
            timer.cancel()
    if tty and not quiet:
        sys.stdout.write("\n")
    return rc


def run_locust_steady(url: str, body: Path, users: int, seconds: float, cpus: str | None, out: Path) -> Load | str:
    """The steady profile with ``users`` closed-loop users posting ``body``; the figures, or why it failed.

    Figures come from the per-request record (exact percentiles), which is deleted
    afterwards along with the log: the caller keeps the figures.
    """
    cmd = locust_command(
        url,
        users,
        seconds,
        cpus,
        "--loglevel",
        "WARNING",
        *("--lt-profile", "steady", "--lt-payload", str(body), "--lt-progress", "false", "--lt-out", str(out)),
    )
    log_path = Path(f"{out}.log")
    rc = run_locust(cmd, log_path, seconds + LOCUST_GRACE_S, quiet=True)
    if rc != 0 or not Path(f"{out}.meta.json").exists():
        return f"locust exit {rc}: {log_path.read_text(errors='replace').strip()[-300:]}"
    s = analysis.summarize(analysis.load_run(out))["overall"]
    for suffix in (".npz", ".meta.json", ".log"):  # keep the result folder small
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    return Load(
        requests=s["requests"],
        rps=s["rps"] or 0.0,
        p50_ms=s["p50_ms"],
        p90_ms=s["p90_ms"],
        p99_ms=s["p99_ms"],
        max_ms=s["max_ms"],
        errors=sum(s["errors_by_status"].values()),
        error_detail=dict(s["errors_by_status"]),
    )
