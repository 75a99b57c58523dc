"""``scorehost k8s``: manifests rendered from Azure ML deployment configurations.

Every rendered manifest and every checked-in one under deploy/kubernetes/ is validated offline:
core objects with ``kubernetes-validate --strict`` (schemas of Kubernetes 1.25 and 1.37), the
KEDA ScaledObject with ``check-jsonschema`` against its CRD schema (tests/k8s_validators.py). The
rest checks what a schema cannot: that selectors select, probes point at ports and paths that
exist, the environment means to the server what the configuration meant, and bad configurations
are refused. The autoscaler itself is tests/test_autoscale.py; endpoints with versions
tests/test_versions.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from k8s_validators import kubernetes_validate, validate

from server.deploy import k8s
from server.deploy.checks import problems
from server.deploy.config import ConfigError, DeployConfig, estimate_replicas, parse_config
from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
PROBE_PATHS = {"/health/live", "/health/ready", "/"}
# Settings from the environment alone (a literal Settings() trips mypy: it sees every field as required).
NO_OVERRIDES: dict[str, Any] = {}

# The checked-in manifests and the command that renders them (also in deploy/kubernetes/README.md).
# They were rendered with the CPU-utilisation HPA, now the explicit fallback (--autoscaler cpu),
# until deploy/kubernetes/ is re-rendered with the default utilisation autoscaler.
CHECKED_IN = {
    variant: [
        "render",
        "--config",
        str(DEPLOY / f"deploymentconfig.{variant}.json"),
        "--name",
        f"scorehost-{variant}",
        "--image",
        f"registry.example.com/my-model:{variant}",
    ]
    for variant in ("cpu", "gpu")
}
AUTOSCALER_KINDS = ("HorizontalPodAutoscaler", "ScaledObject")

CONFIGS: dict[str, dict[str, Any]] = {
    "azure-defaults": {},
    "fixed-replicas": {"computeType": "aks", "num_replicas": 3, "cpu_cores": 0.5, "memory_gb": 1.5},
    "gpu": {"gpu_cores": 1, "cpu_cores": 2, "memory_gb": 8, "autoscale_max_replicas": 3},
    "everything": {
        "computeType": "aks",
        "cpu_cores": 1.5,
        "memory_gb": 2,
        "cpu_cores_limit": 3,
        "memory_gb_limit": 4,
        "autoscale_enabled": True,
        "autoscale_min_replicas": 2,
        "autoscale_max_replicas": 20,
        "autoscale_refresh_seconds": 30,
        "autoscale_target_utilization": 60,
        "scoring_timeout_ms": 5000,
        "replica_max_concurrent_requests": 8,
        "max_request_wait_time": 250,
        "period_seconds": 5,
        "initial_delay_seconds": 20,
        "timeout_seconds": 3,
        "success_threshold": 2,
        "failure_threshold": 4,
        "namespace": "models",
        "auth_enabled": True,
        "collect_model_data": True,
        "description": "ignored",
        "tags": {"team": "x"},
    },
}
EVERYTHING_OPTS = k8s.RenderOptions(
    name="fraud-model",
    image="registry.example.com/fraud:7",
    workers=4,
    entry_script="score.py",
    shutdown_delay_s=5,
    graceful_timeout_s=45.5,
    env={"SCOREHOST_LOG_FORMAT": "json"},
)


def rendered(name: str) -> list[dict[str, Any]]:
    opts = EVERYTHING_OPTS if name == "everything" else k8s.RenderOptions()
    return k8s.render(parse_config(CONFIGS[name]), opts)


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {m["kind"]: m for m in manifests}
    assert len(kinds) == len(manifests), "one object per kind"
    return kinds


def container_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    containers = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return cast(dict[str, Any], containers[0])


def env_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_of(manifests)["env"]}


def load_dir(directory: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.yaml"))]


# --- schema validation ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    """Every test configuration rendered through the CLI into files, as a user would."""
    files: list[Path] = []
    for name, raw in CONFIGS.items():
        directory = tmp_path_factory.mktemp(name)
        config = directory / "deploymentconfig.json"
        config.write_text(json.dumps(raw), encoding="utf-8")
        args = ["render", "--config", str(config), "-o", str(directory / "out")]
        if name == "everything":
            args += ["--name", "fraud-model", "--workers", "4", "--entry-script", "score.py"]
        assert k8s.main(args) == 0
        files += sorted((directory / "out").glob("*.yaml"))
    yield files


def test_rendered_and_checked_in_manifests_pass_strict_schema_validation(
    rendered_files: list[Path], tmp_path: Path
) -> None:
    checked_in = sorted(DEPLOY.glob("*/*.yaml"))
    assert len(checked_in) == 8, "cpu/ and gpu/: deployment, service, pdb, hpa"
    assert any(p.name == "scaledobject.yaml" for p in rendered_files), "the default autoscaler is validated too"
    failures = validate(rendered_files + checked_in, tmp_path)
    assert not failures, "\n".join(failures)


def test_the_validator_catches_a_misspelt_field(tmp_path: Path) -> None:
    # Without this the test above could pass on a validator that checks nothing.
    deployment = by_kind(rendered("azure-defaults"))["Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    bad = tmp_path / "bad.yaml"
    bad.write_text(k8s.to_yaml(deployment), encoding="utf-8")
    result = kubernetes_validate([bad])
    assert result.returncode != 0
    assert "livenesProbe" in result.stdout + result.stderr


def test_checked_in_manifests_are_what_the_renderer_writes(tmp_path: Path) -> None:
    for variant, args in CHECKED_IN.items():
        out = tmp_path / variant
        assert k8s.main([*args, "-o", str(out)]) == 0
        fresh = {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.yaml")}
        stored = {p.name: p.read_text(encoding="utf-8") for p in (DEPLOY / variant).glob("*.yaml")}
        assert fresh == stored, f"deploy/kubernetes/{variant} is stale: re-render it (see its README.md)"


# --- what a schema cannot check ------------------------------------------------------------------
def all_rendered_sets() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for name in CONFIGS:
        yield name, rendered(name)
    for variant in CHECKED_IN:
        yield f"checked-in {variant}", load_dir(DEPLOY / variant)


@pytest.mark.parametrize("name", [*CONFIGS, "checked-in cpu", "checked-in gpu"])
def test_objects_fit_together(name: str) -> None:
    manifests = dict(all_rendered_sets())[name]
    kinds = by_kind(manifests)
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items(), "the Deployment selects its own pods"
    service_selector = kinds["Service"]["spec"]["selector"]
    assert service_selector and service_selector.items() <= pod_labels.items(), "the Service selects the pods"
    pdb_selector = kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert pdb_selector.items() <= pod_labels.items(), "the PDB covers the pods"
    names = {m["metadata"]["name"] for m in manifests}
    assert len(names) == 1
    assert len({m["metadata"].get("namespace") for m in manifests}) == 1
    assert problems(manifests) == [], "the renderer's own semantic checks"

    container = container_of(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for port in kinds["Service"]["spec"]["ports"]:
        assert port["targetPort"] in ports or port["targetPort"] in ports.values()
    for probe_name in ("livenessProbe", "readinessProbe"):
        probe = container[probe_name]["httpGet"]
        assert probe["port"] in ports or probe["port"] in ports.values(), f"{probe_name} port exists"
        assert probe["path"] in PROBE_PATHS, f"{probe_name} path is served"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["successThreshold"] == 1, "Kubernetes requires 1 for liveness"

    env = env_of(manifests)
    assert int(env["SCOREHOST_PORT"]) in ports.values(), "the server listens on the declared port"
    pod = deployment["spec"]["template"]["spec"]
    drain = float(env["SCOREHOST_SHUTDOWN_DELAY_S"]) + float(env["SCOREHOST_GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] >= drain + 1, "the kubelet must not SIGKILL a draining pod"
    assert pod["enableServiceLinks"] is False, "service links would inject SCOREHOST_PORT=tcp://..."
    assert pod["securityContext"]["runAsNonRoot"] is True

    autoscalers = [kinds[k] for k in AUTOSCALER_KINDS if k in kinds]
    assert len(autoscalers) <= 1
    if autoscalers:
        target = autoscalers[0]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"], "a fixed count would fight the autoscaler on every apply"
    else:
        assert deployment["spec"]["replicas"] >= 1


async def http_get_status(app: Any, path: str) -> int:
    """The status a bare ASGI app answers to GET ``path``; 500 if it raises before answering."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5001),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    try:
        await app(scope, receive, send)
    except Exception:  # the stand-in pool below cannot answer; the route was still found
        pass
    return statuses[0] if statuses else 500


