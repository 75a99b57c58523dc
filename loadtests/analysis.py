"""Turn a run's per-request record into a summary, the profile's checks and time series.

Status 0 means no HTTP answer came back: a connection error or a client timeout.
Phases are assigned by the time a request was *sent*; time series by the time it
*finished*, which is what a throughput graph should show.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import profiles
from loadtests.recorder import FLAG_BAD_504, FLAG_INVALID_BODY, FLAG_NO_RETRY_AFTER

PERCENTILES = (50, 90, 99)


@dataclass
class RunData:
    meta: dict[str, Any]
    start: np.ndarray
    latency: np.ndarray
    status: np.ndarray
    name: np.ndarray
    tag: np.ndarray
    flags: np.ndarray

    @property
    def cfg(self) -> profiles.LoadConfig:
        return profiles.LoadConfig.build(self.meta.get("config", {}))

    @property
    def duration_s(self) -> float:
        end = float(self.meta.get("t_end") or 0.0)
        if len(self.start):
            end = max(end, float(np.max(self.start + self.latency / 1000.0)))
        return end

    def phase_windows(self) -> list[tuple[str, float, float]]:
        """(label, from_s, to_s) per phase, as the shape actually ran them."""
        phases = self.meta.get("phases") or []
        end = self.duration_s
        out = []
        for i, ph in enumerate(phases):
            t_to = phases[i + 1]["t"] if i + 1 < len(phases) else end
            out.append((str(ph["label"]), float(ph["t"]), float(t_to)))
        return out


def load_run(prefix: str | Path) -> RunData:
    meta = json.loads(Path(f"{prefix}.meta.json").read_text())
    with np.load(f"{prefix}.npz") as z:
        return RunData(
            meta,
            z["start"].astype(np.float64),
            z["latency_ms"].astype(np.float64),
            z["status"].astype(np.int64),
            z["name"].astype(np.int64),
            z["tag"].astype(np.int64),
            z["flags"].astype(np.int64),
        )


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


def latency_stats(lat: np.ndarray) -> dict[str, float | None]:
    if len(lat) == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    p = np.percentile(lat, PERCENTILES, method="higher")
    return {
        "p50_ms": _num(p[0]),
        "p90_ms": _num(p[1]),
        "p99_ms": _num(p[2]),
        "max_ms": _num(float(np.max(lat))),
        "mean_ms": _num(float(np.mean(lat))),
    }


def is_ok(status: np.ndarray) -> np.ndarray:
    return (status >= 200) & (status < 300)


def status_counts(status: np.ndarray) -> dict[str, int]:
    codes, counts = np.unique(status, return_counts=True)
    return {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)}


def block(lat: np.ndarray, status: np.ndarray, seconds: float) -> dict[str, Any]:
    """Counts, rate and latency of one slice of requests."""
    ok = is_ok(status)
    errors = {k: v for k, v in status_counts(status[~ok]).items()}
    return {
        "requests": len(lat),
        "seconds": round(seconds, 3),
        "rps": round(len(lat) / seconds, 1) if seconds > 0 else None,
        "ok": int(ok.sum()),
        "errors_by_status": errors,
        **latency_stats(lat),
        "ok_latency": latency_stats(lat[ok]),
    }


def in_window(run: RunData, t_from: float, t_to: float) -> np.ndarray:
    return (run.start >= t_from) & (run.start < t_to)


# --- ramp ------------------------------------------------------------------------


def ramp_steps(run: RunData) -> list[dict[str, Any]]:
    cfg = run.cfg
    out = []
    for label, t_from, t_to in run.phase_windows():
        # Skip the first second of a step: its users are still starting.
        settle = min(1.0, (t_to - t_from) / 4)
        m = in_window(run, t_from + settle, t_to)
        seconds = max(t_to - t_from - settle, 1e-9)
        lat, st = run.latency[m], run.status[m]
        users = next((p["users"] for p in run.meta.get("phases", []) if p["label"] == label), 0)
        b = block(lat, st, seconds)
        errors = b["requests"] - b["ok"]
        p99 = b["p99_ms"]
        b.update(
            label=label,
            users=users,
            offered_rps=round(users * cfg.user_rate, 1) if cfg.user_rate > 0 else None,
            under_target=bool(p99 is not None and p99 <= cfg.p99_target_ms and errors <= 0.01 * max(b["requests"], 1)),
        )
        out.append(b)
    return out


def knee(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The step with the highest achieved rate among those under the p99 target."""
    good = [s for s in steps if s["under_target"] and s["requests"] > 0]
    return max(good, key=lambda s: s["rps"]) if good else None


