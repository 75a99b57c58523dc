"""Several HTTP front processes on one port (``http_processes``): real processes on 127.0.0.1.

The parent forks the fronts; each owns an equal share of the workers, the concurrency limit and
the queue; the probes answer for every front; SIGTERM drains them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import plain_http
import pytest
from conftest import SCRIPTS, ServerHandle, launch

from server.http.fronts import drain_bound_s, shares, split
from server.http.pod import Board, FrontRole, FrontState, PodView
from server.settings import Settings

_STARTED = re.compile(r"Started HTTP front (\d+) \(pid (\d+)\)")
CLOSE = {"connection": "close"}  # a fresh connection per request: the kernel picks a front for each


def _fronts(server: ServerHandle) -> dict[int, int]:
    """Front index -> pid of its latest start, from the parent's log."""
    out: dict[int, int] = {}
    for line in list(server.lines):
        m = _STARTED.search(line)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _post(server: ServerHandle, body: dict[str, Any], timeout: float = 15.0) -> httpx.Response:
    return plain_http.post(server.url + "/score", json=body, headers=CLOSE, timeout=timeout)


def _in_threads(count: int, call: Any) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = [None] * count

    def one(i: int) -> None:
        try:
            results[i] = call()
        except Exception as exc:  # reported by the assertions on results
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    return threads, results


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.02)


# --- pure parts -------------------------------------------------------------------------------


@pytest.mark.parametrize(("total", "parts"), [(2, 2), (3, 2), (7, 3), (0, 4), (64, 64), (10_000, 7)])
def test_split_sums_exactly_and_differs_by_one_at_most(total: int, parts: int) -> None:
    got = split(total, parts)
    assert sum(got) == total and len(got) == parts and max(got) - min(got) <= 1


def test_shares_keep_every_total_and_a_slot_per_worker() -> None:
    s = Settings(workers=5, max_concurrent_requests=7, max_queue_length=9, http_processes=3, port=0)
    parts = shares(s, 4321, 4322)
    assert [p.workers for p in parts] == [2, 2, 1]
    assert sum(p.max_concurrent_requests for p in parts) == 7
    assert sum(p.max_queue_length for p in parts) == 9
    assert all(p.max_concurrent_requests >= p.workers >= 1 for p in parts)
    assert {(p.port, p.health_port, p.http_processes) for p in parts} == {(4321, 4322, 1)}
    assert drain_bound_s(s) == s.shutdown_delay_s + 2 * s.graceful_timeout_s + 10


def test_the_setting_defaults_to_one_and_needs_a_worker_per_front() -> None:
    assert Settings().http_processes == 1
    with pytest.raises(ValueError, match="needs at least as many workers"):
        Settings(http_processes=3, workers=2)


class _Pool:
    def __init__(self, ready: bool = True) -> None:
        self._ready = ready
        self.fatal: str | None = None
        self.draining = False

    def ready(self) -> bool:
        return self._ready and not self.draining

    def live(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready(), "live": True}


def test_pod_view_is_ready_only_when_every_front_is_and_live_unless_one_failed() -> None:
    board = Board(2)
    pool = _Pool()
    view = PodView(FrontRole(0, board), pool)  # type: ignore[arg-type]
    assert not view.ready() and board.get(0) is FrontState.READY  # front 1 still starting
    assert view.status()["fronts"] == ["ready", "starting"]
    board.set(1, FrontState.READY)
    assert view.ready() and view.live() and view.status()["ready"]
    board.set(1, FrontState.FAILED)
    assert not view.live() and not view.status()["live"]
    board.set(1, FrontState.READY)
    pool.draining = True
    assert not view.ready() and view.publish() is FrontState.DRAINING


# --- real servers ------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_front_by_default_means_no_parent(start_server: Any) -> None:
    server = start_server("ppid.py")
    assert _post(server, {}).json()["ppid"] == server.proc.pid  # the workers' parent is the process started
    assert "HTTP front" not in server.log


