"""The server's own view of a load run, from its ``/metrics`` scraped before and after.

The runner (``loadtests/run.py``) scrapes ``/metrics`` before the profile starts and after it
ends; the difference of the histograms is what the server saw during the run: its total
request time, the queue wait (arrival at the pool to the worker starting the call) and
``run()``'s own time as the worker measured it. Percentiles are interpolated within the
histogram buckets, as PromQL's ``histogram_quantile`` does, so they are as fine as the
buckets (about 1.5x apart below 100 ms). A server without ``/metrics`` (another server, or
metrics off) gives no section, not an error.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# (key in the report, histogram family, label filter)
HISTOGRAMS = (
    ("request", "scorehost_request_duration_seconds", {"route": "/score"}),
    ("queue_wait", "scorehost_queue_wait_seconds", {}),
    ("run", "scorehost_run_seconds", {}),
)
LABELS = {
    "request": "server: request (HTTP process)",
    "queue_wait": "server: queue wait",
    "run": "server: run() (worker)",
}
Scrape = dict[str, Any]
# Dynamic batching (server.batching.metrics): calls and executions, for the mean batch size.
_BATCH_SAMPLES = {"scorehost_batch_size_sum": "sum", "scorehost_batch_size_count": "count"}


def scrape(url: str, timeout_s: float = 10.0) -> Scrape | None:
    """``{"hist": {key: {le: count}, ...}, "sums": {key: seconds}, "requests": {status: n}}``, or None."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            text = resp.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return parse(text)


def parse(text: str) -> Scrape:
    hist: dict[str, dict[float, float]] = {key: {} for key, _, _ in HISTOGRAMS}
    sums: dict[str, float] = {key: 0.0 for key, _, _ in HISTOGRAMS}
    requests: dict[str, float] = {}
    batch = {"sum": 0.0, "count": 0.0}  # scorehost_batch_size, every source
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _BATCH_SAMPLES:
                batch[_BATCH_SAMPLES[sample.name]] += sample.value
                continue
            if sample.name == "scorehost_requests_total" and sample.labels.get("route") == "/score":
                status = sample.labels.get("status", "?")
                requests[status] = requests.get(status, 0.0) + sample.value
                continue
            for key, name, want in HISTOGRAMS:
                if not all(sample.labels.get(k) == v for k, v in want.items()):
                    continue
                if sample.name == f"{name}_bucket":
                    le = float(sample.labels["le"])
                    hist[key][le] = hist[key].get(le, 0.0) + sample.value
                elif sample.name == f"{name}_sum":
                    sums[key] += sample.value
    return {"hist": hist, "sums": sums, "requests": requests, "batch": batch}


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative ``{le: count}``; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return prev_le  # beyond the last finite bound: its value, as PromQL does
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def during(before: Scrape, after: Scrape) -> dict[str, Any]:
    """What the server recorded between two scrapes: count, mean and percentiles (ms) per histogram."""
    out: dict[str, Any] = {}
    for key, _, _ in HISTOGRAMS:
        a, b = after["hist"][key], before["hist"].get(key, {})
        delta = {le: a[le] - b.get(le, 0.0) for le in a}
        count = delta.get(math.inf, 0.0)
        seconds = after["sums"][key] - before["sums"].get(key, 0.0)
        entry: dict[str, Any] = {"count": int(count), "mean_ms": round(seconds / count * 1000, 3) if count else None}
        for q in (0.5, 0.9, 0.99):
            value = quantile(q, delta)
            entry[f"p{round(q * 100)}_ms"] = round(value * 1000, 3) if value is not None else None
        out[key] = entry
    statuses = {s: after["requests"][s] - before["requests"].get(s, 0.0) for s in after["requests"]}
    out["requests_by_status"] = {s: int(n) for s, n in sorted(statuses.items()) if n}
    was, now = before.get("batch", {}), after.get("batch", {})
    calls = now.get("sum", 0.0) - was.get("sum", 0.0)
    batches = now.get("count", 0.0) - was.get("count", 0.0)
    out["batching"] = {"calls": int(calls), "batches": int(batches),
                       "mean_batch_size": round(calls / batches, 2) if batches else None}  # fmt: skip
    return out


def markdown(server: dict[str, Any], client: dict[str, Any]) -> str:
    """The client's and the server's percentiles side by side."""

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:,.3f}" if v < 10 else f"{v:,.1f}"

    lines = [
        "## Client and server side",
        "",
        "The server's figures are the difference of its `/metrics` histograms before and after the run "
        "(interpolated within buckets, as `histogram_quantile` does). Client minus server request time is "
        "the network and the load generator; request time minus queue wait and run() is the HTTP process "
        "and the hand-over to the worker.",
        "",
        "| view | requests | p50 ms | p90 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|---:|",
        f"| client (Locust) | {client.get('requests', 0):,} | {ms(client.get('p50_ms'))} | {ms(client.get('p90_ms'))} "
        f"| {ms(client.get('p99_ms'))} | {ms(client.get('mean_ms'))} |",
    ]
    for key, label in LABELS.items():
        e = server.get(key, {})
        lines.append(
            f"| {label} | {e.get('count', 0):,} | {ms(e.get('p50_ms'))} | {ms(e.get('p90_ms'))} "
            f"| {ms(e.get('p99_ms'))} | {ms(e.get('mean_ms'))} |"
        )
    by_status = ", ".join(f"{s}: {n:,}" for s, n in server.get("requests_by_status", {}).items()) or "none"
    lines += ["", f"Server-side /score answers by status: {by_status}.", ""]
    batching = server.get("batching") or {}
    if batching.get("batches"):
        lines += [f"Dynamic batching: mean batch size {batching['mean_batch_size']:.2f} ({batching['calls']:,} calls "
                  f"in {batching['batches']:,} executions).", ""]  # fmt: skip
    return "\n".join(lines)
