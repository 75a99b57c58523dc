"""Autoscaling on busy-replica utilisation (server/deploy/autoscale.py), as azureml-fe does.

The rendered rules are read back and replayed: the replica counts the HPA/KEDA formula
``desired = ceil(current x utilisation / target)`` produces from a series of utilisation samples,
and, closing the loop, the count a steady load settles at, which must be the seeds' replica
estimate (20 rps x 10 s / 0.7 -> 286 replicas at concurrency 1). The timing is the seeds':
up at the next evaluation, down only after 60 s.
"""

from __future__ import annotations

import itertools
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_validators import check_jsonschema, kubernetes_validate, schema_file, validate, write_manifests

from server.deploy import k8s
from server.deploy.autoscale import (
    EXPORTED_METRICS,
    METRIC,
    ScalingRule,
    desired_replicas,
    metric_names,
    rule_of,
    simulate,
)
from server.deploy.checks import problems
from server.deploy.config import estimate_replicas, parse_config
from server.errors import ConfigError

UTILISATION_KINDS = {"keda": "ScaledObject", "hpa": "HorizontalPodAutoscaler"}


def render(raw: dict[str, Any] | None = None, **opts: Any) -> dict[str, dict[str, Any]]:
    manifests = k8s.render(parse_config(raw or {}), k8s.RenderOptions(**opts))
    assert problems(manifests) == []
    return {m["kind"]: m for m in manifests}


def autoscaler(raw: dict[str, Any] | None = None, kind: str = "keda", **opts: Any) -> dict[str, Any]:
    return render(raw, autoscaler=kind, **opts)[UTILISATION_KINDS[kind]]


def test_the_metric_is_the_gauge_the_pods_export() -> None:
    # Named by the observability issue: a gauge in [0, 1] on GET /metrics of the server port.
    assert METRIC == "scorehost_utilization"
    assert frozenset({"scorehost_utilization"}) == EXPORTED_METRICS


def test_default_is_a_keda_scaled_object_with_a_prometheus_trigger() -> None:
    kinds = render({"autoscale_target_utilization": 70}, name="fraud", namespace="models", port=8080)
    assert "HorizontalPodAutoscaler" not in kinds, "no CPU autoscaler unless asked for"
    spec = kinds["ScaledObject"]["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud"}
    (trigger,) = spec["triggers"]
    assert (trigger["type"], trigger["metricType"]) == ("prometheus", "AverageValue")
    query = trigger["metadata"]["query"]
    assert query == 'sum(scorehost_utilization{namespace="models",pod=~"fraud-[a-z0-9]+-[a-z0-9]+"})'
    assert trigger["metadata"]["threshold"] == "0.7"
    assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA metadata is a string map"
    # Prometheus finds the gauge through the pods' annotations, on the server's own port.
    pod_meta = kinds["Deployment"]["spec"]["template"]["metadata"]
    assert pod_meta["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 8080


def test_the_query_selects_this_deployments_pods_only() -> None:
    query = autoscaler({}, name="demo")["spec"]["triggers"][0]["metadata"]["query"]
    pattern = re.search(r'pod=~"([^"]+)"', query)
    assert pattern is not None
    regex = pattern.group(1).replace("\\\\", "\\")
    # PromQL regexes match the whole label value, as fullmatch does.
    assert re.fullmatch(regex, "demo-7d9c8b6f5-x2x4k")
    assert not re.fullmatch(regex, "demo-v2-7d9c8b6f5-x2x4k"), "another deployment named demo-v2"
    assert not re.fullmatch(regex, "demox-7d9c8b6f5-x2x4k")


def test_hpa_on_the_utilisation_metric_through_the_custom_metrics_api() -> None:
    spec = autoscaler({"autoscale_target_utilization": 65}, kind="hpa", name="fraud")["spec"]
    assert spec["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "scorehost_utilization"},
                "target": {"type": "AverageValue", "averageValue": "650m"},
            },
        }
    ]
    assert spec["scaleTargetRef"]["name"] == "fraud"


