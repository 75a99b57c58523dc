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
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python loadtests/compare.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import analysis, procs
from loadtests import payloads as pl

log = logging.getLogger("loadtests")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
LUA = HERE / "wrk" / "post.lua"
AML_VENV = HERE / ".venv-aml"
AML_PACKAGE = "azureml-inference-server-http==1.5.1"
EXAMPLE_SCRIPT = REPO / "examples" / "score.py"
EXAMPLE_MODEL_DIR = REPO / "examples" / "model"
ECHO_SCRIPT = HERE / "scripts" / "echo.py"

SYSTEMS = ("scorehost", "azmlinfsrv", "floor")
GENERATORS = ("wrk", "locust")
TARGET_CONC = 64
TARGETS = {"vs_aml_rps": 6.0, "vs_aml_p99": 1 / 5, "vs_floor_rps": 0.8}
# wrk stops itself after -d; past this grace the runner kills it.
CELL_GRACE_S = 30.0


@dataclass(frozen=True)
class Workload:
    name: str
    script: str  # "echo" or "model": which server instance serves it
    body: Path
    label: str


def workloads() -> dict[str, Workload]:
    b1 = pl.b1_file()
    b64 = pl.standard_files()[64]
    return {
        "echo": Workload("echo", "echo", b1, f"echo script, batch 1 ({b1.stat().st_size} B)"),
        "model-b1": Workload("model-b1", "model", b1, f"example ONNX MLP, batch 1 ({b1.stat().st_size} B)"),
        "model-b64": Workload(
            "model-b64", "model", b64, f"example ONNX MLP, batch 64 ({b64.stat().st_size / 1024:.0f} KB)"
        ),
    }


@dataclass
class Cell:
    round: int
    system: str
    workload: str
    conc: int
    generator: str
    rps: float = 0.0
    requests: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    errors: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)
    srv_cpu_us_per_req: float | None = None
    srv_cores: float = 0.0
    gen_cores: float = 0.0
    foreign_cores: float = 0.0
    wall_s: float = 0.0
    retried: bool = False
    failed: str = ""


# --- setup -----------------------------------------------------------------------


