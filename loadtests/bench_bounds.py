"""Measure the request bounds: 504 latency against the deadline for each kind of
stalled ``run()``, probe latency while every slot is busy or hung, and what the
admission path costs per request.

    .venv/bin/python loadtests/bench_bounds.py [--timeout-ms 1000] [--repeat 5] [--probes 1000]

Starts real servers (``scorehost serve`` on 127.0.0.1, a free port, as every load test
starts one: ``servers.start``) with ``tests/scripts/sleeper.py`` and prints a Markdown
table; the last server's log is left in $TMPDIR/bench-bounds/. Every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):  # run as a file: python loadtests/bench_bounds.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import REPO, servers

SLEEPER = REPO / "tests" / "scripts" / "sleeper.py"  # the tests' sleeper: it also spins and holds the GIL
LOGS = Path(tempfile.gettempdir()) / "bench-bounds"
STALLERS = {
    "time.sleep": {"sleep_ms": 2000, "mode": "sleep"},
    "pure-Python loop": {"sleep_ms": 2000, "mode": "spin"},
    "C call releasing the GIL (pbkdf2_hmac)": {"mode": "nogil", "iterations": 12_000_000},
    "C call holding the GIL (sum over range)": {"sleep_ms": 6000, "mode": "gil"},
}


def start(env: dict[str, str]) -> servers.Server:
    """scorehost serving the sleeper with ``env`` added, ready; its log goes to LOGS."""
    env = {"SCOREHOST_ACCESS_LOG": "false", "SCOREHOST_SHUTDOWN_DELAY_S": "0", **env}
    try:
        return servers.start("scorehost", entry_script=SLEEPER, model_dir=None, log_path=LOGS / "server.log", env=env)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc


def timeouts(timeout_ms: int, repeat: int) -> list[str]:
    rows = []
    for name, payload in STALLERS.items():
        server = start(
            {
                "SCORING_TIMEOUT_MS": str(timeout_ms),
                "SCOREHOST_MAX_CONCURRENT_REQUESTS": "1",
                "SCOREHOST_WEDGED_AFTER_MS": "300000",
                "SCOREHOST_MAX_QUEUE_WAIT_MS": "20000",
            }
        )
        try:
            lateness: list[float] = []
            with httpx.Client(base_url=server.url, timeout=30) as c:
                for _ in range(repeat):
                    _wait_idle(c)  # each measured call starts with its slot free
                    t = time.perf_counter()
                    r = c.post("/score", json=payload)
                    elapsed = (time.perf_counter() - t) * 1000
                    assert r.status_code == 504, (r.text, elapsed, len(lateness))
                    lateness.append(elapsed - timeout_ms)
        finally:
            servers.stop(server)
        rows.append(f"| {name} | {timeout_ms} | {statistics.median(lateness):+.1f} | {max(lateness):+.1f} | {repeat} |")
    return rows


def _wait_idle(client: httpx.Client, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if client.get("/health/ready").json().get("in_flight") == 0:
            return
        time.sleep(0.05)
    raise SystemExit("the server did not become idle")


async def _probe_latencies(url: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=2) as c:
        for _ in range(n):
            t = time.perf_counter()
            r = await c.get("/health/live")
            out.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200
    return out


# Two slots, and a queue long enough that the busy scenario's calls wait instead of being refused.
PROBE_ENV = {
    "SCOREHOST_MAX_CONCURRENT_REQUESTS": "2",
    "SCORING_TIMEOUT_MS": "60000",
    "SCOREHOST_MAX_QUEUE_LENGTH": "64",
    "SCOREHOST_MAX_QUEUE_WAIT_MS": "60000",
    # The busy scenarios leave 20 s calls behind: do not wait for them on the way out.
    "SCOREHOST_GRACEFUL_TIMEOUT_S": "1",
}


def probes(n: int) -> list[str]:
    rows = []
    scenarios: list[tuple[str, list[dict[str, object]]]] = [
        ("idle", []),
        ("every slot busy + 30 queued", [{"sleep_ms": 20000}] * 32),
        ("one slot hung in a GIL-holding C call, one busy", [{"sleep_ms": 20000, "mode": "gil"}, {"sleep_ms": 20000}]),
    ]
    for label, payloads in scenarios:
        # A fresh server each time, so no scenario inherits the calls the last one left hanging.
        server = start(PROBE_ENV)
        try:
            threads = [threading.Thread(target=_fire, args=(server.url, p), daemon=True) for p in payloads]
            for t in threads:
                t.start()
            time.sleep(0.5)
            lat = sorted(asyncio.run(_probe_latencies(server.url, n)))
        finally:
            servers.stop(server)
        rows.append(
            f"| {label} | {statistics.median(lat):.2f} | {lat[int(len(lat) * 0.99) - 1]:.2f} | {lat[-1]:.2f} | {n} |"
        )
    return rows


def _fire(url: str, payload: dict[str, object]) -> None:
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            c.post("/score", json=payload)
    except httpx.HTTPError:
        pass


def admission_cost(n: int = 200_000) -> str:
    """CPU cost of taking and giving back a slot, in-process (no HTTP, no workers)."""
    from server.settings import Settings
    from server.workers.pool import State, WorkerPool

    pool = WorkerPool(Settings(max_concurrent_requests=8, workers=1, entry_script="x"))
    worker = pool.workers[0]
    worker.state = State.READY
    t = time.perf_counter()
    for _ in range(n):
        w = pool._acquire()
        assert w is not None
        pool._release(w)
    return f"{(time.perf_counter() - t) / n * 1e6:.2f} µs per request (acquire + release, {n} rounds)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout-ms", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--probes", type=int, default=1000)
    args = parser.parse_args()
    print("## 504 latency against the deadline (one slot, scoring_timeout_ms as shown)\n")
    print("| run() is stuck in | deadline ms | median late ms | worst late ms | calls |")
    print("|---|---:|---:|---:|---:|")
    for row in timeouts(args.timeout_ms, args.repeat):
        print(row, flush=True)
    print("\n## /health/live latency (ms) while scoring is saturated or hung (2 slots)\n")
    print("| situation | p50 | p99 | max | probes |")
    print("|---|---:|---:|---:|---:|")
    for row in probes(args.probes):
        print(row, flush=True)
    print("\n## Admission path\n")
    print(admission_cost())


if __name__ == "__main__":
    main()
