"""/metrics: every metric moves as it should, scraped from live servers with prometheus_client's parser."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import plain_http
import pytest
from onnx_models import make_corrupt, make_mlp
from scrape import scrape, total, value, wait_for

from server.metrics import BUCKETS, FOLD_AT, Histogram, Recorder, route_of
from server.metrics_collect import ModelTotals
from server.store.stats import ModelStats, StatsReporter
from server.workers.protocol import Reply

X = (np.arange(16, dtype=np.float32) / 10).reshape(1, 16).tolist()
INFER = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": X}]}


# --- units ----------------------------------------------------------------------------------
def test_histogram_buckets_are_le_and_cumulative() -> None:
    h = Histogram((0.001, 0.01))
    for v in (0.0005, 0.001, 0.002, 0.01, 5.0):
        h.observe(v)
    assert h.cumulative() == [("0.001", 2.0), ("0.01", 4.0), ("+Inf", 5.0)]
    assert h.count == 5 and h.sum == pytest.approx(5.0135)
    assert BUCKETS[0] < 0.0001 and BUCKETS[-1] >= 60 and list(BUCKETS) == sorted(BUCKETS)
    # Observations are bucketed in bulk: the pending list never grows past FOLD_AT.
    bulk = Histogram((0.5,))
    for i in range(FOLD_AT + 10):
        bulk.observe(i % 2)
    assert len(bulk.pending) == 10 and bulk.cumulative() == [("0.5", (FOLD_AT + 10) / 2), ("+Inf", FOLD_AT + 10)]


def test_route_labels_are_bounded() -> None:
    assert route_of("/score") == "/score" and route_of("/health/ready") == "/health/ready"
    assert route_of("/v2/models/fraud/versions/3/infer") == "/v2/models/{model}/infer"
    assert route_of("/v2/models/x/ready") == "/v2/models/{model}/ready"
    assert route_of("/v2/models/x") == "/v2/models/{model}"
    assert route_of("/v2/repository/index") == "/v2/other"
    assert route_of("/../../etc/passwd") == "other" == route_of("/" + "x" * 1000)


def test_recorder_takes_queue_wait_and_run_time_from_the_reply() -> None:
    r = Recorder()
    r.reply(10.0, Reply(200, b"", exec_ms=2.0, started_at=10.25))
    r.reply(10.0, Reply(503, b"", started_at=None))  # refused in the worker: answered already
    r.reply(10.0, Reply(503, b"", started_at=10.0))  # the model store's own 503
    assert r.queue_wait.count == 2 and r.queue_wait.sum == pytest.approx(0.25)
    assert r.exec_time.count == 1 and r.exec_time.sum == pytest.approx(0.002)
    assert r.unavailable == {"model_not_ready": 1}


def test_stats_frames_carry_changes_only_and_totals_survive_a_worker() -> None:
    class Store:
        evictions = 0
        loads = 2
        rows = [("a", "1", "READY", ModelStats()), ("b", "1", "FAILED", ModelStats())]

        def model_stats(self) -> list[tuple[str, str, str, ModelStats]]:
            return self.rows

    store = Store()
    reporter = StatsReporter(per_model=True)
    first = reporter.payload(store)
    assert first is not None and first["counts"] == {"loaded": 1, "failed": 1} and len(first["models"]) == 2
    assert reporter.payload(store) is None  # nothing changed: no frame
    store.rows[0][3].inferences = 5
    second = reporter.payload(store)
    assert second is not None and [r[0] for r in second["models"]] == ["a"]
    totals = ModelTotals(per_model=True)
    totals.apply(0, first)
    totals.apply(0, second)
    totals.retire(0)  # the worker died: its counts stay in the totals
    totals.apply(0, {"counts": {"loaded": 2}, "loads": 2, "evictions": 0,
                     "models": [["a", "1", "loaded", 0.1, 1, 0]]})  # fmt: skip
    names = {(f.name, tuple(s.labels.values()), s.value) for f in totals.families() for s in f.samples}
    assert ("scorehost_model_inferences", ("a", "1"), 6) in names
    assert ("scorehost_model_loads", (), 4) in names
    assert StatsReporter(per_model=False).payload(store) == {
        "counts": {"loaded": 1, "failed": 1}, "evictions": 0, "loads": 2, "models": []}  # fmt: skip


def test_model_run_counts_inferences_and_errors(tmp_path: Path) -> None:
    from server.settings import Settings
    from server.store.store import open_store

    make_mlp(tmp_path / "m.onnx")
    store = open_store(Settings(model_dir=str(tmp_path)))
    try:
        model = store.get("m")
        model.run({"x": np.zeros((1, 16), np.float32)})
        with pytest.raises(Exception, match="dtype"):
            model.run({"x": np.zeros((1, 16), np.float64)})
        ((_, _, state, stats),) = store.model_stats()
        assert (state, stats.inferences, stats.errors, store.loads) == ("READY", 2, 1, 1)
        assert stats.load_seconds > 0
    finally:
        store.close()


# --- live servers -----------------------------------------------------------------------------
pytestmark_slow = pytest.mark.slow


@pytestmark_slow
def test_requests_latency_queue_and_run_time_move(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py")
    before = scrape(server.url)
    with server.client() as c:
        for _ in range(5):
            assert c.post("/score", content=b'{"a": 1}').status_code == 200
        assert c.get("/nope/../x").status_code == 404
        assert c.get("/health/live").status_code == 200
    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("scorehost_requests_total", route="/score", method="POST", status="200") == 5
    assert delta("scorehost_requests_total", route="other", method="GET", status="404") == 1
    assert delta("scorehost_requests_total", route="/health/live", method="GET", status="200") == 1
    assert delta("scorehost_requests_total", route="/metrics", method="GET", status="200") == 1
    assert delta("scorehost_request_duration_seconds_count", route="/score") == 5
    assert delta("scorehost_request_duration_seconds_sum", route="/score") > 0
    assert value(after, "scorehost_request_duration_seconds_bucket", route="/score", le="+Inf") == 5
    assert delta("scorehost_queue_wait_seconds_count") == 5 and delta("scorehost_run_seconds_count") == 5
    assert 0 < delta("scorehost_run_seconds_sum") < delta("scorehost_request_duration_seconds_sum", route="/score")
    assert value(after, "scorehost_worker_state", worker="0", state="ready") == 1
    assert value(after, "scorehost_worker_state", worker="0", state="starting") == 0
    assert value(after, "scorehost_slots") >= 1 and value(after, "scorehost_utilization") == 0
    assert value(after, "scorehost_worker_init_seconds", worker="0") > 0
    assert value(after, "scorehost_worker_resident_memory_bytes", worker="0") > 10e6
    assert value(after, "process_resident_memory_bytes") > 10e6 and "process_cpu_seconds_total" in {
        n for n, _ in after}  # fmt: skip
    assert value(after, "scorehost_open_connections") >= 1
    time.sleep(0.3)  # the access log flushes every 0.2 s
    assert "POST /score 200" in server.log and "/metrics" not in server.log  # not access-logged


@pytestmark_slow
def test_rejections_timeouts_and_gauges(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("sleeper.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1", SCOREHOST_MAX_QUEUE_LENGTH="1",
                          SCOREHOST_MAX_QUEUE_WAIT_MS="400", SCORING_TIMEOUT_MS="1500",
                          SCOREHOST_WEDGED_AFTER_MS="60000")  # fmt: skip

    def post(ms: int) -> int:
        return plain_http.post(server.url + "/score", json={"sleep_ms": ms}, timeout=20).status_code

    with cf.ThreadPoolExecutor(4) as pool:
        long_call = pool.submit(post, 2500)  # 504 after 1.5 s, then holds the slot until it ends
        time.sleep(0.3)
        busy = scrape(server.url)
        waiting = pool.submit(post, 10)  # queued: 503 after 400 ms
        time.sleep(0.15)
        queued = scrape(server.url)
        assert post(10) == 503  # the queue is full: 503 at once
        assert waiting.result() == 503 and long_call.result() == 504
    assert value(busy, "scorehost_utilization") == 1.0 and value(busy, "scorehost_busy_slots") == 1
    assert value(busy, "scorehost_in_flight_calls") == 1 and value(busy, "scorehost_slots") == 1
    assert value(queued, "scorehost_queued_requests") == 1
    after = wait_for(server.url, lambda s: value(s, "scorehost_in_flight_calls") == 0)
    assert value(after, "scorehost_unavailable_total", reason="queue_full") == 1
    assert value(after, "scorehost_unavailable_total", reason="queue_timeout") == 1
    assert value(after, "scorehost_unavailable_total", reason="not_ready") == 0
    assert value(after, "scorehost_timeouts_total") == 1
    assert value(after, "scorehost_requests_total", route="/score", method="POST", status="503") == 2
    assert value(after, "scorehost_requests_total", route="/score", method="POST", status="504") == 1
    # The timed-out call ran to its end in the worker: its run time is recorded, past the timeout.
    assert value(after, "scorehost_run_seconds_bucket", le="1.0") == 0
    assert value(after, "scorehost_run_seconds_count") == 1 and value(after, "scorehost_run_seconds_sum") > 2.4
    assert value(after, "scorehost_queue_wait_seconds_count") == 1  # the refused calls never started


@pytestmark_slow
def test_not_ready_refusals_and_the_starting_worker(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("slow_init.py", ready=False, SLOW_INIT_S="2")
    starting = scrape(server.url)
    assert plain_http.post(server.url + "/score", content=b"1").status_code == 503
    assert value(starting, "scorehost_worker_state", worker="0", state="starting") == 1
    assert "scorehost_worker_init_seconds" not in {name for name, _ in starting}
    server.wait_ready()
    ready = scrape(server.url)
    assert value(ready, "scorehost_unavailable_total", reason="not_ready") == 1
    assert value(ready, "scorehost_requests_total", route="/score", method="POST", status="503") == 1
    assert value(ready, "scorehost_worker_state", worker="0", state="ready") == 1
    assert value(ready, "scorehost_worker_init_seconds", worker="0") >= 2


@pytestmark_slow
def test_a_killed_worker_counts_a_crash_restart(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("crasher.py")
    pid = plain_http.post(server.url + "/score", json={}).json()["pid"]
    os.kill(pid, signal.SIGKILL)
    after = wait_for(server.url, lambda s: value(s, "scorehost_worker_restarts_total", cause="crash") == 1
                     and value(s, "scorehost_worker_state", worker="0", state="ready") == 1)  # fmt: skip
    assert value(after, "scorehost_worker_restarts_total", cause="crash") == 1
    assert value(after, "scorehost_worker_restarts_total", cause="wedged") == 0
    assert value(after, "scorehost_worker_state", worker="0", state="ready") == 1
    assert plain_http.post(server.url + "/score", json={}).json()["pid"] != pid
    # A crash during a call: the caller gets 500, counted by status.
    assert plain_http.post(server.url + "/score", json={"crash": True}).status_code == 500
    after = wait_for(server.url, lambda s: value(s, "scorehost_worker_restarts_total", cause="crash") == 2)
    assert value(after, "scorehost_requests_total", route="/score", method="POST", status="500") == 1


@pytestmark_slow
def test_model_store_state_failures_and_counters(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_mlp(tmp_path / "good" / "1" / "model.onnx")
    make_corrupt(tmp_path / "bad" / "1" / "model.onnx")
    server = start_server(SCOREHOST_MODEL_DIR=str(tmp_path))
    with server.client() as c:
        for _ in range(3):
            assert c.post("/v2/models/good/infer", json=INFER).status_code == 200
        assert c.post("/v2/models/bad/infer", json=INFER).status_code == 503
    after = wait_for(server.url, lambda s: value(s, "scorehost_model_inferences_total", model="good", version="1") == 3)
    assert value(after, "scorehost_models", worker="0", state="loaded") == 1
    assert value(after, "scorehost_models", worker="0", state="failed") == 1
    assert value(after, "scorehost_model_state", model="bad", version="1", state="failed") == 1
    assert value(after, "scorehost_model_state", model="good", version="1", state="loaded") == 1
    assert value(after, "scorehost_model_load_seconds", model="good", version="1") > 0
    assert value(after, "scorehost_model_inferences_total", model="good", version="1") == 3
    assert value(after, "scorehost_model_errors_total", model="good", version="1") == 0
    assert value(after, "scorehost_model_loads_total") == 1
    assert value(after, "scorehost_unavailable_total", reason="model_not_ready") == 1
    infer = "/v2/models/{model}/infer"
    assert value(after, "scorehost_requests_total", route=infer, method="POST", status="200") == 3
    assert value(after, "scorehost_requests_total", route=infer, method="POST", status="503") == 1


@pytestmark_slow
def test_lru_evictions_and_per_model_switch(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for name in ("a", "b"):
        make_mlp(tmp_path / name / "1" / "model.onnx")
    server = start_server(SCOREHOST_MODEL_DIR=str(tmp_path), SCOREHOST_LAZY_MODELS="true",
                          SCOREHOST_MAX_LOADED_MODELS="1", SCOREHOST_METRICS_PER_MODEL="false")  # fmt: skip
    with server.client() as c:
        for name in ("a", "b", "a"):
            assert c.post(f"/v2/models/{name}/infer", json=INFER).status_code == 200
    after = wait_for(server.url, lambda s: value(s, "scorehost_model_evictions_total") == 2)
    assert value(after, "scorehost_model_evictions_total") == 2 and value(after, "scorehost_model_loads_total") == 3
    assert value(after, "scorehost_models", worker="0", state="lazy") == 1
    assert value(after, "scorehost_models", worker="0", state="loaded") == 1
    assert not any(name.startswith("scorehost_model_state") for name, _ in after)  # per-model series off


@pytestmark_slow
def test_user_metrics_from_two_workers_are_merged(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("user_metrics.py", SCOREHOST_WORKERS="2", SCOREHOST_MAX_CONCURRENT_REQUESTS="2")
    both = wait_for(server.url, lambda s: total(s, "scorehost_worker_state", state="ready") == 2)
    assert total(both, "scorehost_worker_state", state="ready") == 2  # readiness needs only one
    pids = set()
    folder = ""
    with server.client() as c:
        for _ in range(10):
            reply = c.post("/score", content=b"12345").json()
            pids.add(reply["pid"])
            folder = reply["dir"]
    assert folder and Path(folder).is_dir() and folder.startswith("/tmp")
    samples = scrape(server.url)
    assert value(samples, "user_calls_total") == 10
    assert value(samples, "user_worker_up") == 2  # livesum over the live workers
    assert value(samples, "user_body_bytes_bucket", le="10.0") == 10
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    after = wait_for(server.url, lambda s: value(s, "scorehost_worker_restarts_total", cause="crash") == 1
                     and value(s, "user_worker_up") == 2)  # fmt: skip
    assert value(after, "user_worker_up") == 2  # the dead worker's live gauge is gone, the new one's counts
    assert value(after, "user_calls_total") == 10  # counters of dead workers stay: no drop
    server.stop()
    assert not Path(folder).exists()  # the server removes its folder


@pytestmark_slow
def test_metrics_on_the_health_port_or_off(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", SCOREHOST_SEPARATE_HEALTH_ENDPOINT="true", SCOREHOST_HEALTH_PORT="0",
                          SCOREHOST_METRICS_ENDPOINT="health")  # fmt: skip
    health = re.search(r"Health probes on http://([^\s]+)", server.log)
    assert health is not None
    health_url = "http://" + health.group(1)
    assert plain_http.get(server.url + "/metrics").status_code == 404
    assert plain_http.post(server.url + "/score", content=b"1").status_code == 200
    samples = scrape(health_url)
    assert value(samples, "scorehost_requests_total", route="/score", method="POST", status="200") == 1
    off = start_server("env_dump.py", SCOREHOST_METRICS="false")
    assert plain_http.get(off.url + "/metrics").status_code == 404
    env: dict[str, Any] = plain_http.post(off.url + "/score", content=b"1").json()["environ"]
    assert "PROMETHEUS_MULTIPROC_DIR" not in env


def test_metrics_on_the_health_port_needs_one() -> None:
    from pydantic import ValidationError

    from server.settings import Settings

    with pytest.raises(ValidationError, match="metrics_endpoint=health needs separate_health_endpoint"):
        Settings(metrics_endpoint="health")
