"""``scorehost migrate``: an ACI/AKS deployment configuration as a managed online endpoint (CLI v2 YAML).

    scorehost migrate --dc deploymentconfig.json [--entry_script score.py] --out DIR
        [--name ENDPOINT] [--deployment-name blue] [--model azureml:NAME:VERSION]
        [--environment azureml:ENV:VERSION | conda.yml] [--image IMAGE] [--instance-type SKU]

Reads the configuration ``az ml model deploy --dc`` takes (flat SDK names or the CLI file's
nested ones, ACI's or AKS's fields) and writes ``DIR/endpoint.yml`` and ``DIR/deployment.yml``
in the v2 schema, following the migration seed:

* ``instance_type`` from the seed's CPU x memory table (:mod:`.skus`), unless ``--instance-type``;
* "no auth is not supported": ``auth_mode: key`` when authentication was off (with a warning),
  ``aml_token`` for token auth;
* ``request_settings`` from the scoring timeout, the per-replica concurrency and the queue wait;
  ``liveness_probe``/``readiness_probe`` from the probe fields; ``scale_settings`` (managed
  endpoints have the ``default`` type only: the replica bounds become ``instance_count`` and a
  printed autoscale hint);
* the monthly cost of the old and the new shape, from the seed's figures, on standard output.

What the seed lists as unsupported is refused with the reason: ACI's EncryptionProperties
(customer-managed keys), custom DNS names, and requests beyond the SKU table (above 4 CPU or
16 GB, or GPUs) unless ``--instance-type`` says which VM to use.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import sys
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

from server.deploy.config import DeployConfig, flatten, parse_flat, read_json
from server.deploy.skus import Sku, aci_monthly_cost, choose_sku, money
from server.deploy.yamlio import to_yaml
from server.errors import ConfigError

__all__ = ["Migration", "main", "migrate"]

ENDPOINT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineEndpoint.schema.json"
DEPLOYMENT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json"
MAX_REQUEST_TIMEOUT_MS = 180_000  # managed online endpoints' request_timeout_ms maximum
READINESS_INITIAL_DELAY_S = 10  # managed endpoints' default; v1 configurations had no readiness probe
BASE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:latest"  # for --environment conda.yml
HEADER = "# Written by `scorehost migrate` from {source}; review it, then: {command}\n"

# ACI fields that parse_config does not know, flat (SDK) and CLI-file spellings.
_ENCRYPTION = "EncryptionProperties (customer-managed keys) are not supported by managed online endpoints"
ACI_REFUSED = {
    "cmk_vault_base_url": _ENCRYPTION,
    "cmk_key_name": _ENCRYPTION,
    "cmk_key_version": _ENCRYPTION,
    "encryptionProperties": _ENCRYPTION,
    "ssl_cname": "custom DNS names are not supported by managed online endpoints; remove it (the scoring "
    "URL changes anyway: https://ENDPOINT.REGION.inference.ml.azure.com/score)",
    "cname": "custom DNS names are not supported by managed online endpoints; remove it",
}
ACI_IGNORED = {
    "ssl_enabled": "managed online endpoints always use TLS; no certificate is needed",
    "sslEnabled": "managed online endpoints always use TLS; no certificate is needed",
    "ssl_cert_pem_file": "managed online endpoints always use TLS; no certificate is needed",
    "sslCertificate": "managed online endpoints always use TLS; no certificate is needed",
    "ssl_key_pem_file": "managed online endpoints always use TLS; no certificate is needed",
    "sslKey": "managed online endpoints always use TLS; no certificate is needed",
    "dns_name_label": "the scoring URL changes to https://ENDPOINT.REGION.inference.ml.azure.com/score",
    "dnsNameLabel": "the scoring URL changes to https://ENDPOINT.REGION.inference.ml.azure.com/score",
    "location": "the endpoint is created in the workspace's region",
    "vnet_name": "network isolation is configured on the endpoint and deployment instead (public_network_access, "
    "egress_public_network_access); see how-to-secure-online-endpoint",
    "subnet_name": "network isolation is configured on the endpoint instead",
    "vnetConfiguration": "network isolation is configured on the endpoint instead",
}


@dataclass
class Migration:
    """The two documents, and what to tell the user."""

    endpoint: dict[str, Any]
    deployment: dict[str, Any]
    sku: Sku | None
    config: DeployConfig
    warnings: list[str] = field(default_factory=list)
    compute_type: str = "aks"

    @property
    def autoscaled(self) -> bool:
        # ACI runs one container group and never scales: its autoscale defaults mean nothing.
        return self.config.autoscale_enabled and self.compute_type != "aci"


def _split(raw: object) -> tuple[dict[str, tuple[object, str]], list[str]]:
    """Refuse or drop ACI's extra fields; the rest, flattened, and the warnings."""
    if not isinstance(raw, dict):
        raise ConfigError("the deployment configuration must be a JSON object")
    rest: dict[str, object] = {}
    warnings: list[str] = []
    for key, value in raw.items():
        if key in ACI_REFUSED and value not in (None, False, "", {}):
            raise ConfigError(f"{key}: not supported: {ACI_REFUSED[key]}")
        if key in ACI_REFUSED:
            continue
        if key in ACI_IGNORED:
            if value not in (None, False, "", {}):
                warnings.append(f"{key}: dropped: {ACI_IGNORED[key]}")
            continue
        rest[key] = value
    return flatten(rest), warnings