@pytest.mark.parametrize("kind", ["keda", "hpa"])
def test_bounds_and_timing_are_the_seeds(kind: str) -> None:
    raw = {"autoscale_min_replicas": 2, "autoscale_max_replicas": 7, "autoscale_refresh_seconds": 1}
    manifest = autoscaler(raw, kind=kind)
    spec = manifest["spec"]
    if kind == "keda":
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 7)
        assert spec["pollingInterval"] == 1, "autoscale_refresh_seconds is the polling interval"
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    else:
        assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 7)
        behavior = spec["behavior"]
    # Up eagerly: no stabilisation, a 1 s policy period; down conservatively: a 60 s window.
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert [p["periodSeconds"] for p in behavior["scaleUp"]["policies"]] == [1]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 60
    rule = rule_of(manifest)
    assert (rule.min_replicas, rule.max_replicas, rule.target) == (2, 7, Fraction(7, 10))
    assert (rule.scale_up_window_s, rule.scale_down_window_s) == (0, 60)


def test_refresh_seconds_maps_to_the_polling_interval_and_policy_period() -> None:
    keda = autoscaler({"autoscale_refresh_seconds": 15})["spec"]
    assert keda["pollingInterval"] == 15
    hpa = autoscaler({"autoscale_refresh_seconds": 15}, kind="hpa")["spec"]
    assert hpa["behavior"]["scaleUp"]["policies"][0]["periodSeconds"] == 15


