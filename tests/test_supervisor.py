"""Real-server tests for start-up, probes, keep-alive and shutdown (subprocess on 127.0.0.1)."""

from __future__ import annotations

import json
import signal
import socket
import statistics
import threading
import time

import httpx
import plain_http
import pytest
from conftest import EXAMPLES, SCRIPTS, launch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("bad_init.py", "boom in init"),
        ("syntax_error.py", "SyntaxError"),
        ("no_run.py", "does not define a run() function"),
        ("does_not_exist.py", "Entry script not found"),
    ],
)
def test_broken_script_exits_nonzero_quickly_with_reason(script: str, expected: str) -> None:
    started = time.monotonic()
    handle = launch(
        env={"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / script), "AZUREML_MODEL_DIR": str(EXAMPLES)}, wait_listening=False
    )
    code = handle.wait_exit(timeout=20)
    elapsed = time.monotonic() - started
    time.sleep(0.2)  # let the log pump drain
    assert code == 3, handle.log
    assert expected in handle.log
    assert elapsed < 10
    if script == "bad_init.py":
        assert "Traceback" in handle.log
        assert "Model directory tree" in handle.log and "model.onnx" in handle.log


def test_invalid_setting_is_one_clear_line() -> None:
    handle = launch(
        env={"SCORING_TIMEOUT_MS": "soon", "AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py")}, wait_listening=False
    )
    assert handle.wait_exit(timeout=20) == 2
    time.sleep(0.2)
    lines = [line for line in handle.lines if line.strip()]
    assert len(lines) == 1, handle.log
    assert "scoring_timeout_ms" in lines[0] and "SCOREHOST_SCORING_TIMEOUT_MS" in lines[0]


