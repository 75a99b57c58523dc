"""A normal client's latency while many slow clients hold connections (slowloris), and what the
read deadlines do to those connections.

Phases, against one scorehost serving the echo script on 127.0.0.1:

1. baseline: one keep-alive client sends ``--requests`` small POST /score, one after another;
2. ``--slow`` connections open, each sends a partial request head (``--mode head``) or a head
   and part of its body (``--mode body``), then trickles one more byte every ``--trickle-s``;
3. the same client measures again while they are all connected (the server's read timeouts are
   raised for this, so none is cut while we measure);
4. the slow connections are left alone until the server closes them, and the time to close and
   the answers they got (408) are counted. Use ``--read-timeout-s`` to set the header and body
   timeouts for the whole run instead (phase 3 then has to fit inside it).

    .venv/bin/python -m loadtests.slow_clients --slow 1000 --requests 3000

``--root DIR`` runs ``python -m server`` from another checkout (to compare with an older tree).
The server's HTTP process CPU time and memory are reported per phase.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from loadtests import REPO, cpu
from loadtests.servers import ECHO_SCRIPT, free_port, http_status

HEAD = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def http_cpu_s(pid: int) -> float:
    """CPU seconds of the HTTP process alone (not its workers)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.I)
    if match:
        await reader.readexactly(int(match.group(1)))
    return int(head.split(b" ", 2)[1])


async def normal_client(port: int, requests: int) -> list[float]:
    """Latencies (ms) of sequential requests over one keep-alive connection."""
    body = b'{"x": [1, 2, 3]}'
    raw = HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            writer.write(raw)
            status = await read_response(reader)
            out.append((time.perf_counter() - started) * 1000.0)
            if status != 200:
                raise RuntimeError(f"normal client got {status}")
    finally:
        writer.close()
    return out


class Slow:
    """One slow client: a partial head (or body), then a byte now and then."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.opened = 0.0
        self.closed_after: float | None = None
        self.status: int | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, trickle_s: float, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        self.opened = time.monotonic()
        if self.mode == "head":
            writer.write(HEAD + b"X-Slow: ")
        else:
            writer.write(HEAD + b"Content-Length: 100000\r\n\r\n[")
        watcher = asyncio.ensure_future(self._watch(reader))
        try:
            while not stop.is_set() and not watcher.done():
                try:
                    await asyncio.wait_for(stop.wait(), trickle_s)
                except TimeoutError:
                    pass
                if not watcher.done() and not writer.is_closing():
                    writer.write(b"a" if self.mode == "head" else b"1")
            await asyncio.wait_for(asyncio.shield(watcher), 0.5) if not watcher.done() else None
        except (TimeoutError, ConnectionError):
            pass
        finally:
            watcher.cancel()
            writer.close()

    async def _watch(self, reader: asyncio.StreamReader) -> None:
        """Wait until the server answers or closes."""
        try:
            self.status = await read_response(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.closed_after = time.monotonic() - self.opened


def summary(name: str, lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100)
    return f"{name}: n={len(lat)} p50 {statistics.median(lat):.3f} ms, p99 {q[98]:.3f} ms, max {max(lat):.2f} ms"


async def main_async(args: argparse.Namespace, port: int, pid: int) -> None:
    await normal_client(port, min(200, args.requests))  # warm-up
    cpu0 = http_cpu_s(pid)
    base = await normal_client(port, args.requests)
    print(summary("baseline, no slow clients", base), f"| HTTP process {rss_mb(pid):.0f} MB")
    stop = asyncio.Event()
    slow = [Slow(args.mode) for _ in range(args.slow)]
    tasks = []
    for i, client in enumerate(slow):
        tasks.append(asyncio.ensure_future(client.run(port, args.trickle_s, stop)))
        if i % 100 == 99:
            await asyncio.sleep(0.01)
    await asyncio.sleep(1.0)
    connected = sum(1 for c in slow if c.writer is not None and c.closed_after is None)
    cpu1 = http_cpu_s(pid)
    loaded = await normal_client(port, args.requests)
    cpu2 = http_cpu_s(pid)
    print(
        summary(f"with {connected} slow clients connected ({args.mode})", loaded),
        f"| HTTP process {rss_mb(pid):.0f} MB",
    )
    per_request = (cpu1 - cpu0) / args.requests * 1e6, (cpu2 - cpu1) / args.requests * 1e6
    print(
        f"HTTP process CPU per normal request: baseline {per_request[0]:.0f} us (slow-client set-up included), "
        f"with slow clients {per_request[1]:.0f} us (their trickle included)"
    )
    if args.wait_s > 0:
        deadline = time.monotonic() + args.wait_s
        while time.monotonic() < deadline and any(c.closed_after is None for c in slow):
            await asyncio.sleep(0.25)
        closed = [c.closed_after for c in slow if c.closed_after is not None]
        statuses: dict[str, int] = {}
        for c in slow:
            key = str(c.status) if c.status is not None else ("closed" if c.closed_after is not None else "open")
            statuses[key] = statuses.get(key, 0) + 1
        line = f"slow clients after {args.wait_s:.0f} s: {statuses}"
        if closed:
            line += (
                f"; closed by the server after {min(closed):.1f} / {statistics.median(closed):.1f} / "
                f"{max(closed):.1f} s (min / median / max)"
            )
        print(line, f"| HTTP process {rss_mb(pid):.0f} MB")
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", type=int, default=1000, help="slow connections (default 1000)")
    parser.add_argument("--requests", type=int, default=3000, help="normal requests per phase (default 3000)")
    parser.add_argument("--mode", choices=("head", "body"), default="head")
    parser.add_argument("--trickle-s", type=float, default=1.0, help="a slow client sends a byte this often")
    parser.add_argument(
        "--read-timeout-s", type=float, default=None, help="server header/body read timeout (default: 30 s for phase 3)"
    )
    parser.add_argument("--wait-s", type=float, default=45.0, help="phase 4: wait this long for the closes (0: skip)")
    parser.add_argument("--cpus", default=None, help="pin the server to these CPUs (taskset list), e.g. 0")
    parser.add_argument("--root", type=Path, default=REPO, help="the checkout whose server to run")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the server (repeatable)")
    args = parser.parse_args()
    port = free_port()
    timeout = str(args.read_timeout_s if args.read_timeout_s is not None else 30.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOREHOST_", "AZUREML_", "AML_"))}
    env.update(
        SCOREHOST_ACCESS_LOG="false",
        SCOREHOST_HEADER_READ_TIMEOUT_S=timeout,
        SCOREHOST_BODY_READ_TIMEOUT_S=timeout,
        SCOREHOST_MAX_CONNECTIONS=str(max(4096, args.slow + 100)),
    )
    for item in args.server_env:
        key, _, value = item.partition("=")
        env[key] = value
    cmd = [
        *cpu.taskset_prefix(args.cpus),
        str(REPO / ".venv" / "bin" / "python"),
        "-m",
        "server",
        "serve",
        "--entry_script",
        str(ECHO_SCRIPT),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd, cwd=args.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while http_status(f"http://127.0.0.1:{port}/health/ready", timeout_s=2.0) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start (exit {proc.poll()})")
            time.sleep(0.05)
        print(f"server: {' '.join(cmd)} (cwd {args.root}), read timeouts {timeout} s")
        asyncio.run(main_async(args, port, proc.pid))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
