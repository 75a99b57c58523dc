"""Fixtures for the container tests: the engine, the image builds, containers cleaned up.

The tests run unchanged against any Docker engine: CI's private one (``source .ci/docker-up.sh``
exports DOCKER_HOST) or an ordinary one that can pull ``python:3.11-slim-bookworm``. Containers
run with ``--network none`` and are probed with ``docker exec``, so nothing listens on the host,
which works the same with or without a bridge network. Every docker call has a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
LABEL = "io.scorehost.test"
# Tags of their own, so a test run never replaces images someone tagged scorehost:cpu by hand.
CPU_IMAGE = "scorehost-test:cpu"
GPU_IMAGE = "scorehost-test:gpu"
BAKED_IMAGE = "scorehost-test:baked"
BUILD_TIMEOUT_S = 900  # a cold GPU build downloads ~2.5 GB; measured 50 s on CI-like machines


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args[:3])}... exited {result.returncode}:\n{result.stdout[-3000:]}"
            f"\n{result.stderr[-3000:]}"
        )
    return result


def _no_engine(reason: str) -> NoReturn:
    # .ci/docker-up.sh sets SCOREHOST_TEST_REQUIRE_DOCKER=1: in CI a missing engine is a failure,
    # not a quiet skip of the whole container stage.
    if os.environ.get("SCOREHOST_TEST_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (SCOREHOST_TEST_REQUIRE_DOCKER=1)", pytrace=False)
    pytest.skip(f"{reason}; CI starts one with `source .ci/docker-up.sh`")


@pytest.fixture(scope="session")
def engine() -> None:
    """Skip (with the reason) unless a Docker engine answers."""
    if shutil.which("docker") is None:
        _no_engine("no docker CLI on PATH")
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        _no_engine("no Docker engine reachable: `docker info` did not answer within 30 s")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no output"])[-1]
        _no_engine(f"no Docker engine reachable (`docker info` failed: {reason})")


def build(tag: str, dockerfile: Path, context: Path, *build_args: str) -> float:
    """Build an image; return the seconds it took. `--network host`: CI's engine has no bridge."""
    args = [arg for pair in build_args for arg in ("--build-arg", pair)]
    started = time.monotonic()
    docker(
        "build",
        "--network",
        "host",
        "-f",
        str(dockerfile),
        "-t",
        tag,
        *args,
        str(context),
        timeout=BUILD_TIMEOUT_S,
    )
    return time.monotonic() - started


def image_size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip()) / 1e6


@pytest.fixture(scope="session")
def cpu_image(engine: None) -> Iterator[str]:
    seconds = build(CPU_IMAGE, ROOT / "Dockerfile.cpu", ROOT)
    print(f"\n{CPU_IMAGE}: built in {seconds:.1f} s, {image_size_mb(CPU_IMAGE):.0f} MB")
    yield CPU_IMAGE


@pytest.fixture(scope="session")
def gpu_image(engine: None) -> Iterator[str]:
    seconds = build(GPU_IMAGE, ROOT / "Dockerfile.gpu", ROOT)
    print(f"\n{GPU_IMAGE}: built in {seconds:.1f} s, {image_size_mb(GPU_IMAGE):.0f} MB")
    yield GPU_IMAGE


@pytest.fixture(scope="session")
def baked_image(cpu_image: str) -> Iterator[str]:
    build(
        BAKED_IMAGE,
        ROOT / "examples" / "bake" / "Dockerfile",
        ROOT / "examples",
        f"SCOREHOST_IMAGE={cpu_image}",
    )
    yield BAKED_IMAGE


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A world-readable copy of examples/ and tests/scripts/ to mount as the app root.

    A copy because the container's user (uid 10001) must be able to read it whatever the
    checkout's permissions are, and a read-only mount proves the server writes nothing there.
    """
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples", app, ignore=shutil.ignore_patterns("__pycache__", "bake"))
    for script in (ROOT / "tests" / "scripts").glob("*.py"):
        shutil.copy(script, app / script.name)
    for path in [app, *app.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return app


@dataclass
class Container:
    id: str

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(docker("inspect", self.id).stdout)
        return data[0]

    def logs(self) -> str:
        result = docker("logs", self.id, check=False)
        return result.stdout + result.stderr

    def exec(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.id, *args, timeout=timeout, check=False)

    def write(self, target: str, data: str) -> None:
        """Put a file into the running container (through ``docker exec -i``: no mount needed)."""
        result = subprocess.run(
            ["docker", "exec", "-i", self.id, "sh", "-c", 'cat > "$0"', target],
            input=data,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until docker reports `healthy`; fails at once if the container exits."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = self.inspect()["State"]
            if state["Status"] != "running":
                raise AssertionError(f"container {state['Status']} (exit {state['ExitCode']}):\n{self.logs()}")
            if state.get("Health", {}).get("Status") == "healthy":
                return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(f"not healthy within {timeout} s: {self.inspect()['State']}\n{self.logs()}")

    def wait_exit(self, timeout: float) -> int:
        result = docker("wait", self.id, timeout=timeout)
        return int(result.stdout.strip())


@pytest.fixture
def run_container(engine: None) -> Iterator[Callable[..., Container]]:
    """Start detached containers (``--network none``); all are removed after the test."""
    started: list[str] = []

    def run(image: str, *args: str, health_interval: str = "1s") -> Container:
        name = f"scorehost-test-{uuid.uuid4().hex[:10]}"
        # The image's own HEALTHCHECK command, polled every second instead of every 10 s so the
        # test does not sit out the production interval.
        cid = docker(
            "run", "-d", "--name", name, "--label", LABEL, "--network", "none",
            "--health-interval", health_interval, *args, image,
        ).stdout.strip()  # fmt: skip
        started.append(cid)
        return Container(cid)

    yield run
    if started:
        docker("rm", "-f", *started, check=False, timeout=60)
