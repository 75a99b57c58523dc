"""Merging the HTTP fronts' expositions (pod-wide /metrics; the served path is in test_fronts.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics_pod import _Families, merge


def _exposition(n: int) -> bytes:
    registry = CollectorRegistry()
    Counter("calls", "Calls.", ["route"], registry=registry).labels("/score").inc(n)
    Histogram("latency_seconds", "Latency.", registry=registry).observe(0.1 * n)
    return generate_latest(registry)


def test_each_front_keeps_its_own_series_and_families_are_declared_once() -> None:
    text = generate_latest(_Families(merge({0: _exposition(1), 1: _exposition(2), 2: None}))).decode()
    assert text.count("# TYPE calls_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    calls = {s.labels["front"]: s.value for s in families["calls"].samples if s.name == "calls_total"}
    assert calls == {"0": 1.0, "1": 2.0}
    counts = {s.labels["front"]: s.value for s in families["latency_seconds"].samples if s.name.endswith("_count")}
    assert counts == {"0": 1.0, "1": 1.0}
    up = {s.labels["front"]: s.value for s in families["scorehost_front_up"].samples}
    assert up == {"0": 1.0, "1": 1.0, "2": 0.0}  # front 2 did not answer: said, not hidden