def test_probes_answer_during_slow_init(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("slow_init.py", ready=False, SLOW_INIT_S="3")
    latencies = []
    with server.client(timeout=2) as client:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            t = time.perf_counter()
            live = client.get("/health/live")
            ready = client.get("/health/ready")
            latencies.append(time.perf_counter() - t)
            assert live.status_code == 200
            assert ready.status_code == 503
            assert ready.headers["retry-after"] == "1"
            assert "init() has not finished" in ready.json()["message"]
            root = client.get("/")  # the reference's probe: healthy once init() is done
            assert root.status_code == 503 and root.text == "Unhealthy"
            score = client.post("/score", content=b"{}")
            assert score.status_code == 503 and "Retry-After" in score.headers
        server.wait_ready(timeout=10)
        assert client.get("/").text == "Healthy"
        assert client.post("/score", content=b"{}").json() == {"ok": True}
    assert max(latencies) < 0.1, latencies


def test_keep_alive_reuses_one_connection(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py")
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for i in range(3):
            body = json.dumps({"i": i}).encode()
            sock.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(
                next(
                    v
                    for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                    if k.lower() == b"content-length"
                )
            )
            while len(rest) < length:
                rest += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200")
            assert b"connection: close" not in head.lower()
            assert json.loads(json.loads(rest)) == {"i": i}


def test_sigterm_flips_readiness_then_drains_in_flight(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("sleeper.py", SCOREHOST_SHUTDOWN_DELAY_S="1.0", SCOREHOST_MAX_CONCURRENT_REQUESTS="8")
    results: list[int] = []

    def slow_call() -> None:
        with plain_http.client(base_url=server.url, timeout=10) as c:
            results.append(c.post("/score", json={"sleep_ms": 1500}).status_code)

    threads = [threading.Thread(target=slow_call) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    with server.client(timeout=2) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["draining"] is True
        # Still serving during the delay, so load balancers have time to notice.
        assert client.post("/score", json={"sleep_ms": 0}).status_code == 200
    for t in threads:
        t.join(10)
    assert server.wait_exit(timeout=15) == 0
    assert results == [200] * 6
    assert "Draining" in server.log


def test_sigterm_under_load_completes_every_request(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "sleeper.py",
        SCOREHOST_SHUTDOWN_DELAY_S="0.5",
        SCOREHOST_MAX_CONCURRENT_REQUESTS="4",
        SCOREHOST_MAX_QUEUE_WAIT_MS="5000",
    )
    statuses: list[int] = []
    errors: list[tuple[float, str]] = []  # (when the failed request started, its error)
    stop_at = time.monotonic() + 1.0

    def loop() -> None:
        with plain_http.client(base_url=server.url, timeout=10) as c:
            while time.monotonic() < stop_at:
                started = time.monotonic()
                try:
                    statuses.append(c.post("/score", json={"sleep_ms": 50}).status_code)
                except httpx.HTTPError as exc:
                    errors.append((started, type(exc).__name__))
                    return

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.4)
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(15)
    assert server.wait_exit(timeout=15) == 0
    assert statuses and set(statuses) == {200}, statuses
    # Every request made before SIGTERM or in the 0.5 s that follow is answered: nothing in flight
    # is dropped. Only requests made as the listener closes may fail: refused, or reset when their
    # new connection was still in the kernel's accept queue (the client then sees ReadError or
    # WriteError, or RemoteProtocolError, for a request the server never read).
    assert all(started >= sigterm_at + 0.25 for started, _ in errors), (sigterm_at, errors)
    assert {name for _, name in errors} <= {"ConnectError", "RemoteProtocolError", "ReadError", "WriteError"}, errors


def test_probe_latency_under_saturation_and_hung_call(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "sleeper.py",
        SCOREHOST_MAX_CONCURRENT_REQUESTS="2",
        SCORING_TIMEOUT_MS="8000",
        SCOREHOST_WEDGED_AFTER_MS="60000",
    )

    # One slot hung in a C call that holds the GIL, the other busy sleeping.
    def call(payload: dict[str, object]) -> None:
        with plain_http.client(base_url=server.url, timeout=15) as c:
            c.post("/score", json=payload)

    hung = threading.Thread(target=call, args=({"sleep_ms": 4000, "mode": "gil"},))
    busy = threading.Thread(target=call, args=({"sleep_ms": 4000},))
    hung.start()
    busy.start()
    time.sleep(0.3)
    latencies = []
    with server.client(timeout=2) as client:
        assert client.get("/health/ready").json()["in_flight"] == 2
        for _ in range(200):
            t = time.perf_counter()
            assert client.get("/health/live").status_code == 200
            assert client.get("/health/ready").status_code == 200
            latencies.append((time.perf_counter() - t) / 2)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.010, f"p99 {p99 * 1000:.2f} ms, median {statistics.median(latencies) * 1000:.2f} ms"
    hung.join(15)
    busy.join(15)


def test_cli_probe_command(start_server) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    server = start_server("echo.py")
    port = server.url.rsplit(":", 1)[1]
    ok = subprocess.run([sys.executable, "-m", "server", "probe", "--port", port], timeout=10)
    assert ok.returncode == 0
    bad = subprocess.run(
        [sys.executable, "-m", "server", "probe", "--port", port, "--path", "/nope"], timeout=10, capture_output=True
    )
    assert bad.returncode == 1


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_sigterm_releases_the_port_at_once(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", SCOREHOST_SHUTDOWN_DELAY_S="0")
    port = int(server.url.rsplit(":", 1)[1])
    with server.client(timeout=2) as client:  # an idle keep-alive connection must not hold it
        assert client.get("/").status_code == 200
        assert not _port_is_free(port)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        while not _port_is_free(port):
            assert time.monotonic() - started < 2.0, server.log
            time.sleep(0.002)
        released = time.monotonic() - started
    assert released < 0.2, f"port released after {released * 1000:.0f} ms"
    assert server.wait_exit(timeout=15) == 0


def test_busy_port_exits_at_once_with_one_line(start_server) -> None:  # type: ignore[no-untyped-def]
    first = start_server("echo.py")
    port = first.url.rsplit(":", 1)[1]
    started = time.monotonic()
    second = launch(
        env={"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py"), "SCOREHOST_PORT": port}, wait_listening=False
    )
    assert second.wait_exit(timeout=20) == 3
    elapsed = time.monotonic() - started
    time.sleep(0.2)
    lines = [line for line in second.lines if line.strip()]
    assert len(lines) == 1, second.log
    assert f"Cannot listen on 127.0.0.1:{port}: the port is already in use" in lines[0]
    assert elapsed < 5, elapsed
    with first.client() as client:  # the first server is untouched
        assert client.get("/health/ready").status_code == 200


def test_banner_names_the_reference_settings(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "echo.py",
        WORKER_TIMEOUT="20",
        SCORING_TIMEOUT_MS="5000",
        AML_CORS_ORIGINS="https://a.example",
        AML_APP_INSIGHTS_KEY="not-a-uuid",
        AML_APP_INSIGHTS_ENABLED="true",
    )
    port = server.url.rsplit(":", 1)[1]
    log = server.log
    block = log[log.index("Server Settings") : log.index("Listening on")]
    expected = [
        "Server Settings",
        "---------------",
        f"Entry Script Name: {SCRIPTS / 'echo.py'}",
        "Model Directory: None",
        "Config File: None",
        "Worker Count: 1",
        "Worker Timeout (seconds): 20",
        f"Server Port: {port}",
        f"Health Port: {port}",
        "Application Insights Enabled: false",  # the key is not a UUID: off, as the reference decides
        "Application Insights Key: AppInsights key provided",
        "Inferencing HTTP server version: scorehost/",
        "CORS for the specified origins: Enabling CORS for https://a.example",
        "Create dedicated endpoint for health: None",
        "",
        "",
        "Server Routes",
        "---------------",
        f"Liveness Probe: GET   127.0.0.1:{port}/",
        f"Score:          POST  127.0.0.1:{port}/score",
    ]
    got = block.splitlines()
    assert len(got) >= len(expected), block
    for want, line in zip(expected, got, strict=False):
        assert line.startswith(want), (want, line)
    assert "not-a-uuid" not in log
    # our one-line summary comes first
    assert log.index("scorehost 0.") < log.index("Server Settings")
