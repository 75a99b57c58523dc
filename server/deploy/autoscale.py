"""Autoscaling the way azureml-fe does it: on busy-replica utilisation, not on CPU.

Azure's router scales a deployment on *utilisation*, busy replicas over replicas, against
``autoscale_target_utilization`` (70 %), eagerly up (about 1 s) and conservatively down (about
1 min), and its documentation warns against scaling model deployments on a generic metric such
as CPU. Each scorehost pod exports that signal itself: the Prometheus gauge
``scorehost_utilization`` (busy slots over slots, in [0, 1]) on ``GET /metrics`` of the server
port. Three renderings, chosen with ``--autoscaler``:

* ``keda`` (default): a KEDA ``ScaledObject`` with a Prometheus trigger; the query sums the
  gauge over the deployment's pods and the threshold is the target utilisation, so KEDA's HPA
  computes ``desired = ceil(sum / target) = ceil(replicas x utilisation / target)``.
  ``pollingInterval`` is ``autoscale_refresh_seconds``.
* ``hpa``: an ``autoscaling/v2`` HorizontalPodAutoscaler on the *Pods* metric
  ``scorehost_utilization`` through the custom-metrics API (prometheus-adapter), target
  ``averageValue`` = the utilisation as a quantity (70 % -> ``700m``): the same formula.
* ``cpu``: the explicit fallback for clusters with neither, the HPA on CPU utilisation
  (relative to the request) that ``scorehost k8s`` rendered before.

The timing is the seeds': scale-up has no stabilisation window and a policy period of
``autoscale_refresh_seconds`` (1 s by default; the HPA controller's own sync period, 15 s unless
the cluster sets ``--horizontal-pod-autoscaler-sync-period``, is the floor), scale-down a 60 s
window. :func:`simulate` replays that rule on a series of loads, for tests and for sizing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from server.deploy.config import DeployConfig

__all__ = [
    "AUTOSCALERS",
    "EXPORTED_METRICS",
    "METRIC",
    "Autoscaler",
    "ScalingRule",
    "autoscaler_manifest",
    "behavior",
    "desired_replicas",
    "metric_names",
    "rule_of",
    "scrape_annotations",
    "simulate",
]

Manifest = dict[str, Any]
Autoscaler = Literal["keda", "hpa", "cpu"]
AUTOSCALERS: tuple[Autoscaler, ...] = ("keda", "hpa", "cpu")

# The utilisation gauge each pod exports (server/http, GET /metrics), busy slots over slots.
METRIC = "scorehost_utilization"
# Every metric an autoscaler may name; the semantic checks refuse any other.
EXPORTED_METRICS = frozenset({METRIC})

SCALE_DOWN_WINDOW_S = 60  # the seeds: "decisions to remove replicas are conservative (around 1 minute)"
HPA_TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance default
DEFAULT_PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"


def behavior(config: DeployConfig) -> Manifest:
    """HPA ``behavior``: up at once (no window, at most doubling per refresh period), down after 60 s."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": config.autoscale_refresh_seconds}],
        },
        "scaleDown": {"stabilizationWindowSeconds": SCALE_DOWN_WINDOW_S},
    }


def scrape_annotations(port: int) -> dict[str, str]:
    """The conventional pod annotations that Prometheus' ``kubernetes-pods`` scrape job follows."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _fraction_text(value: Fraction) -> str:
    """A percentage over 100 as a short decimal: 70 -> ``0.7``, 33 -> ``0.33``, 100 -> ``1``."""
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text or "0"


def prometheus_query(name: str, namespace: str | None) -> str:
    """The summed utilisation of one Deployment's pods (``NAME-<template hash>-<id>``)."""
    # PromQL regexes are anchored: two trailing segments without '-' select NAME's pods and
    # not those of a Deployment named NAME-something.
    matchers = [f'pod=~"{re.escape(name)}-[a-z0-9]+-[a-z0-9]+"']
    if namespace:
        matchers.insert(0, f'namespace="{namespace}"')
    return f"sum({METRIC}{{{','.join(matchers)}}})"


def autoscaler_manifest(
    config: DeployConfig,
    name: str,
    metadata: Manifest,
    kind: Autoscaler,
    *,
    namespace: str | None,
    prometheus_url: str = DEFAULT_PROMETHEUS,
) -> Manifest:
    """The autoscaler of Deployment ``name``; ``metadata`` is the objects' shared metadata."""
    target = Fraction(config.autoscale_target_utilization, 100)
    if kind == "keda":
        return {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": metadata,
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "pollingInterval": config.autoscale_refresh_seconds,
                "minReplicaCount": config.autoscale_min_replicas,
                "maxReplicaCount": config.autoscale_max_replicas,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(config)}},
                "triggers": [
                    {
                        "type": "prometheus",
                        "metricType": "AverageValue",
                        "metadata": {
                            "serverAddress": prometheus_url,
                            "query": prometheus_query(name, namespace),
                            "threshold": _fraction_text(target),
                        },
                    }
                ],
            },
        }
    if kind == "hpa":
        metric: Manifest = {
            "type": "Pods",
            "pods": {
                "metric": {"name": METRIC},
                "target": {"type": "AverageValue", "averageValue": f"{config.autoscale_target_utilization * 10}m"},
            },
        }
        scale_behavior = behavior(config)
    else:
        # The fallback, unchanged from before: CPU relative to the request. Scale-down keeps the
        # HPA's default window (300 s): CPU is a noisier signal than utilisation.
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": config.autoscale_target_utilization},
            },
        }
        scale_behavior = {"scaleUp": behavior(config)["scaleUp"]}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": config.autoscale_min_replicas,
            "maxReplicas": config.autoscale_max_replicas,
            "metrics": [metric],
            "behavior": scale_behavior,
        },
    }