def test_probe_and_scrape_paths_are_routes_of_the_server() -> None:
    """Asked over ASGI, with no worker pool behind it: a probe path must not be a 404 or a 405,
    nor the path the autoscaler's Prometheus scrapes (the pods' prometheus.io/path annotation)."""
    from server.http.app import create_app

    # A stand-in pool: the app may hang its hooks on it, nothing behind it can answer.
    pool = SimpleNamespace(worker_env=None, tracer=None, monitor=None, on_answer=None)
    app = create_app(Settings(**NO_OVERRIDES), cast(Any, pool), manage_pool=False)
    assert asyncio.run(http_get_status(app, "/no/such/path")) == 404, "the control: unknown paths are 404"
    for path in sorted(PROBE_PATHS):
        assert asyncio.run(http_get_status(app, path)) not in (404, 405), path
    pod = by_kind(rendered("azure-defaults"))["Deployment"]["spec"]["template"]["metadata"]
    scrape = pod["annotations"]["prometheus.io/path"]
    assert asyncio.run(http_get_status(app, scrape)) not in (404, 405), scrape


def test_azure_defaults() -> None:
    kinds = by_kind(rendered("azure-defaults"))
    container = container_of(list(kinds.values()))
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "512Mi"}
    liveness = container["livenessProbe"]
    assert (
        liveness["periodSeconds"],
        liveness["initialDelaySeconds"],
        liveness["timeoutSeconds"],
        liveness["successThreshold"],
        liveness["failureThreshold"],
    ) == (10, 310, 2, 1, 3)
    scaled = kinds["ScaledObject"]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"], scaled["pollingInterval"]) == (1, 10, 1)
    assert scaled["triggers"][0]["metadata"]["threshold"] == "0.7"
    assert "HorizontalPodAutoscaler" not in kinds, "CPU only as an explicit fallback"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["image"] == "scorehost:cpu"


