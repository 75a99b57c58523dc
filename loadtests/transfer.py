"""Transfer time against size: how long a large body or a large reply takes to cross scorehost.

    .venv/bin/python -m loadtests.transfer                              # this checkout
    .venv/bin/python -m loadtests.transfer --checkout /work/base        # before (that checkout) and after

The server serves ``loadtests/scripts/sizer.py`` (a @rawhttp script whose run() costs next
to nothing), pinned to ``--server-cpus``; this process is the client, pinned to
``--client-cpus``. For each size (1 KB to 99 MB by default) it measures, one request at a
time on a keep-alive connection:

    request  POST N bytes to /score, until the whole answer (the body's length) is read
    reply    GET /score?reply=N, until all N bytes of the answer are read

and gives the median of ``--repeats`` requests (fewer once a size has taken
``--cell-budget-s``: the slow sizes of an old checkout would otherwise take an hour). No
request may take longer than ``--cap-s``: it is cut there and shown as ``>CAP s``, the
server is restarted (it may still be busy with the cut request), and the larger sizes of
that direction are not tried (they would only take longer).

``--checkout PATH`` also runs scorehost from another checkout of this repository (an older
commit) with this virtualenv, first, and puts both in one table: before (the checkout)
and after (this tree). Every answer is checked: a POST must report N bytes, a reply must
be N bytes long.

Writes ``loadtests/results/transfer-<time>/results.json`` and ``table.md`` (also printed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import re
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python loadtests/transfer.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import REPO, RESULTS, cpu, servers

log = logging.getLogger("loadtests")

DIRECTIONS = ("request", "reply")
DEFAULT_SIZES = "1K,100K,1M,10M,50M,99M"
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2}


@dataclass
class Cell:
    """One direction and size against one server: every request's time, and how it ended."""

    direction: str
    size: int
    seconds: list[float] = field(default_factory=list)  # successful requests only
    capped: bool = False  # a request hit --cap-s
    skipped: bool = False  # not tried: a smaller size of this direction hit the cap
    error: str = ""  # a request failed or its answer was wrong

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


@dataclass
class Series:
    """All cells of one server (this tree, or --checkout)."""

    label: str
    checkout: str | None
    server_command: str
    cells: list[Cell] = field(default_factory=list)
    # Cores used by everything but this server and this client while the series ran: on a
    # shared machine it tells a slow server from a busy box.
    other_cores: float | None = None

    def cell(self, direction: str, size: int) -> Cell | None:
        return next((c for c in self.cells if c.direction == direction and c.size == size), None)


class Capped(Exception):
    """A request ran past --cap-s and was cut."""


def parse_size(text: str) -> int:
    """``1K``, ``100KB``, ``99M`` or plain bytes; K and M are decimal (1K = 1000 B), as the issue's figures."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KM]?B?)", text.strip().upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1K, 10M, 99M)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def size_text(n: int) -> str:
    for unit, div in (("MB", 1000**2), ("KB", 1000)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def time_text(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1000:.2f} ms" if s < 0.01 else f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


# --- the client ----------------------------------------------------------------------------


class Client:
    """One keep-alive connection; every request is cut at ``cap_s`` whatever the server does."""

    def __init__(self, url: str, cap_s: float) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.cap_s = host, int(port), cap_s
        self.conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            # The socket timeout bounds each single wait; the timer in timed() bounds the whole.
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.cap_s)
            self.conn.connect()
            assert self.conn.sock is not None
            self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.conn

    def timed(self, method: str, path: str, body: bytes | None) -> tuple[float, int, bytes]:
        """(seconds, status, answer) of one request, from the first byte sent to the last read."""
        conn = self._connection()
        cut = threading.Event()

        def cut_off() -> None:
            # Shutting the socket down wakes the blocked send or read at once.
            cut.set()
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.cap_s, cut_off)
        headers = {"Content-Type": "application/octet-stream"}
        started = time.perf_counter()
        timer.start()
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
            elapsed = time.perf_counter() - started
            if resp.will_close:
                self.close()
            return elapsed, resp.status, answer
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if cut.is_set():
                raise Capped from exc
            raise
        finally:
            timer.cancel()


def measure(client: Client, direction: str, size: int, body: bytes | None) -> float:
    """Seconds of one request of ``direction`` and ``size``; raises on a wrong answer."""
    if direction == "request":
        assert body is not None
        seconds, status, answer = client.timed("POST", "/score", body)
        if status != 200:
            raise RuntimeError(f"POST of {size} B: HTTP {status}: {answer[:200]!r}")
        got = json.loads(answer).get("bytes")
        if got != size:
            raise RuntimeError(f"POST of {size} B: the server got {got} B")
        return seconds
    seconds, status, answer = client.timed("GET", f"/score?reply={size}", None)
    if status != 200 or len(answer) != size:
        raise RuntimeError(f"reply of {size} B: HTTP {status}, {len(answer)} B: {answer[:200]!r}")
    return seconds


# --- one server -------------------------------------------------------------------------------


def server_env(cap_s: float) -> dict[str, str]:
    """Settings that keep the server's own limits out of the measurement."""
    grace = str(int(cap_s + 60))
    return {
        "SCOREHOST_MAX_REQUEST_BYTES": str(256 * 1024 * 1024),  # above the largest size, 413 otherwise
        # A slow transfer must be measured, not cut by the server's deadlines.
        "SCORING_TIMEOUT_MS": str(int((cap_s + 60) * 1000)),
        "SCOREHOST_BODY_READ_TIMEOUT_S": grace,
        "SCOREHOST_ACCESS_LOG": "false",
        "SCOREHOST_SHUTDOWN_DELAY_S": "0",
    }