def ensure_wrk(install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or not install:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log.error("wrk is missing: install it with `apt-get update && apt-get install -y wrk` (as root)")
        return None
    log.info("installing wrk with apt-get (Debian package wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env, timeout=600)
    return shutil.which("wrk")


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def aml_version(venv: Path) -> str | None:
    py = venv / "bin" / "python"
    if not py.exists():
        return None
    res = subprocess.run(
        [
            str(py),
            "-c",
            "from importlib.metadata import version; print(version('azureml-inference-server-http'))",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return res.stdout.strip() if res.returncode == 0 else None


def ensure_aml_venv(venv: Path, install: bool) -> Path:
    """The azmlinfsrv virtualenv, created from the package index on first use.

    onnxruntime and numpy are pinned to this venv's versions, so the example model
    costs the same in both servers.
    """
    want = AML_PACKAGE.split("==")[1]
    if aml_version(venv) == want:
        return venv / "bin" / "python"
    if not install:
        raise RuntimeError(f"{venv} has no {AML_PACKAGE}; run without --no-install to create it")
    log.info("creating %s with %s (about 30 s)", venv, AML_PACKAGE)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    pins = [AML_PACKAGE]
    for dist in ("onnxruntime", "numpy"):
        version = _dist_version(dist)
        pins.append(f"{dist}=={version}" if version else dist)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
        check=True,
        timeout=1200,
    )
    if aml_version(venv) != want:
        raise RuntimeError(f"installing {AML_PACKAGE} into {venv} failed")
    return venv / "bin" / "python"


# --- servers -------------------------------------------------------------------------


def server_command(system: str, script: str, port: int, aml_python: Path | None) -> tuple[list[str], str]:
    entry = ECHO_SCRIPT if script == "echo" else EXAMPLE_SCRIPT
    model_dir = EXAMPLE_MODEL_DIR
    if system == "scorehost":
        return procs.scorehost_cmd(entry_script=entry, model_dir=model_dir, port=port), "/health/ready"
    if system == "azmlinfsrv":
        assert aml_python is not None
        return [
            str(aml_python),
            str(HERE / "aml_serve.py"),
            "--entry_script",
            str(entry),
            "--model_dir",
            str(model_dir),
            "--port",
            str(port),
        ], "/"
    if system == "floor":
        return [
            procs.venv_python(),
            str(HERE / "floor_app.py"),
            "--entry_script",
            str(entry),
            "--model_dir",
            str(model_dir),
            "--port",
            str(port),
        ], "/health/ready"
    raise ValueError(system)


def pinning_ok(server: procs.Server) -> bool:
    """Every thread of the server tree is allowed on the server CPUs only."""
    if not server.cpus:
        return True
    want = _cpu_set(server.cpus)
    for pid in procs.tree_pids(server.pid):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                allowed = os.sched_getaffinity(int(tid))
            except OSError:
                continue
            if allowed != want:
                return False
    return True


def _cpu_set(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


# --- cells -----------------------------------------------------------------------------


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _run_bounded(cmd: list[str], timeout_s: float) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        out, _ = proc.communicate()
    finally:
        timer.cancel()
    return proc.returncode, out


def wrk_cell(cell: Cell, url: str, body: Path, duration: float, cpus: str | None) -> str:
    cmd = [
        *procs.taskset_prefix(cpus),
        "wrk",
        "-t1",
        f"-c{cell.conc}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "-s",
        str(LUA),
        url + "/score",
        "--",
        str(body),
    ]
    rc, out = _run_bounded(cmd, duration + CELL_GRACE_S)
    line = next((ln for ln in out.splitlines() if ln.startswith("WRKJSON ")), None)
    if rc != 0 or line is None:
        return f"wrk exit {rc}: {out.strip()[-300:]}"
    r = json.loads(line[len("WRKJSON ") :])
    seconds = r["duration_us"] / 1e6
    cell.requests = int(r["requests"])
    cell.rps = cell.requests / seconds if seconds > 0 else 0.0
    cell.p50_ms, cell.p90_ms, cell.p99_ms, cell.max_ms = (
        r[k] / 1000.0 for k in ("p50_us", "p90_us", "p99_us", "max_us")
    )
    detail = {k[4:]: int(r[k]) for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")}
    cell.error_detail = {k: v for k, v in detail.items() if v}
    cell.errors = sum(detail.values())
    return ""


def locust_cell(cell: Cell, url: str, body: Path, duration: float, cpus: str | None, work: Path) -> str:
    out = work / f"locust-{cell.system}-{cell.workload}-c{cell.conc}-r{cell.round}"
    secs = max(round(duration), 1)
    cmd = [
        *procs.taskset_prefix(cpus),
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        url,
        "-u",
        str(cell.conc),
        "-t",
        f"{secs}s",
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--stop-timeout",
        "0",
        "--loglevel",
        "WARNING",
        "--lt-profile",
        "steady",
        "--lt-payload",
        str(body),
        "--lt-progress",
        "false",
        "--lt-out",
        str(out),
    ]
    rc, text = _run_bounded(cmd, secs + CELL_GRACE_S + 30)
    if rc != 0 or not Path(f"{out}.meta.json").exists():
        return f"locust exit {rc}: {text.strip()[-300:]}"
    run = analysis.load_run(out)
    s = analysis.summarize(run)["overall"]
    cell.requests = s["requests"]
    cell.rps = s["rps"] or 0.0
    cell.p50_ms, cell.p90_ms, cell.p99_ms, cell.max_ms = s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"]
    cell.error_detail = dict(s["errors_by_status"])
    cell.errors = sum(cell.error_detail.values())
    for suffix in (".npz", ".meta.json"):  # keep the result folder small; the cell holds the figures
        Path(f"{out}{suffix}").unlink(missing_ok=True)
    return ""


def measure(cell: Cell, server: procs.Server, body: Path, args: argparse.Namespace, work: Path) -> None:
    srv0, busy0, kids0, self0 = (
        procs.tree_cpu_seconds(server.pid),
        procs.system_busy_seconds(),
        _children_cpu(),
        _self_cpu(),
    )
    t0 = time.monotonic()
    if cell.generator == "wrk":
        cell.failed = wrk_cell(cell, server.url, body, args.duration, args.load_cpus)
    else:
        cell.failed = locust_cell(cell, server.url, body, args.duration, args.load_cpus, work)
    wall = time.monotonic() - t0
    srv = procs.tree_cpu_seconds(server.pid) - srv0
    gen = _children_cpu() - kids0
    mine = _self_cpu() - self0
    busy = procs.system_busy_seconds() - busy0
    cell.wall_s = round(wall, 3)
    cell.srv_cores = round(srv / wall, 3)
    cell.gen_cores = round(gen / wall, 3)
    cell.foreign_cores = round(max(busy - srv - gen - mine, 0.0) / wall, 3)
    cell.srv_cpu_us_per_req = round(srv / cell.requests * 1e6, 1) if cell.requests else None
    if not server.alive():
        cell.failed = cell.failed or f"{server.name} died: {server.log_tail(5)}"


# --- aggregation and tables ------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(cells: list[Cell]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int, str], list[Cell]] = {}
    for c in cells:
        if not c.failed:
            groups.setdefault((c.system, c.workload, c.conc, c.generator), []).append(c)
    out = []
    for (system, workload, conc, gen), cs in groups.items():
        rps = [c.rps for c in cs]
        out.append(
            {
                "system": system,
                "workload": workload,
                "conc": conc,
                "generator": gen,
                "rounds": len(cs),
                "rps": _median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms": _median([c.p50_ms for c in cs]),
                "p90_ms": _median([c.p90_ms for c in cs]),
                "p99_ms": _median([c.p99_ms for c in cs]),
                "errors": sum(c.errors for c in cs),
                "srv_cpu_us_per_req": _median([c.srv_cpu_us_per_req for c in cs]),
                "foreign_cores_max": max(c.foreign_cores for c in cs),
                "retried": sum(c.retried for c in cs),
            }
        )
    return out


def _find(agg: list[dict[str, Any]], system: str, workload: str, conc: int, gen: str) -> dict[str, Any] | None:
    return next(
        (a for a in agg if (a["system"], a["workload"], a["conc"], a["generator"]) == (system, workload, conc, gen)),
        None,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _x(r: float | None, digits: int = 2) -> str:
    return "" if r is None else f"{r:.{digits}f}x"


def _f(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def targets(agg: list[dict[str, Any]], gen: str, wl_names: list[str]) -> list[dict[str, Any]]:
    out = []

    def add(name: str, workload: str, value: float | None, goal: str, ok: bool | None) -> None:
        out.append(
            {
                "target": name,
                "workload": workload,
                "conc": TARGET_CONC,
                "generator": gen,
                "value": value,
                "goal": goal,
                "ok": ok,
            }
        )

    for wl in ("echo", "model-b1"):
        if wl not in wl_names:
            continue
        sh, aml = (
            _find(agg, "scorehost", wl, TARGET_CONC, gen),
            _find(agg, "azmlinfsrv", wl, TARGET_CONC, gen),
        )
        r = _ratio(sh["rps"] if sh else None, aml["rps"] if aml else None)
        add(
            "scorehost / azmlinfsrv req/s",
            wl,
            r,
            f">= {TARGETS['vs_aml_rps']:g}x",
            None if r is None else r >= TARGETS["vs_aml_rps"],
        )
        p = _ratio(sh["p99_ms"] if sh else None, aml["p99_ms"] if aml else None)
        add(
            "scorehost / azmlinfsrv p99",
            wl,
            p,
            "<= 0.2x (1/5)",
            None if p is None else p <= TARGETS["vs_aml_p99"],
        )
        # Not a target: CPU per request barely moves when other tenants share the box,
        # so it says what the req/s ratio would be on an idle core.
        c = _ratio(aml["srv_cpu_us_per_req"] if aml else None, sh["srv_cpu_us_per_req"] if sh else None)
        add("azmlinfsrv / scorehost server CPU per request", wl, c, "info (noise-robust)", None)
    for wl in wl_names:
        sh, fl = _find(agg, "scorehost", wl, TARGET_CONC, gen), _find(agg, "floor", wl, TARGET_CONC, gen)
        r = _ratio(sh["rps"] if sh else None, fl["rps"] if fl else None)
        add(
            "scorehost / floor req/s",
            wl,
            r,
            f">= {TARGETS['vs_floor_rps']:g}x",
            None if r is None else r >= TARGETS["vs_floor_rps"],
        )
        c = _ratio(fl["srv_cpu_us_per_req"] if fl else None, sh["srv_cpu_us_per_req"] if sh else None)
        add("floor / scorehost server CPU per request", wl, c, "info (noise-robust)", None)
    return out


def markdown(
    agg: list[dict[str, Any]],
    target_rows: list[dict[str, Any]],
    meta: dict[str, Any],
    wls: dict[str, Workload],
) -> str:
    a = meta["args"]
    lines = [
        "# scorehost vs azmlinfsrv vs the Starlette floor",
        "",
        f"{meta['started']} on {meta['host']['cpus']} CPUs ({meta['host']['machine']}); servers pinned to "
        f"cpu {a['server_cpus'] or '-'}, load generator to cpu {a['load_cpus'] or '-'}; "
        f"{a['rounds']} round(s) of {a['duration']:g} s cells, shuffled; medians, req/s as median [min-max].",
        f"scorehost env: {meta['scorehost_env'] or 'defaults'}; versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        "wrk: `wrk -t1 -cC --timeout 5s -s loadtests/wrk/post.lua` (exact percentiles from its histogram); "
        "Locust: one FastHttpUser process (it saturates near 10k req/s, so its high-rate figures "
        "measure Locust).",
        "",
    ]
    fc = meta.get("foreign") or {}
    if fc and fc["median"] > a["max_foreign"]:
        lines += [
            f"**Warning: other processes used a median of {fc['median']:.2f} cores (max {fc['max']:.2f}) "
            f"during the cells, above --max-foreign {a['max_foreign']:g}, even after re-runs. These figures "
            "are not representative: run again on an idle machine. Server CPU per request is the least "
            "affected column.**",
            "",
        ]
    if target_rows:
        lines += [
            "## Targets (one pinned core, 64 connections)",
            "",
            "| target | workload | generator | value | goal | result |",
            "|---|---|---|---:|---|---|",
        ]
        for t in target_rows:
            res = (
                ("info" if t["goal"].startswith("info") else "n/a")
                if t["ok"] is None
                else ("PASS" if t["ok"] else "FAIL")
            )
            lines.append(
                f"| {t['target']} | {t['workload']} | {t['generator']} | {_x(t['value'])} | {t['goal']} | {res} |"
            )
        lines.append("")
    for gen in GENERATORS:
        rows = [r for r in agg if r["generator"] == gen]
        if not rows:
            continue
        for wl_name, wl in wls.items():
            sub = [r for r in rows if r["workload"] == wl_name]
            if not sub:
                continue
            lines += [
                f"## {wl_name}: {wl.label}; generator: {gen}",
                "",
                "| conc | system | req/s [min-max] | p50 ms | p99 ms | errors | srv CPU µs/req | "
                "req/s vs azmlinfsrv | p99 vs azmlinfsrv | req/s vs floor | foreign cores |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for conc in sorted({r["conc"] for r in sub}):
                aml = _find(agg, "azmlinfsrv", wl_name, conc, gen)
                fl = _find(agg, "floor", wl_name, conc, gen)
                for system in SYSTEMS:
                    r = _find(agg, system, wl_name, conc, gen)
                    if r is None:
                        continue
                    vs_aml = "" if system == "azmlinfsrv" else _x(_ratio(r["rps"], aml["rps"] if aml else None), 1)
                    p99_aml = "" if system == "azmlinfsrv" else _x(_ratio(r["p99_ms"], aml["p99_ms"] if aml else None))
                    vs_fl = "" if system == "floor" else _x(_ratio(r["rps"], fl["rps"] if fl else None))
                    lines.append(
                        f"| {conc} | {system} | {r['rps']:,.0f} [{r['rps_min']:,.0f}-{r['rps_max']:,.0f}] | "
                        f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {r['errors']} | "
                        f"{_f(r['srv_cpu_us_per_req'], 0)} | "
                        f"{vs_aml} | {p99_aml} | {vs_fl} | {r['foreign_cores_max']:.2f} |"
                    )
            lines.append("")
    if fc:
        lines.append(
            f"Foreign CPU during cells (other tenants): median {fc['median']:.2f} cores, "
            f"max {fc['max']:.2f}; "
            f"cells re-run: {fc['retried']}; failed cells: {meta.get('failed_cells', 0)}."
        )
    lines.append("")
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------


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
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of scorehost, azmlinfsrv, floor")
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
    p.add_argument("--aml-venv", type=Path, default=AML_VENV)
    p.add_argument("--no-install", action="store_true", help="do not create the azmlinfsrv venv or install wrk")
    p.add_argument("--out", type=Path, help="result folder (default loadtests/results/compare-<time>)")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    all_wls = workloads()
    wl_names = [w for w in args.workloads.split(",") if w]
    systems = [s for s in args.systems.split(",") if s]
    concs = [int(c) for c in args.conc.split(",") if c]
    gens = list(GENERATORS) if args.generator == "both" else [args.generator]
    for w in wl_names:
        if w not in all_wls:
            raise SystemExit(f"unknown workload {w!r}; choose from {', '.join(all_wls)}")
    for s in systems:
        if s not in SYSTEMS:
            raise SystemExit(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    if not EXAMPLE_SCRIPT.exists() and any(all_wls[w].script == "model" for w in wl_names):
        raise SystemExit("examples/score.py is missing; run with --workloads echo")
    if args.rounds < 1 or args.duration <= 0:
        raise SystemExit("--rounds must be >= 1 and --duration > 0")
    if "wrk" in gens and ensure_wrk(not args.no_install) is None:
        return 2
    server_cpus = args.server_cpus or None
    args.load_cpus = args.load_cpus or None

    out: Path = args.out or RESULTS / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    sh_env = {"SCOREHOST_SHUTDOWN_DELAY_S": "0"}
    for item in args.scorehost_env:
        k, _, v = item.partition("=")
        sh_env[k] = v

    aml_python = ensure_aml_venv(args.aml_venv, not args.no_install) if "azmlinfsrv" in systems else None
    scripts = sorted({all_wls[w].script for w in wl_names})
    servers: dict[tuple[str, str], procs.Server] = {}
    cells: list[Cell] = []
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "args": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "server_cpus": server_cpus,
        },
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": {
            "scorehost": _dist_version("scorehost"),
            "azmlinfsrv": aml_version(args.aml_venv) if aml_python else None,
            "locust": _dist_version("locust"),
            "starlette": _dist_version("starlette"),
            "uvicorn": _dist_version("uvicorn"),
            "onnxruntime": _dist_version("onnxruntime"),
        },
        "scorehost_env": " ".join(f"{k}={v}" for k, v in sh_env.items()),
        "workloads": {
            w: {
                "body": str(all_wls[w].body),
                "bytes": all_wls[w].body.stat().st_size,
                "label": all_wls[w].label,
            }
            for w in wl_names
        },
    }
    if "wrk" in gens:
        res = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False, timeout=10)
        meta["versions"]["wrk"] = (res.stdout or res.stderr).split("[")[0].replace("wrk", "").strip()
    try:
        for system in systems:
            for script in scripts:
                port = procs.free_port()
                cmd, ready = server_command(system, script, port, aml_python)
                servers[(system, script)] = procs.start_server(
                    f"{system}-{script}",
                    cmd,
                    port=port,
                    log_path=out / "logs" / f"{system}-{script}.log",
                    env=sh_env if system == "scorehost" else None,
                    cpus=server_cpus,
                    ready_path=ready,
                    timeout_s=180,
                )
        meta["pinning_verified"] = all(pinning_ok(s) for s in servers.values())
        for w in wl_names:
            for system in systems:
                srv = servers[(system, all_wls[w].script)]
                status = procs.http_status(
                    srv.url + "/score",
                    method="POST",
                    body=all_wls[w].body.read_bytes(),
                    headers={"Content-Type": "application/json"},
                    timeout_s=30,
                )
                if status != 200:
                    raise RuntimeError(f"{srv.name} answered {status} to {w}'s body:\n{srv.log_tail()}")
        if args.warmup > 0 and "wrk" in gens:
            for srv in servers.values():
                _run_bounded(
                    [
                        *procs.taskset_prefix(args.load_cpus),
                        "wrk",
                        "-t1",
                        "-c8",
                        f"-d{args.warmup:g}s",
                        "-s",
                        str(LUA),
                        srv.url + "/score",
                        "--",
                        str(pl.b1_file()),  # valid for the echo and the model script alike
                    ],
                    args.warmup + CELL_GRACE_S,
                )

        plan = [(s, w, c, g) for s in systems for w in wl_names for c in concs for g in gens]
        total = len(plan) * args.rounds
        print(
            f"{total} cells of {args.duration:g} s ({len(plan)} per round x {args.rounds}); "
            f"about {total * (args.duration + 0.5) / 60:.1f} min -> {out}",
            flush=True,
        )
        n = 0
        for rnd in range(1, args.rounds + 1):
            order = list(plan)
            random.Random(args.seed + rnd).shuffle(order)
            for system, w, conc, gen in order:
                n += 1
                srv = servers[(system, all_wls[w].script)]
                cell = Cell(rnd, system, w, conc, gen)
                measure(cell, srv, all_wls[w].body, args, out)
                if not cell.failed and cell.foreign_cores > args.max_foreign:
                    log.warning(
                        "foreign load %.2f cores during %s %s c=%d; running it again",
                        cell.foreign_cores,
                        system,
                        w,
                        conc,
                    )
                    cell = Cell(rnd, system, w, conc, gen, retried=True)
                    measure(cell, srv, all_wls[w].body, args, out)
                cells.append(cell)
                line = cell.failed or (
                    f"{cell.rps:9,.0f} req/s  p50 {_f(cell.p50_ms)} ms  p99 {_f(cell.p99_ms)} ms  "
                    f"errors {cell.errors}  srv {_f(cell.srv_cpu_us_per_req, 0)} µs/req  "
                    f"foreign {cell.foreign_cores:.2f}"
                )
                print(f"[{n:3d}/{total}] r{rnd} {system:<10} {w:<9} c={conc:<3d} {gen:<6} {line}", flush=True)
                if cell.failed and not srv.alive():
                    raise RuntimeError(f"{srv.name} died during the run:\n{srv.log_tail()}")
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    finally:
        for srv in servers.values():
            procs.stop_server(srv)

    agg = aggregate(cells)
    foreign = [c.foreign_cores for c in cells if not c.failed]
    meta["foreign"] = {
        "median": statistics.median(foreign) if foreign else 0.0,
        "max": max(foreign) if foreign else 0.0,
        "retried": sum(c.retried for c in cells),
    }
    meta["failed_cells"] = sum(1 for c in cells if c.failed)
    gen_for_targets = "wrk" if "wrk" in gens else gens[0]
    target_rows = targets(agg, gen_for_targets, wl_names)
    (out / "results.json").write_text(
        json.dumps(
            {"meta": meta, "cells": [asdict(c) for c in cells], "medians": agg, "targets": target_rows},
            indent=1,
        )
    )
    table = markdown(agg, target_rows, meta, {w: all_wls[w] for w in wl_names})
    (out / "table.md").write_text(table)
    print()
    print(table)
    print(f"results: {out}/results.json, {out}/table.md")
    return 1 if meta["failed_cells"] else 0


if __name__ == "__main__":
    sys.exit(main())
