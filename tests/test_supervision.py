"""Supervision: the restart rule, workers dying with their parent, secrets kept out of workers."""

from __future__ import annotations

import os
import signal
import time

import httpx
import plain_http
import pytest

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc; Linux only, like the feature under test)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_crash_after_serving_restarts_at_once_a_burst_backs_off(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("crasher.py")
    with server.client() as c:
        assert c.post("/score", json={}).status_code == 200
        assert c.post("/score", json={"crash": True}).status_code == 500
        server.wait_for_log(r"restarting in 0\.0 s", timeout=5)
        assert c.get("/health/live").status_code == 200
        server.wait_ready(timeout=20)
        # Crashing again with nothing served in between is a burst: back-off applies.
        assert c.post("/score", json={"crash": True}).status_code == 500
        server.wait_for_log(r"restarting in 0\.5 s", timeout=5)
        assert c.get("/health/live").status_code == 200  # restarting is not dead
        server.wait_ready(timeout=20)
        assert c.post("/score", json={}).status_code == 200


def test_intermittent_crashes_do_not_take_the_server_down(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("crasher.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1")
    ok = crashed = 0
    with server.client() as c:
        for i in range(60):
            body = {"crash": True} if i % 10 == 9 else {}
            status = c.post("/score", json=body).status_code
            if status == 200:
                ok += 1
            elif body:
                crashed += 1
            if body:
                server.wait_ready(timeout=20)
            assert c.get("/health/live").status_code == 200
    # Every crash after serving restarts at once; every normal request after it succeeds.
    assert crashed == 6 and ok == 54
    assert "restarting in 0.5" not in server.log


def test_worker_dies_with_its_parent(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("sleeper.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1")
    (worker,) = children(server.proc.pid)
    # run() stuck in one C call that holds the GIL: the worker's loop cannot notice anything.
    with pytest.raises(httpx.HTTPError):
        plain_http.post(server.url + "/score", json={"sleep_ms": 60000, "mode": "gil"}, timeout=0.5)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)
    deadline = time.monotonic() + 5
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker)


def test_secrets_never_reach_the_worker(start_server) -> None:  # type: ignore[no-untyped-def]
    secret = "k3y-that-must-stay-in-the-http-process"
    server = start_server("env_dump.py", SCOREHOST_API_KEY=secret)
    with server.client() as c:
        seen = c.post("/score", content=b"{}", headers={"Authorization": f"Bearer {secret}"}).json()
    assert secret not in repr(seen["environ"]) and secret not in seen["proc_environ"]
    assert "SCOREHOST_WORKER_SETTINGS" not in seen["environ"]  # read once, then dropped


def test_probes_give_states_and_counts_only(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py")
    with server.client() as c:
        status = c.get("/health/ready").json()
    assert "pid" not in repr(status) and str(children(server.proc.pid)[0]) not in repr(status)