def test_every_field_reaches_its_kubernetes_or_runtime_equivalent(monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = rendered("everything")
    kinds = by_kind(manifests)
    container = container_of(manifests)
    assert {m["metadata"]["namespace"] for m in manifests} == {"models"}
    assert container["resources"] == {
        "requests": {"cpu": "1500m", "memory": "2Gi"},
        "limits": {"cpu": "3", "memory": "4Gi"},
    }
    scaled = kinds["ScaledObject"]["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (2, 20)
    assert scaled["triggers"][0]["metadata"]["threshold"] == "0.6"
    assert scaled["pollingInterval"] == 30
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["policies"][0]["periodSeconds"] == 30
    readiness = container["readinessProbe"]
    assert (readiness["periodSeconds"], readiness["timeoutSeconds"]) == (5, 3)
    assert (readiness["successThreshold"], readiness["failureThreshold"]) == (2, 4)
    assert container["livenessProbe"]["initialDelaySeconds"] == 20
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == math.ceil(5 + 45.5) + k8s.DRAIN_MARGIN_S

    env = env_of(manifests)
    # Key auth from a Secret mounted as a volume (rotated without a restart), root file system read-only.
    assert (env["SCOREHOST_AUTH_MODE"], env["SCOREHOST_KEYS_FILE"]) == ("key", "/var/run/scorehost/auth/keys.json")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == "fraud-model-auth"
    # collect_model_data: the collected files need a writable volume at the image's collect dir.
    assert {m["mountPath"] for m in container["volumeMounts"]} == {
        "/tmp", "/var/run/scorehost/auth", "/var/lib/scorehost/modeldata"}  # fmt: skip
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The runtime half is checked against the server itself: its settings, read from exactly
    # this environment, must hold the configured values.
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"SCOREHOST_{key.upper()}", raising=False)
    for key, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(key, value)
    settings = Settings(**NO_OVERRIDES)
    assert settings.scoring_timeout_ms == 5000
    assert settings.max_concurrent_requests == 8
    assert settings.max_queue_wait_ms == 250
    assert settings.workers == 4
    assert (settings.shutdown_delay_s, settings.graceful_timeout_s) == (5, 45.5)
    assert settings.entry_script == "score.py"
    assert settings.host == "0.0.0.0"
    assert settings.port == container["ports"][0]["containerPort"]
    assert settings.log_format == "json"
    assert settings.collect_model_data


def test_gpu_config_asks_for_a_gpu_and_tolerates_gpu_nodes() -> None:
    manifests = rendered("gpu")
    container = container_of(manifests)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "scorehost:gpu"
    pod = by_kind(manifests)["Deployment"]["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_fixed_replicas_turn_autoscaling_off() -> None:
    kinds = by_kind(rendered("fixed-replicas"))
    assert not set(AUTOSCALER_KINDS) & set(kinds)
    assert kinds["Deployment"]["spec"]["replicas"] == 3


# --- refusing bad configurations -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"cpu_core": 1}, "unknown field 'cpu_core' (did you mean 'cpu_cores'?)"),
        ({"livenessProbe": {}}, "unknown field 'livenessProbe'"),
        ({"cpu_cores": "1"}, "cpu_cores: Input should be a valid number"),
        ({"cpu_cores": True}, "cpu_cores: Input should be a valid number"),
        ({"cpu_cores": 0}, "cpu_cores: Input should be greater than 0 (got 0)"),
        ({"memory_gb": -1}, "memory_gb: Input should be greater than 0 (got -1)"),
        ({"num_replicas": 1.5}, "num_replicas: Input should be a valid integer"),
        ({"num_replicas": 0}, "num_replicas: Input should be greater than or equal to 1 (got 0)"),
        ({"gpu_cores": "1"}, "gpu_cores: Input should be a valid integer"),
        ({"autoscale_enabled": "true"}, "autoscale_enabled: Input should be a valid boolean"),
        (
            {"autoscale_target_utilization": 0},
            "autoscale_target_utilization: Input should be greater than or equal to 1",
        ),
        (
            {"autoscale_target_utilization": 101},
            "autoscale_target_utilization: Input should be less than or equal to 100",
        ),
        (
            {"autoscale_min_replicas": 5, "autoscale_max_replicas": 2},
            "must not be below autoscale_min_replicas",
        ),
        ({"cpu_cores": 2, "cpu_cores_limit": 1}, "cpu_cores_limit (1) must not be below cpu_cores (2)"),
        ({"memory_gb": 2, "memory_gb_limit": 1}, "memory_gb_limit (1) must not be below memory_gb (2)"),
        ({"num_replicas": 2, "autoscale_enabled": True}, "exclude each other"),
        ({"scoring_timeout_ms": 0}, "scoring_timeout_ms: Input should be greater than or equal to 1 (got 0)"),
        ({"max_request_wait_time": -5}, "max_request_wait_time: Input should be greater than or equal to 0"),
        ({"computeType": "vm"}, "computeType: Input should be 'aks', 'kubernetes', 'aci' or 'local'"),
        ({"namespace": "Not_Valid"}, "not a valid namespace"),
        ({"primary_key": "s3cret"}, "primary_key: not supported: keys do not belong in manifests"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_invalid_configurations_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert message in str(caught.value)


# The example of Azure's "deploy to AKS" documentation, in the CLI file form.
AZURE_DOC_EXAMPLE = {
    "computeType": "aks",
    "autoScaler": {
        "autoscaleEnabled": True,
        "minReplicas": 1,
        "maxReplicas": 3,
        "refreshPeriodInSeconds": 1,
        "targetUtilization": 70,
    },
    "dataCollection": {"storageEnabled": True},
    "authEnabled": True,
    "containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1.0},
}


def test_the_cli_file_form_is_understood(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="server.deploy.config"):
        config = parse_config(AZURE_DOC_EXAMPLE)
    assert "dataCollection.storageEnabled" not in caplog.text, "mapped (SCOREHOST_COLLECT_MODEL_DATA)"
    flat = {
        "computeType": "aks",
        "autoscale_enabled": True,
        "autoscale_min_replicas": 1,
        "autoscale_max_replicas": 3,
        "autoscale_refresh_seconds": 1,
        "autoscale_target_utilization": 70,
        "auth_enabled": True,
        "cpu_cores": 0.5,
        "memory_gb": 1.0,
        "collect_model_data": True,
    }
    assert config == parse_config(flat)
    # The checked-in GPU configuration is in this form; its full equivalent in flat names:
    nested = json.loads((DEPLOY / "deploymentconfig.gpu.json").read_text(encoding="utf-8"))
    assert parse_config(nested) == parse_config(
        {
            "computeType": "aks",
            "cpu_cores": 2,
            "memory_gb": 8,
            "cpu_cores_limit": 4,
            "memory_gb_limit": 8,
            "gpu_cores": 1,
            "autoscale_enabled": True,
            "autoscale_min_replicas": 1,
            "autoscale_max_replicas": 4,
            "autoscale_refresh_seconds": 30,
            "autoscale_target_utilization": 70,
            "scoring_timeout_ms": 60000,
            "replica_max_concurrent_requests": 8,
            "max_request_wait_time": 500,
            "period_seconds": 10,
            "initial_delay_seconds": 60,
            "timeout_seconds": 2,
            "success_threshold": 1,
            "failure_threshold": 3,
        }
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"autoScaler": {"minReplica": 1}}, "unknown field 'autoScaler.minReplica' (did you mean 'minReplicas'?)"),
        ({"autoScaler": 3}, "autoScaler: expected an object"),
        (
            {"containerResourceRequirements": {"cpu": "1"}},
            "containerResourceRequirements.cpu: Input should be a valid number",
        ),
        ({"cpu_cores": 1, "containerResourceRequirements": {"cpu": 2}}, "set the same field"),
        ({"numReplicas": 2, "autoScaler": {"autoscaleEnabled": True}}, "exclude each other"),
        ({"keys": {"primaryKey": "s3cret"}}, "keys.primaryKey: not supported"),
        ({"scoringTimeoutMS": 5}, "did you mean 'scoringTimeoutMs'?"),
    ],
)
def test_invalid_cli_file_forms_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert message in str(caught.value)


