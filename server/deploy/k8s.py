"""``scorehost k8s``: Kubernetes manifests from an Azure ML deployment configuration.

    scorehost k8s render --config deploymentconfig.json --name NAME --image IMAGE [-o DIR]
    scorehost k8s replicas --target-rps 200 --request-ms 50 [--target-utilization 70] [--max-concurrent 4]

``render`` writes a Deployment, Service, PodDisruptionBudget and (with autoscaling) a
HorizontalPodAutoscaler; each Azure field goes to its Kubernetes equivalent or to the
container's environment (see docs/deploy.md for the table). The YAML is written by the small
emitter below rather than PyYAML: the server must not grow a runtime dependency for a CLI helper,
and block-style YAML of plain dicts, lists and scalars takes 40 lines. Strings that YAML could
read as anything else (``"100m"``, ``"yes"``, ``"5001"``) are double-quoted JSON strings, which
YAML reads back verbatim.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from fractions import Fraction
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from server.deploy.config import (
    DeployConfig,
    Namespace,
    cpu_quantity,
    estimate_replicas,
    is_dns_label,
    load_config,
    memory_quantity,
)
from server.errors import ConfigError
from server.settings import Settings
from server.validation import bounded_like, describe

Manifest = dict[str, Any]

CONTAINER_PORT_NAME = "http"
LIVENESS_PATH = "/health/live"
READINESS_PATH = "/health/ready"
RUN_AS_UID = 10001  # the USER of Dockerfile.cpu / Dockerfile.gpu
DRAIN_MARGIN_S = 5  # on top of shutdown delay + graceful timeout: process exit, log flush
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


Port = Annotated[int, Ge(1), Le(65535)]  # a containerPort: unlike the server's port, never 0


class RenderOptions(BaseModel):
    """What the command line adds to the deployment configuration.

    The fields that become server settings take those settings' bounds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "scorehost"
    image: str | None = None  # None: scorehost:cpu, or scorehost:gpu when gpu_cores > 0
    namespace: Namespace | None = None  # None: the config's namespace, else the kubectl context's
    port: Port = 5001
    service_port: Port = 80
    entry_script: str | None = None
    workers: Annotated[int, bounded_like(Settings, "workers")] | None = None
    shutdown_delay_s: Annotated[float, bounded_like(Settings, "shutdown_delay_s")] = 2.0
    graceful_timeout_s: Annotated[float, bounded_like(Settings, "graceful_timeout_s")] = 30.0
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        # Service names are DNS-1035 labels (a letter first); the HPA/PDB/Deployment share the name.
        if not (is_dns_label(value) and value[0].isalpha()):
            raise ValueError("must be lower-case letters, digits and '-', a letter first")
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value


# --- rendering -----------------------------------------------------------------------------------
def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "scorehost", "app.kubernetes.io/instance": name}


def _metadata(name: str, namespace: str | None) -> Manifest:
    meta: Manifest = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels(name)
    return meta


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def container_env(config: DeployConfig, opts: RenderOptions) -> list[Manifest]:
    """The runtime half of the mapping: Azure fields the server reads from its environment."""
    env: dict[str, str] = {
        # Explicit, so containerPort and the probes agree with the server whatever the image sets.
        "SCOREHOST_HOST": "0.0.0.0",
        "SCOREHOST_PORT": str(opts.port),
        "SCORING_TIMEOUT_MS": str(config.scoring_timeout_ms),
        "SCOREHOST_MAX_QUEUE_WAIT_MS": str(config.max_request_wait_time),
        "SCOREHOST_SHUTDOWN_DELAY_S": _number_text(opts.shutdown_delay_s),
        "SCOREHOST_GRACEFUL_TIMEOUT_S": _number_text(opts.graceful_timeout_s),
    }
    if config.replica_max_concurrent_requests is not None:
        env["SCOREHOST_MAX_CONCURRENT_REQUESTS"] = str(config.replica_max_concurrent_requests)
    if opts.workers is not None:
        env["WORKER_COUNT"] = str(opts.workers)
    if opts.entry_script:
        env["AZUREML_ENTRY_SCRIPT"] = opts.entry_script
    for key, value in opts.env.items():
        if key in env:
            raise ConfigError(f"--env {key}: set by the renderer; use the matching option or config field")
        env[key] = value
    items: list[Manifest] = [{"name": k, "value": v} for k, v in env.items()]
    if config.auth_enabled:
        secret = {"name": f"{opts.name}-auth", "key": "api-key"}
        items.append({"name": "SCOREHOST_API_KEY", "valueFrom": {"secretKeyRef": secret}})
    return items


def _probe(path: str, config: DeployConfig, *, liveness: bool) -> Manifest:
    return {
        "httpGet": {"path": path, "port": CONTAINER_PORT_NAME},
        # Azure's initial delay (310 s) gives a slow init() time before liveness may restart the
        # pod; readiness needs none, the server answers 503 until init() is done.
        "initialDelaySeconds": config.initial_delay_seconds if liveness else 0,
        "periodSeconds": config.period_seconds,
        "timeoutSeconds": config.timeout_seconds,
        # Kubernetes requires successThreshold 1 for liveness; Azure's value applies to readiness.
        "successThreshold": 1 if liveness else config.success_threshold,
        "failureThreshold": config.failure_threshold,
    }


