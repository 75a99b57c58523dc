"""A real Prometheus server (Debian's prometheus package) scrapes a live scorehost under a short
load; PromQL over its HTTP API returns the request rate and the utilisation gauge, and they agree
with what the load generator sent. Everything listens on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import plain_http
import pytest

pytestmark = pytest.mark.slow

SLOTS = 4
CLIENTS = 2  # each keeps one call in flight: utilisation CLIENTS / SLOTS
SLEEP_MS = 100
LOAD_S = 8.0


def _prometheus() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing on CI: scripts/test.sh installs Debian's prometheus package")
        pytest.skip("no prometheus binary: apt-get install prometheus (scripts/test.sh does, as root)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(api: str, expr: str, at: float) -> float:
    reply = plain_http.get(f"{api}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"}, timeout=10).json()
    assert reply["status"] == "success", reply
    result = reply["data"]["result"]
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_prometheus_scrapes_rate_and_utilisation(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    binary = _prometheus()
    server = start_server("sleeper.py", SCOREHOST_MAX_CONCURRENT_REQUESTS=str(SLOTS))
    target = server.url.removeprefix("http://")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: scorehost\n    static_configs:\n      - targets: ['{target}']\n"
    )
    api = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_scraping(api, prom, tmp_path)
        sent, started, ended = _load(server.url)
        time.sleep(2.5)  # a scrape after the last request
        rate_window = int(ended - started) - 2
        mid = started + 1 + rate_window
        client_rate = sent / (ended - started)
        rate = _query(api, f'rate(scorehost_requests_total{{route="/score",status="200"}}[{rate_window}s])', mid)
        utilisation = _query(api, f"avg_over_time(scorehost_utilization[{rate_window}s])", mid)
        counted = _query(api, 'scorehost_requests_total{route="/score",status="200"}', time.time())
        slots = _query(api, "scorehost_slots", time.time())
    finally:
        prom.terminate()
        prom.wait(15)
        log.close()
    assert counted == sent  # every request the generator sent, and no other
    assert slots == SLOTS
    assert abs(rate - client_rate) <= 0.2 * client_rate, (rate, client_rate)
    assert abs(utilisation - CLIENTS / SLOTS) <= 0.15, utilisation


def _wait_scraping(api: str, prom: subprocess.Popen[Any], tmp_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if prom.poll() is not None:
            raise AssertionError((tmp_path / "prometheus.log").read_text())
        try:
            targets = plain_http.get(f"{api}/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
            if targets and targets[0]["health"] == "up":
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError("prometheus did not scrape scorehost:\n" + (tmp_path / "prometheus.log").read_text())


def _load(url: str) -> tuple[int, float, float]:
    """CLIENTS closed loops of SLEEP_MS calls for LOAD_S seconds: (requests sent, start, end) in wall time."""
    sent = [0] * CLIENTS
    started = time.time()
    stop = started + LOAD_S

    def client(i: int) -> None:
        with plain_http.client(base_url=url, timeout=10) as c:
            while time.time() < stop:
                assert c.post("/score", json={"sleep_ms": SLEEP_MS}).status_code == 200
                sent[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent), started, time.time()
