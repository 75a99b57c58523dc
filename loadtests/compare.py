"""Side-by-side benchmark: scorehost against azmlinfsrv and the Starlette floor.

    python -m loadtests.compare --duration 3 --rounds 1          # quick (~2 min)
    python -m loadtests.compare --duration 8 --rounds 3          # full (~13 min)

Every system serves the same score.py and gets the same bodies. All servers run at
once, pinned to --server-cpus (cpu0), and idle while another is measured; the load
generator runs pinned to --load-cpus (cpu1). Each round runs every cell (system x
workload x concurrency) once, in a shuffled order; tables give the median of the rounds.

Systems:
    scorehost   this repo's server (``scorehost serve``), with its defaults (access log on, like azmlinfsrv)
    azmlinfsrv  azureml-inference-server-http 1.5.1 in its own virtualenv (loadtests/.venv-aml,
                created here on first use), bound to 127.0.0.1 by loadtests/aml_serve.py
    floor       loadtests/floor_app.py: Starlette + orjson calling run() on the event loop

Workloads: echo (loadtests/scripts/echo.py, batch-1 body), model-b1 and model-b64 (the
example ONNX MLP, examples/score.py). Generators: wrk (one thread; exact percentiles from
its histogram) and/or Locust (one process; tops out near 10k req/s, so its peak figures
measure Locust). Per cell the server's CPU time is read from /proc, and a cell is run
again once if other tenants used more than --max-foreign cores meanwhile.

Writes loadtests/results/compare-<time>/results.json and table.md, plus server logs.
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python loadtests/compare.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import RESULTS, cpu, generators, servers, tables
from loadtests import payloads as pl

log = logging.getLogger("loadtests")

# Which entry script serves a workload; every system serves it with the example model folder.
SCRIPTS = {"echo": servers.ECHO_SCRIPT, "model": servers.EXAMPLE_SCRIPT}


@dataclass(frozen=True)
class Workload:
    name: str
    script: str  # a key of SCRIPTS: which server instance serves it
    body: Path
    label: str


def workloads() -> dict[str, Workload]:
    b1 = pl.b1_file()
    b64 = pl.standard_files()[64]
    b1_label = f"batch 1 ({b1.stat().st_size} B)"
    return {
        "echo": Workload("echo", "echo", b1, f"echo script, {b1_label}"),
        "model-b1": Workload("model-b1", "model", b1, f"example ONNX MLP, {b1_label}"),
        "model-b64": Workload(
            "model-b64", "model", b64, f"example ONNX MLP, batch 64 ({b64.stat().st_size / 1024:.0f} KB)"
        ),
    }


@dataclass(kw_only=True)
class Cell(generators.Load):
    """One measurement: a system, a workload, a concurrency and a generator, in one round."""

    round: int
    system: str
    workload: str
    conc: int
    generator: str
    srv_cpu_us_per_req: float | None = None
    srv_cores: float = 0.0
    gen_cores: float = 0.0
    foreign_cores: float = 0.0
    wall_s: float = 0.0
    retried: bool = False
    failed: str = ""

    def record(self, load: generators.Load | str) -> None:
        """Take the generator's figures, or the reason it failed."""
        if isinstance(load, str):
            self.failed = load
            return
        for f in fields(generators.Load):
            setattr(self, f.name, getattr(load, f.name))

    def line(self) -> str:
        """The progress line's figures."""
        return self.failed or (
            f"{self.rps:9,.0f} req/s  p50 {tables.num(self.p50_ms)} ms  p99 {tables.num(self.p99_ms)} ms  "
            f"errors {self.errors}  srv {tables.num(self.srv_cpu_us_per_req, 0)} µs/req  "
            f"foreign {self.foreign_cores:.2f}"
        )


