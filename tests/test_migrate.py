"""``scorehost migrate``: ACI/AKS deployment configurations as managed online endpoint YAML.

The SKU table and the cost figures are the migration seed's
(../shared/reference/seeds/000_ea56ae3f422d717a.txt), checked cell by cell; the rest checks the
mapping of each field, the refusals of what the seed lists as unsupported, and the command.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from server import cli
from server.deploy import migrate
from server.deploy.skus import SKUS, aci_monthly_cost, choose_sku, money
from server.errors import ConfigError

# The seed's SKU table: CPU (low, high] x memory GB (low, high] -> SKU.
SKU_TABLE = [
    (("0", "1"), ("0", "1.2"), "DS1 V2", "Standard_DS1_v2"),
    (("1", "2"), ("1.2", "1.7"), "F2s V2", "Standard_F2s_v2"),
    (("1", "2"), ("1.7", "4.7"), "DS2 V2", "Standard_DS2_v2"),
    (("1", "2"), ("4.7", "13.7"), "E2s V3", "Standard_E2s_v3"),
    (("2", "4"), ("0", "5.7"), "F4s V2", "Standard_F4s_v2"),
    (("2", "4"), ("5.7", "11.7"), "DS3 V2", "Standard_DS3_v2"),
    (("2", "4"), ("11.7", "16"), "E4s V3", "Standard_E4s_v3"),
]
# The seed's cost table: CPU range, memory range, ACI cost range, SKU, pay-as-you-go, 1 y, 3 y.
COST_TABLE = [
    (("0", "1"), ("0", "1.2"), ("29.565", "33.463"), "DS1 V2", "41.610", "27.003", "17.696"),
    (("1", "2"), ("1.2", "1.7"), ("63.028", "64.652"), "F2s V2", "61.758", "36.500", "22.638"),
    (("1", "2"), ("1.7", "4.7"), ("64.652", "74.398"), "DS2 V2", "83.220", "54.086", "35.391"),
    (("1", "2"), ("4.7", "13.7"), ("74.398", "103.634"), "E2s V3", "97.090", "57.086", "36.500"),
    (("2", "3"), ("0", "5.7"), ("88.695", "107.211"), "F4s V2", "123.37", "73.000", "45.275"),
    (("3", "4"), ("0", "5.7"), ("118.26", "136.776"), "F4s V2", "123.37", "73.000", "45.275"),
    (("2", "3"), ("5.7", "11.7"), ("107.211", "126.702"), "DS3 V2", "167.170", "108.165", "70.781"),
    (("3", "4"), ("5.7", "11.7"), ("136.776", "156.267"), "DS3 V2", "167.170", "108.165", "70.781"),
    (("2", "3"), ("11.7", "16"), ("126.702", "140.671"), "E4s V3", "194.180", "114.165", "73.000"),
    (("3", "4"), ("11.7", "16"), ("156.267", "170.236"), "E4s V3", "194.180", "114.165", "73.000"),
]
EPS = Decimal("0.01")


@pytest.mark.parametrize(("cpu", "memory", "label", "instance_type"), SKU_TABLE)
def test_every_cell_of_the_sku_table(
    cpu: tuple[str, str], memory: tuple[str, str], label: str, instance_type: str
) -> None:
    low_cpu, high_cpu = Decimal(cpu[0]), Decimal(cpu[1])
    low_mem, high_mem = Decimal(memory[0]), Decimal(memory[1])
    # "(" is greater than, "]" less than or equal: the upper corner is in, just above the lower one too.
    for c in (low_cpu + EPS, (low_cpu + high_cpu) / 2, high_cpu):
        for m in (low_mem + EPS, (low_mem + high_mem) / 2, high_mem):
            sku = choose_sku(c, m)
            assert (sku.label, sku.instance_type) == (label, instance_type), (c, m)


def test_requests_between_the_cells_get_the_cheapest_row_that_covers_them() -> None:
    assert choose_sku(0.5, 2).label == "DS2 V2", "CPU (0, 1] has only the 1.2 GB row"
    assert choose_sku(1.5, 1.0).label == "F2s V2", "CPU (1, 2] starts at 1.2 GB"
    assert choose_sku(1.5, 15).label == "E4s V3"
    prices = [s.pay_as_you_go for s in SKUS]
    assert prices == sorted(prices), "the table's order is the price order"


@pytest.mark.parametrize(("cpu", "memory"), [(4.5, 1), (1, 16.5), (8, 32)])
def test_requests_beyond_the_table_are_refused(cpu: float, memory: float) -> None:
    with pytest.raises(
        ConfigError, match=r"above the migration SKU table \(at most 4 CPU and 16 GB\).*--instance-type"
    ):
        choose_sku(cpu, memory)


@pytest.mark.parametrize(("cpu", "memory", "aci", "label", "payg", "one", "three"), COST_TABLE)
def test_the_seeds_cost_table(
    cpu: tuple[str, str], memory: tuple[str, str], aci: tuple[str, str], label: str, payg: str, one: str, three: str
) -> None:
    # ACI: 29.5650 x CPU rounded up + 3.2485 x memory rounded up to a tenth; the seed's ranges run
    # from the row's lower memory bound to its upper corner, at the row's whole-core CPU.
    assert money(aci_monthly_cost(cpu[1], memory[1])) == f"${Decimal(aci[1]):.3f}"
    assert money(aci_monthly_cost(cpu[1], memory[0])) == f"${Decimal(aci[0]):.3f}"
    sku = choose_sku(cpu[1], memory[1])
    assert sku.label == label
    assert (sku.pay_as_you_go, sku.reserved_1y, sku.reserved_3y) == (Decimal(payg), Decimal(one), Decimal(three))


def test_aci_rounding() -> None:
    assert aci_monthly_cost("1.1", "1.15") == Decimal("29.5650") * 2 + Decimal("3.2485") * Decimal("1.2")
    assert aci_monthly_cost(0.1, 0.5) == Decimal("29.5650") + Decimal("3.2485") * Decimal("0.5")


# --- the mapping -----------------------------------------------------------------------------------
def options(tmp_path: Path, **extra: Any) -> argparse.Namespace:
    values = {
        "name": "fraud",
        "deployment_name": "blue",
        "out": str(tmp_path / "out"),
        "entry_script": None,
        "model": None,
        "environment": None,
        "image": None,
        "instance_type": None,
    }
    return argparse.Namespace(**(values | extra))


AKS = {
    "computeType": "aks",
    "cpu_cores": 1.5,
    "memory_gb": 3,
    "autoscale_enabled": True,
    "autoscale_min_replicas": 2,
    "autoscale_max_replicas": 8,
    "scoring_timeout_ms": 30000,
    "replica_max_concurrent_requests": 4,
    "max_request_wait_time": 250,
    "period_seconds": 5,
    "initial_delay_seconds": 60,
    "timeout_seconds": 3,
    "success_threshold": 2,
    "failure_threshold": 6,
    "auth_enabled": True,
    "enable_app_insights": True,
    "tags": {"team": "fraud"},
    "description": "fraud model",
}
AKS_NESTED = {
    "computeType": "AKS",
    "containerResourceRequirements": {"cpu": 1.5, "memoryInGB": 3},
    "autoScaler": {"autoscaleEnabled": True, "minReplicas": 2, "maxReplicas": 8},
    "scoringTimeoutMs": 30000,
    "maxConcurrentRequestsPerContainer": 4,
    "maxQueueWaitMs": 250,
    "livenessProbeRequirements": {
        "periodSeconds": 5,
        "initialDelaySeconds": 60,
        "timeoutSeconds": 3,
        "successThreshold": 2,
        "failureThreshold": 6,
    },
    "authEnabled": True,
    "appInsightsEnabled": True,
    "tags": {"team": "fraud"},
    "description": "fraud model",
}


def test_every_field_reaches_the_v2_deployment(tmp_path: Path) -> None:
    m = migrate.migrate(AKS, options(tmp_path, environment="azureml:sklearn-env:1"))
    assert m.endpoint == {
        "$schema": migrate.ENDPOINT_SCHEMA,
        "name": "fraud",
        "auth_mode": "key",
        "description": "fraud model",
    }
    d = m.deployment
    assert d["$schema"] == migrate.DEPLOYMENT_SCHEMA
    assert (d["name"], d["endpoint_name"], d["instance_type"], d["instance_count"]) == (
        "blue",
        "fraud",
        "Standard_DS2_v2",
        2,
    )
    assert d["request_settings"] == {
        "request_timeout_ms": 30000,
        "max_concurrent_requests_per_instance": 4,
        "max_queue_wait_ms": 250,
    }
    assert d["liveness_probe"] == {
        "initial_delay": 60,
        "period": 5,
        "timeout": 3,
        "success_threshold": 1,
        "failure_threshold": 6,
    }
    assert d["readiness_probe"] == {
        "initial_delay": 10,
        "period": 5,
        "timeout": 3,
        "success_threshold": 2,
        "failure_threshold": 6,
    }
    assert d["scale_settings"] == {"type": "default"}
    assert d["app_insights_enabled"] is True
    assert d["tags"] == {"team": "fraud"}
    assert m.warnings == [], "an AKS service with key auth migrates without a word"


def test_the_cli_file_form_migrates_the_same(tmp_path: Path) -> None:
    flat, nested = migrate.migrate(AKS, options(tmp_path)), migrate.migrate(AKS_NESTED, options(tmp_path))
    assert (flat.endpoint, flat.deployment) == (nested.endpoint, nested.deployment)


def test_azure_defaults(tmp_path: Path) -> None:
    d = migrate.migrate({}, options(tmp_path)).deployment
    assert d["instance_type"] == "Standard_DS1_v2", "0.1 CPU, 0.5 GB"
    assert d["request_settings"] == {
        "request_timeout_ms": 60000,
        "max_concurrent_requests_per_instance": 1,
        "max_queue_wait_ms": 500,
    }
    assert d["liveness_probe"]["initial_delay"] == 310 and d["liveness_probe"]["failure_threshold"] == 3
    assert d["instance_count"] == 1
    assert migrate.migrate({"num_replicas": 3}, options(tmp_path)).deployment["instance_count"] == 3


@pytest.mark.parametrize(
    ("raw", "mode", "warned"),
    [
        ({"computeType": "aks"}, "key", False),  # AKS: key auth by default
        ({"auth_enabled": True}, "key", False),
        ({"auth_enabled": False}, "key", True),  # no auth -> key, with a warning
        ({"computeType": "ACI"}, "key", True),  # ACI: no auth by default
        ({"computeType": "ACI", "authEnabled": True}, "key", False),
        ({"token_auth_enabled": True, "auth_enabled": False}, "aml_token", False),
        ({"tokenAuthEnabled": True}, "aml_token", False),
    ],
)
def test_auth_mode(raw: dict[str, Any], mode: str, warned: bool, tmp_path: Path) -> None:
    m = migrate.migrate(raw, options(tmp_path))
    assert m.endpoint["auth_mode"] == mode
    assert any("do not support 'no auth'" in w for w in m.warnings) == warned


def test_aci_fields(tmp_path: Path) -> None:
    raw = {
        "computeType": "ACI",
        "containerResourceRequirements": {"cpu": 2, "memoryInGB": 1.5},
        "authEnabled": False,
        "sslEnabled": True,
        "sslCertificate": "cert.pem",
        "location": "westus",
        "dnsNameLabel": "fraud",
        "keys": {"primaryKey": "k1"},
    }
    m = migrate.migrate(raw, options(tmp_path))
    assert m.deployment["instance_type"] == "Standard_F2s_v2"
    assert m.deployment["instance_count"] == 1 and not m.autoscaled, "ACI is one container group"
    text = "\n".join(m.warnings)
    for field in ("sslEnabled", "sslCertificate", "location", "dnsNameLabel", "keys.primaryKey", "auth_mode: key"):
        assert field in text, field


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"cmk_vault_base_url": "https://v", "cmk_key_name": "k"},
            "EncryptionProperties (customer-managed keys) are not supported",
        ),
        (
            {"encryptionProperties": {"vaultBaseUrl": "https://v"}},
            "encryptionProperties: not supported: EncryptionProperties",
        ),
        ({"ssl_cname": "fraud.example.com"}, "custom DNS names are not supported"),
        ({"cpu_cores": 6}, "above the migration SKU table"),
        ({"containerResourceRequirements": {"cpu": 2, "memoryInGB": 32}}, "above the migration SKU table"),
        ({"gpu_cores": 1}, "no GPU sizes; choose one with --instance-type"),
        ({"scoring_timeout_ms": 300000}, "at most 180000 ms"),
        ({"cpu_core": 1}, "unknown field 'cpu_core' (did you mean 'cpu_cores'?)"),
        ({"auth_enabled": "no"}, "auth_enabled: expected true or false"),
        ([1], "must be a JSON object"),
    ],
)
def test_unsupported_configurations_are_refused(raw: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        migrate.migrate(raw, options(tmp_path))
    assert message in str(caught.value)


def test_instance_type_overrides_the_table(tmp_path: Path) -> None:
    m = migrate.migrate({"cpu_cores": 6, "gpu_cores": 1}, options(tmp_path, instance_type="Standard_NC6s_v3"))
    assert m.deployment["instance_type"] == "Standard_NC6s_v3" and m.sku is None
    assert "not in the guide's table" in "\n".join(migrate.cost_lines(m))


def test_environment_and_code(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "score.py").write_text("def init():\n    pass\n\n\ndef run(data):\n    return data\n", encoding="utf-8")
    (src / "conda.yml").write_text("dependencies: [python=3.11]\n", encoding="utf-8")
    m = migrate.migrate({}, options(tmp_path, entry_script=str(src / "score.py"), environment=str(src / "conda.yml")))
    assert m.deployment["code_configuration"] == {"code": "../src", "scoring_script": "score.py"}
    assert m.deployment["environment"] == {"image": migrate.BASE_IMAGE, "conda_file": "../src/conda.yml"}
    registered = migrate.migrate({}, options(tmp_path, environment="azureml:sklearn-env:3", model="azureml:fraud:1"))
    assert registered.deployment["environment"] == "azureml:sklearn-env:3"
    assert registered.deployment["model"] == "azureml:fraud:1"
    custom = migrate.migrate({}, options(tmp_path, image="registry.example.com/fraud:1")).deployment["environment"]
    assert custom["inference_config"]["readiness_route"] == {"port": 5001, "path": "/health/ready"}
    assert custom["inference_config"]["scoring_route"] == {"port": 5001, "path": "/score"}
    (src / "bad.py").write_text("def init():\n    pass\n", encoding="utf-8")
    warned = migrate.migrate({}, options(tmp_path, entry_script=str(src / "bad.py")))
    assert any("no top-level run()" in w for w in warned.warnings)
    with pytest.raises(ConfigError, match="no such file"):
        migrate.migrate({}, options(tmp_path, entry_script=str(src / "missing.py")))


# --- the command -----------------------------------------------------------------------------------
def test_command_writes_both_files_and_prints_the_cost_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dc = tmp_path / "deploymentconfig.json"
    dc.write_text(json.dumps({**AKS_NESTED, "authEnabled": False}), encoding="utf-8")
    (tmp_path / "score.py").write_text("def init(): pass\ndef run(x): return x\n", encoding="utf-8")
    out = tmp_path / "fraud-endpoint"
    args = ["migrate", "--dc", str(dc), "--entry_script", str(tmp_path / "score.py"), "--out", str(out)]
    assert cli.main([*args, "--environment", "azureml:env:1"]) == 0
    captured = capsys.readouterr()
    endpoint = yaml.safe_load((out / "endpoint.yml").read_text(encoding="utf-8"))
    deployment = yaml.safe_load((out / "deployment.yml").read_text(encoding="utf-8"))
    assert endpoint == {
        "$schema": migrate.ENDPOINT_SCHEMA,
        "name": "fraud-endpoint",
        "auth_mode": "key",
        "description": "fraud model",
    }
    assert deployment["instance_type"] == "Standard_DS2_v2"
    assert deployment["code_configuration"] == {"code": "..", "scoring_script": "score.py"}
    assert "do not support 'no auth'" in captured.err
    # Before: 1.5 CPU -> 2 cores, 3 GB -> 3.0: 59.13 + 9.7455 = $68.876; after: DS2 v2 x 2 instances.
    assert "$29.5650 x 2 + $3.2485 x 3.0 = $68.876 per container; 2..8 replicas (autoscaled)" in captured.out
    assert (
        "DS2 V2 (Standard_DS2_v2) x 2: $166.440 pay-as-you-go, $108.172 1-year reserved, $70.782 3-year reserved"
        in captured.out
    )
    assert "az monitor autoscale create --min-count 2 --max-count 8" in captured.out
    assert (out / "deployment.yml").read_text(encoding="utf-8").startswith("# Written by `scorehost migrate`")


def test_command_refuses_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dc = tmp_path / "dc.json"
    dc.write_text(json.dumps({"computeType": "ACI", "encryptionProperties": {"keyName": "k"}}), encoding="utf-8")
    out = tmp_path / "out"
    assert migrate.main(["--dc", str(dc), "--out", str(out)]) == 2
    assert "scorehost migrate: error: encryptionProperties: not supported" in capsys.readouterr().err
    assert not out.exists()
    assert migrate.main(["--dc", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert migrate.main(["--dc", str(dc), "--out", str(out), "--name", "9bad"]) == 2
    assert migrate.main(["--out", str(out)]) == 2, "--dc is required"


def test_endpoint_name_defaults_to_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dc = tmp_path / "dc.json"
    dc.write_text("{}", encoding="utf-8")
    assert migrate.main(["--dc", str(dc), "--out", str(tmp_path / "x_y")]) == 0
    assert (
        yaml.safe_load((tmp_path / "x_y" / "endpoint.yml").read_text(encoding="utf-8"))["name"] == "scorehost-endpoint"
    )
    capsys.readouterr()