@pytest.mark.slow
def test_two_fronts_share_the_port_and_both_serve(start_server: Any) -> None:
    server = start_server(
        "ppid.py", SCOREHOST_HTTP_PROCESSES="2", SCOREHOST_WORKERS="2",
        SEPERATE_HEALTH_ENDPOINT="true", SCOREHOST_HEALTH_PORT="0",
    )  # fmt: skip
    fronts = _fronts(server)
    assert sorted(fronts) == [0, 1] and all(_parent_of(pid) == server.proc.pid for pid in fronts.values())
    seen = set()
    for _ in range(24):  # 24 fresh connections: both fronts, but for a 2**-23 chance
        response = _post(server, {})
        assert response.status_code == 200
        seen.add(response.json()["ppid"])
    assert seen == set(fronts.values())
    assert len([ln for ln in server.lines if "Listening on" in ln]) == 1
    # The health port (0: the parent picked it, once) is shared the same way.
    health = int(re.findall(r"Health probes on http://127.0.0.1:(\d+)", server.log)[0])
    for _ in range(6):
        answer = plain_http.get(f"http://127.0.0.1:{health}/health/ready", headers=CLOSE, timeout=5)
        assert answer.json()["fronts"] == ["ready", "ready"]
        assert plain_http.post(f"http://127.0.0.1:{health}/score", headers=CLOSE, timeout=5).status_code == 404
    assert re.search(r"front 1 of 2, pid \d+\): 1 worker", server.log)


