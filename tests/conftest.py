"""Shared fixtures: a real scorehost server in a subprocess on 127.0.0.1.

``start_server(...)`` runs ``python -m server serve --port 0`` with the given
settings as environment variables, reads the bound port from the
"Listening on http://..." log line, optionally waits for readiness, and stops the
server (SIGTERM, then SIGKILL) when the test ends. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import plain_http
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "scripts"
EXAMPLES = ROOT / "examples"
_LISTENING = re.compile(r"Listening on (https?)://([^\s]+):(\d+)")


@dataclass
class ServerHandle:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return plain_http.client(base_url=self.url, timeout=timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client(timeout=2.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log}")
                try:
                    if c.get("/health/ready").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.log}")

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if regex.search(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"log line {pattern!r} not seen within {timeout} s:\n{self.log}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"server did not exit within {timeout} s:\n{self.log}") from exc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def launch(
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    *,
    wait_listening: bool = True,
    command: list[str] | None = None,
) -> ServerHandle:
    """Start a server process: ``python -m server serve`` unless ``command`` says otherwise."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOREHOST_", "AZUREML_", "AML_"))}
    full_env.update({"SCOREHOST_PORT": "0", "SCOREHOST_SHUTDOWN_DELAY_S": "0.2", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    proc = subprocess.Popen(
        [*(command or [sys.executable, "-m", "server", "serve"]), *(args or [])],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    handle = ServerHandle(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.lines.append(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    if wait_listening:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not handle.url:
            for line in list(handle.lines):
                m = _LISTENING.search(line)
                if m:
                    handle.url = f"{m.group(1)}://{m.group(2)}:{m.group(3)}"
                    break
            if proc.poll() is not None and not handle.url:
                raise AssertionError(f"server exited with {proc.returncode}:\n{handle.log}")
            time.sleep(0.02)
        assert handle.url, f"server did not report its port:\n{handle.log}"
    return handle


@pytest.fixture
def start_server() -> Iterator[object]:
    handles: list[ServerHandle] = []

    def start(
        script: str | None = None, *, ready: bool = True, args: list[str] | None = None, **env: str
    ) -> ServerHandle:
        extra = dict(env)
        if script is not None:
            path = Path(script)
            if not path.is_absolute():
                path = SCRIPTS / script
            extra.setdefault("AZUREML_ENTRY_SCRIPT", str(path))
        handle = launch(args, extra)
        handles.append(handle)
        if ready:
            handle.wait_ready()
        return handle

    yield start
    for handle in handles:
        handle.stop()


async def wait_pool_ready(pool: object, timeout: float = 10.0) -> None:
    """Wait (bounded) until an in-process WorkerPool has a ready worker."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not pool.ready():  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise AssertionError(f"pool not ready within {timeout} s: {pool.status()}")  # type: ignore[attr-defined]
        await asyncio.sleep(0.025)


@pytest.fixture
def fresh_script_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """For tests that load entry scripts in this process (each loads one script)."""
    from server.entry import aml

    # The reference's rawhttp marker is process-global.
    monkeypatch.setattr(aml, "_raw_http_requested", False)
    sys.modules.pop("entry_module", None)
    # inference-schema registers decorated functions by module and name, and every
    # script loads as "entry_module": forget the previous test's script.
    from inference_schema import schema_util

    vars(schema_util)["__functions_schema__"].clear()


def load_script(name: str) -> object:
    """Load ``tests/scripts/<name>`` in this process and run its init()."""
    from server.entry.script import EntryScript

    script = EntryScript(str(SCRIPTS / name), str(ROOT))
    script.load()
    script.call_init()
    return script
