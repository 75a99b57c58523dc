"""Real-server tests of bounded requests: timeouts, queueing, crashes, wedged workers."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import httpx
import plain_http
import pytest

pytestmark = pytest.mark.slow

TIMEOUT_MS = 1000


def _timed_post(url: str, payload: dict[str, object], timeout: float = 20) -> tuple[httpx.Response, float]:
    with plain_http.client(base_url=url, timeout=timeout) as c:
        t = time.perf_counter()
        r = c.post("/score", json=payload)
        return r, time.perf_counter() - t


@pytest.mark.parametrize(
    "payload",
    [
        {"sleep_ms": 3000, "mode": "sleep"},
        {"sleep_ms": 3000, "mode": "spin"},
        {"mode": "nogil", "iterations": 30_000_000},
        {"sleep_ms": 3000, "mode": "gil"},
    ],
    ids=["time.sleep", "python-loop", "c-call-releasing-gil", "c-call-holding-gil"],
)
def test_scoring_timeout_is_on_time_whatever_run_does(start_server, payload) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "sleeper.py",
        SCORING_TIMEOUT_MS=str(TIMEOUT_MS),
        SCOREHOST_MAX_CONCURRENT_REQUESTS="1",
        SCOREHOST_WEDGED_AFTER_MS="60000",
    )
    response, elapsed = _timed_post(server.url, payload)
    assert response.status_code == 504
    assert response.json() == {"message": f"Scoring timeout after {TIMEOUT_MS} ms"}
    assert response.headers["x-ms-run-function-failed"] == "True"
    assert TIMEOUT_MS / 1000 <= elapsed < TIMEOUT_MS / 1000 + 0.05, elapsed
    # The timed-out call still holds the only slot: the next request must wait,
    # and is refused after the queue wait rather than run concurrently.
    with server.client() as c:
        status = c.get("/health/ready").json()
        assert status["in_flight"] == 1


def test_timed_out_call_keeps_its_slot_until_it_ends(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "sleeper.py",
        SCORING_TIMEOUT_MS="500",
        SCOREHOST_MAX_CONCURRENT_REQUESTS="1",
        SCOREHOST_MAX_QUEUE_WAIT_MS="200",
        SCOREHOST_WEDGED_AFTER_MS="60000",
    )
    first, _ = _timed_post(server.url, {"sleep_ms": 1500})
    assert first.status_code == 504
    second, elapsed = _timed_post(server.url, {"sleep_ms": 0})
    assert second.status_code == 503, second.text
    assert second.headers["retry-after"] == "1"
    assert 0.2 <= elapsed < 0.3
    time.sleep(1.2)  # the first call really ends; its slot comes back
    third, _ = _timed_post(server.url, {"sleep_ms": 0})
    assert third.status_code == 200


def test_full_queue_is_refused_at_once(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "sleeper.py",
        SCOREHOST_MAX_CONCURRENT_REQUESTS="1",
        SCOREHOST_MAX_QUEUE_LENGTH="2",
        SCOREHOST_MAX_QUEUE_WAIT_MS="3000",
    )
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_timed_post, server.url, {"sleep_ms": 1000}) for _ in range(6)]
        results = [f.result(30) for f in futures]
    statuses = sorted(r.status_code for r, _ in results)
    assert statuses == [200, 200, 200, 503, 503, 503], statuses
    refused = [(r, t) for r, t in results if r.status_code == 503]
    for response, elapsed in refused:
        assert "already waiting" in response.json()["message"]
        assert response.headers["retry-after"] == "1"
        assert elapsed < 0.5  # decided at once, not after the wait


def test_queue_wait_budget_gives_503_on_time(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("sleeper.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1", SCOREHOST_MAX_QUEUE_WAIT_MS="300")
    blocker = threading.Thread(target=_timed_post, args=(server.url, {"sleep_ms": 1500}))
    blocker.start()
    time.sleep(0.2)
    response, elapsed = _timed_post(server.url, {"sleep_ms": 0})
    blocker.join(10)
    assert response.status_code == 503
    assert "within 300 ms" in response.json()["message"]
    assert 0.3 <= elapsed < 0.35, elapsed


def test_crashing_worker_gives_500_and_is_restarted(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("crasher.py")
    with server.client() as c:
        pid = c.post("/score", json={}).json()["pid"]
        crashed = c.post("/score", json={"crash": True})
        assert crashed.status_code == 500
        assert "exited unexpectedly" in crashed.json()["message"]
        assert crashed.headers["x-ms-run-function-failed"] == "True"
        # A worker that crashed after serving restarts at once, with no back-off, and a
        # restarting worker is not a dead server: liveness stays 200.
        server.wait_for_log(r"restarting in 0\.0 s", timeout=5)
        assert c.get("/health/live").status_code == 200
        server.wait_ready(timeout=20)
        assert c.get("/health/live").status_code == 200
        again = c.post("/score", json={})
        assert again.status_code == 200 and again.json()["pid"] != pid
        assert c.get("/health/ready").json()["detail"][0]["restarts"] == 1


def test_other_workers_keep_serving_while_one_restarts(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("crasher.py", WORKER_COUNT="2")
    with server.client() as c:
        deadline = time.monotonic() + 20  # both workers up first: readiness needs only one
        while c.get("/health/ready").json()["workers_ready"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.post("/score", json={"crash": True}).status_code == 500
        # The other worker answers at once; liveness stays up.
        for _ in range(5):
            assert c.post("/score", json={}).status_code == 200
        assert c.get("/health/live").status_code == 200
        status = c.get("/health/ready").json()
        assert status["workers"] == 2 and status["workers_ready"] >= 1


def test_wedged_worker_is_replaced(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "sleeper.py", SCORING_TIMEOUT_MS="300", SCOREHOST_MAX_CONCURRENT_REQUESTS="1", SCOREHOST_WEDGED_AFTER_MS="500"
    )
    response, elapsed = _timed_post(server.url, {"sleep_ms": 30000, "mode": "gil"})
    assert response.status_code == 504 and elapsed < 0.35
    server.wait_for_log("is wedged", timeout=5)
    # Condemned, the worker is no longer ready, though it runs until its SIGKILL lands: readiness
    # comes back with its replacement, and that takes the next call.
    server.wait_ready(timeout=20)
    with server.client() as c:
        assert c.get("/health/ready").json()["detail"][0]["restarts"] == 1
    ok, _ = _timed_post(server.url, {"sleep_ms": 0})
    assert ok.status_code == 200


def test_a_condemned_worker_is_not_ready_before_its_exit_is_seen() -> None:
    """Regression: a worker the supervisor had just SIGKILLed (wedged, or past init_timeout_s) stayed
    READY until its exit was seen, so readiness answered 200 and new calls queued for a process
    about to die. CI caught it between the "is wedged" line and the restart."""
    import asyncio

    from conftest import SCRIPTS, wait_pool_ready

    from server.settings import Settings
    from server.workers.pool import WorkerPool

    async def main() -> None:
        pool = WorkerPool(Settings(entry_script=str(SCRIPTS / "echo.py"), workers=1))
        await pool.start()
        try:
            await wait_pool_ready(pool)
            pool.kill(pool.workers[0], "was killed by the test", "wedged")
            status = pool.status()  # the same turn of the loop: the exit cannot have been seen
            assert not pool.ready() and status["workers_ready"] == 0
            assert status["detail"][0]["state"] == "stopping"
            await wait_pool_ready(pool)
            assert pool.status()["detail"][0]["restarts"] == 1
        finally:
            await pool.stop(5)

    asyncio.run(main())


def test_async_run_is_concurrent_within_one_worker(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("async_run.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="8")
    started = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _timed_post(server.url, {"sleep_ms": 500})[0], range(8)))
    assert all(r.status_code == 200 and r.json()["async"] for r in results)
    assert time.perf_counter() - started < 1.5


def test_body_over_limit_is_413_before_reading(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", SCOREHOST_MAX_REQUEST_BYTES="1000")
    with server.client() as c:
        r = c.post("/score", content=b"x" * 5000)
        assert r.status_code == 413 and "exceeds the limit" in r.json()["message"]

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b"y" * 500

        r = c.post("/score", content=chunks())
        assert r.status_code == 413
        assert c.post("/score", content=b'"ok"').status_code == 200


def test_print_in_run_is_logged_with_request_id(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("printer.py")
    server.wait_for_log(r"scorehost.print - printer init done")
    with server.client() as c:
        r = c.post("/score", content=b"hi", headers={"x-request-id": "rid-123"})
        assert r.headers["x-request-id"] == "rid-123"
    server.wait_for_log(r"scorehost.print - scoring hi \[rid rid-123\]")
    server.wait_for_log(r"user.script - user log line \[rid rid-123\]")
    server.wait_for_log(r"scorehost.access - POST /score 200 .*\[rid rid-123\]")


def test_short_calls_are_pipelined_even_while_requests_queue() -> None:
    """Regression: capacity gained from short calls must reach requests already queued.

    200 calls arrive at once while the worker's capacity is still its one slot, so 199
    wait. As replies show the calls are short, capacity grows; it must be handed to the
    waiters. (It used to pass one slot per reply, so a queue that never emptied kept the
    worker at one call per round trip: a third of the throughput at 64 connections.)"""
    import asyncio

    from conftest import SCRIPTS, wait_pool_ready

    from server.settings import Settings
    from server.workers.pool import WorkerPool
    from server.workers.protocol import Call, Reply, Target

    async def main() -> int:
        pool = WorkerPool(
            Settings(
                entry_script=str(SCRIPTS / "echo.py"),
                max_concurrent_requests=1,
                max_queue_length=1000,
                max_queue_wait_ms=30000,
            )
        )
        await pool.start()
        try:
            await wait_pool_ready(pool)
            peak = 0

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, pool.status()["in_flight"])
                    await asyncio.sleep(0)

            sampler = asyncio.create_task(sample())
            replies = await asyncio.wait_for(
                asyncio.gather(*(pool.call(Call(0, Target.SCORE, "POST", f"r{i}", b"1", 0.0)) for i in range(200))), 30
            )
            sampler.cancel()
            assert all(isinstance(r, Reply) and r.status == 200 for r in replies)
            return peak
        finally:
            await pool.stop(5)

    assert asyncio.run(main()) > 1


def test_pipelined_calls_obey_the_queue_deadline(start_server) -> None:  # type: ignore[no-untyped-def]
    """A call sent ahead into a busy worker's pipeline counts as queued until it starts."""
    import os
    import signal as sig

    from test_supervision import children

    server = start_server("echo.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1", SCOREHOST_MAX_QUEUE_WAIT_MS="300",
                          SCORING_TIMEOUT_MS="5000")  # fmt: skip
    (worker,) = children(server.proc.pid)
    with cf.ThreadPoolExecutor(16) as ex, plain_http.client(base_url=server.url, timeout=10) as client:
        # Short calls make the pool pipeline: it sends calls ahead of the one slot.
        list(ex.map(lambda _: client.post("/score", content=b"x"), range(300)))
        os.kill(worker, sig.SIGSTOP)
        try:
            started = time.perf_counter()
            futures = [ex.submit(_timed_post, server.url, {"n": i}) for i in range(12)]
            time.sleep(1.5)
            os.kill(worker, sig.SIGCONT)
            results = [f.result() for f in futures]
        finally:
            os.kill(worker, sig.SIGCONT)
    refused = [elapsed for r, elapsed in results if r.status_code == 503]
    # All but the call holding the slot are refused near their 300 ms queue deadline, none
    # waits for the stopped worker (the old pipeline kept them 1.5 s, then answered 200).
    assert len(refused) >= 10, [(r.status_code, round(e, 2)) for r, e in results]
    assert max(refused) < 1.0 and time.perf_counter() - started < 10
    assert all(r.headers.get("retry-after") for r, _ in results if r.status_code == 503)