@dataclass
class _Auth:
    token: object
    enabled: object
    where: str


def _take_auth(flat: dict[str, tuple[object, str]], warnings: list[str]) -> _Auth:
    """Take the auth fields out before the rest is validated (DeployConfig refuses keys and tokens)."""
    token = flat.pop("token_auth_enabled", (None, ""))[0]
    enabled, where = flat.pop("auth_enabled", (None, "auth_enabled"))
    for name in ("primary_key", "secondary_key"):
        value, written = flat.pop(name, (None, name))
        if value:
            warnings.append(
                f"{written}: keys are not written to YAML; after creating the endpoint set or read them with "
                "`az ml online-endpoint regenerate-keys` / `get-credentials`"
            )
    return _Auth(token, enabled, where)


def _auth_mode(auth: _Auth, compute_type: str, warnings: list[str]) -> str:
    token, enabled, where = auth.token, auth.enabled, auth.where
    if token is True:
        return "aml_token"
    if token not in (None, False):
        raise ConfigError(f"token_auth_enabled: expected true or false, got {token!r}")
    if enabled not in (None, True, False):
        raise ConfigError(f"{where}: expected true or false, got {enabled!r}")
    # Azure's defaults: AKS services have key auth, ACI services none.
    if enabled is False or (enabled is None and compute_type == "aci"):
        why = f"{where} is false" if enabled is False else "ACI services have no authentication by default"
        warnings.append(
            f"auth_mode: key: managed online endpoints do not support 'no auth' ({why}); "
            "clients now need 'Authorization: Bearer <key>'"
        )
    return "key"


def _entry(entry_script: str, out_dir: str, warnings: list[str]) -> dict[str, str]:
    if not os.path.isfile(entry_script):
        raise ConfigError(f"--entry_script {entry_script}: no such file")
    try:
        with open(entry_script, encoding="utf-8") as f:
            tree = ast.parse(f.read(), entry_script)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ConfigError(f"--entry_script {entry_script}: cannot parse: {exc}") from exc
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    missing = sorted({"init", "run"} - functions)
    if missing:
        warnings.append(f"{entry_script}: no top-level {' or '.join(missing)}(); the scoring script needs both")
    code = os.path.relpath(os.path.dirname(os.path.abspath(entry_script)), os.path.abspath(out_dir))
    return {"code": code.replace(os.sep, "/"), "scoring_script": os.path.basename(entry_script)}


def _environment(args: argparse.Namespace, out_dir: str, port: int) -> object:
    if args.image:
        # A custom container, e.g. a scorehost image with the model baked in: it tells the
        # platform where its probes and scoring route are.
        routes = {
            "liveness_route": {"port": port, "path": "/health/live"},
            "readiness_route": {"port": port, "path": "/health/ready"},
            "scoring_route": {"port": port, "path": "/score"},
        }
        return {"image": args.image, "inference_config": routes}
    if args.environment and args.environment.startswith("azureml:"):
        return args.environment
    if args.environment:
        conda = os.path.relpath(os.path.abspath(args.environment), os.path.abspath(out_dir))
        return {"image": BASE_IMAGE, "conda_file": conda.replace(os.sep, "/")}
    return None