def measure(cell: Cell, server: servers.Server, body: Path, args: argparse.Namespace, work: Path) -> None:
    """Run the cell's generator against ``server`` and charge the CPU time it took to each party."""
    srv0, busy0 = cpu.tree_cpu_seconds(server.pid), cpu.system_busy_seconds()
    kids0, self0 = cpu.children_cpu_seconds(), cpu.own_cpu_seconds()
    t0 = time.monotonic()
    if cell.generator == "wrk":
        cell.record(generators.run_wrk(server.url, body, cell.conc, args.duration, args.load_cpus, args.header))
    else:
        out = work / f"locust-{cell.system}-{cell.workload}-c{cell.conc}-r{cell.round}"
        cell.record(generators.run_locust_steady(server.url, body, cell.conc, args.duration, args.load_cpus, out))
    wall = time.monotonic() - t0
    srv = cpu.tree_cpu_seconds(server.pid) - srv0
    gen = cpu.children_cpu_seconds() - kids0
    mine = cpu.own_cpu_seconds() - self0
    busy = cpu.system_busy_seconds() - busy0
    cell.wall_s = round(wall, 3)
    cell.srv_cores = round(srv / wall, 3)
    cell.gen_cores = round(gen / wall, 3)
    # Whatever else ran on the box meanwhile: other tenants, whose load skews the cell.
    cell.foreign_cores = round(max(busy - srv - gen - mine, 0.0) / wall, 3)
    cell.srv_cpu_us_per_req = round(srv / cell.requests * 1e6, 1) if cell.requests else None
    if not server.alive():
        cell.failed = cell.failed or f"{server.name} died: {server.log_tail(5)}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=8.0, help="seconds per cell (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every cell once (default 3)")
    p.add_argument("--workloads", default="echo,model-b1,model-b64", help="comma list of echo, model-b1, model-b64")
    p.add_argument("--conc", default="1,8,64", help="connections per cell, comma list (default 1,8,64)")
    p.add_argument("--systems", default=",".join(servers.SYSTEMS), help="comma list of scorehost, azmlinfsrv, floor")
    p.add_argument("--generator", choices=("wrk", "locust", "both"), default="wrk")
    p.add_argument("--server-cpus", default="0", help="taskset CPU list for every server ('' to not pin)")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list for the load generator ('' to not pin)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded load per server first")
    p.add_argument(
        "--max-foreign",
        type=float,
        default=0.2,
        help="re-run a cell once when other processes used more cores than this meanwhile",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the per-round shuffle")
    p.add_argument(
        "--scorehost-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for scorehost (default: scorehost's own defaults, access log on, as azmlinfsrv logs too)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:SPEC",
        help="an extra scorehost system to list in --systems: NAME:@PATH runs scorehost from another checkout "
        "(before/after), NAME:KEY=VALUE[,KEY=VALUE] adds environment (a feature on against off)",
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header sent to every system with every request (wrk; the body check too). A variant that sets "
        "SCOREHOST_PRIMARY_KEY gets 'Authorization: Bearer <key>' sent to every system unless one is given, "
        "so that all systems receive the same bytes",
    )
    p.add_argument("--aml-venv", type=Path, default=servers.AML_VENV)
    p.add_argument("--no-install", action="store_true", help="do not create the azmlinfsrv venv or install wrk")
    p.add_argument("--out", type=Path, help="result folder (default loadtests/results/compare-<time>)")
    return p


def _plan(args: argparse.Namespace) -> tuple[dict[str, Workload], list[str], list[int], list[str]]:
    """(workloads, systems, concurrencies, generators) asked for; exits on a bad value."""
    all_wls = workloads()
    wl_names = [w for w in args.workloads.split(",") if w]
    systems = [s for s in args.systems.split(",") if s]
    concs = [int(c) for c in args.conc.split(",") if c]
    gens = list(generators.GENERATORS) if args.generator == "both" else [args.generator]
    for w in wl_names:
        if w not in all_wls:
            raise SystemExit(f"unknown workload {w!r}; choose from {', '.join(all_wls)}")
    known = [*servers.SYSTEMS, *variants(args)]
    for s in systems:
        if s not in known:
            raise SystemExit(f"unknown system {s!r}; choose from {', '.join(known)}")
    if not servers.EXAMPLE_SCRIPT.exists() and any(all_wls[w].script == "model" for w in wl_names):
        raise SystemExit("examples/score.py is missing; run with --workloads echo")
    if args.rounds < 1 or args.duration <= 0:
        raise SystemExit("--rounds must be >= 1 and --duration > 0")
    return {w: all_wls[w] for w in wl_names}, systems, concs, gens


@dataclass
class Variant:
    """A scorehost system with its own checkout or environment (see --variant)."""

    checkout: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def variants(args: argparse.Namespace) -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for item in args.variant:
        name, sep, spec = item.partition(":")
        if not sep or not name or name in servers.SYSTEMS:
            raise SystemExit(f"--variant {item!r}: expected NAME:@PATH or NAME:KEY=VALUE[,KEY=VALUE], NAME new")
        if spec.startswith("@"):
            checkout = Path(spec[1:]).resolve()
            if not (checkout / "server" / "__main__.py").exists():
                raise SystemExit(f"--variant {item!r}: {checkout} is not a scorehost checkout")
            out[name] = Variant(checkout=checkout)
        else:
            out[name] = Variant(env=servers.env_pairs(spec.split(","), "--variant"))
    return out


_SECRET_ENV = ("SCOREHOST_PRIMARY_KEY", "SCOREHOST_SECONDARY_KEY", "SCOREHOST_API_KEY", "SCOREHOST_TOKEN_SECRET")


def _auth_header(headers: list[str], extra: dict[str, Variant]) -> list[str]:
    """The headers to send: ``headers``, plus a variant's key as a bearer token when none is given."""
    if any(h.lower().startswith("authorization:") for h in headers):
        return headers
    for variant in extra.values():
        key = variant.env.get("SCOREHOST_PRIMARY_KEY") or variant.env.get("SCOREHOST_API_KEY")
        if key:
            return [*headers, f"Authorization: Bearer {key}"]
    return headers


def _masked(env: dict[str, str]) -> dict[str, str]:
    """results.json never holds a key."""
    return {k: "***" if k.upper() in _SECRET_ENV else v for k, v in env.items()}


def _masked_header(line: str) -> str:
    name, sep, _ = line.partition(":")
    return f"{name}: ***" if sep and name.strip().lower() == "authorization" else line


def _masked_variant(item: str) -> str:
    name, sep, spec = item.partition(":")
    if not sep or spec.startswith("@"):
        return item
    pairs = (p.partition("=") for p in spec.split(","))
    return f"{name}:" + ",".join(f"{k}={'***' if k.upper() in _SECRET_ENV else v}" for k, _, v in pairs)


def _meta(args: argparse.Namespace, wls: dict[str, Workload], sh_env: dict[str, str], aml: bool) -> dict[str, Any]:
    """What results.json records about the run: arguments, host, versions, workloads."""
    versions = {name: servers.dist_version(name) for name in ("scorehost", "locust", "starlette", "uvicorn")}
    versions["azmlinfsrv"] = servers.aml_version(args.aml_venv) if aml else None
    versions["onnxruntime"] = servers.dist_version("onnxruntime")
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": versions,
        "scorehost_env": " ".join(f"{k}={v}" for k, v in sh_env.items()),
        "workloads": {
            w.name: {"body": str(w.body), "bytes": w.body.stat().st_size, "label": w.label} for w in wls.values()
        },
    }


def _check_bodies(
    wls: dict[str, Workload],
    systems: list[str],
    running: dict[tuple[str, str], servers.Server],
    extra_headers: tuple[str, ...] | list[str] = (),
) -> None:
    """Every server answers 200 to its workloads' bodies before anything is measured."""
    headers = {"Content-Type": "application/json"}
    for line in extra_headers:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    for w in wls.values():
        for system in systems:
            srv = running[(system, w.script)]
            status = servers.http_status(
                srv.url + "/score",
                method="POST",
                body=w.body.read_bytes(),
                headers=headers,
                timeout_s=30,
            )
            if status != 200:
                raise RuntimeError(f"{srv.name} answered {status} to {w.name}'s body:\n{srv.log_tail()}")


def _run_cells(
    args: argparse.Namespace,
    plan: list[tuple[str, str, int, str]],
    wls: dict[str, Workload],
    running: dict[tuple[str, str], servers.Server],
    out: Path,
) -> list[Cell]:
    """Every round runs the plan once in a shuffled order; a cell disturbed by foreign load runs again once."""
    cells: list[Cell] = []
    total = len(plan) * args.rounds
    print(
        f"{total} cells of {args.duration:g} s ({len(plan)} per round x {args.rounds}); "
        f"about {total * (args.duration + 0.5) / 60:.1f} min -> {out}",
        flush=True,
    )
    for rnd in range(1, args.rounds + 1):
        order = list(plan)
        random.Random(args.seed + rnd).shuffle(order)
        for system, w, conc, gen in order:
            srv = running[(system, wls[w].script)]
            cell = Cell(round=rnd, system=system, workload=w, conc=conc, generator=gen)
            measure(cell, srv, wls[w].body, args, out)
            if not cell.failed and cell.foreign_cores > args.max_foreign:
                log.warning(
                    "foreign load %.2f cores during %s %s c=%d; running it again", cell.foreign_cores, system, w, conc
                )
                cell = Cell(round=rnd, system=system, workload=w, conc=conc, generator=gen, retried=True)
                measure(cell, srv, wls[w].body, args, out)
            cells.append(cell)
            print(
                f"[{len(cells):3d}/{total}] r{rnd} {system:<10} {w:<9} c={conc:<3d} {gen:<6} {cell.line()}", flush=True
            )
            if cell.failed and not srv.alive():
                raise RuntimeError(f"{srv.name} died during the run:\n{srv.log_tail()}")
    return cells


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    wls, systems, concs, gens = _plan(args)
    if "wrk" in gens and generators.ensure_wrk(not args.no_install) is None:
        return 2
    args.server_cpus = args.server_cpus or None
    args.load_cpus = args.load_cpus or None

    out: Path = args.out or RESULTS / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    # A throwaway server: no need to keep answering for 2 s after SIGTERM.
    sh_env = {"SCOREHOST_SHUTDOWN_DELAY_S": "0", **servers.env_pairs(args.scorehost_env, "--scorehost-env")}

    aml_python = servers.ensure_aml_venv(args.aml_venv, not args.no_install) if "azmlinfsrv" in systems else None
    meta = _meta(args, wls, sh_env, aml_python is not None)
    if "wrk" in gens:
        meta["versions"]["wrk"] = generators.wrk_version()
    running: dict[tuple[str, str], servers.Server] = {}
    extra = variants(args)
    args.header = _auth_header(args.header, extra)
    meta["variants"] = {
        k: {"checkout": str(v.checkout) if v.checkout else None, "env": _masked(v.env)} for k, v in extra.items()
    }
    meta["args"]["header"] = [_masked_header(h) for h in args.header]
    meta["args"]["variant"] = [_masked_variant(v) for v in args.variant]
    try:
        for system in systems:
            variant = extra.get(system)
            for script in sorted({w.script for w in wls.values()}):
                running[(system, script)] = servers.start(
                    "scorehost" if variant else system,
                    entry_script=SCRIPTS[script],
                    model_dir=servers.EXAMPLE_MODEL_DIR,
                    log_path=out / "logs" / f"{system}-{script}.log",
                    env={**sh_env, **variant.env} if variant else sh_env if system == "scorehost" else None,
                    cpus=args.server_cpus,
                    aml_python=aml_python,
                    name=f"{system}-{script}",
                    timeout_s=180,
                    checkout=variant.checkout if variant else None,
                )
        meta["pinning_verified"] = all(s.pinned() for s in running.values())
        _check_bodies(wls, systems, running, args.header)
        if args.warmup > 0 and "wrk" in gens:
            for srv in running.values():  # the batch-1 body is valid for the echo and the model script alike
                generators.run_wrk(srv.url, pl.b1_file(), 8, args.warmup, args.load_cpus, args.header)
        plan = [(s, w, c, g) for s in systems for w in wls for c in concs for g in gens]
        cells = _run_cells(args, plan, wls, running, out)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    finally:
        servers.stop_all(running)

    rows = [asdict(c) for c in cells]
    agg = tables.aggregate(rows)
    foreign = [c.foreign_cores for c in cells if not c.failed]
    meta["foreign"] = {
        "median": statistics.median(foreign) if foreign else 0.0,
        "max": max(foreign) if foreign else 0.0,
        "retried": sum(c.retried for c in cells),
    }
    meta["failed_cells"] = sum(1 for c in cells if c.failed)
    target_rows = tables.targets(agg, "wrk" if "wrk" in gens else gens[0], list(wls))
    results = {"meta": meta, "cells": rows, "medians": agg, "targets": target_rows}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = tables.compare_markdown(agg, target_rows, meta, {w.name: w.label for w in wls.values()})
    (out / "table.md").write_text(table)
    print()
    print(table)
    print(f"results: {out}/results.json, {out}/table.md")
    return 1 if meta["failed_cells"] else 0


if __name__ == "__main__":
    sys.exit(main())