# --- what a rendered rule names and does ---------------------------------------------------------
_SERIES = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")


def metric_names(manifest: Manifest) -> Iterator[str]:
    """The metrics an autoscaler reads (``cpu`` for a resource metric)."""
    spec = manifest.get("spec", {})
    if manifest.get("kind") == "ScaledObject":
        for trigger in spec.get("triggers", []):
            if trigger.get("type") == "prometheus":
                yield from _SERIES.findall(trigger.get("metadata", {}).get("query", ""))
        return
    for metric in spec.get("metrics", []):
        source = metric.get(metric.get("type", "").lower() or "none", {})
        if metric.get("type") == "Resource":
            yield source.get("name", "")
        else:
            yield source.get("metric", {}).get("name", "")


@dataclass(frozen=True)
class ScalingRule:
    """What the HPA formula needs from a rendered autoscaler."""

    min_replicas: int
    max_replicas: int
    target: Fraction  # utilisation per replica, 0.7 for 70 %
    scale_up_window_s: int
    scale_down_window_s: int
    tolerance: float = HPA_TOLERANCE


def _quantity(text: str) -> Fraction:
    return Fraction(text[:-1]) / 1000 if text.endswith("m") else Fraction(text)


def rule_of(manifest: Manifest) -> ScalingRule:
    """Read the rule back from a rendered ScaledObject or utilisation HPA (not the CPU fallback)."""
    spec = manifest["spec"]
    if manifest["kind"] == "ScaledObject":
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
        target = Fraction(spec["triggers"][0]["metadata"]["threshold"])
        rules = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    else:
        low, high = spec["minReplicas"], spec["maxReplicas"]
        pods = spec["metrics"][0]["pods"]
        target = _quantity(str(pods["target"]["averageValue"]))
        rules = spec.get("behavior", {})
    # Kubernetes' defaults where a window is not given: 0 s up, 300 s down.
    up = rules.get("scaleUp", {}).get("stabilizationWindowSeconds", 0)
    down = rules.get("scaleDown", {}).get("stabilizationWindowSeconds", 300)
    return ScalingRule(low, high, target, up, down)


def desired_replicas(current: int, utilization: float | Fraction, rule: ScalingRule) -> int:
    """One HPA/KEDA evaluation: ``ceil(current x utilisation / target)``, within tolerance and bounds.

    ``utilization`` is the pods' average busy fraction (KEDA's summed query over its
    AverageValue threshold is the same ratio).
    """
    ratio = Fraction(utilization) / rule.target
    # Within the tolerance of the target the HPA leaves the count alone (no flapping at 69 % vs 71 %).
    desired = current if abs(float(ratio) - 1) <= rule.tolerance else math.ceil(ratio * current)
    return min(rule.max_replicas, max(rule.min_replicas, desired))


def simulate(
    rule: ScalingRule,
    loads: Sequence[float | Fraction],
    *,
    concurrency: int = 1,
    step_s: int = 1,
    start: int | None = None,
) -> list[int]:
    """Replicas after each step when ``loads[i]`` requests are in flight at once during step ``i``.

    Each replica serves ``concurrency`` at a time; utilisation is busy slots over slots (what the
    gauge reports), capped at 1 when the load exceeds the capacity. Recommendations are
    stabilised as the HPA does: a scale-down takes the highest recommendation of the last
    ``scale_down_window_s``, a scale-up the lowest of the last ``scale_up_window_s``.
    """
    replicas = start if start is not None else rule.min_replicas
    history: list[tuple[int, int]] = []  # (time, recommendation)
    out: list[int] = []
    for i, load in enumerate(loads):
        now = i * step_s
        busy = min(Fraction(load), Fraction(replicas * concurrency))
        utilization = busy / (replicas * concurrency)
        recommendation = desired_replicas(replicas, utilization, rule)
        history.append((now, recommendation))
        if recommendation > replicas:
            window = [r for t, r in history if now - t <= rule.scale_up_window_s]
            replicas = max(replicas, min(window))
        elif recommendation < replicas:
            window = [r for t, r in history if now - t <= rule.scale_down_window_s]
            replicas = min(replicas, max(window))
        out.append(replicas)
    return out