def test_cpu_is_only_an_explicit_fallback() -> None:
    kinds = render({}, autoscaler="cpu")
    metrics = kinds["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metrics == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert "annotations" not in kinds["Deployment"]["spec"]["template"]["metadata"], "nothing to scrape"
    assert k8s.RenderOptions().autoscaler == "keda"


@pytest.mark.parametrize(
    "raw", [{"num_replicas": 3}, {"autoscale_enabled": False}, {"numReplicas": 2}], ids=["num", "off", "cli"]
)
def test_fixed_replicas_have_no_autoscaler(raw: dict[str, Any]) -> None:
    for kind in ("keda", "hpa", "cpu"):
        kinds = render(raw, autoscaler=kind)
        assert set(kinds) == {"Deployment", "Service", "PodDisruptionBudget"}
        assert kinds["Deployment"]["spec"]["replicas"] == raw.get("num_replicas", raw.get("numReplicas", 1))


def test_autoscaling_is_on_by_default_as_in_azure() -> None:
    kinds = render({})
    assert "ScaledObject" in kinds and "replicas" not in kinds["Deployment"]["spec"]


# --- the semantic checks see the metric and the target ---------------------------------------------
def test_metric_names_are_read_back_from_every_kind() -> None:
    assert list(metric_names(autoscaler({}, kind="keda"))) == ["scorehost_utilization"]
    assert list(metric_names(autoscaler({}, kind="hpa"))) == ["scorehost_utilization"]
    assert list(metric_names(render({}, autoscaler="cpu")["HorizontalPodAutoscaler"])) == ["cpu"]


def test_checks_refuse_a_metric_scorehost_does_not_export_and_a_missing_target() -> None:
    kinds = render({}, name="demo")
    scaled = kinds["ScaledObject"]
    scaled["spec"]["triggers"][0]["metadata"]["query"] = 'avg(rate(http_requests_total{pod=~"demo-.*"}[1m]))'
    scaled["spec"]["scaleTargetRef"]["name"] = "other"
    found = problems(list(kinds.values()))
    assert any("'http_requests_total' is not one scorehost exports" in p for p in found), found
    assert any("scaleTargetRef names no rendered Deployment (other)" in p for p in found), found

    hpa = render({}, name="demo", autoscaler="hpa")
    hpa["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"] = "busy_ratio"
    assert any("'busy_ratio'" in p for p in problems(list(hpa.values())))


# --- schemas ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["keda", "hpa", "cpu"])
def test_every_autoscaler_passes_its_schema(kind: str, tmp_path: Path) -> None:
    raw = {"autoscale_min_replicas": 2, "autoscale_max_replicas": 30, "autoscale_refresh_seconds": 5}
    files = write_manifests(k8s.render(parse_config(raw), k8s.RenderOptions(autoscaler=kind, namespace="m")), tmp_path)
    failures = validate(files, tmp_path)
    assert not failures, "\n".join(failures)


def test_the_crd_schema_catches_a_misspelt_field(tmp_path: Path) -> None:
    scaled = autoscaler({})
    scaled["spec"]["pollingIntervall"] = scaled["spec"].pop("pollingInterval")
    (bad,) = write_manifests([scaled], tmp_path)
    for name in ("keda.sh_scaledobjects.v1alpha1.json", "keda.sh_scaledobjects.v1alpha1.controller-gen-v0.6.1.json"):
        result = check_jsonschema(schema_file(name, tmp_path), [bad])
        assert result.returncode != 0 and "pollingIntervall" in result.stdout, result.stdout
    scaled["spec"]["pollingInterval"] = "1s"  # the right name, the wrong type
    del scaled["spec"]["pollingIntervall"]
    (bad,) = write_manifests([scaled], tmp_path / "type")
    assert check_jsonschema(schema_file("keda.sh_scaledobjects.v1alpha1.json", tmp_path), [bad]).returncode != 0


def test_the_hpa_schema_catches_a_misspelt_field(tmp_path: Path) -> None:
    hpa = autoscaler({}, kind="hpa")
    hpa["spec"]["behavior"]["scaleDown"]["stabilisationWindowSeconds"] = 60
    (bad,) = write_manifests([hpa], tmp_path)
    result = kubernetes_validate([bad])
    assert result.returncode != 0 and "stabilisationWindowSeconds" in result.stdout + result.stderr


def test_crd_schema_files_name_their_source() -> None:
    for path in sorted((Path(__file__).parent / "data").glob("*.json")):
        comment = yaml.safe_load(path.read_text(encoding="utf-8"))["$comment"]
        assert re.search(r"at commit [0-9a-f]{40}", comment), path.name
        assert "config/crd" in comment or "crds/" in comment, path.name


# --- the formula -----------------------------------------------------------------------------------
def test_utilisation_samples_give_the_hpa_formulas_replica_counts() -> None:
    rule = rule_of(autoscaler({"autoscale_min_replicas": 1, "autoscale_max_replicas": 10}))
    # (replicas now, average utilisation) -> ceil(replicas x utilisation / 0.7), within the 10 % tolerance.
    samples = [(1, 1.0, 2), (2, 1.0, 3), (3, 1.0, 5), (4, 1.0, 6), (6, 0.5, 5), (5, 0.7, 5), (10, 0.75, 10)]
    for current, utilization, expected in samples:
        assert desired_replicas(current, utilization, rule) == expected, (current, utilization)
        if abs(utilization / 0.7 - 1) > 0.1:
            assert expected == min(10, -(-current * Fraction(str(utilization)) // Fraction(7, 10)))
    assert desired_replicas(8, 1.0, rule) == 10, "never above autoscale_max_replicas"
    assert desired_replicas(3, 0.0, rule) == 1, "never below autoscale_min_replicas"


@pytest.mark.parametrize("kind", ["keda", "hpa"])
@pytest.mark.parametrize(("rps", "seconds", "concurrency"), [("20", "10", 1), ("20", "10", 4), ("50", "0.2", 2)])
def test_a_steady_load_settles_at_the_seeds_replica_estimate(
    kind: str, rps: str, seconds: str, concurrency: int
) -> None:
    raw = {"autoscale_max_replicas": 1000, "replica_max_concurrent_requests": concurrency}
    rule = rule_of(autoscaler(raw, kind=kind))
    in_flight = Fraction(rps) * Fraction(seconds)  # Little's law: requests being served at once
    counts = simulate(rule, [in_flight] * 60, concurrency=concurrency)
    expected = estimate_replicas(rps, seconds, 70, concurrency)
    assert counts[-1] == expected
    assert counts[-10:] == [expected] * 10, "and stays there"
    assert all(a <= b for a, b in itertools.pairwise(counts)), "only up while under-provisioned"


def test_within_the_hpa_tolerance_the_count_stays() -> None:
    # 1.5 requests in flight on one replica of 2 slots is 75 % busy, 1.07 x the 70 % target: inside
    # the HPA's 10 % tolerance, so it keeps 1 replica where the seeds' estimate rounds up to 2.
    rule = rule_of(autoscaler({"replica_max_concurrent_requests": 2}))
    assert estimate_replicas("3", "0.5", "70", 2) == 2
    assert simulate(rule, [Fraction(3, 2)] * 10, concurrency=2)[-1] == 1
    assert simulate(rule, [Fraction(3, 2)] * 10, concurrency=2, start=2)[-1] == 2, "nor does it scale down"


def test_the_seeds_worked_example_286_replicas() -> None:
    # targetRps 20, reqTime 10 s, maxReqPerContainer 1, targetUtilization .7 -> ceil(285.7) = 286.
    assert estimate_replicas("20", "10", "70", 1) == 286
    assert k8s.main(["replicas", "--target-rps", "20", "--request-seconds", "10"]) == 0
    rule = rule_of(autoscaler({"autoscale_max_replicas": 300}))
    counts = simulate(rule, [200] * 30)
    assert counts[-1] == 286
    assert counts[:14] == [2, 3, 5, 8, 12, 18, 26, 38, 55, 79, 113, 162, 232, 286], "x1/0.7 per step while saturated"


@pytest.mark.parametrize("kind", ["keda", "hpa"])
def test_up_at_once_down_after_a_minute(kind: str) -> None:
    rule = rule_of(autoscaler({"autoscale_max_replicas": 300}, kind=kind))
    loads = [200] * 30 + [20] * 120  # the load drops to a tenth at t = 30 s
    counts = simulate(rule, loads, start=286)
    assert counts[0] == 286
    low = estimate_replicas("2", "10", "70", 1)  # 20 in flight -> 29 replicas
    drop = 30
    assert counts[drop : drop + 60] == [286] * 60, "recommendations to scale down wait out the 60 s window"
    assert counts[drop + 60] == low
    # And back up: the first evaluation after the load returns adds replicas.
    again = simulate(rule, [20] * 5 + [200] * 5, start=low)
    assert again[4] == low and again[5] > low


def test_a_rule_without_windows_takes_kubernetes_defaults() -> None:
    hpa = autoscaler({}, kind="hpa")
    del hpa["spec"]["behavior"]
    assert rule_of(hpa) == ScalingRule(1, 10, Fraction(7, 10), 0, 300)


def test_cli_chooses_the_autoscaler(capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://prometheus.monitoring:9090"
    assert k8s.main(["render", "--autoscaler", "hpa"]) == 0
    assert [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)][-1] == "HorizontalPodAutoscaler"
    assert k8s.main(["render", "--prometheus-url", url]) == 0
    scaled = list(yaml.safe_load_all(capsys.readouterr().out))[-1]
    assert scaled["spec"]["triggers"][0]["metadata"]["serverAddress"] == url
    assert k8s.main(["render", "--autoscaler", "memory"]) == 2
    assert "invalid choice: 'memory'" in capsys.readouterr().err


def test_the_utilisation_autoscaler_needs_metrics_on_the_server_port() -> None:
    config = parse_config({})
    for env, message in (
        ({"SCOREHOST_METRICS": "false"}, "needs /metrics"),
        ({"SCOREHOST_METRICS_ENDPOINT": "health"}, "scrapes /metrics on the server port"),
    ):
        with pytest.raises(ConfigError, match=message):
            k8s.render(config, k8s.RenderOptions(env=env))
        k8s.render(config, k8s.RenderOptions(env=env, autoscaler="cpu"))  # the CPU fallback does not care
        k8s.render(parse_config({"num_replicas": 2}), k8s.RenderOptions(env=env))  # nor does a fixed count