def start(args: argparse.Namespace, checkout: Path | None, out: Path, label: str, n: int) -> servers.Server:
    return servers.start(
        "scorehost",
        entry_script=servers.SIZER_SCRIPT,
        model_dir=None,
        log_path=out / "logs" / f"{label}-{n}.log",
        env=server_env(args.cap_s),
        cpus=args.server_cpus or None,
        name=f"scorehost ({label})",
        checkout=checkout,
    )


def run_series(args: argparse.Namespace, checkout: Path | None, label: str, out: Path) -> Series:
    """Every direction and size against one server (restarted after a capped request)."""
    starts = 0
    server = start(args, checkout, out, label, starts)
    series = Series(label, str(checkout) if checkout else None, server.command_line())
    client = Client(server.url, args.cap_s)
    wall0, busy0, own0 = time.monotonic(), cpu.system_busy_seconds(), cpu.own_cpu_seconds()
    server_cpu = 0.0  # of the servers stopped so far

    def stop_server() -> None:
        nonlocal server_cpu
        client.close()
        server_cpu += cpu.tree_cpu_seconds(server.pid) if server.alive() else 0.0
        servers.stop(server)

    try:
        measure(client, "request", 1000, b"x" * 1000)  # warm-up: connection, worker, first call
        for direction in DIRECTIONS:
            capped = False
            for size in args.sizes:
                cell = Cell(direction, size)
                series.cells.append(cell)
                if capped:
                    cell.skipped = True
                    continue
                body = b"x" * size if direction == "request" else None
                spent = 0.0
                for _ in range(args.repeats):
                    try:
                        seconds = measure(client, direction, size, body)
                    except Capped:
                        cell.capped = capped = True
                        log.warning("%s %s of %s cut at %.0f s", label, direction, size_text(size), args.cap_s)
                        break
                    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as exc:
                        cell.error = f"{type(exc).__name__}: {exc}"
                        log.error("%s %s of %s failed: %s", label, direction, size_text(size), cell.error)
                        break
                    cell.seconds.append(seconds)
                    spent += seconds
                    if spent > args.cell_budget_s:
                        break
                log.info(
                    "%s %-7s %7s: %s (%d requests)",
                    label,
                    direction,
                    size_text(size),
                    f">{args.cap_s:.0f} s" if cell.capped else time_text(cell.median_s),
                    len(cell.seconds),
                )
                if cell.capped or cell.error or not server.alive():
                    # The server may still be working on the cut request: start afresh.
                    stop_server()
                    starts += 1
                    server = start(args, checkout, out, label, starts)
                    client = Client(server.url, args.cap_s)
    finally:
        stop_server()
    wall = max(time.monotonic() - wall0, 1e-9)
    other = cpu.system_busy_seconds() - busy0 - (cpu.own_cpu_seconds() - own0) - server_cpu
    series.other_cores = round(max(other, 0.0) / wall, 2)
    return series


# --- the table --------------------------------------------------------------------------------


