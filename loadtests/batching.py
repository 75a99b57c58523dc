"""Dynamic batching on against off: the example model over V2, one pinned server core.

    .venv/bin/python -m loadtests.batching                  # 3 rounds, 64 and 1 connections
    .venv/bin/python -m loadtests.batching --rounds 5 --duration 10 --conns 64,16,1

Two scorehost servers serve a copy of ``examples/model/model.onnx`` (64 -> 64 -> 64 -> 8 MLP)
as the model ``example``: one as it is (batching off), one with ``example.scorehost.json``
turning dynamic batching on (``--max-batch``, ``--delay-us``). Both are pinned to
``--server-cpus`` (one core: the HTTP process and its worker share it) and started once; wrk,
pinned to ``--load-cpus``, posts one V2 JSON request (``[1, 64]`` FP32, the example's sample row)
to ``/v2/models/example/infer``. Every round runs every (variant, connections) cell once, in a
shuffled order; the table holds the medians over the rounds, the mean batch size from the
server's own ``/metrics`` (``scorehost_batch_size`` sum / count during the cell), the server CPU
each request cost the HTTP process and its worker (``/proc``, over the cell), and the load other
tenants put on the machine meanwhile (``foreign``, in cores). Under the table it prints the ceiling
that split implies: batching shares only the worker's cost, so even a free worker gives at most
(HTTP_off + worker_off) / HTTP_on.

The targets (issue 15): at 64 connections, batching on serves at least 3x the requests per
second of batching off, with a p99 no worse; at 1 connection, its p50 is at most 5% above off's.
Exit status 1 when a target is missed (the machine may be shared: look at ``foreign``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests import REPO, RESULTS, cpu, generators, server_metrics, servers
from loadtests.models import make_mlp

log = logging.getLogger("loadtests")

MODEL = "example"
PATH = f"/v2/models/{MODEL}/infer"
VARIANTS = ("off", "on")


@dataclass
class Cell:
    variant: str
    conns: int
    round: int
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    errors: int = 0
    mean_batch: float | None = None
    srv_cores: float = 0.0
    http_us: float | None = None  # server CPU per request: the HTTP process
    worker_us: float | None = None  # and its worker
    foreign_cores: float = 0.0
    failed: str = ""


@dataclass
class Summary:
    variant: str
    conns: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    mean_batch: float | None
    errors: int
    foreign_cores: float
    rounds: int
    http_us: float | None = None
    worker_us: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each cell, not recorded")
    p.add_argument("--conns", default="64,1", help="connection counts, comma-separated")
    p.add_argument("--max-batch", type=int, default=64, help="max_batch_size of the 'on' model")
    p.add_argument("--delay-us", type=int, default=0, help="max_queue_delay_us of the 'on' model")
    p.add_argument("--server-cpus", default="0", help="taskset CPU list of both servers")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list of wrk")
    p.add_argument("--hidden", type=int, default=0,
                   help="serve a 64 -> N -> N -> 8 MLP instead of the example (64 -> 64 -> 64 -> 8)")  # fmt: skip
    p.add_argument("--access-log", action="store_true", help="keep the access log on (off by default: both)")
    p.add_argument("--seed", type=int, default=None, help="shuffle seed (default: random)")
    p.add_argument("--out", type=Path, default=None, help="result folder (default loadtests/results/batching-<time>)")
    return p


def model_dirs(root: Path, max_batch: int, delay_us: int, hidden: int = 0) -> dict[str, Path]:
    """``root/off`` and ``root/on``, each holding ``example.onnx``; ``on`` with its batching config.

    ``hidden``: a wider MLP with the example's inputs and outputs instead of the example itself."""
    source = REPO / "examples" / "model" / "model.onnx"
    if hidden:
        source = make_mlp(root / "wide.onnx", n_in=64, n_hidden=hidden, n_out=8, hidden_layers=2,
                          input_name="data", output_name="predictions")  # fmt: skip
    out = {}
    for variant in VARIANTS:
        folder = root / variant
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, folder / f"{MODEL}.onnx")
        out[variant] = folder
    config = {"max_batch_size": max_batch, "max_queue_delay_us": delay_us}
    (out["on"] / f"{MODEL}.scorehost.json").write_text(json.dumps(config))
    return out