def migrate(raw: object, args: argparse.Namespace) -> Migration:
    """The endpoint and deployment documents for a decoded deployment configuration."""
    flat, warnings = _split(raw)
    auth = _take_auth(flat, warnings)
    description = flat.pop("description", (None, ""))[0]
    tags = flat.pop("tags", (None, ""))[0]
    app_insights = flat.pop("enable_app_insights", (None, ""))[0]
    for name, why in (
        ("properties", "has no managed-endpoint counterpart"),
        ("compute_target_name", "managed endpoints need no compute target"),
        ("collect_model_data", "use the deployment's data_collector (collections: model_inputs, model_outputs)"),
    ):
        if flat.pop(name, (None, ""))[0] not in (None, False, {}):
            warnings.append(f"{name}: dropped: {why}")
    config = parse_flat(flat)
    auth_mode = _auth_mode(auth, config.compute_type, warnings)
    if config.namespace:
        warnings.append("namespace: dropped: managed endpoints have none")
    if config.cpu_cores_limit is not None or config.memory_gb_limit is not None:
        warnings.append("cpu/memory limits: dropped: a deployment gets the whole VM of its instance_type")
    if config.scoring_timeout_ms > MAX_REQUEST_TIMEOUT_MS:
        raise ConfigError(
            f"scoring_timeout_ms {config.scoring_timeout_ms}: managed online endpoints allow at most "
            f"{MAX_REQUEST_TIMEOUT_MS} ms (request_settings.request_timeout_ms)"
        )
    sku: Sku | None = None
    if args.instance_type:
        instance_type = args.instance_type
    elif config.gpu_cores > 0:
        raise ConfigError("gpu_cores: the migration SKU table has no GPU sizes; choose one with --instance-type")
    else:
        sku = choose_sku(config.cpu_cores, config.memory_gb)
        instance_type = sku.instance_type

    endpoint: dict[str, Any] = {"$schema": ENDPOINT_SCHEMA, "name": args.name, "auth_mode": auth_mode}
    if description:
        endpoint["description"] = description
    deployment: dict[str, Any] = {
        "$schema": DEPLOYMENT_SCHEMA,
        "name": args.deployment_name,
        "endpoint_name": args.name,
    }
    if description:
        deployment["description"] = description
    if isinstance(tags, dict) and tags:
        deployment["tags"] = {str(k): str(v) for k, v in tags.items()}
    if args.model:
        deployment["model"] = args.model
    if args.entry_script:
        deployment["code_configuration"] = _entry(args.entry_script, args.out, warnings)
    environment = _environment(args, args.out, 5001)
    if environment is not None:
        deployment["environment"] = environment
    else:
        warnings.append("no --environment or --image: add the deployment's environment before creating it")
    if config.compute_type == "aci":
        instances = 1
    elif config.autoscale_enabled:
        instances = config.autoscale_min_replicas
    else:
        instances = config.num_replicas or 1
    deployment |= {
        "instance_type": instance_type,
        "instance_count": instances,
        "request_settings": {
            "request_timeout_ms": config.scoring_timeout_ms,
            "max_concurrent_requests_per_instance": config.replica_max_concurrent_requests or 1,
            "max_queue_wait_ms": config.max_request_wait_time,
        },
        "liveness_probe": {
            "initial_delay": config.initial_delay_seconds,
            "period": config.period_seconds,
            "timeout": config.timeout_seconds,
            "success_threshold": 1,
            "failure_threshold": config.failure_threshold,
        },
        "readiness_probe": {
            "initial_delay": READINESS_INITIAL_DELAY_S,
            "period": config.period_seconds,
            "timeout": config.timeout_seconds,
            "success_threshold": config.success_threshold,
            "failure_threshold": config.failure_threshold,
        },
        "scale_settings": {"type": "default"},
    }
    if app_insights is True:
        deployment["app_insights_enabled"] = True
    return Migration(endpoint, deployment, sku, config, warnings, config.compute_type)


