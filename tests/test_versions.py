"""Endpoint versions behind one Gateway API HTTPRoute (server/deploy/versions.py, gateway.py).

Each of the seeds' AksEndpoint rules has a test, and so do their worked examples: 20 % and 10 %
with the remainder to the default (90/10), and the second version raised to 40 % and made the
default, which then receives 80 %. The rendered objects pass their schemas (core objects with
kubernetes-validate, the HTTPRoute and ScaledObject against their CRD schemas) and the semantic
checks (backends exist, weights match the percentiles, every version has its header pin).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_validators import check_jsonschema, schema_file, validate, write_manifests

from server.deploy import k8s
from server.deploy.checks import problems
from server.deploy.gateway import render_endpoint
from server.deploy.versions import (
    EndpointSpec,
    VersionSpec,
    create_version,
    default_version,
    delete_version,
    effective_traffic,
    load_spec,
    update_version,
    weights,
)
from server.errors import ConfigError

ROUTE_SCHEMA = "gateway.networking.k8s.io_httproutes.v1.json"


def spec_of(*versions: dict[str, Any], **extra: Any) -> EndpointSpec:
    return EndpointSpec.model_validate(
        {"name": "fraud", "namespace": "models", "gateway": {"name": "public"}, "versions": list(versions), **extra}
    )


def v(name: str, percent: float = 0, **fields: Any) -> dict[str, Any]:
    return {"version_name": name, "traffic_percentile": percent, **fields}


def shares(spec: EndpointSpec) -> dict[str, float]:
    return {name: float(share) for name, share in effective_traffic(spec).items()}


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def route_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (route,) = by_kind(manifests, "HTTPRoute")
    return route


def split_rule(route: dict[str, Any]) -> dict[str, Any]:
    (split,) = [r for r in route["spec"]["rules"] if not any(m.get("headers") for m in r["matches"])]
    return split


# --- the seeds' worked examples --------------------------------------------------------------------
def test_seed_example_20_and_10_with_the_remainder_to_the_default() -> None:
    empty = spec_of()
    spec = create_version(empty, VersionSpec(version_name="versiona", traffic_percentile=20))
    assert shares(spec) == {"versiona": 100}, "alone, the first version takes all the traffic"
    spec = create_version(spec, VersionSpec(version_name="versionb", traffic_percentile=10))
    assert default_version(spec) is not None and default_version(spec).version_name == "versiona"  # type: ignore[union-attr]
    assert shares(spec) == {"versiona": 90, "versionb": 10}
    backends = {ref["name"]: ref["weight"] for ref in split_rule(route_of(render_endpoint(spec)))["backendRefs"]}
    assert backends == {"fraud-versiona": 90, "fraud-versionb": 10}


def test_seed_example_second_version_at_40_made_default_receives_80() -> None:
    spec = spec_of(v("versiona", 20), v("versionb", 10))
    spec = update_version(
        spec, "versionb", {"traffic_percentile": 40, "is_default": True, "is_control_version_type": True}
    )
    assert default_version(spec).version_name == "versionb"  # type: ignore[union-attr]
    assert shares(spec) == {"versiona": 20, "versionb": 80}
    assert [x.is_default for x in spec.versions] == [None, True], "one default"
    backends = {ref["name"]: ref["weight"] for ref in split_rule(route_of(render_endpoint(spec)))["backendRefs"]}
    assert backends == {"fraud-versiona": 20, "fraud-versionb": 80}
    # And the seed then deletes versionb: refused, it is the default while versiona remains.
    with pytest.raises(ConfigError, match="the default version cannot be deleted while other versions remain"):
        delete_version(spec, "versionb")


def test_seed_note_test_10_prod_30_remainder_60_to_the_default() -> None:
    spec = spec_of(v("main"), v("test", 10), v("prod", 30))
    assert shares(spec) == {"main": 60, "test": 10, "prod": 30}


# --- each rule -------------------------------------------------------------------------------------
def test_the_first_version_is_default_unless_another_is_marked() -> None:
    assert default_version(spec_of(v("a"), v("b"))).version_name == "a"  # type: ignore[union-attr]
    marked = spec_of(v("a", 50), v("b", 20, is_default=True))
    assert default_version(marked).version_name == "b"  # type: ignore[union-attr]
    assert shares(marked) == {"a": 50, "b": 50}
    created = create_version(spec_of(v("a")), VersionSpec(version_name="b", is_default=True))
    assert default_version(created).version_name == "b"  # type: ignore[union-attr]
    assert default_version(spec_of()) is None


def test_a_seventh_version_is_refused() -> None:
    six = spec_of(*(v(f"v{i}") for i in range(6)))
    with pytest.raises(ConfigError, match=r"rule 'at most 6 versions behind one endpoint': 'v6' would be version 7"):
        create_version(six, VersionSpec(version_name="v6"))
    with pytest.raises(ConfigError, match="at most 6 versions"):
        load_spec_text({"name": "e", "gateway": {"name": "g"}, "versions": [v(f"v{i}") for i in range(7)]})


def test_a_second_control_is_refused() -> None:
    spec = spec_of(v("a", is_control_version_type=True), v("b"))
    rule = r"rule 'at most one control version \(is_control_version_type\); any number of treatments'"
    with pytest.raises(ConfigError, match=rule + ": 'a' and 'c' are both control versions"):
        create_version(spec, VersionSpec(version_name="c", is_control_version_type=True))
    with pytest.raises(ConfigError, match=rule):
        update_version(spec, "b", {"is_control_version_type": True})
    # Treatments are unlimited, and moving the control works by clearing it first.
    moved = update_version(
        update_version(spec, "a", {"is_control_version_type": False}), "b", {"is_control_version_type": True}
    )
    assert [x.is_control_version_type for x in moved.versions] == [False, True]


def test_more_than_100_percent_is_refused() -> None:
    rule = r"rule 'traffic percentiles sum to at most 100; the default version takes the remainder'"
    with pytest.raises(ConfigError, match=rule + ": a 60 \\+ b 50 = 110"):
        create_version(spec_of(v("a", 60)), VersionSpec(version_name="b", traffic_percentile=50))
    with pytest.raises(ConfigError, match=rule):
        update_version(spec_of(v("a", 60), v("b", 40)), "a", {"traffic_percentile": 60.5})
    exactly = spec_of(v("a", 60), v("b", 40))
    assert shares(exactly) == {"a": 60, "b": 40}


def test_percentiles_are_bounded_and_precise() -> None:
    for bad, message in (
        (101, "less than or equal to 100"),
        (-1, "greater than or equal to 0"),
        ("20", "valid number"),
    ):
        with pytest.raises(ValueError, match=message):
            VersionSpec(version_name="a", traffic_percentile=bad)
    with pytest.raises(ValueError, match="at most 4 decimal places"):
        VersionSpec(version_name="a", traffic_percentile=12.34567)
    spec = spec_of(v("a"), v("b", 12.5), v("c", 33.3333))
    assert weights(spec) == {"a": 541667, "b": 125000, "c": 333333}
    assert sum(weights(spec).values()) <= 1_000_000, "Gateway API weights are at most 1,000,000"
    assert shares(spec)["a"] == float(100 - Fraction("12.5") - Fraction("33.3333"))


def test_deleting_the_default_while_others_remain_is_refused() -> None:
    spec = spec_of(v("a", 10), v("b", 20))
    with pytest.raises(ConfigError, match=r"rule 'the default version cannot be deleted while other versions remain'"):
        delete_version(spec, "a")
    after = delete_version(spec, "b")
    assert [x.version_name for x in after.versions] == ["a"]
    assert delete_version(after, "a").versions == [], "the last one, default or not, may go"
    with pytest.raises(ConfigError, match="has no version 'zz' \\(versions: a, b\\)"):
        delete_version(spec, "zz")


def test_one_default() -> None:
    rule = r"rule 'one default version: the first unless another is marked is_default'"
    with pytest.raises(ConfigError, match=rule + ": 'a' and 'b' are both marked is_default"):
        load_spec_text(
            {"name": "e", "gateway": {"name": "g"}, "versions": [v("a", is_default=True), v("b", is_default=True)]}
        )
    with pytest.raises(ConfigError, match=rule + ": 'a' is the default; mark another version default instead"):
        update_version(spec_of(v("a"), v("b")), "a", {"is_default": False})


def test_version_names_are_unique_labels() -> None:
    with pytest.raises(ConfigError, match="rule 'version names are unique': 'a' exists"):
        create_version(spec_of(v("a")), VersionSpec(version_name="a"))
    with pytest.raises(ValueError, match="a letter first"):
        VersionSpec(version_name="Version_A")
    with pytest.raises(ConfigError, match="exceed 63 characters"):
        create_version(spec_of(), VersionSpec(version_name="v" * 60))


# --- rendering -------------------------------------------------------------------------------------
FULL = {
    "name": "fraud",
    "namespace": "models",
    "gateway": {"name": "public", "namespace": "gateway-infra", "section_name": "https"},
    "hostnames": ["fraud.example.com"],
    "versions": [
        {"version_name": "control", "traffic_percentile": 70, "is_control_version_type": True, "image": "r/fraud:1"},
        {
            "version_name": "treatment",
            "traffic_percentile": 30,
            "image": "r/fraud:2",
            "deployment_config": {"autoscaler": None}
            if False
            else {"autoScaler": {"maxReplicas": 4}, "authEnabled": True},
        },
        {"version_name": "shadow", "image": "r/fraud:3", "deployment_config": {"num_replicas": 1}},
    ],
    "mirror": {"version": "shadow", "percent": 10},
}


def test_one_set_of_objects_per_version_and_one_route() -> None:
    manifests = render_endpoint(EndpointSpec.model_validate(FULL))
    assert [m["metadata"]["name"] for m in by_kind(manifests, "Deployment")] == [
        "fraud-control",
        "fraud-treatment",
        "fraud-shadow",
    ]
    assert len(by_kind(manifests, "Service")) == len(by_kind(manifests, "PodDisruptionBudget")) == 3
    scaled = {m["metadata"]["name"]: m["spec"] for m in by_kind(manifests, "ScaledObject")}
    assert set(scaled) == {"fraud-control", "fraud-treatment"}, "the fixed-size shadow has no autoscaler"
    assert scaled["fraud-treatment"]["maxReplicaCount"] == 4, "each version has its own configuration"
    assert {m["metadata"]["namespace"] for m in manifests} == {"models"}
    assert all(m["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fraud" for m in manifests)
    pod = by_kind(manifests, "Deployment")[1]["spec"]["template"]["spec"]
    auth = next(v for v in pod["volumes"] if v["name"] == "auth")
    assert auth["secret"]["secretName"] == "fraud-auth", "one keys file per endpoint"
    images = [d["spec"]["template"]["spec"]["containers"][0]["image"] for d in by_kind(manifests, "Deployment")]
    assert images == ["r/fraud:1", "r/fraud:2", "r/fraud:3"]


def test_the_route_splits_pins_and_mirrors() -> None:
    route = route_of(render_endpoint(EndpointSpec.model_validate(FULL)))
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-infra", "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["fraud.example.com"]
    pins = [r for r in route["spec"]["rules"] if r["matches"][0].get("headers")]
    assert [(r["matches"][0]["headers"], r["backendRefs"]) for r in pins] == [
        (
            [{"type": "Exact", "name": "azureml-model-deployment", "value": name}],
            [{"name": f"fraud-{name}", "port": 80}],
        )
        for name in ("control", "treatment", "shadow")
    ]
    split = split_rule(route)
    assert split["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert split["backendRefs"] == [
        {"name": "fraud-control", "port": 80, "weight": 70},
        {"name": "fraud-treatment", "port": 80, "weight": 30},
        {"name": "fraud-shadow", "port": 80, "weight": 0},
    ]
    assert split["filters"] == [
        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "fraud-shadow", "port": 80}, "percent": 10}}
    ]
    assert all("filters" not in r for r in pins), "pinned requests are not mirrored"


def test_rendered_endpoint_passes_every_schema(tmp_path: Path) -> None:
    manifests = render_endpoint(EndpointSpec.model_validate(FULL))
    hpa = render_endpoint(EndpointSpec.model_validate({**FULL, "autoscaler": "hpa"}))
    files = write_manifests(manifests, tmp_path / "keda") + write_manifests(hpa, tmp_path / "hpa")
    failures = validate(files, tmp_path)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("spec", "rules", 3, "backendRefs", 0, "wieght"), 1, "'wieght' was unexpected"),
        (("spec", "rules", 0, "matches", 0, "headers", 0, "name"), "azureml model", "does not match"),
        (("spec", "rules", 3, "filters", 0, "requestMirror", "percent"), 101, "101 is greater than the maximum of 100"),
        (("spec", "rules", 3, "backendRefs", 0, "weight"), 1_000_001, "greater than the maximum of 1000000"),
        (("spec", "hostnames", 0), "Fraud.Example.com", "does not match"),
    ],
)
def test_the_httproute_schema_catches_mistakes(path: tuple[Any, ...], value: Any, error: str, tmp_path: Path) -> None:
    route = route_of(render_endpoint(EndpointSpec.model_validate(FULL)))
    target: Any = route
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    (bad,) = write_manifests([route], tmp_path)
    result = check_jsonschema(schema_file(ROUTE_SCHEMA, tmp_path), [bad])
    assert result.returncode != 0 and error in result.stdout, result.stdout


def test_semantic_checks_catch_what_the_schema_cannot() -> None:
    spec = EndpointSpec.model_validate(FULL)
    manifests = render_endpoint(spec)
    assert problems(manifests, spec) == []
    route = route_of(manifests)
    split = split_rule(route)
    split["backendRefs"][0]["name"] = "fraud-contrl"
    split["backendRefs"][1]["weight"] = 40
    route["spec"]["rules"][1]["matches"][0]["headers"][0]["value"] = "treatmnt"
    split["filters"][0]["requestMirror"]["percent"] = 20
    found = "\n".join(problems(manifests, spec))
    assert "no Service 'fraud-contrl'" in found
    assert "version control has no backendRef" in found
    assert "version treatment gets 36.3636 %, the spec says 30 %" in found, "40 of 70 + 40 + 0"
    assert "no azureml-model-deployment: treatment rule" in found
    assert "the mirror differs from the spec's" in found
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = 8080
    assert "Service 'fraud-control' has no port 8080" in "\n".join(problems(manifests, spec))


def test_mirror_rules() -> None:
    spec = spec_of(v("a", 90), v("b", 10), v("c"))
    mirrored = update_version(spec, "c", {}, mirror_percent=25)
    assert mirrored.mirror is not None and (mirrored.mirror.version, mirrored.mirror.percent) == ("c", 25)
    rule = "rule 'the mirror copies at most 50 % of live traffic to one existing version that receives no live traffic'"
    with pytest.raises(ConfigError, match="'b' receives 10 % of live traffic"):
        update_version(spec, "b", {}, mirror_percent=5)
    with pytest.raises(ConfigError, match=r"60 % is outside 1\.\.50"):
        update_version(spec, "c", {}, mirror_percent=60)
    with pytest.raises(ConfigError) as caught:
        delete_version(mirrored, "c")
    assert str(caught.value).startswith(rule)
    assert update_version(mirrored, "c", {}, mirror_percent=0).mirror is None


def test_versions_share_one_namespace(tmp_path: Path) -> None:
    spec = EndpointSpec.model_validate(
        {
            "name": "fraud",
            "gateway": {"name": "g"},
            "versions": [v("a", deployment_config={"namespace": "x"}), v("b", deployment_config={"namespace": "y"})],
        }
    )
    with pytest.raises(ConfigError, match=r"share one namespace \(found x, y\)"):
        render_endpoint(spec)
    same = spec.model_copy(update={"namespace": "z"})
    assert {m["metadata"]["namespace"] for m in render_endpoint(same)} == {"z"}, "the spec's namespace wins"


def test_a_bad_version_configuration_names_the_version() -> None:
    spec = spec_of(v("a", deployment_config={"cpu_core": 1}))
    with pytest.raises(ConfigError, match="version 'a': deployment_config: unknown field 'cpu_core'"):
        render_endpoint(spec)


# --- the spec file and the sub-commands ------------------------------------------------------------
def load_spec_text(document: dict[str, Any], tmp: Path | None = None) -> EndpointSpec:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(tmp or d) / "endpoint.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        return load_spec(str(path))


def run(*args: str) -> int:
    return k8s.main(list(args))


def test_sub_commands_edit_the_spec_and_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, out = tmp_path / "endpoint.yaml", tmp_path / "out"
    dc = tmp_path / "dc.json"
    dc.write_text(json.dumps({"containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1}}), encoding="utf-8")
    common = ["--spec", str(spec), "-o", str(out)]
    new = ["--endpoint", "fraud", "--gateway", "public/infra", "--namespace", "models"]
    first = ["--version-name", "versiona", "--image", "r/fraud:1", "--dc", str(dc), "--traffic-percentile", "20"]
    assert run("create-version", *common, *new, *first) == 0
    second = ["--version-name", "versionb", "--image", "r/fraud:2", "--traffic-percentile", "10"]
    settings = ["--set", "autoscale_max_replicas=4", "--set", "autoScaler.minReplicas=2"]
    assert run("create_version", *common, *second, *settings) == 0, "the SDK's spelling works too"
    saved = yaml.safe_load(spec.read_text(encoding="utf-8"))
    assert saved["gateway"] == {"name": "public", "namespace": "infra"}
    assert saved["versions"][0]["deployment_config"] == {"containerResourceRequirements": {"cpu": 0.5, "memoryInGB": 1}}
    assert saved["versions"][1]["deployment_config"] == {"autoscale_max_replicas": 4, "autoscale_min_replicas": 2}
    route = yaml.safe_load((out / "httproute.yaml").read_text(encoding="utf-8"))
    assert [b["weight"] for b in split_rule(route)["backendRefs"]] == [90, 10]
    assert sorted(p.name for p in (out / "versionb").iterdir()) == [
        "deployment.yaml",
        "pdb.yaml",
        "scaledobject.yaml",
        "service.yaml",
    ]

    assert run("update-version", *common, "--version-name", "versionb", "--traffic-percentile", "40", "--default") == 0
    route = yaml.safe_load((out / "httproute.yaml").read_text(encoding="utf-8"))
    assert [b["weight"] for b in split_rule(route)["backendRefs"]] == [20, 80]
    assert run("update-version", *common, "--version-name", "versiona", "--set", "cpu_cores=1.5") == 0
    saved = yaml.safe_load(spec.read_text(encoding="utf-8"))
    assert saved["versions"][0]["deployment_config"] == {"cpu_cores": 1.5, "memory_gb": 1}, "merged, flat names"

    # Refused changes name their rule and leave the spec and the manifests as they were.
    before = spec.read_bytes(), (out / "httproute.yaml").read_bytes()
    capsys.readouterr()
    refusals = [
        (["delete-version", "--version-name", "versionb"], "the default version cannot be deleted"),
        (["update-version", "--version-name", "versiona", "--traffic-percentile", "70"], "sum to at most 100"),
        (["update-version", "--version-name", "versiona", "--control"], None),
        (["create-version", "--version-name", "versionc", "--control"], "at most one control version"),
        (
            ["update-version", "--version-name", "versiona", "--set", "cpu_cores=0"],
            "cpu_cores: Input should be greater",
        ),
    ]
    for args, message in refusals:
        code = run(args[0], *common, *args[1:])
        if message is None:  # the first control is fine
            assert code == 0
            before = spec.read_bytes(), (out / "httproute.yaml").read_bytes()
            continue
        assert code == 2, args
        assert message in capsys.readouterr().err, args
        assert (spec.read_bytes(), (out / "httproute.yaml").read_bytes()) == before, args

    for i in range(4):
        assert run("create-version", *common, "--version-name", f"extra{i}") == 0
    assert run("create-version", *common, "--version-name", "seventh") == 2
    assert "rule 'at most 6 versions behind one endpoint'" in capsys.readouterr().err

    assert run("delete-version", *common, "--version-name", "versiona") == 0
    assert not (out / "versiona").exists(), "the deleted version's files go"
    assert "versiona" not in spec.read_text(encoding="utf-8")
    assert run("render", "--spec", str(spec)) == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)]
    assert kinds.count("Deployment") == 5 and kinds[-1] == "HTTPRoute"


def test_json_spec_with_a_config_file_beside_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dc.json").write_text('{"cpu_cores": 2, "memory_gb": 4, "autoscale_max_replicas": 3}', encoding="utf-8")
    spec = tmp_path / "endpoint.json"
    spec.write_text(
        json.dumps({"name": "fraud", "gateway": {"name": "g"}, "versions": [v("a", deployment_config="dc.json")]}),
        encoding="utf-8",
    )
    assert run("render", "--spec", str(spec), "--autoscaler", "hpa") == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["maxReplicas"] == 3
    assert run("update-version", "--spec", str(spec), "--version-name", "a", "--traffic-percentile", "5") == 0
    saved = json.loads(spec.read_text(encoding="utf-8"))
    assert saved["versions"][0] == {"version_name": "a", "traffic_percentile": 5, "deployment_config": "dc.json"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"name": "e", "gateway": {"name": "g"}, "versoins": []}, "unknown key 'versoins'"),
        ({"name": "e", "versions": []}, "gateway: Field required"),
        ({"name": "E", "gateway": {"name": "g"}}, "name: must be lower-case"),
        (
            {"name": "e", "gateway": {"name": "g"}, "versions": [{"traffic_percentile": 5}]},
            "version_name: Field required",
        ),
        ({"name": "e", "gateway": {"name": "g"}, "mirror": {"version": "x", "percent": 5}}, "there is no version 'x'"),
    ],
)
def test_bad_spec_files_are_refused(document: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_spec_text(document, tmp_path)
    assert message in str(caught.value)


def test_create_version_needs_endpoint_and_gateway_for_a_new_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("create-version", "--spec", str(tmp_path / "new.yaml"), "--version-name", "a") == 2
    assert "give --endpoint and --gateway" in capsys.readouterr().err
    assert not (tmp_path / "new.yaml").exists()


def test_the_docs_walk_through(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/deploy.md, "Walk-through": a v1 deploymentconfig.json to a rollout with two versions."""
    dc = tmp_path / "deploymentconfig.json"
    dc.write_text(
        json.dumps(
            {
                "computeType": "aks",
                "containerResourceRequirements": {"cpu": 1, "memoryInGB": 2},
                "autoScaler": {"autoscaleEnabled": True, "minReplicas": 1, "maxReplicas": 10, "targetUtilization": 70},
                "scoringTimeoutMs": 60000,
                "authEnabled": True,
            }
        ),
        encoding="utf-8",
    )
    assert run("replicas", "--target-rps", "20", "--request-seconds", "10", "--dc", str(dc)) == 0
    assert capsys.readouterr().out.strip() == "286"
    spec, out = str(tmp_path / "endpoint.yaml"), tmp_path / "deploy" / "fraud"

    def weights_now() -> dict[str, int]:
        route = yaml.safe_load((out / "httproute.yaml").read_text(encoding="utf-8"))
        return {ref["name"]: ref["weight"] for ref in split_rule(route)["backendRefs"]}

    new = ["--endpoint", "fraud", "--gateway", "public/gateway-infra", "--namespace", "models"]
    image = "registry.example.com/fraud:"
    first = ["--version-name", "versiona", "--image", f"{image}1", "--dc", str(dc), "--traffic-percentile", "20"]
    assert run("create-version", "--spec", spec, *new, *first, "-o", str(out)) == 0
    assert weights_now() == {"fraud-versiona": 100}
    second = ["--version-name", "versionb", "--image", f"{image}2", "--dc", str(dc), "--traffic-percentile", "10"]
    assert run("create-version", "--spec", spec, *second, "-o", str(out)) == 0
    assert weights_now() == {"fraud-versiona": 90, "fraud-versionb": 10}
    files = sorted(out.rglob("*.yaml"))
    assert not validate(files, tmp_path), "what kubectl apply -R -f deploy/fraud would get"
    promote = ["--version-name", "versionb", "--traffic-percentile", "40", "--default"]
    assert run("update-version", "--spec", spec, *promote, "-o", str(out)) == 0
    assert weights_now() == {"fraud-versiona": 20, "fraud-versionb": 80}
    assert run("delete-version", "--spec", spec, "--version-name", "versiona", "-o", str(out)) == 0
    assert weights_now() == {"fraud-versionb": 100}
    deployment = yaml.safe_load((out / "versionb" / "deployment.yaml").read_text(encoding="utf-8"))
    assert deployment["metadata"]["labels"]["app.kubernetes.io/instance"] == "fraud-versionb"
    assert deployment["metadata"]["namespace"] == "models"


def test_render_spec_refuses_single_deployment_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "endpoint.json"
    spec.write_text(json.dumps({"name": "fraud", "gateway": {"name": "g"}, "versions": [v("a")]}), encoding="utf-8")
    assert run("render", "--spec", str(spec), "--image", "x:1") == 2
    assert "--image: with --spec, each version's settings come from the spec file" in capsys.readouterr().err
    assert run("render", "--spec", str(spec), "--config", "dc.json") == 2, "one source or the other"
    capsys.readouterr()
    bad = spec_of(v("a", workers=0))
    with pytest.raises(ConfigError, match="version 'a': workers: Input should be greater than or equal to 1"):
        render_endpoint(bad)


def test_a_version_may_set_its_http_fronts() -> None:
    deployment = by_kind(render_endpoint(spec_of(v("a", 100, workers=2, http_processes=2))), "Deployment")[0]
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SCOREHOST_HTTP_PROCESSES"] == "2"
    with pytest.raises(ConfigError, match="version 'a': --http-processes 2 needs --workers 2 or more"):
        render_endpoint(spec_of(v("a", 100, http_processes=2)))
