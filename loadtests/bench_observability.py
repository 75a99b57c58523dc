"""What metrics and tracing cost per request, in server CPU time, robust to a busy machine.

    .venv/bin/python -m loadtests.bench_observability [--rounds 7] [--requests 20000] [--conc 64]

``compare.py`` measures throughput with wrk, which other tenants of a shared machine disturb.
This measures CPU time instead: each variant runs in its own process, the app in-process
(``create_app`` on a real worker pool and worker, driven through ASGI with ``--conc`` calls in
flight, no HTTP parsing), and the figure is the CPU seconds the HTTP process and its worker
used per request (``/proc``), background threads included (the span exporter's). Variants run
interleaved, ``--rounds`` times each; the table gives medians. Spans go to a do-nothing OTLP
receiver in this process. The script is ``loadtests/scripts/echo.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import random
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import cpu, payloads, servers

VARIANTS: dict[str, dict[str, str]] = {
    "metrics off": {"SCOREHOST_METRICS": "false"},
    "metrics on (default)": {},
    "metrics + tracing (100% sampled, OTLP)": {"SCOREHOST_TRACING": "true", "OTEL_TRACES_SAMPLER": "always_on"},
}


def _sink() -> tuple[http.server.ThreadingHTTPServer, str]:
    class Sink(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    return sink, f"http://127.0.0.1:{sink.server_address[1]}"


async def _child(requests: int, conc: int) -> float:
    """CPU µs per request of this process and its worker, after a warm-up."""
    from server.http.app import create_app
    from server.settings import Settings
    from server.workers.pool import WorkerPool

    settings = Settings(entry_script=str(servers.ECHO_SCRIPT), access_log=False)
    pool = WorkerPool(settings)
    app = create_app(settings, pool, manage_pool=False)
    await pool.start()
    while not pool.ready():
        await asyncio.sleep(0.02)
    body = payloads.b1_file().read_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def one() -> None:
        scope = {"type": "http", "method": "POST", "path": "/score", "headers": headers, "query_string": b"",
                 "server": ("127.0.0.1", 5001), "client": ("127.0.0.1", 1), "scheme": "http"}  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                raise RuntimeError(f"status {message['status']}")

        await app(scope, receive, send)

    async def run(n: int) -> None:
        todo = iter(range(n))

        async def client() -> None:
            for _ in todo:
                await one()

        await asyncio.gather(*(client() for _ in range(conc)))

    await run(max(2000, requests // 5))  # warm-up: pipelining settles, code paths are hot
    worker = pool.workers[0].proc
    assert worker is not None
    before = cpu.own_cpu_seconds() + cpu.tree_cpu_seconds(worker.pid)
    await run(requests)
    used = cpu.own_cpu_seconds() + cpu.tree_cpu_seconds(worker.pid) - before
    await pool.stop(5)
    return used / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_observability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--conc", type=int, default=64)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        import uvloop

        print(json.dumps(uvloop.run(_child(args.requests, args.conc))))
        return 0
    sink, url = _sink()
    results: dict[str, list[float]] = {name: [] for name in VARIANTS}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCOREHOST_", "OTEL_"))}
    for rnd in range(args.rounds):
        order = list(VARIANTS)
        random.Random(rnd).shuffle(order)
        for name in order:
            env = {**base, **VARIANTS[name], "OTEL_EXPORTER_OTLP_ENDPOINT": url, "SCOREHOST_LOG_LEVEL": "warning"}
            cmd = [sys.executable, "-m", "loadtests.bench_observability", "--child", "--requests", str(args.requests),
                   "--conc", str(args.conc)]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False,
                                 cwd=servers.REPO)  # fmt: skip
            if out.returncode != 0:
                print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
                return 2
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {rnd + 1}: {name}: {results[name][-1]:.1f} µs/request", flush=True)
    sink.shutdown()
    off = statistics.median(results["metrics off"])
    print("\n| variant | server CPU µs/request, median [min-max] | vs metrics off |")
    print("|---|---:|---:|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} [{min(values):.1f}-{max(values):.1f}] | {med - off:+.1f} µs ({med / off:.3f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