def request_body(path: Path) -> Path:
    """The example's sample row as a V2 request, written to ``path``."""
    row = json.loads((REPO / "examples" / "sample-request.json").read_text())["data"][0]
    body = {"inputs": [{"name": "data", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    path.write_text(json.dumps(body))
    return path


def batch_totals(url: str) -> tuple[float, float] | None:
    """(sum, count) of ``scorehost_batch_size`` (every source), or None without /metrics."""
    scrape = server_metrics.scrape(url + "/metrics")
    if scrape is None:
        return None
    sums = scrape.get("batch", {})
    return float(sums.get("sum", 0.0)), float(sums.get("count", 0.0))


def measure(cell: Cell, server: servers.Server, body: Path, args: argparse.Namespace) -> None:
    if args.warmup > 0:
        generators.run_wrk(server.url, body, cell.conns, args.warmup, args.load_cpus, path=PATH)
    before = batch_totals(server.url)
    srv0, busy0 = cpu.tree_cpu_seconds(server.pid), cpu.system_busy_seconds()
    http0 = cpu.process_cpu_seconds(server.pid)
    kids0, self0 = cpu.children_cpu_seconds(), cpu.own_cpu_seconds()
    t0 = time.monotonic()
    load = generators.run_wrk(server.url, body, cell.conns, args.duration, args.load_cpus, path=PATH)
    wall = time.monotonic() - t0
    srv = cpu.tree_cpu_seconds(server.pid) - srv0
    http = cpu.process_cpu_seconds(server.pid) - http0
    gen = cpu.children_cpu_seconds() - kids0
    mine = cpu.own_cpu_seconds() - self0
    busy = cpu.system_busy_seconds() - busy0
    after = batch_totals(server.url)
    cell.srv_cores = round(srv / wall, 3)
    cell.foreign_cores = round(max(busy - srv - gen - mine, 0.0) / wall, 3)
    if isinstance(load, str):
        cell.failed = load
        return
    cell.rps, cell.p50_ms, cell.p99_ms = load.rps, load.p50_ms, load.p99_ms
    cell.requests, cell.errors = load.requests, load.errors
    if load.requests:
        cell.http_us = round(http * 1e6 / load.requests, 1)
        cell.worker_us = round((srv - http) * 1e6 / load.requests, 1)
    if before is not None and after is not None and after[1] > before[1]:
        cell.mean_batch = round((after[0] - before[0]) / (after[1] - before[1]), 2)
    if not server.alive():
        cell.failed = f"{server.name} died: {server.log_tail(5)}"


def summarize(cells: list[Cell]) -> list[Summary]:
    out = []
    keys = sorted({(c.variant, c.conns) for c in cells}, key=lambda k: (-k[1], k[0]))
    for variant, conns in keys:
        ok = [c for c in cells if (c.variant, c.conns) == (variant, conns) and not c.failed]
        if not ok:
            continue

        def med(values: list[float | None]) -> float | None:
            kept = [v for v in values if v is not None]
            return statistics.median(kept) if kept else None

        out.append(
            Summary(
                variant,
                conns,
                rps=statistics.median(c.rps for c in ok),
                p50_ms=med([c.p50_ms for c in ok]),
                p99_ms=med([c.p99_ms for c in ok]),
                mean_batch=med([c.mean_batch for c in ok]),
                errors=sum(c.errors for c in ok),
                foreign_cores=statistics.median(c.foreign_cores for c in ok),
                rounds=len(ok),
                http_us=med([c.http_us for c in ok]),
                worker_us=med([c.worker_us for c in ok]),
            )
        )
    return out


def checks(rows: list[Summary]) -> list[tuple[str, bool, str]]:
    """The issue's targets, judged on the medians."""
    by = {(r.variant, r.conns): r for r in rows}
    out = []
    on, off = by.get(("on", 64)), by.get(("off", 64))
    if on and off and off.rps:
        ratio = on.rps / off.rps
        out.append(("64 connections: on >= 3x the req/s of off", ratio >= 3.0, f"{ratio:.2f}x"))
        if on.p99_ms is not None and off.p99_ms is not None:
            out.append(("64 connections: on p99 <= off p99", on.p99_ms <= off.p99_ms,
                        f"{on.p99_ms:.2f} vs {off.p99_ms:.2f} ms"))  # fmt: skip
    on, off = by.get(("on", 1)), by.get(("off", 1))
    if on and off and on.p50_ms is not None and off.p50_ms:
        cost = on.p50_ms / off.p50_ms - 1.0
        out.append(("1 connection: on p50 at most 5% above off", cost <= 0.05, f"{cost * 100:+.1f}%"))
    return out


def ceiling(rows: list[Summary], conns: int = 64) -> str | None:
    """What batching can give at most on this server, from the CPU each process spent per request.

    Batching shares the worker's cost among a batch; the HTTP process still parses, routes and
    answers every request. Even if the worker cost nothing, on could serve at most
    (HTTP_off + worker_off) / HTTP_on times off's requests on one core.
    """
    by = {(r.variant, r.conns): r for r in rows}
    on, off = by.get(("on", conns)), by.get(("off", conns))
    if not (on and off and on.http_us and off.http_us and off.worker_us is not None):
        return None
    whole_off = off.http_us + off.worker_us
    return (
        f"Ceiling at {conns} connections: off spent {off.http_us:.0f} + {off.worker_us:.0f} µs of server CPU "
        f"per request (HTTP process + worker); on, {on.http_us:.0f} + {on.worker_us or 0:.0f}. With a worker that "
        f"cost nothing, on would reach {whole_off / on.http_us:.2f}x of off; 3x needs {whole_off / 3:.0f} µs "
        f"per request in all, less than the HTTP process alone spends."
        if whole_off / on.http_us < 3
        else f"Ceiling at {conns} connections: {whole_off / on.http_us:.2f}x of off with a worker that cost nothing."
    )


def markdown(rows: list[Summary], verdicts: list[tuple[str, bool, str]], meta: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def us(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [
        "| connections | batching | req/s | p50 ms | p99 ms | mean batch size | errors | server CPU µs/req: HTTP "
        "process + worker | foreign load (cores) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        batch = "-" if r.mean_batch is None else f"{r.mean_batch:.1f}"
        lines.append(f"| {r.conns} | {r.variant} | {r.rps:,.0f} | {ms(r.p50_ms)} | {ms(r.p99_ms)} | {batch} "
                     f"| {r.errors} | {us(r.http_us)} + {us(r.worker_us)} | {r.foreign_cores:.2f} |")  # fmt: skip
    lines.append("")
    for name, ok, value in verdicts:
        lines.append(f"- {'PASS' if ok else 'FAIL'}: {name} ({value})")
    limit = ceiling(rows)
    if limit:
        lines += ["", limit]
    lines += ["", f"Medians of {meta['rounds']} rounds of {meta['duration']:g} s per cell; {meta['setup']}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if generators.ensure_wrk(install=False) is None:
        log.error("wrk is missing (apt-get install wrk)")
        return 2
    conns = [int(c) for c in args.conns.split(",") if c.strip()]
    out = args.out or RESULTS / time.strftime("batching-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    env = {"SCOREHOST_SHUTDOWN_DELAY_S": "0", "SCOREHOST_ACCESS_LOG": "true" if args.access_log else "false"}
    started: dict[str, servers.Server] = {}
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="scorehost-batching-") as tmp:
        dirs = model_dirs(Path(tmp), args.max_batch, args.delay_us, args.hidden)
        body = request_body(Path(tmp) / "request.json")
        try:
            for variant in VARIANTS:
                started[variant] = servers.start("scorehost", entry_script=None, model_dir=dirs[variant],
                                                 log_path=out / f"server-{variant}.log", env=env,
                                                 cpus=args.server_cpus, name=f"batching-{variant}")  # fmt: skip
            for rnd in range(1, args.rounds + 1):
                plan = [(v, c) for v in VARIANTS for c in conns]
                rng.shuffle(plan)
                for variant, c in plan:
                    cell = Cell(variant, c, rnd)
                    measure(cell, started[variant], body, args)
                    cells.append(cell)
                    log.info("round %d %-3s c=%-3d %8.0f req/s p50 %s p99 %s batch %s foreign %.2f %s", rnd,
                             variant, c, cell.rps, cell.p50_ms, cell.p99_ms, cell.mean_batch, cell.foreign_cores,
                             cell.failed)  # fmt: skip
        finally:
            for server in started.values():
                servers.stop(server)
    rows = summarize(cells)
    verdicts = checks(rows)
    model = f"a 64 -> {args.hidden} -> {args.hidden} -> 8 MLP" if args.hidden else "the example model"
    setup = (
        f"{model}; both servers pinned to CPU {args.server_cpus} (HTTP process + 1 worker), wrk -t1 pinned to CPU "
        f"{args.load_cpus}; 'on': max_batch_size {args.max_batch}, max_queue_delay_us {args.delay_us}; "
        f"access log {'on' if args.access_log else 'off'}"
    )
    meta = {"rounds": args.rounds, "duration": args.duration, "setup": setup, "argv": sys.argv}
    text = markdown(rows, verdicts, meta)
    (out / "batching.md").write_text(text)
    (out / "batching.json").write_text(json.dumps({"meta": meta, "cells": [asdict(c) for c in cells],
                                                   "summary": [asdict(r) for r in rows]}, indent=1))  # fmt: skip
    print(text)
    print(f"results in {out}")
    return 0 if all(ok for _, ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