@pytest.mark.slow
def test_the_concurrency_limit_holds_across_fronts(start_server: Any, tmp_path: Path) -> None:
    server = start_server(
        "ppid.py", COUNT_DIR=str(tmp_path), SCOREHOST_HTTP_PROCESSES="2", SCOREHOST_WORKERS="2",
        SCOREHOST_MAX_CONCURRENT_REQUESTS="2", SCOREHOST_MAX_QUEUE_LENGTH="0",
    )  # fmt: skip
    threads, results = _in_threads(8, lambda: _post(server, {"sleep_ms": 2000}))
    for t in threads:
        t.join(30)
    statuses = [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    refused = [r for r in results if r.status_code == 503]
    assert all("already waiting" in r.text for r in refused), [r.text for r in refused]
    seen = [int(n) for n in (tmp_path / "seen").read_text().split()]
    assert len(seen) == statuses.count(200) and max(seen) <= 2, seen  # every run() call, never 3 at once


@pytest.mark.slow
def test_readiness_waits_for_every_front_and_a_killed_front_is_restarted(start_server: Any, tmp_path: Path) -> None:
    server = start_server(
        "staggered_init.py", ready=False, INIT_DIR=str(tmp_path), SLOW_INIT_S="2.5",
        SCOREHOST_HTTP_PROCESSES="2", SCOREHOST_WORKERS="2",
    )  # fmt: skip
    server.wait_for_log(r"Worker 0 is ready", timeout=20)  # one front is ready, the other in init()
    for _ in range(4):  # whichever front answers
        ready = plain_http.get(server.url + "/health/ready", headers=CLOSE, timeout=5)
        assert ready.status_code == 503 and sorted(ready.json()["fronts"]) == ["ready", "starting"], ready.text
        assert plain_http.get(server.url + "/", headers=CLOSE, timeout=5).status_code == 503
        assert plain_http.get(server.url + "/health/live", headers=CLOSE, timeout=5).status_code == 200
    server.wait_ready(timeout=20)
    for _ in range(6):
        assert plain_http.get(server.url + "/health/ready", headers=CLOSE, timeout=5).json()["fronts"] == ["ready"] * 2
        assert plain_http.get(server.url + "/", headers=CLOSE, timeout=5).text == "Healthy"

    victim = _fronts(server)[1]
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log(rf"HTTP front 1 \(pid {victim}\) was killed by SIGKILL; restarting", timeout=10)
    _wait_for(lambda: _fronts(server)[1] != victim, 10, "front 1 restarted")
    # Its new worker sleeps in init() again: the pod is not ready meanwhile, then ready again.
    assert plain_http.get(server.url + "/health/ready", headers=CLOSE, timeout=5).status_code == 503
    server.wait_ready(timeout=20)
    assert _parent_of(_fronts(server)[1]) == server.proc.pid


@pytest.mark.slow
def test_sigterm_to_the_parent_drains_every_front(start_server: Any, tmp_path: Path) -> None:
    server = start_server(
        "ppid.py", COUNT_DIR=str(tmp_path), SCOREHOST_HTTP_PROCESSES="2", SCOREHOST_WORKERS="2",
        SCOREHOST_MAX_CONCURRENT_REQUESTS="32",
    )  # fmt: skip
    fronts = set(_fronts(server).values())
    port = int(server.url.rsplit(":", 1)[1])
    threads, results = _in_threads(16, lambda: _post(server, {"sleep_ms": 2500}))

    def running() -> int:
        return sum(1 for p in tmp_path.iterdir() if p.name.startswith("running-"))

    _wait_for(lambda: running() == 16, 10, "16 calls running")
    stopped_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    _wait_for(refused, 2.0, "new connections refused")
    assert running() > 0  # refused while requests were still in flight
    for t in threads:
        t.join(30)
    assert [r.status_code if isinstance(r, httpx.Response) else repr(r) for r in results] == [200] * 16
    assert {r.json()["ppid"] for r in results} == fronts  # in flight on both fronts (but for a 2**-15 chance)
    assert server.wait_exit(timeout=15) == 0
    assert time.monotonic() - stopped_at < 10
    server.wait_for_log("Stopped: all 2 HTTP fronts exited")


@pytest.mark.slow
def test_start_up_errors_are_one_line_and_an_exit_code() -> None:
    script = {"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "ppid.py")}
    handle = launch(env={**script, "SCOREHOST_HTTP_PROCESSES": "2"}, wait_listening=False)
    assert handle.wait_exit(timeout=20) == 2
    time.sleep(0.1)
    assert "http_processes (2) needs at least as many workers (1)" in handle.log
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        env = {**script, "SCOREHOST_HTTP_PROCESSES": "2", "SCOREHOST_WORKERS": "2", "SCOREHOST_PORT": port}
        handle = launch(env=env, wait_listening=False)
        assert handle.wait_exit(timeout=20) == 3
    time.sleep(0.1)
    assert f"Cannot listen on 127.0.0.1:{port}: the port is already in use" in handle.log
    assert "HTTP front" not in handle.log  # nothing was started


@pytest.mark.slow
def test_metrics_answer_for_every_front(start_server: Any) -> None:
    # A scrape reaches one front; it must not show that front's counters alone (they would jump
    # between the fronts' values, which Prometheus reads as resets).
    from prometheus_client.parser import text_string_to_metric_families

    server = start_server("ppid.py", SCOREHOST_HTTP_PROCESSES="2", SCOREHOST_WORKERS="2")
    index_of = {pid: index for index, pid in _fronts(server).items()}
    served = {0: 0, 1: 0}
    for _ in range(16):
        served[index_of[_post(server, {}).json()["ppid"]]] += 1
    for _ in range(4):  # fresh connections: whichever front answers, it answers for both
        text = plain_http.get(server.url + "/metrics", headers=CLOSE, timeout=10).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        up = {s.labels["front"]: s.value for s in samples if s.name == "scorehost_front_up"}
        assert up == {"0": 1.0, "1": 1.0}
        scored = {
            s.labels["front"]: s.value
            for s in samples
            if s.name == "scorehost_requests_total" and s.labels.get("route") == "/score"
        }
        assert scored == {"0": float(served[0]), "1": float(served[1])}
        assert all("front" in s.labels for s in samples)
