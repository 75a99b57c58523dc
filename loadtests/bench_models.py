"""Benchmark of the model store with many models: time to ready, memory, threads, latency.

    .venv/bin/python loadtests/bench_models.py                      # 1,000 models, in-process
    .venv/bin/python loadtests/bench_models.py --server             # also through `scorehost serve`
    .venv/bin/python loadtests/bench_models.py --models 200 --ort-threads 1 --json out.json

It writes ``--models`` distinct MLPs (16 -> ``--hidden`` -> 2, ~78 KB each at the default
1024) in the Azure ML layout ``<dir>/<name>/1/model.onnx`` (kept with ``--dir``), then:

in-process  a fresh child process imports the store, opens it and measures, from /proc:
            wall time from process start to ready, RSS and OS threads before and after
            loading (and after one call to every model), then p50/p99 latency of one hot
            model against models picked at random, through ``Model.run`` and through
            ``V2Handler.handle`` (JSON infer), in alternating blocks.
--server    ``scorehost serve --model_dir DIR`` (no entry script: V2 serving), started as
            every load test starts it (``servers.start``): time from spawn to
            ``GET /health/ready`` 200 (polled every 20 ms), RSS and threads of the
            process tree, and p50/p99 of ``POST /v2/models/{name}/infer`` over one
            keep-alive connection, hot against random.

Targets (issue 4): ready < 10 s; threads independent of the model count; < 150 KB of
RSS per model above the model bytes; random-model p99 within 2x of hot-model p99.
Every run is bounded (``--timeout``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a file: python loadtests/bench_models.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import REPO, cpu, servers
from loadtests import models as model_gen

# One FP32 row of the 16 features every benchmark model takes.
V2_BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}, separators=(",", ":")
).encode()


# --- /proc helpers --------------------------------------------------------------------------
def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS (KB) and Threads of one process."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "p50_us": round(ordered[n // 2] * 1e6, 1),
        "p99_us": round(ordered[min(n - 1, int(n * 0.99))] * 1e6, 1),
        "n": n,
    }


def timed(fn: Callable[[str], object]) -> Callable[[str], float]:
    def call(name: str) -> float:
        t = time.perf_counter()
        fn(name)
        return time.perf_counter() - t

    return call


def hot_vs_random(
    call: Callable[[str], float], names: list[str], requests: int, deadline: float | None = None
) -> dict[str, Any]:
    """Latency of one hot model against models picked at random, after 200 warm-up calls.

    Blocks of 500 calls alternate between the two, every other block in reverse order,
    so drift over the run (caches, other tenants) falls on both alike.
    """
    rng = random.Random(1)
    hot = names[len(names) // 2]
    for _ in range(200):
        call(hot)
    hot_s: list[float] = []
    rand_s: list[float] = []
    for block in range(requests // 500):
        if deadline is not None and time.monotonic() > deadline:
            break
        for picks, out in (([hot] * 500, hot_s), ([rng.choice(names) for _ in range(500)], rand_s)):
            for name in picks if block % 2 == 0 else picks[::-1]:
                out.append(call(name))
    return {"hot": percentiles(hot_s), "random": percentiles(rand_s)}


# --- model generation -----------------------------------------------------------------------
def make_models(root: Path, count: int, hidden: int) -> tuple[list[str], int]:
    """The model folder (16 -> ``hidden`` -> 2 MLPs, one seed each) and its size in bytes."""
    names = model_gen.make_model_repo(root, count, prefix="m", n_hidden=hidden)
    return names, sum((root / name / "1" / "model.onnx").stat().st_size for name in names)


# --- in-process child -----------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: open the store, measure, print one JSON line."""
    started = float(os.environ["BENCH_SPAWNED_AT"])
    import numpy as np

    from server.models import open_store
    from server.settings import Settings
    from server.store.v2 import V2Handler

    before = proc_status()
    overrides: dict[str, Any] = {"model_dir": args.dir, "lazy_models": args.lazy}
    if args.ort_threads is not None:
        overrides["ort_threads"] = args.ort_threads
    settings = Settings(**overrides)
    t0 = time.time()
    store = open_store(settings)
    ready_at = time.time()
    ready, progress = store.readiness()
    time.sleep(0.1)  # joined loader threads can linger in /proc for a moment
    loaded = proc_status()
    names = [m.name for m in store.list()]
    handler = V2Handler(store, settings)
    x = np.ones((1, 16), np.float32)
    for name in names:  # one call each: first-run allocations, and lazy loads
        store.get(name).run({"x": x})
    after_run = proc_status()

    def run_call(name: str) -> None:
        store.get(name).run({"x": x})

    def v2_call(name: str) -> None:
        reply = handler.handle("POST", f"/v2/models/{name}/infer", "", V2_BODY)
        assert reply.status == 200, reply.body

    latency = {
        label: hot_vs_random(timed(fn), names, args.requests)
        for label, fn in (("model.run", run_call), ("v2.handle", v2_call))
    }
    print(
        json.dumps(
            {
                "ready": ready,
                "progress": {k: progress[k] for k in ("loaded", "failed", "total")},
                "spawn_to_ready_s": round(ready_at - started, 3),
                "open_store_s": round(ready_at - t0, 3),
                "rss_before_mb": round(before["VmRSS"] / 1024, 1),
                "rss_loaded_mb": round(loaded["VmRSS"] / 1024, 1),
                "rss_after_one_run_each_mb": round(after_run["VmRSS"] / 1024, 1),
                "threads_before": before["Threads"],
                "threads_loaded": loaded["Threads"],
                "threads_after_runs": proc_status()["Threads"],
                "ort_threads": settings.ort_threads,
                "model_compact": settings.model_compact,
                "latency": latency,
            }
        )
    )