def termination_grace_seconds(opts: RenderOptions) -> int:
    """Long enough for the server's drain, so the kubelet's SIGKILL never cuts it short."""
    return math.ceil(opts.shutdown_delay_s + opts.graceful_timeout_s) + DRAIN_MARGIN_S


def render(config: DeployConfig, opts: RenderOptions) -> list[Manifest]:
    """Deployment, Service, PodDisruptionBudget and, with autoscaling, a HorizontalPodAutoscaler."""
    _check_options(config, opts)
    name, namespace = opts.name, opts.namespace or config.namespace
    gpu = config.gpu_cores > 0
    image = opts.image or ("scorehost:gpu" if gpu else "scorehost:cpu")
    requests = {"cpu": cpu_quantity(config.cpu_cores), "memory": memory_quantity(config.memory_gb)}
    limits: dict[str, Any] = {
        "cpu": cpu_quantity(config.cpu_limit),
        "memory": memory_quantity(config.memory_limit_gb),
    }
    if gpu:
        limits["nvidia.com/gpu"] = config.gpu_cores
    container: Manifest = {
        "name": "scorehost",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": CONTAINER_PORT_NAME, "containerPort": opts.port, "protocol": "TCP"}],
        "env": container_env(config, opts),
        "resources": {"requests": requests, "limits": limits},
        "livenessProbe": _probe(LIVENESS_PATH, config, liveness=True),
        "readinessProbe": _probe(READINESS_PATH, config, liveness=False),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    pod: Manifest = {
        # Service links would inject SCOREHOST_PORT=tcp://... for a Service named "scorehost",
        # which the server would read as its port; the server needs none of them.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(opts),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_UID,
            "runAsGroup": RUN_AS_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    }
    if gpu:
        # GPU node pools are commonly tainted so that only pods asking for a GPU land there.
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    deployment_spec: Manifest = {}
    if not config.autoscale_enabled:
        # With an HPA the replica count is left out: re-applying must not undo its scaling.
        deployment_spec["replicas"] = config.num_replicas or 1
    deployment_spec |= {
        "selector": {"matchLabels": _labels(name)},
        # maxUnavailable 0: a rollout never drops below the serving capacity.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {"metadata": {"labels": _labels(name)}, "spec": pod},
    }
    manifests: list[Manifest] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(name, namespace),
            "spec": deployment_spec,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(name, namespace),
            "spec": {
                "type": "ClusterIP",
                "selector": _labels(name),
                "ports": [
                    {
                        "name": "http",
                        "port": opts.service_port,
                        "targetPort": CONTAINER_PORT_NAME,
                        "protocol": "TCP",
                    }
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _metadata(name, namespace),
            # maxUnavailable rather than minAvailable: with one replica, minAvailable 1 would block
            # every node drain for good; this still limits voluntary evictions to one pod at a time.
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)}},
        },
    ]
    if config.autoscale_enabled:
        manifests.append(_hpa(config, name, namespace))
    return manifests


def _hpa(config: DeployConfig, name: str, namespace: str | None) -> Manifest:
    # Azure scales on request concurrency; a stock cluster's HPA only has resource metrics, so the
    # target utilisation applies to CPU (relative to the request). The refresh period becomes
    # the period of the scale-up policy: at most doubling once per refresh period.
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, namespace),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": config.autoscale_min_replicas,
            "maxReplicas": config.autoscale_max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": config.autoscale_target_utilization,
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": config.autoscale_refresh_seconds}],
                }
            },
        },
    }


def _check_options(config: DeployConfig, opts: RenderOptions) -> None:
    concurrent = config.replica_max_concurrent_requests
    if opts.workers is not None and concurrent is not None and concurrent < opts.workers:
        # The server refuses to start with fewer slots than workers; say so before deploying.
        raise ConfigError(f"replica_max_concurrent_requests ({concurrent}) must be at least --workers ({opts.workers})")