# --- summary -------------------------------------------------------------------


def summarize(run: RunData) -> dict[str, Any]:
    duration = run.duration_s
    names = run.meta.get("names", [])
    summary: dict[str, Any] = {
        "profile": run.meta.get("profile"),
        "host": run.meta.get("host"),
        "config": run.meta.get("config"),
        "setup_error": run.meta.get("setup_error") or "",
        "overall": block(run.latency, run.status, duration),
        "by_name": {},
        "by_phase": [],
        "exceptions": run.meta.get("exceptions", {}),
        "retry_after_missing": int(((run.flags & FLAG_NO_RETRY_AFTER) > 0).sum()),
        "invalid_bodies": int(((run.flags & FLAG_INVALID_BODY) > 0).sum()),
        "bad_504_bodies": int(((run.flags & FLAG_BAD_504) > 0).sum()),
        "notes": run.meta.get("notes", []),
        "dropped": run.meta.get("dropped", 0),
    }
    for i, name in enumerate(names):
        m = run.name == i
        summary["by_name"][name] = block(run.latency[m], run.status[m], duration)
    for label, t_from, t_to in run.phase_windows():
        m = in_window(run, t_from, t_to)
        summary["by_phase"].append(
            {
                "label": label,
                "from_s": round(t_from, 2),
                "to_s": round(t_to, 2),
                **block(run.latency[m], run.status[m], t_to - t_from),
            }
        )
    if run.meta.get("profile") == "ramp":
        steps = ramp_steps(run)
        summary["ramp_steps"] = steps
        summary["knee"] = knee(steps)
    if run.meta.get("profile") == "multi-model":
        summary["models"] = model_shares(run)
    return summary


def model_shares(run: RunData) -> dict[str, Any]:
    models = run.meta.get("models", [])
    cfg = run.cfg
    out: dict[str, Any] = {"names": models, "phases": {}}
    for label, t_from, t_to in run.phase_windows():
        m = in_window(run, t_from, t_to) & (run.tag >= 0)
        counts = np.bincount(run.tag[m], minlength=len(models))[: len(models)] if models else np.array([])
        expected = (
            (profiles.zipf_weights(len(models), cfg.zipf_s) if label == "zipf" else [1.0 / len(models)] * len(models))
            if models
            else []
        )
        out["phases"][label] = {"counts": [int(c) for c in counts], "expected_share": expected}
    return out


# --- checks ----------------------------------------------------------------------


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def _phase(run: RunData, label: str) -> tuple[float, float] | None:
    for lab, t_from, t_to in run.phase_windows():
        if lab == label:
            return t_from, t_to
    return None


def _p99(lat: np.ndarray) -> float | None:
    return None if len(lat) == 0 else float(np.percentile(lat, 99, method="higher"))


def _allowed(base_p99: float, cfg: profiles.LoadConfig) -> float:
    return max(base_p99 * cfg.recovery_factor, base_p99 + cfg.recovery_slack_ms)


