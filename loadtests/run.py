"""Run one load profile headless and write reports a person would rather look at.

    python -m loadtests.run steady --duration-s 30 --users 32          # starts a local scorehost
    python -m loadtests.run spike --server-cpus 0 --locust-cpus 1      # pinned, as the benchmarks are
    python -m loadtests.run ramp --host https://my-endpoint.example --api-key "$KEY" \\
        --payload my-request.json --p99-target-ms 100                  # your own deployment

Without ``--host`` it starts ``scorehost serve`` on 127.0.0.1 with what the profile
needs (the example model; the sleeper script with a short SCORING_TIMEOUT_MS for
``timeout``; a folder of generated ONNX models for ``multi-model``; a short queue for
``spike``; the token streamer for ``streaming``), waits for ``/health/ready`` and stops it afterwards.

Writes to ``loadtests/results/<time>-<profile>/``: Locust's CSV and HTML reports,
``summary.md`` / ``summary.json`` (req/s, p50/p90/p99/max, errors by status, the
profile's checks), ``timeline.png`` (latency and throughput over time), ``ramp.png`` /
``models.png`` where they apply, every request in ``requests.npz``, and the logs.
Exit status: 0 when every check passed, 1 when one failed, 2 when the run could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python loadtests/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests import RESULTS, analysis, checks, cpu, generators, plots, profiles, server_metrics, servers, tables
from loadtests import models as model_gen
from loadtests import payloads as pl

log = logging.getLogger("loadtests")

# Server settings each profile needs when the runner starts the server itself.
PROFILE_SERVER_ENV: dict[str, dict[str, str]] = {
    # A short queue and wait: the burst must be refused at once, not queued for seconds.
    "spike": {"SCOREHOST_MAX_QUEUE_LENGTH": "16", "SCOREHOST_MAX_QUEUE_WAIT_MS": "100"},
    # Enough slots that sleeping slow calls cannot starve the fast ones.
    "timeout": {"SCOREHOST_MAX_CONCURRENT_REQUESTS": "64"},
    # A stream holds its slot until its last token: with the default (one slot per CPU)
    # 32 users would queue behind each other and measure the queue, not the streaming.
    "streaming": {"SCOREHOST_MAX_CONCURRENT_REQUESTS": "64"},
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("profile", choices=profiles.PROFILES)
    target = parser.add_argument_group("target")
    target.add_argument("--host", help="base URL of a running deployment; default: start a local scorehost")
    target.add_argument("--entry-script", type=Path, help="score.py for the local server (default per profile)")
    target.add_argument("--model-dir", type=Path, help="model folder for the local server")
    target.add_argument("--workers", type=int, help="--worker_count of the local server")
    target.add_argument("--model-count", type=int, default=8, help="multi-model: models to generate (default 8)")
    target.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the local server (repeatable)",
    )
    target.add_argument(
        "--access-log",
        action="store_true",
        help="keep the local server's access log on (off by default: it costs CPU)",
    )
    target.add_argument("--server-cpus", help="pin the local server to these CPUs (taskset list, e.g. 0)")
    target.add_argument("--locust-cpus", help="pin Locust to these CPUs (e.g. 1)")
    target.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    target.add_argument(
        "--metrics-url", help="the server's /metrics, scraped before and after the run (default: HOST/metrics)"
    )

    params = parser.add_argument_group("profile parameters (unset: the profile's default)")
    for spec in profiles.param_specs():
        if spec.name in ("profile", "out", "progress"):
            continue
        flags = [spec.flag] + (["--duration"] if spec.name == "duration_s" else [])
        params.add_argument(
            *flags, dest=spec.name, type=profiles.arg_type(spec.kind), default=None, help=spec.help_text()
        )

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="result folder (default loadtests/results/<time>-<profile>)")
    out.add_argument("--no-plots", action="store_true")
    out.add_argument("--quiet", action="store_true", help="no progress lines")
    out.add_argument("--locust-arg", action="append", default=[], help="extra argument for Locust (repeatable)")
    return parser


def _example_or_echo() -> tuple[Path, Path | None]:
    if servers.EXAMPLE_SCRIPT.exists():
        return servers.EXAMPLE_SCRIPT, servers.EXAMPLE_MODEL_DIR if servers.EXAMPLE_MODEL_DIR.exists() else None
    log.warning("examples/score.py not found; serving the echo script instead")
    return servers.ECHO_SCRIPT, None


def plan_local_server(
    args: argparse.Namespace, given: dict[str, Any]
) -> tuple[Path | None, Path | None, dict[str, str]]:
    """(entry script, model dir, env) for the profile; also fills profile parameters it implies."""
    env: dict[str, str] = {
        "SCOREHOST_ACCESS_LOG": "true" if args.access_log else "false",
        # A throwaway server: no need to keep answering for 2 s after SIGTERM.
        "SCOREHOST_SHUTDOWN_DELAY_S": "0",
    }
    env.update(PROFILE_SERVER_ENV.get(args.profile, {}))
    script: Path | None
    model_dir: Path | None
    if args.profile == "multi-model":
        count = max(args.model_count, 1)
        model_dir = args.model_dir or RESULTS / "_models" / f"{model_gen.MODEL_PREFIX}{count}"
        if args.model_dir is None:
            names = model_gen.make_model_repo(model_dir, count)
        else:
            names = sorted(p.name for p in model_dir.iterdir() if p.is_dir())
        if given.get("models") is None:
            given["models"] = ",".join(names)
        script = args.entry_script
    elif args.profile == "streaming":
        script = args.entry_script or servers.STREAMER_SCRIPT
        model_dir = args.model_dir
    elif args.profile == "timeout":
        script = args.entry_script or servers.SLEEPER_SCRIPT
        model_dir = args.model_dir
        cfg = profiles.LoadConfig.build(given)
        env["SCORING_TIMEOUT_MS"] = str(int(cfg.timeout_ms))
    else:
        default_script, default_dir = _example_or_echo()
        script = args.entry_script or default_script
        model_dir = args.model_dir or (default_dir if args.entry_script is None else None)
    env.update(servers.env_pairs(args.server_env, "--server-env"))
    return script, model_dir, env


def locust_command(
    cfg_given: dict[str, Any], cfg: profiles.LoadConfig, host: str, out: Path, args: argparse.Namespace
) -> list[str]:
    """Locust for the whole profile, with its reports and every parameter that was given."""
    extra = [
        *("--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "locust_report.html")),
        *("--lt-profile", cfg.profile, "--lt-out", str(out / "requests"), "--lt-progress", "true"),
    ]
    for spec in profiles.param_specs():
        if spec.locust_common or spec.name in ("profile", "out", "progress"):
            continue
        value = cfg_given.get(spec.name)
        if value is not None:
            extra += [spec.locust_flag, str(value)]
    cmd = generators.locust_command(host, cfg.users, profiles.total_seconds(cfg), args.locust_cpus, *extra)
    return cmd + list(args.locust_arg)


def _cpu_sample(server: servers.Server | None) -> tuple[float, float, float, float, float]:
    """(wall, server tree, waited-for children, whole box busy, this process), in seconds."""
    server_s = cpu.tree_cpu_seconds(server.pid) if server is not None and server.alive() else 0.0
    return (
        time.monotonic(),
        server_s,
        cpu.children_cpu_seconds(),
        cpu.system_busy_seconds(),
        cpu.own_cpu_seconds(),
    )


def cpu_use(
    before: tuple[float, float, float, float, float], after: tuple[float, float, float, float, float]
) -> dict[str, float]:
    """Cores used during the run by the server, Locust and everything else on the box.

    On a shared machine the figures of a run depend on what else ran: "other" says how
    much that was, so a reader can tell a slow server from a busy box.
    """
    wall = max(after[0] - before[0], 1e-9)
    server_s, locust_s, busy_s, own_s = (a - b for a, b in zip(after[1:], before[1:], strict=True))
    return {
        "seconds": round(wall, 3),
        "server_cores": round(server_s / wall, 3),
        "locust_cores": round(locust_s / wall, 3),
        "other_cores": round(max(busy_s - server_s - locust_s - own_s, 0.0) / wall, 3),
    }


def _redact(cmd: list[str]) -> str:
    out = []
    hide = False
    for part in cmd:
        out.append("***" if hide else part)
        hide = part in ("--lt-api-key",)
    return " ".join(out)


def analyse(out: Path, no_plots: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = analysis.load_run(out / "requests")
    summary = analysis.summarize(run)
    if (out / "cpu.json").exists():
        summary["cpu"] = json.loads((out / "cpu.json").read_text())
    if (out / "server_metrics.json").exists():  # the server's own view (loadtests/server_metrics.py)
        summary["server"] = json.loads((out / "server_metrics.json").read_text())
    check_list = checks.evaluate(run, summary)
    files = [
        "summary.md",
        "summary.json",
        "locust_report.html",
        "locust_stats.csv",
        "locust_stats_history.csv",
        "requests.npz",
        "locust.log",
    ]
    if not no_plots:
        ser = analysis.series(run)
        plots.plot_timeline(run, ser, summary, out / "timeline.png")
        files.insert(0, "timeline.png")
        if plots.plot_ramp(summary, out / "ramp.png"):
            files.insert(1, "ramp.png")
        if plots.plot_models(summary, out / "models.png"):
            files.insert(1, "models.png")
    if (out / "server.log").exists():
        files.append("server.log")
    (out / "summary.json").write_text(json.dumps({**summary, "checks": check_list}, indent=1))
    report = tables.run_markdown(summary, check_list, files)
    if "server" in summary:
        report += "\n" + server_metrics.markdown(summary["server"], summary["overall"])
    (out / "summary.md").write_text(report)
    return summary, check_list


def print_summary(summary: dict[str, Any], check_list: list[dict[str, Any]], out: Path) -> None:
    o = summary["overall"]
    errs = ", ".join(f"{k}: {v}" for k, v in o["errors_by_status"].items()) or "none"

    ms = tables.num
    # A streaming run records one entry per chunk and per stream (see locustfile._streaming).
    what = "records (ttfc, chunk-gap, stream)" if summary.get("streaming") else "requests"
    print(
        f"\n{summary['profile']} against {summary['host']}: {o['requests']:,} {what} "
        f"in {o['seconds']:.1f} s = {o['rps'] or 0:,.0f} req/s"
    )
    print(f"latency ms: p50 {ms(o['p50_ms'])}  p90 {ms(o['p90_ms'])}  p99 {ms(o['p99_ms'])}  max {ms(o['max_ms'])}")
    print(f"errors by status: {errs}  (0 = no HTTP answer)")
    c = summary.get("cpu")
    if c:
        print(
            f"cores used: server {c['server_cores']:.2f}, Locust {c['locust_cores']:.2f}, other {c['other_cores']:.2f}"
        )
    st = summary.get("streaming")
    if st:
        t, g = st["ttfc"], st["chunk_gap"]
        print(
            f"streaming: {st['streams']:,} streams, {st['chunks_per_s'] or 0:,.0f} chunks/s; "
            f"time to first chunk p50 {ms(t['p50_ms'])} p99 {ms(t['p99_ms'])} ms; "
            f"chunk gap p50 {ms(g['p50_ms'])} p99 {ms(g['p99_ms'])} ms"
        )
    sv = summary.get("server")
    if sv:
        q, r = sv["queue_wait"], sv["run"]
        print(
            f"server side: queue wait p50 {ms(q['p50_ms'])} p99 {ms(q['p99_ms'])} ms; "
            f"run() p50 {ms(r['p50_ms'])} p99 {ms(r['p99_ms'])} ms ({r['count']:,} calls)"
        )
    k = summary.get("knee")
    if k:
        print(f"knee: {k['rps']:,.0f} req/s at {k['users']} users (p99 {ms(k['p99_ms'])} ms)")
    for c in check_list:
        print(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
    print(f"results: {out}/ (timeline.png, summary.md, locust_report.html)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    given: dict[str, Any] = {
        spec.name: getattr(args, spec.name, None)
        for spec in profiles.param_specs()
        if spec.name not in ("out", "progress")
    }
    given["profile"] = args.profile
    out: Path = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.profile}"
    out.mkdir(parents=True, exist_ok=True)

    server: servers.Server | None = None
    commands: dict[str, str] = {}
    try:
        if args.host:
            host = args.host.rstrip("/")
        else:
            script, model_dir, env = plan_local_server(args, given)
            server = servers.start(
                "scorehost",
                entry_script=script,
                model_dir=model_dir,
                log_path=out / "server.log",
                env=env,
                cpus=args.server_cpus,
                workers=args.workers,
                timeout_s=args.start_timeout,
            )
            commands["server"] = server.command_line()
            host = server.url
        if given.get("payload") is None and given.get("model") is None and args.profile in ("steady", "ramp", "spike"):
            given["payload"] = str(pl.b1_file())
        cfg = profiles.LoadConfig.build(given)
        cmd = locust_command(given, cfg, host, out, args)
        commands["locust"] = _redact(cmd)
        (out / "commands.txt").write_text("\n".join(f"{k}: {v}" for k, v in commands.items()) + "\n")
        planned = profiles.total_seconds(cfg)
        print(f"running {cfg.profile} against {host} for about {planned:.0f} s -> {out}", flush=True)
        metrics_url = args.metrics_url or f"{host}/metrics"
        scraped = server_metrics.scrape(metrics_url)
        before = _cpu_sample(server)
        rc = generators.run_locust(cmd, out / "locust.log", planned + generators.LOCUST_GRACE_S, args.quiet)
        after_scrape = server_metrics.scrape(metrics_url) if scraped is not None else None
        if scraped is not None and after_scrape is not None:
            (out / "server_metrics.json").write_text(json.dumps(server_metrics.during(scraped, after_scrape)))
        # Locust has exited (and was waited for), so its CPU time is in the children's.
        (out / "cpu.json").write_text(json.dumps(cpu_use(before, _cpu_sample(server))))
        if server is not None and not server.alive():
            log.error("the server died during the run:\n%s", server.log_tail())
        if rc != 0 or not (out / "requests.meta.json").exists():
            log.error("locust failed (exit %d); see %s", rc, out / "locust.log")
            return 2
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    finally:
        if server is not None:
            servers.stop(server)

    summary, check_list = analyse(out, args.no_plots)
    print_summary(summary, check_list, out)
    return 0 if all(c["ok"] for c in check_list) else 1


if __name__ == "__main__":
    sys.exit(main())