def run_inprocess(args: argparse.Namespace, model_bytes: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--dir", args.dir, "--requests", str(args.requests)]
    if args.ort_threads is not None:
        cmd += ["--ort-threads", str(args.ort_threads)]
    if args.lazy:
        cmd.append("--lazy")
    path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "BENCH_SPAWNED_AT": repr(time.time()), "PYTHONPATH": path}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"in-process child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    n = result["progress"]["total"]
    per_model = (result["rss_after_one_run_each_mb"] - result["rss_before_mb"]) * 1024 * 1024 / n
    result["model_bytes_per_model_kb"] = round(model_bytes / n / 1024, 1)
    result["rss_per_model_kb"] = round(per_model / 1024, 1)
    result["rss_per_model_above_model_bytes_kb"] = round((per_model - model_bytes / n) / 1024, 1)
    return result


# --- server mode ------------------------------------------------------------------------------------
def run_server(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    env = {}
    if args.ort_threads is not None:
        env["SCOREHOST_ORT_THREADS"] = str(args.ort_threads)
    if args.lazy:
        env["SCOREHOST_LAZY_MODELS"] = "true"
    deadline = time.monotonic() + args.timeout
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        spawned = time.time()
        try:
            server = servers.start(
                "scorehost",
                entry_script=None,  # no entry script: V2 serving of the model folder
                model_dir=Path(args.dir),
                log_path=Path(tmp) / "server.log",
                env=env,
                timeout_s=args.timeout,
            )
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from exc
        ready_s = time.time() - spawned
        try:
            return _measure_server(server, names, args.requests, ready_s, deadline)
        finally:
            servers.stop(server)


def _measure_server(
    server: servers.Server, names: list[str], requests: int, ready_s: float, deadline: float
) -> dict[str, Any]:
    """RSS and threads of the process tree, then hot against random latency over one keep-alive connection."""
    pids = cpu.tree_pids(server.pid)
    status = [proc_status(p) for p in pids]
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)

    def post(name: str) -> float:
        t = time.perf_counter()
        conn.request("POST", f"/v2/models/{name}/infer", V2_BODY, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - t
        if response.status != 200:
            raise SystemExit(f"infer {name}: HTTP {response.status}")
        return elapsed

    for name in names:  # one call each, as in-process
        post(name)
    latency = hot_vs_random(post, names, requests, deadline)
    conn.close()
    return {
        "spawn_to_ready_s": round(ready_s, 3),
        "processes": len(pids),
        "rss_tree_mb": round(sum(s["VmRSS"] for s in status) / 1024, 1),
        "threads_tree": sum(s["Threads"] for s in status),
        "threads_per_process": [s["Threads"] for s in status],
        "latency": {"http": latency},
    }


# --- main -----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=1024, help="hidden width (1024: ~78 KB per model)")
    parser.add_argument("--dir", help="model folder to create or reuse (default: a temporary one)")
    parser.add_argument("--requests", type=int, default=4000, help="timed calls per path (hot + random)")
    parser.add_argument("--ort-threads", type=int, default=None, help="SCOREHOST_ORT_THREADS (default: settings)")
    parser.add_argument("--lazy", action="store_true", help="lazy_models")
    parser.add_argument("--server", action="store_true", help="also measure `scorehost serve`")
    parser.add_argument("--timeout", type=float, default=60.0, help="limit for each measured process, s")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        args.dir = args.dir or tmp
        t = time.perf_counter()
        names, model_bytes = make_models(Path(args.dir), args.models, args.hidden)
        print(f"{len(names)} models, {model_bytes / 1e6:.1f} MB, ready in {time.perf_counter() - t:.1f} s")
        results: dict[str, Any] = {
            "models": len(names),
            "model_bytes": model_bytes,
            "cpus": len(os.sched_getaffinity(0)),
            "ort_threads": args.ort_threads,
            "lazy": args.lazy,
            "inprocess": run_inprocess(args, model_bytes),
        }
        if args.server:
            results["server"] = run_server(args, names)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