def checks(run: RunData, summary: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = run.cfg
    profile = summary["profile"]
    overall = summary["overall"]
    out = []
    if summary["setup_error"]:
        out.append(_check("setup", False, summary["setup_error"]))
    out.append(_check("produced requests", overall["requests"] > 0, f"{overall['requests']} requests"))
    no_answer = int((run.status == 0).sum())
    exc = ", ".join(f"{k}: {v}" for k, v in summary["exceptions"].items()) or "none"
    out.append(_check("no connection errors", no_answer == 0, f"{no_answer} requests without an HTTP answer ({exc})"))
    non_ok = overall["requests"] - overall["ok"]
    errors_text = ", ".join(f"{k}: {v}" for k, v in overall["errors_by_status"].items()) or "none"

    if profile in ("steady", "payloads", "multi-model"):
        out.append(_check("no error responses", non_ok == 0, f"non-2xx: {errors_text}"))

    if profile == "payloads":
        empty = [n for n, b in summary["by_name"].items() if b["requests"] == 0]
        bodies = run.meta.get("bodies", [])
        out.append(
            _check(
                "every body size sent",
                not empty and len(summary["by_name"]) >= len(bodies),
                f"{len(summary['by_name'])} bodies: " + ", ".join(f"{b['label']} ({b['bytes']} B)" for b in bodies),
            )
        )
        out.append(
            _check(
                "answers match the batch",
                summary["invalid_bodies"] == 0,
                f"{summary['invalid_bodies']} answers with the wrong number of rows",
            )
        )

    if profile == "ramp":
        k = summary.get("knee")
        detail = (
            f"knee: {k['rps']:.0f} req/s at {k['users']} users, p99 {_ms(k['p99_ms'])} "
            f"(target {cfg.p99_target_ms:.0f} ms)"
            if k
            else f"no step kept p99 under {cfg.p99_target_ms:.0f} ms"
        )
        out.append(_check("knee found", k is not None, detail))

    if profile == "spike":
        out.extend(_spike_checks(run, cfg, summary))
    if profile == "timeout":
        out.extend(_timeout_checks(run, cfg))
    if profile == "multi-model":
        out.extend(_model_checks(summary))
    return out


def _spike_checks(run: RunData, cfg: profiles.LoadConfig, summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    spike = _phase(run, "spike")
    base = _phase(run, "base")
    rec = _phase(run, "recovery")
    n503 = int((run.status == 503).sum())
    if spike:
        m = in_window(run, *spike)
        n503_spike = int((run.status[m] == 503).sum())
        out.append(
            _check(
                "503s during the spike",
                n503_spike > 0,
                f"{n503_spike} of {int(m.sum())} requests in the spike got 503",
            )
        )
    else:
        out.append(_check("503s during the spike", False, "the spike phase never ran"))
    out.append(
        _check(
            "every 503 has Retry-After",
            summary["retry_after_missing"] == 0 and n503 > 0,
            f"{summary['retry_after_missing']} of {n503} 503s lacked Retry-After",
        )
    )
    lat503 = run.latency[run.status == 503]
    p99_503 = _p99(lat503)
    out.append(
        _check(
            "503s are fast",
            p99_503 is not None and p99_503 <= cfg.fast_503_ms,
            f"503 p99 {_ms(p99_503)} (limit {cfg.fast_503_ms:.0f} ms)",
        )
    )
    others = {k: v for k, v in summary["overall"]["errors_by_status"].items() if k not in ("503",)}
    out.append(
        _check(
            "no errors but 503",
            not others,
            "other non-2xx: " + (", ".join(f"{k}: {v}" for k, v in others.items()) or "none"),
        )
    )
    if base and rec:
        bm = in_window(run, base[0] + min(1.0, (base[1] - base[0]) / 4), base[1])
        base_p99 = _p99(run.latency[bm & (is_ok(run.status))])
        # Judge recovery on the second half of the recovery phase: the first half may
        # still drain what the spike left behind.
        half = rec[0] + (rec[1] - rec[0]) / 2
        rm = in_window(run, half, rec[1])
        rec_lat, rec_st = run.latency[rm], run.status[rm]
        rec_p99 = _p99(rec_lat)
        rec_err = int((~is_ok(rec_st)).sum())
        ok = base_p99 is not None and rec_p99 is not None and rec_err == 0 and rec_p99 <= _allowed(base_p99, cfg)
        allowed = _allowed(base_p99, cfg) if base_p99 is not None else None
        out.append(
            _check(
                "recovered after the spike",
                ok,
                f"late recovery: {len(rec_lat)} requests, {rec_err} errors, p99 {_ms(rec_p99)} "
                f"(base p99 {_ms(base_p99)}, allowed {_ms(allowed)})",
            )
        )
    else:
        out.append(_check("recovered after the spike", False, "base or recovery phase missing"))
    return out


def _timeout_checks(run: RunData, cfg: profiles.LoadConfig) -> list[dict[str, Any]]:
    out = []
    names = run.meta.get("names", [])
    slow_idx = [i for i, n in enumerate(names) if n.endswith("[slow]")]
    fast_idx = [i for i, n in enumerate(names) if n.endswith("[fast]")]
    slow = np.isin(run.name, slow_idx)
    fast = np.isin(run.name, fast_idx)
    n504 = int((run.status == 504).sum())
    out.append(_check("504s produced", n504 > 0, f"{n504} requests got 504"))
    slow_not_504 = int((slow & (run.status != 504)).sum())
    out.append(
        _check(
            "slow requests time out",
            int(slow.sum()) > 0 and slow_not_504 == 0,
            f"{int(slow.sum())} slow requests, {slow_not_504} did not get 504",
        )
    )
    lat504 = run.latency[run.status == 504]
    if len(lat504):
        lo, hi = float(np.min(lat504)), _p99(lat504)
        assert hi is not None
        on_time = lo >= 0.8 * cfg.timeout_ms and hi <= cfg.timeout_ms + cfg.timeout_slack_ms
        out.append(
            _check(
                "504s on time",
                on_time,
                f"504 latency min {_ms(lo)}, p99 {_ms(hi)} (timeout {cfg.timeout_ms:.0f} ms, "
                f"+{cfg.timeout_slack_ms:.0f} ms slack)",
            )
        )
    else:
        out.append(_check("504s on time", False, "no 504s"))
    bad = int(((run.flags & FLAG_BAD_504) > 0).sum())
    out.append(
        _check(
            "504 body names the timeout",
            bad == 0 and n504 > 0,
            f"{bad} of {n504} 504 bodies did not mention the timeout",
        )
    )
    base = _phase(run, "baseline")
    mixed = _phase(run, "mixed")
    if base and mixed:
        bm = in_window(run, base[0] + min(1.0, (base[1] - base[0]) / 4), base[1]) & fast
        mm = in_window(run, *mixed) & fast
        base_p99 = _p99(run.latency[bm])
        mixed_p99 = _p99(run.latency[mm])
        errors = int((mm & ~is_ok(run.status)).sum())
        allowed = _allowed(base_p99, cfg) if base_p99 is not None else None
        ok = allowed is not None and mixed_p99 is not None and errors == 0 and mixed_p99 <= allowed
        out.append(
            _check(
                "fast requests keep their latency",
                ok,
                f"fast p99 {_ms(mixed_p99)} with slow ones vs {_ms(base_p99)} without "
                f"(allowed {_ms(allowed)}), {errors} fast errors",
            )
        )
    else:
        out.append(_check("fast requests keep their latency", False, "baseline or mixed phase missing"))
    return out


def _model_checks(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    models = summary.get("models", {})
    names = models.get("names", [])
    for label, ph in models.get("phases", {}).items():
        counts = np.array(ph["counts"], dtype=np.float64)
        total = counts.sum()
        if not names or total == 0:
            out.append(_check(f"{label}: requests spread over models", False, "no requests"))
            continue
        expected = np.array(ph["expected_share"]) * total
        if label == "zipf":
            # The hottest model's share against Zipf's, where there is enough data to tell.
            share, want = counts[0] / total, ph["expected_share"][0]
            ok = total < 200 or abs(share - want) <= 0.3 * want
            out.append(
                _check(
                    "zipf: skewed as asked",
                    ok and counts[0] >= counts[-1],
                    f"hottest model {share:.1%} of {int(total)} (Zipf {want:.1%}), coldest {counts[-1] / total:.1%}",
                )
            )
        else:
            served = int((counts > 0).sum())
            enough = expected.min() >= 50
            spread_ok = not enough or bool(np.all(np.abs(counts - expected) <= 0.5 * expected))
            out.append(
                _check(
                    f"{label}: every model served",
                    served == len(names) and spread_ok,
                    f"{served} of {len(names)} models got requests; "
                    f"min {int(counts.min())}, max {int(counts.max())}, expected {expected.mean():.0f} each",
                )
            )
    return out


# --- time series ---------------------------------------------------------------------

CLASSES = ("2xx", "503", "504", "other error", "no answer")


def status_class(status: np.ndarray) -> np.ndarray:
    cls = np.full(status.shape, 3)
    cls[is_ok(status)] = 0
    cls[status == 503] = 1
    cls[status == 504] = 2
    cls[status == 0] = 4
    return cls


def series(run: RunData, bucket_s: float = 1.0) -> dict[str, Any]:
    """Per-bucket completions by class and latency percentiles (by completion time)."""
    if len(run.start) == 0:
        return {"t": [], "counts": {c: [] for c in CLASSES}, "p50": [], "p90": [], "p99": [], "max": []}
    done = run.start + run.latency / 1000.0
    # Whole buckets up to the shape's end only: the few answers that trickle in while
    # Locust shuts down would make a last, mostly empty bucket look like a collapse.
    end = float(run.meta.get("t_end") or run.duration_s)
    nb = max(int(end // bucket_s), 1)
    keep = done < nb * bucket_s
    done, lat_all, st_all = done[keep], run.latency[keep], run.status[keep]
    idx = np.clip((done / bucket_s).astype(np.int64), 0, nb - 1)
    cls = status_class(st_all)
    counts = {c: (np.bincount(idx[cls == k], minlength=nb) / bucket_s).tolist() for k, c in enumerate(CLASSES)}
    order = np.argsort(idx, kind="stable")
    bounds = np.searchsorted(idx[order], np.arange(nb + 1))
    lat_sorted = lat_all[order]
    pct: dict[str, list[float | None]] = {"p50": [], "p90": [], "p99": [], "max": []}
    for b in range(nb):
        chunk = lat_sorted[bounds[b] : bounds[b + 1]]
        if len(chunk) == 0:
            for k in pct:
                pct[k].append(None)
            continue
        p = np.percentile(chunk, PERCENTILES, method="higher")
        pct["p50"].append(float(p[0]))
        pct["p90"].append(float(p[1]))
        pct["p99"].append(float(p[2]))
        pct["max"].append(float(np.max(chunk)))
    return {"t": [(b + 0.5) * bucket_s for b in range(nb)], "counts": counts, **pct}


# --- text --------------------------------------------------------------------------------


def _row(label: str, b: dict[str, Any]) -> str:
    errs = ", ".join(f"{k}: {v}" for k, v in b["errors_by_status"].items()) or "0"
    rps = "" if b["rps"] is None else f"{b['rps']:,.0f}"
    return (
        f"| {label} | {b['requests']:,} | {rps} | {_ms(b['p50_ms'])} | {_ms(b['p90_ms'])} | "
        f"{_ms(b['p99_ms'])} | {_ms(b['max_ms'])} | {errs} |"
    )


def markdown(summary: dict[str, Any], check_list: list[dict[str, Any]], files: list[str]) -> str:
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
                f"| {s['label']} | {s['users']} | {offered} | {s['rps'] or 0:,.0f} | {_ms(s['p50_ms'])} | "
                f"{_ms(s['p99_ms'])} | {s['requests'] - s['ok']} | {'yes' if s['under_target'] else 'no'} |"
            )
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
