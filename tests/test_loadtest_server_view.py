"""Load-test reports carry the server's own view: /metrics scraped before and after a profile."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from loadtests import server_metrics

TEXT = """\
# TYPE scorehost_queue_wait_seconds histogram
scorehost_queue_wait_seconds_bucket{le="0.001"} %d
scorehost_queue_wait_seconds_bucket{le="0.002"} %d
scorehost_queue_wait_seconds_bucket{le="+Inf"} %d
scorehost_queue_wait_seconds_sum %f
scorehost_queue_wait_seconds_count %d
# TYPE scorehost_requests counter
scorehost_requests_total{route="/score",method="POST",status="200"} %d
scorehost_requests_total{route="/health/live",method="GET",status="200"} 7
"""


def test_percentiles_of_the_difference_of_two_scrapes() -> None:
    before = server_metrics.parse(TEXT % (5, 5, 5, 0.002, 5, 5))
    after = server_metrics.parse(TEXT % (55, 105, 105, 0.152, 105, 105))
    seen = server_metrics.during(before, after)
    q = seen["queue_wait"]
    # 50 calls under 1 ms and 50 between 1 and 2 ms during the run: p50 at 1 ms, p99 near 2 ms.
    assert q["count"] == 100 and q["mean_ms"] == pytest.approx(1.5)
    assert q["p50_ms"] == pytest.approx(1.0) and q["p99_ms"] == pytest.approx(1.98)
    assert seen["run"]["count"] == 0 and seen["run"]["p50_ms"] is None
    assert seen["requests_by_status"] == {"200": 100}
    assert server_metrics.quantile(0.5, {1.0: 0.0, math.inf: 4.0}) == 1.0  # all above the last bound
    table = server_metrics.markdown(seen, {"requests": 100, "p50_ms": 2.0, "p90_ms": 3.0, "p99_ms": 4.0})
    assert "| server: queue wait | 100 | 1.000 |" in table and "| client (Locust) | 100 | 2.000 |" in table


@pytest.mark.slow
def test_the_runner_reports_the_servers_view(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "loadtests.run", "steady", "--out", str(tmp_path), "--quiet", "--duration", "3",
           "--users", "4", "--no-plots"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    server, client = summary["server"], summary["overall"]
    assert server["run"]["count"] == server["queue_wait"]["count"] == server["request"]["count"] > 0
    # Locust's own requests (it may have a few more in flight when it stops).
    assert abs(server["requests_by_status"]["200"] - client["requests"]) <= 8
    assert 0 < server["run"]["p50_ms"] <= server["request"]["p99_ms"] <= client["p99_ms"] * 1.5 + 5
    report = (tmp_path / "summary.md").read_text()
    assert "## Client and server side" in report and "| server: run() (worker) |" in report
    assert "server side: queue wait p50" in proc.stdout