def cost_lines(m: Migration) -> list[str]:
    """The seed's monthly cost comparison, old shape against new."""
    c = m.config
    if m.compute_type == "aci":
        replicas = "one container"
    elif m.autoscaled:
        replicas = f"{c.autoscale_min_replicas}..{c.autoscale_max_replicas} replicas (autoscaled)"
    else:
        replicas = f"{c.num_replicas or 1} replica(s)"
    per = aci_monthly_cost(c.cpu_cores, c.memory_gb)
    old_name = (
        "ACI"
        if m.compute_type == "aci"
        else "AKS (priced with the seed's ACI formula; the real cost is the cluster's nodes)"
    )
    cores = math.ceil(c.cpu_cores)
    tenths = Decimal(str(c.memory_gb)).quantize(Decimal("0.1"), rounding=ROUND_CEILING)
    lines = [
        "Monthly cost, the migration guide's rough figures (USD; region, currency and order type change them):",
        f"  before: {old_name}: {c.cpu_cores:g} CPU, {c.memory_gb:g} GB: "
        f"$29.5650 x {cores} + $3.2485 x {tenths} = {money(per)} per container; {replicas}",
    ]
    count = m.deployment["instance_count"]
    if m.sku is None:
        lines.append(
            f"  after:  {m.deployment['instance_type']} x {count}: not in the guide's table; see Azure's VM pricing"
        )
        return lines
    s = m.sku
    lines.append(
        f"  after:  {s.label} ({s.instance_type}) x {count}: {money(s.pay_as_you_go * count)} pay-as-you-go, "
        f"{money(s.reserved_1y * count)} 1-year reserved, {money(s.reserved_3y * count)} 3-year reserved"
    )
    lines.append(f"  per instance: {money(per)} before, {money(s.pay_as_you_go)} after (pay-as-you-go)")
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scorehost migrate",
        description="Write managed online endpoint YAML (CLI v2) for an ACI/AKS deployment configuration.",
    )
    p.add_argument("--dc", "--deploy-config-file", required=True, metavar="FILE", help="deploymentconfig.json")
    p.add_argument("--entry_script", "--entry-script", dest="entry_script", help="score.py (code_configuration)")
    p.add_argument("--out", required=True, metavar="DIR", help="where endpoint.yml and deployment.yml go")
    p.add_argument("--name", help="endpoint name (default: DIR's name if valid, else scorehost-endpoint)")
    p.add_argument("--deployment-name", default="blue", help="deployment name (default: %(default)s)")
    p.add_argument("--model", help="model, e.g. azureml:my-model:1 or a local path")
    env = p.add_mutually_exclusive_group()
    env.add_argument("--environment", help="azureml:ENV:VERSION, or a conda file (on an Azure ML base image)")
    env.add_argument("--image", help="a custom container image (e.g. a scorehost image with the model baked in)")
    p.add_argument("--instance-type", help="VM size instead of the SKU table's, e.g. Standard_NC6s_v3")
    return p


def _valid_name(name: str) -> bool:
    """Azure's endpoint and deployment names: 3-32 ASCII letters, digits and '-', a letter first."""
    return 3 <= len(name) <= 32 and name.isascii() and name[0].isalpha() and all(c.isalnum() or c == "-" for c in name)


def _endpoint_name(value: str | None, out_dir: str) -> str:
    if value is not None and not _valid_name(value):
        raise ConfigError(f"--name {value!r}: 3-32 letters, digits and '-', a letter first")
    name = value or os.path.basename(os.path.abspath(out_dir))
    return name if _valid_name(name) else "scorehost-endpoint"


def main(argv: list[str]) -> int:
    """Entry point of ``scorehost migrate``; 2 for anything refused (nothing is written then)."""
    try:
        args = _parser().parse_args(argv)
        args.name = _endpoint_name(args.name, args.out)
        if not _valid_name(args.deployment_name):
            raise ConfigError(
                f"--deployment-name {args.deployment_name!r}: 3-32 letters, digits and '-', a letter first"
            )
        m = migrate(read_json(args.dc), args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except ConfigError as exc:
        print(f"scorehost migrate: error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    source = os.path.basename(args.dc)
    files = {
        "endpoint.yml": (m.endpoint, f"az ml online-endpoint create -f {os.path.join(args.out, 'endpoint.yml')}"),
        "deployment.yml": (
            m.deployment,
            f"az ml online-deployment create -f {os.path.join(args.out, 'deployment.yml')} --all-traffic",
        ),
    }
    for file_name, (document, command) in files.items():
        path = os.path.join(args.out, file_name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_yaml(document, HEADER.format(source=source, command=command)))
        print(f"wrote {path}")
    for warning in m.warnings:
        print(f"scorehost migrate: warning: {warning}", file=sys.stderr)
    c = m.config
    if m.autoscaled:
        print(
            f"Autoscaling: managed deployments start at instance_count {c.autoscale_min_replicas}; to scale between "
            f"{c.autoscale_min_replicas} and {c.autoscale_max_replicas} instances add an Azure Monitor autoscale "
            f"setting (az monitor autoscale create --min-count {c.autoscale_min_replicas} "
            f"--max-count {c.autoscale_max_replicas} ...)."
        )
    print("\n".join(cost_lines(m)))
    return 0
