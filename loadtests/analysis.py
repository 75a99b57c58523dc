"""Turn a run's per-request record into a summary and time series (the checks: checks.py).

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

    def phase(self, label: str) -> tuple[float, float] | None:
        """(from_s, to_s) of the phase called ``label``, or None when it never ran."""
        return next(((t_from, t_to) for lab, t_from, t_to in self.phase_windows() if lab == label), None)

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
    """Requests sent in [t_from, t_to)."""
    return (run.start >= t_from) & (run.start < t_to)


def settle_s(t_from: float, t_to: float) -> float:
    """How much of a phase's start to leave out: its users are still starting (1 s at most)."""
    return min(1.0, (t_to - t_from) / 4)


def settled(run: RunData, t_from: float, t_to: float) -> np.ndarray:
    """Requests sent in the phase [t_from, t_to) once its users have started."""
    return in_window(run, t_from + settle_s(t_from, t_to), t_to)


def p99(lat: np.ndarray) -> float | None:
    return None if len(lat) == 0 else float(np.percentile(lat, 99, method="higher"))


# --- ramp ------------------------------------------------------------------------


def ramp_steps(run: RunData) -> list[dict[str, Any]]:
    cfg = run.cfg
    out = []
    for label, t_from, t_to in run.phase_windows():
        m = settled(run, t_from, t_to)
        seconds = max(t_to - t_from - settle_s(t_from, t_to), 1e-9)
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
    if run.meta.get("profile") == "streaming":
        summary["streaming"] = stream_stats(run)
    return summary


def stream_stats(run: RunData) -> dict[str, Any]:
    """The streaming profile's figures, from its three request names (profiles.STREAM_*).

    A chunk is a token of --token-bytes; every chunk read makes one ttfc or chunk-gap
    record, so their count over the run's length is the chunks per second the clients got.
    """
    names = run.meta.get("names", [])

    def named(name: str) -> np.ndarray:
        return np.asarray(run.name == (names.index(name) if name in names else -1))

    ok = is_ok(run.status)
    ttfc, gaps, whole = named(profiles.STREAM_TTFC), named(profiles.STREAM_GAP), named(profiles.STREAM_WHOLE)
    complete = whole & ok & ((run.flags & FLAG_INVALID_BODY) == 0)
    duration = run.duration_s
    chunks = int(ttfc.sum() + gaps.sum())
    return {
        "streams": int(whole.sum()),
        "ok_streams": int((whole & ok).sum()),
        "complete_streams": int(complete.sum()),
        "ttfc_records": int(ttfc.sum()),
        "gap_records": int(gaps.sum()),
        "chunks": chunks,
        "streams_per_s": round(int(whole.sum()) / duration, 1) if duration > 0 else None,
        "chunks_per_s": round(chunks / duration, 1) if duration > 0 else None,
        "ttfc": latency_stats(run.latency[ttfc]),
        "chunk_gap": latency_stats(run.latency[gaps]),
        "stream": latency_stats(run.latency[complete]),
    }


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
