"""PNG plots of a run (matplotlib, no display needed).

timeline.png   latency percentiles, throughput by status and users over time,
               with the profile's phases shaded
ramp.png       ramp only: p99 against achieved rate per step, with the target and knee
models.png     multi-model only: share of requests per model against the expected share
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np

from loadtests.analysis import CLASSES, RunData

CLASS_COLORS = {
    "2xx": "#2e7d32",
    "503": "#ef6c00",
    "504": "#6a1b9a",
    "other error": "#c62828",
    "no answer": "#212121",
}
PHASE_COLORS = ("#e3f2fd", "#fff3e0", "#e8f5e9", "#f3e5f5", "#fffde7", "#eceff1")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # figures live until closed; a long session of runs would pile them up
    return path


def _shade(ax: Any, phases: list[tuple[str, float, float]], label: bool) -> None:
    many = len(phases) > 6
    for i, (name, t0, t1) in enumerate(phases):
        ax.axvspan(t0, t1, color=PHASE_COLORS[i % len(PHASE_COLORS)], alpha=0.6, lw=0, zorder=0)
        if label and not many:
            ax.text(
                (t0 + t1) / 2,
                1.0,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#455a64",
            )


def plot_timeline(run: RunData, ser: dict[str, Any], summary: dict[str, Any], path: Path) -> Path:
    t = np.array(ser["t"])
    phases = run.phase_windows()
    fig, (ax_lat, ax_rps, ax_users) = plt.subplots(
        3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.3]}
    )
    o = summary["overall"]
    title = (
        f"{summary['profile']} against {summary['host']}: {o['requests']:,} requests, "
        f"{o['rps'] or 0:,.0f} req/s, p50 {o['p50_ms'] or 0:.1f} ms, p99 {o['p99_ms'] or 0:.1f} ms"
    )
    fig.suptitle(title, fontsize=11)

    _shade(ax_lat, phases, label=True)
    for key, style in (("max", ":"), ("p99", "-"), ("p90", "--"), ("p50", "-")):
        y = np.array([np.nan if v is None else v for v in ser[key]], dtype=float)
        ax_lat.plot(t, y, style, label=key, lw=1.6 if key in ("p50", "p99") else 1.0)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency per second (ms, log)")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(loc="upper left", fontsize=8, ncol=4)
    cfg = run.cfg
    if summary["profile"] == "ramp":
        ax_lat.axhline(cfg.p99_target_ms, color="#c62828", lw=1, ls="-.", label="p99 target")
    if summary["profile"] == "timeout":
        ax_lat.axhline(cfg.timeout_ms, color="#6a1b9a", lw=1, ls="-.")

    _shade(ax_rps, phases, label=False)
    bottom = np.zeros(len(t))
    for c in CLASSES:
        y = np.array(ser["counts"][c], dtype=float)
        if y.sum() == 0:
            continue
        ax_rps.bar(
            t,
            y,
            width=(t[1] - t[0]) if len(t) > 1 else 1.0,
            bottom=bottom,
            color=CLASS_COLORS[c],
            label=c,
            align="center",
            lw=0,
        )
        bottom += y
    ax_rps.set_ylabel("responses per second")
    ax_rps.grid(True, axis="y", alpha=0.3)
    ax_rps.legend(loc="upper left", fontsize=8, ncol=5)

    _shade(ax_users, phases, label=False)
    end = float(run.meta.get("t_end") or run.duration_s)
    target = run.meta.get("phases") or []
    if target:
        # The shape's set-point, exact in time; the samples below show what was running.
        ax_users.step(
            [p["t"] for p in target] + [end],
            [p["users"] for p in target] + [target[-1]["users"]],
            where="post",
            color="#1565c0",
            label="target",
        )
    users = run.meta.get("users") or []
    if users:
        ax_users.plot([u[0] for u in users], [u[1] for u in users], ".", color="#90a4ae", ms=4, label="running")
    if target or users:
        ax_users.legend(loc="upper left", fontsize=8, ncol=2)
    ax_users.set_ylabel("users")
    ax_users.set_xlabel("seconds since start")
    ax_users.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_ramp(summary: dict[str, Any], path: Path) -> Path | None:
    steps = [s for s in summary.get("ramp_steps", []) if s["requests"] > 0]
    if not steps:
        return None
    cfg = summary["config"]
    fig, ax = plt.subplots(figsize=(8, 5))
    x = [s["rps"] for s in steps]
    y = [s["p99_ms"] for s in steps]
    colors = ["#2e7d32" if s["under_target"] else "#c62828" for s in steps]
    ax.plot(x, y, "-", color="#90a4ae", zorder=1)
    ax.scatter(x, y, c=colors, zorder=2)
    for s in steps:
        ax.annotate(f"{s['users']}u", (s["rps"], s["p99_ms"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(
        cfg["p99_target_ms"],
        color="#c62828",
        ls="-.",
        lw=1,
        label=f"p99 target {cfg['p99_target_ms']:.0f} ms",
    )
    k = summary.get("knee")
    if k:
        ax.axvline(k["rps"], color="#2e7d32", ls="--", lw=1, label=f"knee {k['rps']:,.0f} req/s")
    ax.set(
        yscale="log",
        xlabel="achieved req/s per step",
        ylabel="p99 latency (ms, log)",
        title="ramp: p99 against rate (green: under target)",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_models(summary: dict[str, Any], path: Path) -> Path | None:
    models = summary.get("models") or {}
    phases = models.get("phases") or {}
    if not phases:
        return None
    fig, axes = plt.subplots(1, len(phases), figsize=(6 * len(phases), 4.2), squeeze=False)
    for ax, (label, ph) in zip(axes[0], phases.items(), strict=True):
        counts = np.array(ph["counts"], dtype=float)
        total = counts.sum() or 1.0
        ranks = np.arange(1, len(counts) + 1)
        ax.bar(ranks, counts / total, color="#1565c0", alpha=0.8, label="observed")
        ax.plot(ranks, ph["expected_share"], "o-", color="#ef6c00", ms=3, label="expected")
        ax.set(
            title=f"{label}: {int(counts.sum()):,} requests over {len(counts)} models",
            xlabel="model (hottest first)",
            ylabel="share of requests",
        )
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