def cell_text(cell: Cell | None, cap_s: float, repeats: int) -> str:
    if cell is None:
        return ""
    if cell.skipped:
        return "not run"
    if cell.capped:
        return f">{cap_s:.0f} s"
    if cell.error:
        return "failed"
    # A cell cut short by --cell-budget-s says on how many requests its median rests.
    fewer = f" (n={len(cell.seconds)})" if len(cell.seconds) < repeats else ""
    return time_text(cell.median_s) + fewer


def table(all_series: list[Series], sizes: list[int], cap_s: float, repeats: int) -> list[str]:
    """size | request per series | reply per series, medians."""
    heads = [f"{d}: {s.label}" for d in DIRECTIONS for s in all_series]
    lines = ["| size | " + " | ".join(heads) + " |", "|---:|" + "---:|" * len(heads)]
    for size in sizes:
        cells = [cell_text(s.cell(d, size), cap_s, repeats) for d in DIRECTIONS for s in all_series]
        lines.append(f"| {size_text(size)} | " + " | ".join(cells) + " |")
    return lines


def markdown(all_series: list[Series], args: argparse.Namespace, started: str) -> str:
    lines = [
        "# Transfer time against size",
        "",
        f"{started} on {os.cpu_count()} CPUs ({platform.machine()}), Python {platform.python_version()}; "
        f"server pinned to cpu {args.server_cpus or '-'}, client to cpu {args.client_cpus or '-'}; "
        f"median of up to {args.repeats} requests per cell (fewer once a cell took {args.cell_budget_s:g} s), "
        f"each cut at {args.cap_s:g} s.",
        "request: POST N bytes, until the answer is read; reply: GET ?reply=N, until all N bytes are read.",
        "",
        *table(all_series, args.sizes, args.cap_s, args.repeats),
        "",
    ]
    for s in all_series:
        where = f" (in {s.checkout})" if s.checkout else ""
        lines.append(f"- {s.label}: `{s.server_command}`{where}; other processes used {s.other_cores} cores meanwhile")
    failed = [f"{s.label} {c.direction} {size_text(c.size)}: {c.error}" for s in all_series for c in s.cells if c.error]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed)]
    if any(c.skipped for s in all_series for c in s.cells):
        lines += ["", f"not run: a smaller size of that direction already took more than {args.cap_s:g} s."]
    lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkout", type=Path, help="also measure scorehost run from this checkout (before)")
    parser.add_argument(
        "--sizes",
        type=lambda t: [parse_size(x) for x in t.split(",") if x.strip()],
        default=[parse_size(x) for x in DEFAULT_SIZES.split(",")],
        help=f"comma-separated sizes, K and M decimal (default {DEFAULT_SIZES})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="requests per cell, the median is shown (default 3)")
    parser.add_argument(
        "--cell-budget-s",
        type=float,
        default=30.0,
        help="stop repeating a cell once its requests took this long in all (default 30)",
    )
    parser.add_argument("--cap-s", type=float, default=120.0, help="longest a request may take (default 120)")
    parser.add_argument("--server-cpus", default="0", help="pin the server here ('' leaves it unpinned; default 0)")
    parser.add_argument("--client-cpus", default="1", help="pin this client here ('' leaves it unpinned; default 1)")
    parser.add_argument("--out", type=Path, help="result folder (default loadtests/results/transfer-<time>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.cap_s <= 0:
        raise SystemExit("--repeats must be at least 1 and --cap-s positive")
    if args.checkout is not None and not (args.checkout / "server" / "__main__.py").exists():
        raise SystemExit(f"{args.checkout} is not a checkout of this repository (no server/__main__.py)")
    if args.client_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpu.cpu_set(args.client_cpus))
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out: Path = args.out or RESULTS / f"transfer-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[Path | None, str]] = [(args.checkout.resolve(), "before")] if args.checkout else []
    plan.append((None, "after" if args.checkout else "scorehost"))
    all_series: list[Series] = []
    try:
        for checkout, label in plan:
            all_series.append(run_series(args, checkout, label, out))
    except RuntimeError as exc:  # a server that would not start
        log.error("%s", exc)
        return 2
    text = markdown(all_series, args, started)
    result: dict[str, Any] = {
        "started": started,
        "repo": str(REPO),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "series": [
            {**asdict(s), "cells": [{**asdict(c), "median_s": c.median_s} for c in s.cells]} for s in all_series
        ],
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(text)
    print(text)
    print(f"results: {out}/ (table.md, results.json, logs/)")
    return 1 if any(c.error for s in all_series for c in s.cells) else 0


if __name__ == "__main__":
    sys.exit(main())
