"""Markdown tables: a profile run's summary.md and the side-by-side benchmark's medians,
targets and table.md, with the number formats they share.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from loadtests.generators import GENERATORS
from loadtests.servers import SYSTEMS

# The benchmark's targets, checked at 64 connections on one pinned core (docs/loadtests.md).
TARGET_CONC = 64
TARGETS = {"vs_aml_rps": 6.0, "vs_aml_p99": 1 / 5, "vs_floor_rps": 0.8}
CPU_PER_REQ = "srv_cpu_us_per_req"


def ms_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def num(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def times(r: float | None, digits: int = 2) -> str:
    return "" if r is None else f"{r:.{digits}f}x"


# --- profile runs ------------------------------------------------------------------------------


def _row(label: str, b: dict[str, Any]) -> str:
    errs = ", ".join(f"{k}: {v}" for k, v in b["errors_by_status"].items()) or "0"
    rps = "" if b["rps"] is None else f"{b['rps']:,.0f}"
    return (
        f"| {label} | {b['requests']:,} | {rps} | {ms_text(b['p50_ms'])} | {ms_text(b['p90_ms'])} | "
        f"{ms_text(b['p99_ms'])} | {ms_text(b['max_ms'])} | {errs} |"
    )


def run_markdown(summary: dict[str, Any], check_list: list[dict[str, Any]], files: list[str]) -> str:
    """summary.md of one profile run: the checks, then the figures overall, by request, phase and step."""
    head = "| | requests | req/s | p50 | p90 | p99 | max | errors by status |\n|---|---:|---:|---:|---:|---:|---:|---|"
    lines = [f"# Load test: {summary['profile']} against {summary['host']}", ""]
    ok = all(c["ok"] for c in check_list)
    lines += [f"**Checks: {'all passed' if ok else 'FAILED'}**", ""]
    lines += [f"- {'PASS' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}" for c in check_list]
    lines += ["", "## Overall", "", head, _row("all", summary["overall"])]
    if len(summary["by_name"]) > 1:
        lines += ["", "## By request", "", head]
        lines += [_row(n, b) for n, b in summary["by_name"].items()]
    if summary["by_phase"]:
        lines += ["", "## By phase (requests sent in the phase)", "", head]
        lines += [_row(f"{p['label']} ({p['from_s']:.0f}-{p['to_s']:.0f} s)", p) for p in summary["by_phase"]]
    if summary.get("ramp_steps"):
        lines += [
            "",
            "## Ramp steps (first second of each step left out)",
            "",
            "| step | users | offered req/s | req/s | p50 | p99 | errors | under target |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in summary["ramp_steps"]:
            offered = "" if s["offered_rps"] is None else f"{s['offered_rps']:,.0f}"
            lines.append(
                f"| {s['label']} | {s['users']} | {offered} | {s['rps'] or 0:,.0f} | {ms_text(s['p50_ms'])} | "
                f"{ms_text(s['p99_ms'])} | {s['requests'] - s['ok']} | {'yes' if s['under_target'] else 'no'} |"
            )
    if summary.get("streaming"):
        lines += [
            "",
            "## Streaming",
            "",
            "Every chunk read is one record (ttfc for the first, chunk-gap for the others), and every "
            "stream one more, so the tables above count records, not HTTP requests.",
            "",
            *stream_lines(summary["streaming"]),
        ]
    c = summary.get("cpu")
    if c:
        lines += [
            "",
            f"Cores used during the run: server {c['server_cores']:.2f}, Locust {c['locust_cores']:.2f}, "
            f"other processes {c['other_cores']:.2f} (over {c['seconds']:.0f} s).",
        ]
    if summary["exceptions"]:
        lines += [
            "",
            "Client-side errors (no HTTP answer): " + ", ".join(f"{k}: {v}" for k, v in summary["exceptions"].items()),
        ]
    if summary["notes"]:
        lines += ["", "Notes: " + "; ".join(summary["notes"])]
    if files:
        lines += ["", "## Files", ""] + [f"- {f}" for f in files]
    lines.append("")
    return "\n".join(lines)


def stream_lines(st: dict[str, Any]) -> list[str]:
    """The streaming profile's table: time to first chunk, gaps between chunks, whole streams."""
    rate = "" if st["chunks_per_s"] is None else f"{st['chunks_per_s']:,.0f}"
    srate = "" if st["streams_per_s"] is None else f"{st['streams_per_s']:,.1f}"
    lines = [
        f"{st['streams']:,} streams ({srate}/s), {st['complete_streams']:,} complete; "
        f"{st['chunks']:,} chunks ({rate} chunks/s)",
        "",
        "| | records | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = (
        ("time to first chunk", st["ttfc"], st["ttfc_records"]),
        ("chunk gap", st["chunk_gap"], st["gap_records"]),
        ("whole stream (complete ones)", st["stream"], st["complete_streams"]),
    )
    for label, lat, count in rows:
        lines.append(
            f"| {label} | {count:,} | {ms_text(lat['p50_ms'])} | {ms_text(lat['p90_ms'])} | "
            f"{ms_text(lat['p99_ms'])} | {ms_text(lat['max_ms'])} |"
        )
    return lines


# --- the side-by-side benchmark -------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over the rounds of each (system, workload, conc, generator); failed cells left out."""
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for c in cells:
        if not c["failed"]:
            groups.setdefault((c["system"], c["workload"], c["conc"], c["generator"]), []).append(c)
    out = []
    for (system, workload, conc, gen), cs in groups.items():
        rps = [c["rps"] for c in cs]
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
                **{k: _median([c[k] for c in cs]) for k in ("p50_ms", "p90_ms", "p99_ms", CPU_PER_REQ)},
                "errors": sum(c["errors"] for c in cs),
                "foreign_cores_max": max(c["foreign_cores"] for c in cs),
                "retried": sum(c["retried"] for c in cs),
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