# --- a small YAML emitter -----------------------------------------------------------------------
_PLAIN = re.compile(r"[A-Za-z/][A-Za-z0-9_./-]*")
# Words YAML 1.1 (which Kubernetes' parser still honours) reads as booleans or null.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} as YAML")
        mantissa, e, exponent = repr(value).partition("e")
        # YAML 1.1 (PyYAML, many Kubernetes tools) reads 1e-07 as a string; 1.0e-07 is a float to all.
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _emit(value: object, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}{_scalar(key)}:")
                # Lists sit at their key's indent ("- " is the indentation), as kubectl writes them.
                _emit(item, indent + 2 if isinstance(item, dict) else indent, out)
            else:
                empty = "{}" if isinstance(item, dict) else "[]" if isinstance(item, list) else None
                out.append(f"{pad}{_scalar(key)}: {empty or _scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                start = len(out)
                _emit(item, indent + 2, out)
                out[start] = f"{pad}- {out[start][indent + 2 :]}"
            else:
                empty = "{}" if isinstance(item, dict) else "[]" if isinstance(item, list) else None
                out.append(f"{pad}- {empty or _scalar(item)}")
    else:
        out.append(pad + _scalar(value))


HEADER = "# Generated by `scorehost k8s render`: change the deployment configuration and render again.\n"


def to_yaml(document: object, header: str = "") -> str:
    """One YAML document in block style; plain dicts, lists, strings, numbers, booleans, None."""
    out: list[str] = [header.rstrip("\n")] if header else []
    _emit(document, 0, out)
    return "\n".join(out) + "\n"


# --- command line -------------------------------------------------------------------------------
FILE_NAMES = {
    "Deployment": "deployment.yaml",
    "Service": "service.yaml",
    "PodDisruptionBudget": "pdb.yaml",
    "HorizontalPodAutoscaler": "hpa.yaml",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorehost k8s", description="Kubernetes manifests from an Azure ML deployment configuration."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="write Kubernetes manifests for a deployment configuration")
    r.add_argument("--config", "--dc", metavar="FILE", help="Azure ML deployment configuration JSON ('-': stdin)")
    r.add_argument("--name", default="scorehost", help="name of every object (default: %(default)s)")
    r.add_argument("--image", help="container image (default: scorehost:cpu, or scorehost:gpu with gpu_cores)")
    r.add_argument("--namespace", help="namespace of every object (default: the config's, else none)")
    r.add_argument("--port", type=int, default=5001, help="container port (default: %(default)s)")
    r.add_argument("--service-port", type=int, default=80, help="Service port (default: %(default)s)")
    r.add_argument("--entry-script", help="AZUREML_ENTRY_SCRIPT, relative to /var/azureml-app")
    r.add_argument("--workers", type=int, help="WORKER_COUNT (default: the server's, 1)")
    r.add_argument("--shutdown-delay-s", type=float, default=2.0, help="SCOREHOST_SHUTDOWN_DELAY_S")
    r.add_argument("--graceful-timeout-s", type=float, default=30.0, help="SCOREHOST_GRACEFUL_TIMEOUT_S")
    r.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra container env")
    r.add_argument("-o", "--output-dir", help="write one file per object here instead of to stdout")
    e = sub.add_parser("replicas", help="estimate replicas: ceil(rps * seconds / utilisation / concurrency)")
    e.add_argument("--target-rps", required=True, help="requests per second to sustain")
    t = e.add_mutually_exclusive_group(required=True)
    t.add_argument("--request-ms", help="time to serve one request, milliseconds")
    t.add_argument("--request-seconds", help="time to serve one request, seconds")
    e.add_argument("--config", "--dc", metavar="FILE", help="take the two values below from this config")
    e.add_argument("--target-utilization", help="percent (default: the config's, else 70)")
    e.add_argument("--max-concurrent", type=int, help="requests per replica (default: the config's, else 1)")
    return parser


def _render_command(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else DeployConfig()
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    options = {name: getattr(args, name) for name in RenderOptions.model_fields if name != "env"}
    try:
        opts = RenderOptions(**options, env=env)
    except ValidationError as exc:
        flags = {name: "--" + name.replace("_", "-") for name in RenderOptions.model_fields}
        raise ConfigError(describe(exc, RenderOptions, names=flags)) from exc
    manifests = render(config, opts)
    if not args.output_dir:
        sys.stdout.write("---\n".join(to_yaml(m, HEADER) for m in manifests))
        return 0
    os.makedirs(args.output_dir, exist_ok=True)
    for manifest in manifests:
        path = os.path.join(args.output_dir, FILE_NAMES[manifest["kind"]])
        with open(path, "w", encoding="utf-8") as f:
            f.write(to_yaml(manifest, HEADER))
        print(path, file=sys.stderr)
    return 0


def _replicas_command(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else DeployConfig()
    seconds = args.request_seconds
    if args.request_ms is not None:
        # Kept exact: "50" ms becomes the fraction 1/20 s, with no float in between.
        try:
            seconds = str(Fraction(args.request_ms) / 1000)
        except ValueError as exc:
            raise ConfigError(f"--request-ms: {exc}") from exc
    utilization = args.target_utilization or config.autoscale_target_utilization
    concurrent = args.max_concurrent or config.replica_max_concurrent_requests or 1
    print(estimate_replicas(args.target_rps, seconds, utilization, concurrent))
    return 0


def main(argv: list[str]) -> int:
    """Entry point of ``scorehost k8s``; returns the exit status (2 for a bad configuration)."""
    try:
        args = _parser().parse_args(argv)
        if args.command == "render":
            return _render_command(args)
        return _replicas_command(args)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    except ConfigError as exc:
        print(f"scorehost k8s: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
