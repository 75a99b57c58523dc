"""The checks of a run: what each profile expects of the server, judged on the exact per-request record.

Each check is ``{"name", "ok", "detail"}``; ``run.py`` exits 1 when any fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtests import profiles
from loadtests.analysis import RunData, in_window, is_ok, p99, settled
from loadtests.recorder import FLAG_BAD_504
from loadtests.tables import ms_text


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": bool(ok), "detail": detail}


@dataclass(frozen=True)
class _Kept:
    ok: bool
    base_p99: float | None
    later_p99: float | None
    allowed: float | None


def _kept(base: np.ndarray, later: np.ndarray, errors: int, cfg: profiles.LoadConfig) -> _Kept:
    """Did latency stay near a baseline? The later p99 may exceed the base p99 by
    --recovery-factor or --recovery-slack-ms (the larger), with no errors at all."""
    base_p99, later_p99 = p99(base), p99(later)
    allowed = None if base_p99 is None else max(base_p99 * cfg.recovery_factor, base_p99 + cfg.recovery_slack_ms)
    ok = allowed is not None and later_p99 is not None and errors == 0 and later_p99 <= allowed
    return _Kept(ok, base_p99, later_p99, allowed)


def evaluate(run: RunData, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every check of the run's profile, each as {name, ok, detail}."""
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

    if profile in ("steady", "payloads", "multi-model", "streaming"):
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
            f"knee: {k['rps']:.0f} req/s at {k['users']} users, p99 {ms_text(k['p99_ms'])} "
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
    if profile == "streaming":
        out.extend(_stream_checks(cfg, summary))
    return out


def _stream_checks(cfg: profiles.LoadConfig, summary: dict[str, Any]) -> list[dict[str, Any]]:
    st = summary.get("streaming") or {}
    streams, ok_streams, complete = st.get("streams", 0), st.get("ok_streams", 0), st.get("complete_streams", 0)
    ttfc = st.get("ttfc_records", 0)
    # Every 2xx stream brought at least its first chunk, so it has exactly one ttfc record.
    ttfc_ok = ttfc > 0 and ttfc == ok_streams
    p50, p99_ = (st.get("ttfc") or {}).get("p50_ms"), (st.get("ttfc") or {}).get("p99_ms")
    want = cfg.tokens * cfg.token_bytes
    return [
        _check(
            "time to first chunk recorded",
            ttfc_ok,
            f"{ttfc} ttfc records for {ok_streams} 2xx streams; p50 {ms_text(p50)}, p99 {ms_text(p99_)}",
        ),
        _check(
            "every stream complete",
            streams > 0 and complete == streams,
            f"{complete} of {streams} streams brought all {cfg.tokens} chunks x {cfg.token_bytes} B "
            f"= {want} B; {summary['invalid_bodies']} short or long",
        ),
    ]


def _spike_checks(run: RunData, cfg: profiles.LoadConfig, summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    spike = run.phase("spike")
    base = run.phase("base")
    rec = run.phase("recovery")
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
    p99_503 = p99(lat503)
    out.append(
        _check(
            "503s are fast",
            p99_503 is not None and p99_503 <= cfg.fast_503_ms,
            f"503 p99 {ms_text(p99_503)} (limit {cfg.fast_503_ms:.0f} ms)",
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
        # Judge recovery on the second half of the recovery phase: the first half may
        # still drain what the spike left behind.
        rm = in_window(run, rec[0] + (rec[1] - rec[0]) / 2, rec[1])
        errors = int((~is_ok(run.status[rm])).sum())
        k = _kept(run.latency[settled(run, *base) & is_ok(run.status)], run.latency[rm], errors, cfg)
        out.append(
            _check(
                "recovered after the spike",
                k.ok,
                f"late recovery: {int(rm.sum())} requests, {errors} errors, p99 {ms_text(k.later_p99)} "
                f"(base p99 {ms_text(k.base_p99)}, allowed {ms_text(k.allowed)})",
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
        lo, hi = float(np.min(lat504)), p99(lat504)
        assert hi is not None
        on_time = lo >= 0.8 * cfg.timeout_ms and hi <= cfg.timeout_ms + cfg.timeout_slack_ms
        out.append(
            _check(
                "504s on time",
                on_time,
                f"504 latency min {ms_text(lo)}, p99 {ms_text(hi)} (timeout {cfg.timeout_ms:.0f} ms, "
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
    base = run.phase("baseline")
    mixed = run.phase("mixed")
    if base and mixed:
        mm = in_window(run, *mixed) & fast
        errors = int((mm & ~is_ok(run.status)).sum())
        k = _kept(run.latency[settled(run, *base) & fast], run.latency[mm], errors, cfg)
        out.append(
            _check(
                "fast requests keep their latency",
                k.ok,
                f"fast p99 {ms_text(k.later_p99)} with slow ones vs {ms_text(k.base_p99)} without "
                f"(allowed {ms_text(k.allowed)}), {errors} fast errors",
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
