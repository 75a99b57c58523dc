"""The servers under test: scorehost, azmlinfsrv (the reference) and the Starlette floor.

``start()`` is the one way every runner (``run.py``, ``compare.py``, the bench scripts)
starts a server: free port, command, readiness wait, pinning. Everything here talks to
127.0.0.1 only, and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from loadtests import HERE, REPO, cpu

log = logging.getLogger("loadtests")

SYSTEMS = ("scorehost", "azmlinfsrv", "floor")
EXAMPLE_SCRIPT = REPO / "examples" / "score.py"
EXAMPLE_MODEL_DIR = REPO / "examples" / "model"
ECHO_SCRIPT = HERE / "scripts" / "echo.py"
SLEEPER_SCRIPT = HERE / "scripts" / "sleeper.py"
STREAMER_SCRIPT = HERE / "scripts" / "streamer.py"
SIZER_SCRIPT = HERE / "scripts" / "sizer.py"
AML_VENV = HERE / ".venv-aml"
AML_PACKAGE = "azureml-inference-server-http==1.5.1"
# How often a starting server is asked whether it is ready: often enough that
# bench_models' spawn-to-ready figure is exact to a few tens of ms.
READY_POLL_S = 0.02


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


def env_pairs(items: list[str], flag: str) -> dict[str, str]:
    """``KEY=VALUE`` options (``flag``, repeated) as an environment for a server."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} wants KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def dist_version(name: str) -> str | None:
    """Installed version of a distribution in this interpreter, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --- azmlinfsrv's own virtualenv ------------------------------------------------------------


def aml_version(venv: Path) -> str | None:
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    probe = "from importlib.metadata import version; print(version('azureml-inference-server-http'))"
    res = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=False, timeout=60)
    return res.stdout.strip() if res.returncode == 0 else None


def ensure_aml_venv(venv: Path, install: bool) -> Path:
    """The azmlinfsrv virtualenv's python, the venv created from the package index on first use.

    onnxruntime and numpy are pinned to this venv's versions, so the example model
    costs the same in both servers.
    """
    want = AML_PACKAGE.split("==")[1]
    if aml_version(venv) == want:
        return venv / "bin" / "python"
    if not install:
        raise RuntimeError(f"{venv} has no {AML_PACKAGE}; run without --no-install to create it")
    log.info("creating %s with %s (about 30 s)", venv, AML_PACKAGE)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    pins = [AML_PACKAGE]
    for dist in ("onnxruntime", "numpy"):
        version = dist_version(dist)
        pins.append(f"{dist}=={version}" if version else dist)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
        check=True,
        timeout=1200,
    )
    if aml_version(venv) != want:
        raise RuntimeError(f"installing {AML_PACKAGE} into {venv} failed")
    return venv / "bin" / "python"


# --- start and stop ---------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    cmd: list[str]  # as run, taskset prefix included
    env: dict[str, str]  # what was added to the inherited environment
    log_path: Path
    cpus: str | None
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pinned(self) -> bool:
        """Every thread of the server tree is allowed on its CPUs only."""
        return cpu.tree_pinned(self.pid, self.cpus)

    def command_line(self) -> str:
        """The command with its added environment, to write down how the run was made."""
        return " ".join([*(f"{k}={v}" for k, v in self.env.items()), *self.cmd])

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def command(
    system: str,
    *,
    entry_script: Path | None,
    model_dir: Path | None,
    port: int,
    workers: int | None = None,
    aml_python: Path | None = None,
    checkout: Path | None = None,
) -> tuple[list[str], str]:
    """(command, readiness path) of one system on 127.0.0.1:``port``.

    ``checkout``: run scorehost from another checkout of this repository (an older commit,
    for before/after figures) with this virtualenv's interpreter, as ``python -m server``.
    """
    args = []
    if entry_script is not None:
        args += ["--entry_script", str(entry_script)]
    if model_dir is not None:
        args += ["--model_dir", str(model_dir)]
    args += ["--port", str(port)]
    if system == "scorehost" and checkout is not None:
        extra = ["--worker_count", str(workers)] if workers else []
        return [venv_python(), "-m", "server", "serve", "--host", "127.0.0.1", *args, *extra], "/health/ready"
    if system == "scorehost":
        exe = scorehost_bin()
        # Not installed (a bare GPU machine with the dependencies on PYTHONPATH): this
        # checkout's package, with the interpreter running us.
        command = [exe] if exe is not None else [sys.executable, "-m", "server"]
        extra = ["--worker_count", str(workers)] if workers else []
        return [*command, "serve", "--host", "127.0.0.1", *args, *extra], "/health/ready"
    if system == "azmlinfsrv":
        if aml_python is None:
            raise ValueError("azmlinfsrv needs the python of its virtualenv (ensure_aml_venv)")
        # azmlinfsrv has no /health/ready: GET / is its liveness and readiness alike.
        return [str(aml_python), str(HERE / "aml_serve.py"), *args], "/"
    if system == "floor":
        return [venv_python(), str(HERE / "floor_app.py"), *args], "/health/ready"
    raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")


def start(
    system: str,
    *,
    entry_script: Path | None,
    model_dir: Path | None,
    log_path: Path,
    env: dict[str, str] | None = None,
    cpus: str | None = None,
    workers: int | None = None,
    aml_python: Path | None = None,
    name: str | None = None,
    timeout_s: float = 90.0,
    checkout: Path | None = None,
) -> Server:
    """Start ``system`` on a free port, wait until it is ready, then pin all its threads."""
    name = name or system
    port = free_port()
    cmd, ready_path = command(
        system,
        entry_script=entry_script,
        model_dir=model_dir,
        port=port,
        workers=workers,
        aml_python=aml_python,
        checkout=checkout,
    )
    cmd = cpu.taskset_prefix(cpus) + cmd
    env = dict(env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    log.info("starting %s: %s", name, " ".join(cmd))
    proc = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
        cwd=str(checkout or REPO),
        # Own process group, so stopping it also stops the workers it forked.
        start_new_session=True,
    )
    server = Server(name, proc, f"http://127.0.0.1:{port}", cmd, env, log_path, cpus, log_file)
    deadline = time.monotonic() + timeout_s
    while http_status(server.url + ready_path, timeout_s=2.0) != 200:
        if not server.alive() or time.monotonic() > deadline:
            tail = server.log_tail()
            stop(server)
            why = f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready in {timeout_s:.0f} s"
            raise RuntimeError(f"{name} {why} ({server.url}{ready_path}):\n{tail}")
        time.sleep(READY_POLL_S)
    if cpus and shutil.which("taskset"):
        cpu.pin_tree(proc.pid, cpus)
    log.info("%s ready on %s (pid %d)", name, server.url, proc.pid)
    return server


def stop_all(running: Mapping[Any, Server]) -> None:
    """Stop every server of a run (a runner's ``finally``)."""
    for server in running.values():
        stop(server)


def stop(server: Server, timeout_s: float = 15.0) -> None:
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
