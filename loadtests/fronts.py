"""Multi-front serving: the echo script at 64 connections, 1 HTTP front against 2 (``http_processes``).

    flock /tmp/bench.lock .venv/bin/python -m loadtests.fronts --rounds 3 --duration 5

Both servers run at once with the same number of workers (``--workers``, default 2: each front
needs one), unpinned, so the kernel may put fronts, workers and wrk on any core; they idle while the
other is measured. Each round measures every variant once, in a shuffled order; the table gives
the medians. Per cell the server tree's CPU time (parent, fronts and workers, from /proc) is
charged to its requests, and whatever else ran on the machine is reported as foreign cores.
The generator is wrk (one thread), as in compare.py. Run it under ``flock`` on a shared machine,
so that no other benchmark overlaps it; a cell that other tenants disturbed anyway (more than
``--max-foreign`` cores) is run again once the machine is quiet, up to ``--tries`` times.

Writes loadtests/results/fronts-<time>/results.json and table.md, plus server logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python loadtests/fronts.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import RESULTS, cpu, generators, servers, tables
from loadtests import payloads as pl

log = logging.getLogger("loadtests")


@dataclass(kw_only=True)
class Cell(generators.Load):
    round: int
    fronts: int
    srv_cpu_us_per_req: float | None = None
    http_us_per_req: float | None = None  # the parent and the fronts
    worker_us_per_req: float | None = None
    srv_cores: float = 0.0
    foreign_cores: float = 0.0
    failed: str = ""
    tries: int = 1


def wait_quiet(max_cores: float, timeout_s: float) -> None:
    """Wait (bounded) until the whole machine uses less than ``max_cores`` (the servers idle meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy0 = cpu.system_busy_seconds()
        time.sleep(0.5)
        if (cpu.system_busy_seconds() - busy0) / 0.5 < max_cores:
            return
    log.warning("the machine did not become quiet within %.0f s; measuring anyway", timeout_s)


_TICK = os.sysconf("SC_CLK_TCK")


def split_cpu_seconds(root: int) -> tuple[float, float]:
    """(HTTP side: the parent and the fronts, the workers): CPU seconds of the server tree, from /proc."""
    http = work = 0.0
    for pid in cpu.tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                worker = b"server.workers.main" in f.read()
        except OSError:  # exited meanwhile
            continue
        seconds = (int(fields[11]) + int(fields[12])) / _TICK
        if worker:
            work += seconds
        else:
            http += seconds
    return http, work


def measure(cell: Cell, server: servers.Server, body: Path, args: argparse.Namespace) -> None:
    """One wrk run; the server tree's CPU time per request and the foreign load meanwhile."""
    split0 = split_cpu_seconds(server.pid)
    srv0, busy0 = cpu.tree_cpu_seconds(server.pid), cpu.system_busy_seconds()
    kids0, self0 = cpu.children_cpu_seconds(), cpu.own_cpu_seconds()
    t0 = time.monotonic()
    load = generators.run_wrk(server.url, body, args.conc, args.duration, None)
    wall = time.monotonic() - t0
    srv = cpu.tree_cpu_seconds(server.pid) - srv0
    split1 = split_cpu_seconds(server.pid)
    others = cpu.system_busy_seconds() - busy0 - srv - (cpu.children_cpu_seconds() - kids0)
    others -= cpu.own_cpu_seconds() - self0
    if isinstance(load, str):
        cell.failed = load
        return
    for name, value in asdict(load).items():
        setattr(cell, name, value)
    cell.srv_cores = round(srv / wall, 3)
    cell.foreign_cores = round(max(others, 0.0) / wall, 3)
    if cell.requests:
        cell.srv_cpu_us_per_req = round(srv / cell.requests * 1e6, 1)
        cell.http_us_per_req = round((split1[0] - split0[0]) / cell.requests * 1e6, 1)
        cell.worker_us_per_req = round((split1[1] - split0[1]) / cell.requests * 1e6, 1)


def _median(cells: list[Cell], key: str) -> float | None:
    values = [getattr(c, key) for c in cells if not c.failed and getattr(c, key) is not None]
    return statistics.median(values) if values else None


def table(cells: list[Cell], fronts: list[int], args: argparse.Namespace) -> str:
    lines = [
        f"echo script, batch-1 body, {args.conc} connections, wrk -t1, {args.workers} workers, unpinned; "
        f"medians of {args.rounds} rounds x {args.duration:g} s",
        "",
        "| HTTP fronts | req/s | p50 ms | p99 ms | server CPU µs/request | of which HTTP side | of which workers "
        "| server cores | foreign cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in fronts:
        mine = [c for c in cells if c.fronts == n]
        rps = _median(mine, "rps")
        lines.append(
            f"| {n} | {'n/a' if rps is None else f'{rps:,.0f}'} | {tables.num(_median(mine, 'p50_ms'))} | "
            f"{tables.num(_median(mine, 'p99_ms'))} | {tables.num(_median(mine, 'srv_cpu_us_per_req'), 1)} | "
            f"{tables.num(_median(mine, 'http_us_per_req'), 1)} | "
            f"{tables.num(_median(mine, 'worker_us_per_req'), 1)} | "
            f"{tables.num(_median(mine, 'srv_cores'))} | {tables.num(_median(mine, 'foreign_cores'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--conc", type=int, default=64, help="connections (default 64)")
    p.add_argument("--fronts", default="1,2", help="HTTP front counts to compare (default 1,2)")
    p.add_argument("--workers", type=int, default=2, help="workers of every variant (default 2)")
    p.add_argument("--max-foreign", type=float, default=0.2, help="run a cell again above this foreign load")
    p.add_argument("--tries", type=int, default=4, help="most runs of one cell (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded load per server first")
    p.add_argument("--out", type=Path, help="result folder (default loadtests/results/fronts-<time>)")
    args = p.parse_args(argv)
    fronts = [int(n) for n in args.fronts.split(",") if n]
    if any(n > args.workers for n in fronts):
        raise SystemExit("every front needs a worker: --workers must be >= the largest --fronts")
    if generators.ensure_wrk(False) is None:
        return 2
    out: Path = args.out or RESULTS / f"fronts-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    body = pl.b1_file()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    running: dict[int, servers.Server] = {}
    cells: list[Cell] = []
    try:
        for n in fronts:
            running[n] = servers.start(
                "scorehost",
                entry_script=servers.ECHO_SCRIPT,
                model_dir=None,
                log_path=out / "logs" / f"fronts-{n}.log",
                env={"SCOREHOST_SHUTDOWN_DELAY_S": "0", "SCOREHOST_HTTP_PROCESSES": str(n)},
                workers=args.workers,
                name=f"scorehost-{n}-fronts",
            )
        for srv in running.values():
            generators.run_wrk(srv.url, body, 8, args.warmup, None)
        for rnd in range(1, args.rounds + 1):
            order = list(fronts)
            random.Random(rnd).shuffle(order)
            for n in order:
                for attempt in range(1, args.tries + 1):
                    wait_quiet(args.max_foreign, 120)
                    cell = Cell(round=rnd, fronts=n, tries=attempt)
                    measure(cell, running[n], body, args)
                    if cell.failed or cell.foreign_cores <= args.max_foreign:
                        break
                    log.warning("foreign load %.2f cores during fronts=%d; again", cell.foreign_cores, n)
                cells.append(cell)
                print(f"r{rnd} fronts={n}: {cell.failed or f'{cell.rps:,.0f} req/s'} "
                      f"p99 {tables.num(cell.p99_ms)} ms, {tables.num(cell.srv_cpu_us_per_req, 1)} µs/req, "
                      f"foreign {cell.foreign_cores:.2f}", flush=True)  # fmt: skip
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    finally:
        servers.stop_all(running)
    text = table(cells, fronts, args)
    meta: dict[str, Any] = {
        "started": started,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()},
        "wrk": generators.wrk_version(),
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "cells": [asdict(c) for c in cells]}, indent=1))
    (out / "table.md").write_text(text)
    print()
    print(text)
    print(f"results: {out}/results.json, {out}/table.md")
    return 1 if any(c.failed for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
