"""Dynamic batching through a real server: V2 across connections with the LRU store, and entry
scripts with @batch (sync and async), with the counters in /metrics."""

from __future__ import annotations

import functools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import plain_http
from onnx_models import make_mlp, mlp_reference


def metric(text: str, name: str, source: str) -> float:
    """A sample of ``/metrics`` with ``source=...`` (0 when absent)."""
    m = re.search(rf'^{re.escape(name)}{{source="{source}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_metric(client: httpx.Client, name: str, source: str, at_least: float, timeout_s: float = 10.0) -> str:
    """/metrics once ``name`` reached ``at_least`` (workers report about once a second)."""
    limit = time.monotonic() + timeout_s
    while True:
        text = client.get("/metrics").text
        if metric(text, name, source) >= at_least or time.monotonic() > limit:
            return text
        time.sleep(0.2)


def infer(url: str, model: str, rows: list[list[float]]) -> tuple[int, Any]:
    body = {"inputs": [{"name": "x", "shape": [len(rows), 16], "datatype": "FP32", "data": rows}]}
    with plain_http.client(base_url=url, timeout=30) as c:
        r = c.post(f"/v2/models/{model}/infer", content=orjson.dumps(body))
    return r.status_code, r.json()


def test_v2_batches_across_connections_and_models_with_the_lru_store(start_server: Any, tmp_path: Path) -> None:
    for i in range(6):
        make_mlp(tmp_path / f"m{i}" / "1" / "model.onnx", seed=i)
    server = start_server(
        SCOREHOST_MODEL_DIR=str(tmp_path),
        SCOREHOST_LAZY_MODELS="true",
        SCOREHOST_MAX_LOADED_MODELS="2",
        SCOREHOST_MAX_BATCH_SIZE="32",
        SCOREHOST_MAX_CONCURRENT_REQUESTS="1",
        # Every call must be answered: this checks batching under LRU churn, not the queue deadline
        # (tests/test_pool.py), and 24 callers queue behind one slot and model loads on 2 busy CPUs.
        SCOREHOST_MAX_QUEUE_WAIT_MS="20000",
        SCOREHOST_ACCESS_LOG="false",
    )
    with server.client() as c:
        meta = c.get("/v2/models/m0").json()
        assert meta["parameters"]["batching"]["enabled"] and meta["parameters"]["batching"]["max_batch_size"] == 32
    jobs = [(f"m{n % 6}", n % 6, [[n / 100 + j / 1000 for j in range(16)]]) for n in range(240)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda job: infer(server.url, job[0], job[2]), jobs))
    for (_, seed, rows), (status, out) in zip(jobs, answers, strict=True):
        assert status == 200, out
        y = np.array(out["outputs"][0]["data"], np.float32).reshape(1, 2)
        np.testing.assert_allclose(y, mlp_reference(np.array(rows), seed=seed), rtol=1e-4, atol=1e-4)
    with server.client() as c:
        text = wait_metric(c, "scorehost_batch_size_sum", "model", 240 - 6)  # the first call of each loads it
        executions = metric(text, "scorehost_batch_size_count", "model")
        assert 0 < executions <= metric(text, "scorehost_batch_size_sum", "model")
        assert metric(text, "scorehost_batch_queue_delay_seconds_count", "model") >= 234
        evictions = re.search(r"^scorehost_model_evictions_total (\S+)$", text, re.M)
        assert evictions is not None and float(evictions.group(1)) > 0


def _post_x(server: Any, x: Any) -> tuple[int, Any]:
    """One ``{"x": x}`` call on its own connection: (status, JSON answer)."""
    with plain_http.client(base_url=server.url, timeout=30) as c:
        r = c.post("/score", content=orjson.dumps({"x": x}))
    return r.status_code, r.json()


def test_sync_script_batches_its_run_threads(start_server: Any) -> None:
    server = start_server("batch_sync.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="8", SCOREHOST_ACCESS_LOG="false")

    post = functools.partial(_post_x, server)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(48)))
    assert [a[0] for a in answers] == [200] * 48
    assert [a[1]["y"] for a in answers] == [2 * x for x in range(48)]
    assert max(a[1]["batch"] for a in answers) > 1
    with ThreadPoolExecutor(8) as pool:
        mixed = list(pool.map(post, [1, 2, "boom", 3, 4, 5, 6, 7]))
    assert [status for status, _ in mixed] == [200, 200, 500, 200, 200, 200, 200, 200]
    with server.client() as c:
        text = wait_metric(c, "scorehost_batch_size_sum", "script", 56)
        assert metric(text, "scorehost_batch_size_count", "script") < 56


def test_async_script_batches_and_a_call_that_waits_past_its_deadline_never_runs(start_server: Any) -> None:
    server = start_server("batch_async.py", SCOREHOST_SCORING_TIMEOUT_MS="1000", SCOREHOST_ACCESS_LOG="false",
                          SCOREHOST_MAX_CONCURRENT_REQUESTS="16")  # fmt: skip

    post = functools.partial(_post_x, server)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(48)))
    assert [a[1]["y"] for a in answers] == [x + 1 for x in range(48)]
    assert max(a[1]["batch"] for a in answers) > 1
    # A 2 s batch runs; calls that come meanwhile wait behind it past their 1 s deadline.
    with ThreadPoolExecutor(4) as pool:
        slow = pool.submit(post, "slow")
        time.sleep(0.3)
        late = list(pool.map(post, [1, 2, 3]))
        assert slow.result()[0] == 504
    assert [status for status, _ in late] == [504, 504, 504]
    with server.client() as c:
        text = wait_metric(c, "scorehost_batch_expired_total", "script", 3)
        assert metric(text, "scorehost_batch_expired_total", "script") >= 3
        assert post(41) == (200, {"y": 42, "batch": 1})
