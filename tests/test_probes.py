"""Probes as the reference means them, and the separate health listener.

``GET /`` is ``200 Healthy`` only once a worker finished ``init()``; 503 before and while
draining. ``SEPERATE_HEALTH_ENDPOINT=true`` adds a listener on the health port that answers
the probes (and nothing else), even while ``run()`` is hung.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any, cast

import plain_http
import pytest

from server.http.app import create_app
from server.settings import Settings


class _FakePool:
    """The pool as the probes see it."""

    def __init__(self, ready: bool, live: bool = True) -> None:
        self._ready = ready
        self._live = live
        # What the app hangs its metrics hooks on.
        self.worker_env: dict[str, str] | None = None
        self.monitor: Any = None
        self.on_answer: Any = None

    def ready(self) -> bool:
        return self._ready

    def live(self) -> bool:
        return self._live

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self._ready, "live": self._live, "draining": False, "detail": []}
        if not self._ready:
            out["message"] = "Server is starting: init() has not finished yet."
        return out


async def _get(app: Any, path: str, port: int, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
        "server": ("127.0.0.1", port), "client": ("127.0.0.1", 40000),
    }  # fmt: skip
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], body, headers


@pytest.mark.parametrize("ready", [True, False])
def test_root_follows_readiness(ready: bool) -> None:
    app = create_app(Settings(), cast(Any, _FakePool(ready)), manage_pool=False)
    status, body, headers = asyncio.run(_get(app, "/", 5001))
    assert (status, body) == ((200, b"Healthy") if ready else (503, b"Unhealthy"))
    assert ready or headers["retry-after"] == "1"
    # liveness is not readiness: a starting server is alive
    assert asyncio.run(_get(app, "/health/live", 5001))[0] == 200
    assert asyncio.run(_get(app, "/health/ready", 5001))[0] == (200 if ready else 503)


def test_health_port_serves_probes_only() -> None:
    app = create_app(Settings(), cast(Any, _FakePool(True)), manage_pool=False, health_port=5000)
    for path in ("/", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        assert asyncio.run(_get(app, path, 5000))[0] == 200, path
    status, body, _ = asyncio.run(_get(app, "/score", 5000, "POST"))
    assert status == 404 and b"not found" in body
    assert asyncio.run(_get(app, "/swagger.json", 5000))[0] == 404
    assert asyncio.run(_get(app, "/", 5000, "POST"))[0] == 405
    # the main port still routes everything (the fake pool cannot score, but the route is there)
    assert asyncio.run(_get(app, "/", 5001))[0] == 200


@pytest.mark.slow
def test_root_is_503_until_init_finished_then_200(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("slow_init.py", ready=False, SLOW_INIT_S="2")
    with server.client(timeout=2) as client:
        root = client.get("/")
        assert root.status_code == 503 and root.text == "Unhealthy" and root.headers["retry-after"] == "1"
        assert client.get("/health/live").status_code == 200
        server.wait_ready(timeout=15)
        root = client.get("/")
        assert root.status_code == 200 and root.text == "Healthy"


@pytest.mark.slow
def test_root_is_503_while_draining(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", SCOREHOST_SHUTDOWN_DELAY_S="1.5")
    with server.client(timeout=2) as client:
        assert client.get("/").status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("readiness is 503 now")
        root = client.get("/")
        assert root.status_code == 503 and root.text == "Unhealthy"
        assert client.get("/health/live").status_code == 200  # still alive, still serving
    assert server.wait_exit(timeout=15) == 0


def _health_url(server: Any) -> str:
    line = server.wait_for_log(r"Health probes on http://")
    return "http://" + line.split("http://", 1)[1].strip()


@pytest.mark.slow
def test_separate_health_port_answers_during_init(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "slow_init.py", ready=False, SLOW_INIT_S="2", SEPERATE_HEALTH_ENDPOINT="true", HEALTH_PORT="0"
    )
    health = _health_url(server)
    assert health != server.url
    with plain_http.client(base_url=health, timeout=2) as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/").status_code == 503
        server.wait_ready(timeout=15)
        assert client.get("/").text == "Healthy"
        assert client.get("/health/ready").json()["ready"] is True
        assert client.post("/score", json={}).status_code == 404  # the probes only
    assert "Create dedicated endpoint for health: true" in server.log
    assert f"Health Port: {health.rsplit(':', 1)[1]}" in server.log


@pytest.mark.slow
def test_health_port_answers_while_run_is_hung(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "sleeper.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1", SCORING_TIMEOUT_MS="8000",
        SCOREHOST_WEDGED_AFTER_MS="60000", SEPERATE_HEALTH_ENDPOINT="true", HEALTH_PORT="0",
    )  # fmt: skip
    health = _health_url(server)

    def hang() -> None:
        with plain_http.client(base_url=server.url, timeout=15) as c:
            c.post("/score", json={"sleep_ms": 3000, "mode": "gil"})

    hung = threading.Thread(target=hang)
    hung.start()
    time.sleep(0.3)
    latencies = []
    with plain_http.client(base_url=health, timeout=2) as client:
        for _ in range(50):
            t = time.perf_counter()
            assert client.get("/").status_code == 200
            assert client.get("/health/live").status_code == 200
            latencies.append(time.perf_counter() - t)
    assert max(latencies) < 0.5, latencies
    hung.join(15)


@pytest.mark.slow
def test_busy_health_port_is_one_clear_line(start_server) -> None:  # type: ignore[no-untyped-def]
    first = start_server("echo.py", SEPERATE_HEALTH_ENDPOINT="true", HEALTH_PORT="0")
    taken = _health_url(first).rsplit(":", 1)[1]
    from conftest import SCRIPTS, launch

    second = launch(
        env={"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py"), "SEPERATE_HEALTH_ENDPOINT": "true",
             "HEALTH_PORT": taken},
        wait_listening=False,
    )  # fmt: skip
    assert second.wait_exit(timeout=20) == 3
    time.sleep(0.2)
    assert f"Cannot listen on 127.0.0.1:{taken} (health port): the port is already in use" in second.log