def _ratio_of(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str) -> float | None:
    return _ratio(a[key] if a else None, b[key] if b else None)


def targets(agg: list[dict[str, Any]], gen: str, wl_names: list[str]) -> list[dict[str, Any]]:
    """The target rows at TARGET_CONC connections; ``ok`` is None where a figure is missing or the row is info."""
    out: list[dict[str, Any]] = []

    def add(name: str, wl: str, value: float | None, goal: str, limit: float | None = None, floor: bool = True) -> None:
        ok = None if value is None or limit is None else (value >= limit if floor else value <= limit)
        row = {"target": name, "workload": wl, "conc": TARGET_CONC, "generator": gen}
        out.append({**row, "value": value, "goal": goal, "ok": ok})

    def at(system: str, wl: str) -> dict[str, Any] | None:
        return _find(agg, system, wl, TARGET_CONC, gen)

    for wl in [w for w in wl_names if w in ("echo", "model-b1")]:
        sh, aml = at("scorehost", wl), at("azmlinfsrv", wl)
        rps_goal = TARGETS["vs_aml_rps"]
        add("scorehost / azmlinfsrv req/s", wl, _ratio_of(sh, aml, "rps"), f">= {rps_goal:g}x", rps_goal)
        p99_goal = TARGETS["vs_aml_p99"]
        add("scorehost / azmlinfsrv p99", wl, _ratio_of(sh, aml, "p99_ms"), "<= 0.2x (1/5)", p99_goal, floor=False)
        # Not a target: CPU per request barely moves when other tenants share the box,
        # so it says what the req/s ratio would be on an idle core.
        add("azmlinfsrv / scorehost server CPU per request", wl, _ratio_of(aml, sh, CPU_PER_REQ), "info (noise-robust)")
    for wl in wl_names:
        sh, fl = at("scorehost", wl), at("floor", wl)
        floor_goal = TARGETS["vs_floor_rps"]
        add("scorehost / floor req/s", wl, _ratio_of(sh, fl, "rps"), f">= {floor_goal:g}x", floor_goal)
        add("floor / scorehost server CPU per request", wl, _ratio_of(fl, sh, CPU_PER_REQ), "info (noise-robust)")
    return out


def compare_markdown(
    agg: list[dict[str, Any]], target_rows: list[dict[str, Any]], meta: dict[str, Any], labels: dict[str, str]
) -> str:
    """table.md of the side-by-side benchmark; ``labels`` describes each workload."""
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
        lines += _targets_table(target_rows)
    for gen in GENERATORS:
        for wl, label in labels.items():
            sub = [r for r in agg if r["generator"] == gen and r["workload"] == wl]
            if sub:
                lines += [f"## {wl}: {label}; generator: {gen}", "", *_workload_table(agg, sub), ""]
    if fc:
        lines.append(
            f"Foreign CPU during cells (other tenants): median {fc['median']:.2f} cores, "
            f"max {fc['max']:.2f}; "
            f"cells re-run: {fc['retried']}; failed cells: {meta.get('failed_cells', 0)}."
        )
    lines.append("")
    return "\n".join(lines)


def _targets_table(target_rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Targets (one pinned core, 64 connections)",
        "",
        "| target | workload | generator | value | goal | result |",
        "|---|---|---|---:|---|---|",
    ]
    for t in target_rows:
        res = {True: "PASS", False: "FAIL"}.get(t["ok"], "info" if t["goal"].startswith("info") else "n/a")
        lines.append(
            f"| {t['target']} | {t['workload']} | {t['generator']} | {times(t['value'])} | {t['goal']} | {res} |"
        )
    return [*lines, ""]


def _workload_table(agg: list[dict[str, Any]], sub: list[dict[str, Any]]) -> list[str]:
    """One workload and generator: a row per concurrency and system, with the ratios to the others."""
    lines = [
        "| conc | system | req/s [min-max] | p50 ms | p99 ms | errors | srv CPU µs/req | "
        "req/s vs azmlinfsrv | p99 vs azmlinfsrv | req/s vs floor | req/s vs scorehost | foreign cores |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    wl, gen = sub[0]["workload"], sub[0]["generator"]
    # compare.py's --variant systems (another checkout, extra environment) follow the three known ones.
    systems = [*SYSTEMS, *sorted({r["system"] for r in sub} - set(SYSTEMS))]
    for conc in sorted({r["conc"] for r in sub}):
        aml = _find(agg, "azmlinfsrv", wl, conc, gen)
        fl = _find(agg, "floor", wl, conc, gen)
        sh = _find(agg, "scorehost", wl, conc, gen)
        for system in systems:
            r = _find(agg, system, wl, conc, gen)
            if r is None:
                continue
            vs_aml = "" if system == "azmlinfsrv" else times(_ratio_of(r, aml, "rps"), 1)
            p99_aml = "" if system == "azmlinfsrv" else times(_ratio_of(r, aml, "p99_ms"))
            vs_fl = "" if system == "floor" else times(_ratio_of(r, fl, "rps"))
            vs_sh = "" if system in SYSTEMS else times(_ratio_of(r, sh, "rps"), 3)
            lines.append(
                f"| {conc} | {system} | {r['rps']:,.0f} [{r['rps_min']:,.0f}-{r['rps_max']:,.0f}] | "
                f"{num(r['p50_ms'])} | {num(r['p99_ms'])} | {r['errors']} | {num(r[CPU_PER_REQ], 0)} | "
                f"{vs_aml} | {p99_aml} | {vs_fl} | {vs_sh} | {r['foreign_cores_max']:.2f} |"
            )
    return lines
