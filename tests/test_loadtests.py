"""Load-test profiles (loadtests/), the compare pipeline and the transfer benchmark.

The fast tests check the pure parts: stages, Zipf weights, generated bodies, and that
each profile's checks really fail on bad data. The ``slow`` tests run every profile for
a few seconds through the real runner (``python -m loadtests.run``) against a local
scorehost serving what the profile needs (the example, the sleeper, the token
streamer), and assert that the profile produced requests and that its own expectations
held; one short transfer run checks loadtests/transfer.py. All of them together take
about a minute on 2 cores. Thresholds in the smoke runs are looser than the defaults:
the box is shared and the server and Locust are not pinned here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# loadtests/ is not an installed package (only server/ is); a bare `pytest` does not put
# the repository root on sys.path the way `python -m pytest` does.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtests import analysis, batching, checks, payloads, profiles, transfer  # noqa: E402
from loadtests.recorder import FLAG_INVALID_BODY, FLAG_NO_RETRY_AFTER, Recorder  # noqa: E402

# --- fast: pure parts ------------------------------------------------------------------


def test_stages_follow_each_profile() -> None:
    spike = profiles.stages(
        profiles.LoadConfig.build({"profile": "spike", "base_s": 2, "spike_s": 3, "recovery_s": 4, "spike_users": 150})
    )
    assert [(s.label, s.users, s.seconds) for s in spike] == [("base", 4, 2), ("spike", 150, 3), ("recovery", 4, 4)]
    ramp = profiles.LoadConfig.build({"profile": "ramp", "start_users": 2, "step_users": 5, "max_users": 17})
    assert profiles.ramp_user_counts(ramp) == [2, 7, 12, 17]
    assert ramp.user_rate == 20.0  # the ramp's own default, not the generic 0
    timeout = profiles.stages(profiles.LoadConfig.build({"profile": "timeout", "duration_s": 10}))
    assert [s.label for s in timeout] == ["baseline", "mixed"]
    assert sum(s.seconds for s in timeout) == pytest.approx(10)
    mm = profiles.stages(profiles.LoadConfig.build({"profile": "multi-model", "duration_s": 8}))
    assert [s.label for s in mm] == ["uniform", "zipf"]
    assert profiles.stage_at(mm, 3.9) == (0, mm[0])
    assert profiles.stage_at(mm, 4.1) == (1, mm[1])
    assert profiles.stage_at(mm, 8.1) is None


def test_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        profiles.LoadConfig.build({"profile": "soak"})


def test_zipf_weights() -> None:
    w = profiles.zipf_weights(5, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w == sorted(w, reverse=True)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert profiles.cumulative(w)[-1] == 1.0


def test_headers_and_api_key() -> None:
    h = profiles.parse_headers("X-A: 1; X-B: two words", api_key="k3y")
    assert h == {"X-A": "1", "X-B": "two words", "Authorization": "Bearer k3y"}


def test_v2_body_from_metadata() -> None:
    inputs = [
        {"name": "input", "datatype": "FP32", "shape": [-1, 64]},
        {"name": "ids", "datatype": "INT64", "shape": [-1, 3]},
    ]
    body = json.loads(payloads.v2_body(inputs, batch=8))
    assert [t["shape"] for t in body["inputs"]] == [[8, 64], [8, 3]]
    assert len(body["inputs"][0]["data"]) == 8 * 64
    assert all(isinstance(v, int) for v in body["inputs"][1]["data"])
    assert payloads.batch_of(payloads.v2_body(inputs, batch=3)) == 3


def test_score_bodies_and_answers() -> None:
    body = payloads.score_body(64, 64)
    assert payloads.batch_of(body) == 64
    assert payloads.score_body(1, 64) == payloads.score_body(1, 64)  # deterministic
    assert payloads.response_batch(b'{"predictions": [[1], [2]]}') == 2
    assert payloads.response_batch(b'{"outputs": [{"name": "y", "shape": [5, 2], "data": []}]}') == 5
    assert payloads.response_batch(b"not json") is None


def _run_data(rec: Recorder, profile: str, **config: Any) -> analysis.RunData:
    cfg = profiles.LoadConfig.build({"profile": profile, **config})
    meta = {
        "profile": profile,
        "config": cfg.as_dict(),
        "host": "test",
        "names": rec.names,
        "phases": rec.phases,
        "exceptions": dict(rec.exceptions),
        "t_end": max(rec.start) + 0.01,
        "models": [],
    }
    return analysis.RunData(
        meta,
        np.frombuffer(rec.start, dtype=np.float64).copy(),
        np.frombuffer(rec.latency, dtype=np.float32).astype(np.float64),
        np.frombuffer(rec.status, dtype=np.uint16).astype(np.int64),
        np.frombuffer(rec.name, dtype=np.uint16).astype(np.int64),
        np.frombuffer(rec.tag, dtype=np.int16).astype(np.int64),
        np.frombuffer(rec.flags, dtype=np.uint8).astype(np.int64),
    )


def _checks(run: analysis.RunData) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in checks.evaluate(run, analysis.summarize(run))}


def _spike_record(*, retry_after: bool, conn_errors: int, late_errors: int) -> Recorder:
    rec = Recorder()
    rec.begin(1000.0)
    rec.phases = [
        {"t": 0.0, "label": "base", "users": 4},
        {"t": 4.0, "label": "spike", "users": 200},
        {"t": 8.0, "label": "recovery", "users": 4},
    ]
    for i in range(400):  # base: fast 200s
        rec.add(1000.0 + i * 0.01, 2.0, 200, "POST /score")
    for i in range(400):  # spike: half refused
        status = 503 if i % 2 else 200
        rec.add(
            1004.0 + i * 0.01,
            5.0,
            status,
            "POST /score",
            flags=0 if retry_after or status != 503 else FLAG_NO_RETRY_AFTER,
        )
    for i in range(conn_errors):
        rec.add(1005.0 + i * 0.01, 10.0, 0, "POST /score")
    for i in range(400):  # recovery; the last part is what counts
        status = 503 if i >= 400 - late_errors else 200
        rec.add(1008.0 + i * 0.01, 2.0, status, "POST /score")
    rec.t0 = 1000.0
    return rec


def test_spike_checks_pass_and_fail() -> None:
    good = _checks(_run_data(_spike_record(retry_after=True, conn_errors=0, late_errors=0), "spike"))
    assert all(good.values()), good
    bad = _checks(_run_data(_spike_record(retry_after=False, conn_errors=3, late_errors=5), "spike"))
    assert not bad["every 503 has Retry-After"]
    assert not bad["no connection errors"]
    assert not bad["recovered after the spike"]
    assert bad["503s during the spike"]


def test_timeout_checks_catch_a_late_504() -> None:
    rec = Recorder()
    rec.begin(0.0)
    rec.phases = [{"t": 0.0, "label": "baseline", "users": 8}, {"t": 3.0, "label": "mixed", "users": 8}]
    for i in range(300):
        rec.add(i * 0.01, 2.0, 200, "POST /score [fast]")
    for i in range(300):
        rec.add(3.0 + i * 0.01, 2.0, 200, "POST /score [fast]")
    for i in range(20):
        rec.add(3.0 + i * 0.1, 205.0, 504, "POST /score [slow]")
    rec.t0 = 0.0
    ok = _checks(_run_data(rec, "timeout", timeout_ms=200))
    assert ok["504s on time"] and ok["slow requests time out"] and ok["fast requests keep their latency"], ok
    rec.add(5.0, 900.0, 504, "POST /score [slow]")  # far past timeout + slack
    rec.add(5.0, 1.0, 200, "POST /score [slow]")  # a slow request that did not time out
    late = _checks(_run_data(rec, "timeout", timeout_ms=200))
    assert not late["504s on time"]
    assert not late["slow requests time out"]


def _stream_record(*, short: int) -> Recorder:
    """Ten streams of 4 chunks as the streaming user records them; ``short`` of them cut."""
    rec = Recorder()
    rec.begin(0.0)
    rec.phases = [{"t": 0.0, "label": "streaming", "users": 2}]
    for i in range(10):
        t = i * 0.1
        rec.add(t, 2.0, 200, profiles.STREAM_TTFC)
        for k in range(3):
            rec.add(t + 0.002 + k * 0.005, 5.0, 200, profiles.STREAM_GAP)
        rec.add(t, 17.0, 200, profiles.STREAM_WHOLE, flags=FLAG_INVALID_BODY if i < short else 0)
    rec.t0 = 0.0
    return rec


def test_stream_checks_and_figures() -> None:
    run = _run_data(_stream_record(short=0), "streaming", tokens=4, token_bytes=16)
    assert all(_checks(run).values()), _checks(run)
    st = analysis.summarize(run)["streaming"]
    assert (st["streams"], st["complete_streams"], st["chunks"]) == (10, 10, 40)
    assert st["ttfc"]["p50_ms"] == 2.0 and st["chunk_gap"]["p99_ms"] == 5.0
    bad = _checks(_run_data(_stream_record(short=2), "streaming", tokens=4, token_bytes=16))
    assert not bad["every stream complete"]
    assert bad["time to first chunk recorded"]


def test_batching_ceiling_from_the_cpu_each_process_spent() -> None:
    def row(variant: str, rps: float, http: float, worker: float) -> batching.Summary:
        return batching.Summary(variant, 64, rps, 1.0, 2.0, None, 0, 0.0, 3, http_us=http, worker_us=worker)

    # Off: 223 + 139 µs a request; on: 196 + 70. A free worker would give (223 + 139) / 196.
    text = batching.ceiling([row("off", 2760, 223, 139), row("on", 3765, 196, 70)])
    assert text is not None and "1.85x" in text and "3x needs 121 µs" in text
    heavy = batching.ceiling([row("off", 500, 100, 900), row("on", 3000, 100, 50)])
    assert heavy is not None and "10.00x" in heavy and "needs" not in heavy
    assert batching.ceiling([row("off", 2760, 223, 139)]) is None
    table = batching.markdown([row("off", 2760, 223, 139)], [], {"rounds": 3, "duration": 8, "setup": "x"})
    assert "| 223 + 139 |" in table


def test_transfer_sizes_and_cells() -> None:
    assert [transfer.parse_size(t) for t in ("1K", "100kb", "99M", "512")] == [1000, 100_000, 99_000_000, 512]
    with pytest.raises(argparse.ArgumentTypeError):
        transfer.parse_size("big")
    assert transfer.size_text(50_000_000) == "50 MB" and transfer.size_text(1000) == "1 KB"
    done = transfer.Cell("reply", 1000, seconds=[0.3, 0.1, 0.2])
    assert done.median_s == 0.2 and transfer.cell_text(done, 120, 3) == "200.0 ms"
    assert transfer.cell_text(transfer.Cell("reply", 1000, seconds=[61.0]), 120, 3) == "61.00 s (n=1)"
    assert transfer.cell_text(transfer.Cell("request", 1000, capped=True), 120, 3) == ">120 s"
    assert transfer.cell_text(transfer.Cell("request", 1000, skipped=True), 120, 3) == "not run"


def test_recorder_roundtrip(tmp_path: Path) -> None:
    rec = Recorder()
    rec.begin(100.0)
    rec.add(100.5, 3.0, 200, "a", tag=2)
    rec.add(101.5, 7.0, 503, "b", flags=FLAG_NO_RETRY_AFTER)
    rec.save(tmp_path / "r", {"profile": "steady", "config": {"profile": "steady"}, "t_end": 2.0})
    run = analysis.load_run(tmp_path / "r")
    assert run.status.tolist() == [200, 503]
    assert run.tag.tolist() == [2, -1]
    assert run.meta["names"] == ["a", "b"]
    ser = analysis.series(run)
    assert ser["counts"]["2xx"] == [1.0, 0.0] and ser["counts"]["503"] == [0.0, 1.0]


# --- slow: every profile for a few seconds against a local scorehost -----------------------


def _run_profile(profile: str, out: Path, *args: str, timeout_s: float = 120) -> tuple[int, dict[str, Any], str]:
    cmd = [sys.executable, "-m", "loadtests.run", profile, "--out", str(out), "--quiet", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return proc.returncode, summary, proc.stdout[-3000:] + proc.stderr[-3000:]


def _assert_checks(rc: int, summary: dict[str, Any], output: str, *required: str) -> dict[str, dict[str, Any]]:
    assert summary, f"no summary written:\n{output}"
    by_name = {c["name"]: c for c in summary["checks"]}
    failed = [f"{c['name']}: {c['detail']}" for c in summary["checks"] if not c["ok"]]
    assert not failed and rc == 0, f"failed checks {failed} (exit {rc})\n{output}"
    for name in ("produced requests", "no connection errors", *required):
        assert name in by_name, f"missing check {name!r}: {sorted(by_name)}"
    assert summary["overall"]["requests"] > 0
    return by_name


@pytest.mark.slow
def test_steady_smoke(tmp_path: Path) -> None:
    rc, summary, out = _run_profile("steady", tmp_path, "--duration", "3", "--users", "4")
    _assert_checks(rc, summary, out, "no error responses")
    for name in ("timeline.png", "summary.md", "locust_report.html", "locust_stats.csv", "requests.npz"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert summary["overall"]["p99_ms"] is not None


@pytest.mark.slow
def test_ramp_smoke(tmp_path: Path) -> None:
    rc, summary, out = _run_profile(
        "ramp",
        tmp_path,
        "--start-users",
        "2",
        "--step-users",
        "6",
        "--max-users",
        "14",
        "--step-s",
        "2",
        "--user-rate",
        "20",
        "--p99-target-ms",
        "500",
        "--no-plots",
    )
    _assert_checks(rc, summary, out, "knee found")
    steps = summary["ramp_steps"]
    assert [s["users"] for s in steps] == [2, 8, 14]
    # Paced users: each step's rate follows its users (well under capacity here).
    assert steps[-1]["rps"] > steps[0]["rps"] * 2


@pytest.mark.slow
def test_spike_smoke(tmp_path: Path) -> None:
    rc, summary, out = _run_profile(
        "spike",
        tmp_path,
        "--base-s",
        "2",
        "--spike-s",
        "3",
        "--recovery-s",
        "4",
        "--spike-users",
        "150",
        "--fast-503-ms",
        "1000",
        "--recovery-factor",
        "5",
        "--recovery-slack-ms",
        "100",
    )
    _assert_checks(
        rc,
        summary,
        out,
        "503s during the spike",
        "every 503 has Retry-After",
        "503s are fast",
        "recovered after the spike",
    )
    assert summary["overall"]["errors_by_status"].get("503", 0) > 0
    assert "0" not in summary["overall"]["errors_by_status"]
    assert (tmp_path / "timeline.png").exists()


@pytest.mark.slow
def test_multi_model_smoke(tmp_path: Path) -> None:
    rc, summary, out = _run_profile(
        "multi-model", tmp_path, "--model-count", "4", "--duration", "4", "--users", "4", "--no-plots"
    )
    _assert_checks(rc, summary, out, "no error responses", "uniform: every model served", "zipf: skewed as asked")
    counts = summary["models"]["phases"]["zipf"]["counts"]
    assert len(counts) == 4 and counts[0] > counts[-1]


@pytest.mark.slow
def test_timeout_smoke(tmp_path: Path) -> None:
    rc, summary, out = _run_profile(
        "timeout",
        tmp_path,
        "--duration",
        "5",
        "--timeout-ms",
        "200",
        "--slow-ms",
        "600",
        "--slow-share",
        "0.1",
        "--timeout-slack-ms",
        "300",
        "--recovery-factor",
        "5",
        "--recovery-slack-ms",
        "100",
        "--no-plots",
    )
    _assert_checks(
        rc,
        summary,
        out,
        "504s produced",
        "slow requests time out",
        "504s on time",
        "504 body names the timeout",
        "fast requests keep their latency",
    )
    assert summary["overall"]["errors_by_status"].get("504", 0) > 0


@pytest.mark.slow
def test_payloads_smoke(tmp_path: Path) -> None:
    rc, summary, out = _run_profile(
        "payloads", tmp_path, "--duration", "3", "--users", "4", "--batches", "1,64", "--no-plots"
    )
    _assert_checks(rc, summary, out, "every body size sent", "answers match the batch")
    assert len(summary["by_name"]) == 2
    assert all(b["requests"] > 0 for b in summary["by_name"].values())


@pytest.mark.slow
def test_streaming_smoke(tmp_path: Path) -> None:
    rc, summary, out = _run_profile(
        "streaming",
        tmp_path,
        *("--duration", "3", "--users", "4", "--tokens", "8", "--token-delay-ms", "2", "--token-bytes", "24"),
        "--no-plots",
    )
    _assert_checks(rc, summary, out, "no error responses", "time to first chunk recorded", "every stream complete")
    st = summary["streaming"]
    assert st["streams"] > 0 and st["complete_streams"] == st["streams"]
    assert st["chunks"] == 8 * st["streams"]
    assert st["ttfc"]["p50_ms"] is not None and st["chunk_gap"]["p99_ms"] is not None
    assert {"ttfc", "chunk-gap", "stream"} <= set(summary["by_name"])
    # Locust's own stats carry the same names, so its report gives their percentiles too.
    stats = (tmp_path / "locust_stats.csv").read_text()
    assert ",ttfc," in stats and ",chunk-gap," in stats


@pytest.mark.slow
def test_transfer_smoke(tmp_path: Path) -> None:
    """Small sizes, one request each, unpinned: both directions measured and checked, table written."""
    cmd = [sys.executable, "-m", "loadtests.transfer", "--sizes", "1K,200K", "--repeats", "1"]
    cmd += ["--server-cpus", "", "--client-cpus", "", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    series = json.loads((tmp_path / "results.json").read_text())["series"]
    assert len(series) == 1
    cells = {(c["direction"], c["size"]): c for c in series[0]["cells"]}
    assert set(cells) == {(d, n) for d in ("request", "reply") for n in (1000, 200_000)}
    assert all(len(c["seconds"]) == 1 and not c["error"] and not c["capped"] for c in cells.values())
    assert "| 200 KB |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed (apt-get install wrk)")
def test_compare_pipeline_smoke(tmp_path: Path) -> None:
    """scorehost against the floor with wrk, one short cell each: the table and JSON come out."""
    cmd = [
        sys.executable,
        "-m",
        "loadtests.compare",
        "--systems",
        "scorehost,floor",
        "--workloads",
        "echo",
        "--conc",
        "8",
        "--duration",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--no-install",
        "--server-cpus",
        "",
        "--load-cpus",
        "",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["system"], c["generator"]): c for c in result["cells"]}
    assert set(cells) == {("scorehost", "wrk"), ("floor", "wrk")}
    for c in cells.values():
        assert c["requests"] > 0 and not c["failed"] and c["p99_ms"] > 0
    table = (tmp_path / "table.md").read_text()
    assert "| 8 | scorehost |" in table and "generator: wrk" in table