def test_cli_reports_a_bad_configuration_and_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "dc.json"
    config.write_text('{"cpu_cores": 1, "autoscale_max_replica": 3}', encoding="utf-8")
    assert k8s.main(["render", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "", "nothing half-rendered on stdout"
    assert "unknown field 'autoscale_max_replica' (did you mean 'autoscale_max_replicas'?)" in captured.err

    config.write_text("{not json", encoding="utf-8")
    assert k8s.main(["render", "--config", str(config)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert k8s.main(["render", "--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert k8s.main(["render", "--name", "Bad_Name"]) == 2
    assert (
        "--name: must be lower-case letters, digits and '-', a letter first (got \"Bad_Name\")"
        in capsys.readouterr().err
    )
    assert k8s.main(["render", "--env", "NOEQUALS"]) == 2
    assert k8s.main(["render", "--env", "SCOREHOST_PORT=1"]) == 2
    assert "set by the renderer" in capsys.readouterr().err
    assert k8s.main(["frobnicate"]) == 2


def test_workers_beyond_the_concurrency_limit_are_refused() -> None:
    # The server would refuse to start with fewer slots than workers; the renderer says so first.
    with pytest.raises(ConfigError, match="at least --workers"):
        k8s.render(parse_config({"replica_max_concurrent_requests": 2}), k8s.RenderOptions(workers=4))


def _setting_bounds(setting: str) -> tuple[int, int]:
    constraints = {type(c).__name__: c for c in Settings.model_fields[setting].metadata}
    return constraints["Ge"].ge, constraints["Le"].le


@pytest.mark.parametrize(
    ("field", "setting"),
    [
        ("scoring_timeout_ms", "scoring_timeout_ms"),
        ("replica_max_concurrent_requests", "max_concurrent_requests"),
        ("max_request_wait_time", "max_queue_wait_ms"),
    ],
)
def test_runtime_fields_are_bounded_like_the_settings_they_become(field: str, setting: str) -> None:
    low, high = _setting_bounds(setting)
    for ok in (low, high):
        assert getattr(parse_config({field: ok}), field) == ok
    for bad in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=f"^{field}: Input should be"):
            parse_config({field: bad})


def test_workers_option_is_bounded_like_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    low, high = _setting_bounds("workers")
    assert k8s.main(["render", "--workers", str(high)]) == 0
    capsys.readouterr()
    for bad in (low - 1, high + 1):
        assert k8s.main(["render", "--workers", str(bad)]) == 2
        assert "--workers: Input should be" in capsys.readouterr().err
    assert k8s.main(["render", "--graceful-timeout-s", "-1"]) == 2
    assert "--graceful-timeout-s: Input should be greater than or equal to 0" in capsys.readouterr().err


def test_fields_without_a_kubernetes_equivalent_are_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="server.deploy.config"):
        config = parse_config({"enable_app_insights": True, "tags": {"a": "b"}})
    assert config == DeployConfig()
    assert "enable_app_insights" in caplog.text and "tags" in caplog.text


def test_stdout_is_a_multi_document_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert k8s.main(["render", "--name", "demo"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
    ]
    assert docs == rendered_with_name("demo")


def rendered_with_name(name: str) -> list[dict[str, Any]]:
    return k8s.render(DeployConfig(), k8s.RenderOptions(name=name))


# --- the replica estimate ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rps", "seconds", "utilization", "concurrent", "expected"),
    [
        ("10", "0.07", "70", 1, 1),  # exactly one replica: floating point would say 1.0000000000000002 -> 2
        ("100", "0.1", "70", 1, 15),  # 10 busy / 0.7 = 14.3
        ("1000", "0.05", "70", 4, 18),  # 50 / 0.7 / 4 = 17.9
        ("1", "0.001", "70", 1, 1),  # never fewer than one
        ("300", "2", "100", 10, 60),
    ],
)
def test_replica_formula(rps: str, seconds: str, utilization: str, concurrent: int, expected: int) -> None:
    assert estimate_replicas(rps, seconds, utilization, concurrent) == expected
    # The definition: the fewest replicas whose capacity at the target utilisation covers the load.
    load = Fraction(rps) * Fraction(seconds)
    smallest = next(n for n in range(1, 10_000) if n * concurrent * Fraction(utilization) / 100 >= load)
    assert expected == smallest


def test_replicas_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert k8s.main(["replicas", "--target-rps", "1000", "--request-ms", "50", "--max-concurrent", "4"]) == 0
    assert capsys.readouterr().out.strip() == "18"
    config = tmp_path / "dc.json"
    config.write_text('{"autoscale_target_utilization": 50, "replica_max_concurrent_requests": 5}', "utf-8")
    args = ["replicas", "--target-rps", "100", "--request-seconds", "0.5", "--config", str(config)]
    assert k8s.main(args) == 0
    assert capsys.readouterr().out.strip() == "20"  # 50 busy / 0.5 / 5
    assert k8s.main(["replicas", "--target-rps", "0", "--request-ms", "50"]) == 2
    assert "must be > 0" in capsys.readouterr().err
    assert k8s.main(["replicas", "--target-rps", "x", "--request-ms", "50"]) == 2


# --- the YAML emitter ----------------------------------------------------------------------------
def test_yaml_emitter_round_trips_through_a_real_parser() -> None:
    tricky = {
        "strings": ["yes", "No", "on", "null", "~", "", "1.0", "0x1F", "100m", "1e3", "a: b", "#x", "- x"],
        "more": ["'q'", '"dq"', "tab\there", "line\nbreak", "ünï", "0.0.0.0", "*ref", "&anchor", "!tag"],
        "numbers": [0, -1, 1.5, 1e-7],
        "flags": [True, False, None],
        "empty": {"map": {}, "list": []},
        "nested": [{"a": [{"b": 1}, [1, [2]]]}, [{"c": "d"}]],
    }
    assert yaml.safe_load(k8s.to_yaml(tricky)) == tricky
    for name, manifests in all_rendered_sets():
        for manifest in manifests:
            assert yaml.safe_load(k8s.to_yaml(manifest, k8s.HEADER)) == manifest, name


def test_auth_off_is_said_explicitly_because_the_image_defaults_to_key() -> None:
    on = k8s.render(parse_config({}), k8s.RenderOptions(name="m"))
    off = k8s.render(parse_config({"auth_enabled": False}), k8s.RenderOptions(name="m"))
    assert env_of(on)["SCOREHOST_AUTH_MODE"] == "key"  # the seeds' platform: key auth by default
    assert env_of(off)["SCOREHOST_AUTH_MODE"] == "none" and "SCOREHOST_KEYS_FILE" not in env_of(off)
    pod = next(m for m in off if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_http_processes_option_sets_the_fronts_and_needs_a_worker_each(capsys: pytest.CaptureFixture[str]) -> None:
    assert k8s.main(["render", "--http-processes", "2", "--workers", "4"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    env = {e["name"]: e["value"] for e in docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SCOREHOST_HTTP_PROCESSES"] == "2" and env["WORKER_COUNT"] == "4"
    # The server refuses fewer workers than fronts; the renderer says so before deploying.
    assert k8s.main(["render", "--http-processes", "2"]) == 2
    assert "--http-processes 2 needs --workers 2 or more (got 1)" in capsys.readouterr().err
    low, high = _setting_bounds("http_processes")
    for bad in (low - 1, high + 1):
        assert k8s.main(["render", "--http-processes", str(bad), "--workers", "64"]) == 2
        assert "--http-processes: Input should be" in capsys.readouterr().err
    assert k8s.main(["render", "--http-processes", "1"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    env = {e["name"]: e["value"] for e in docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SCOREHOST_HTTP_PROCESSES"] == "1"
