"""``scorehost k8s``: Kubernetes manifests from an Azure ML deployment configuration.

    scorehost k8s render --config deploymentconfig.json --name NAME --image IMAGE [-o DIR]
    scorehost k8s render --spec endpoint.yaml [-o DIR]          # versions behind one endpoint
    scorehost k8s create-version | update-version | delete-version --spec endpoint.yaml ...
    scorehost k8s replicas --target-rps 200 --request-ms 50 [--target-utilization 70] [--max-concurrent 4]

:func:`render` turns one configuration into a Deployment, Service, PodDisruptionBudget and (with
autoscaling) the autoscaler of :mod:`.autoscale`; each Azure field goes to its Kubernetes
equivalent or to the container's environment (see docs/deploy.md for the table). Endpoints with
versions are :mod:`.versions` and :mod:`.gateway`; the command line is :mod:`.commands`; YAML is
written by :mod:`.yamlio`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.deploy.autoscale import DEFAULT_PROMETHEUS, Autoscaler, autoscaler_manifest, scrape_annotations
from server.deploy.config import DeployConfig, Namespace, cpu_quantity, is_dns_label, memory_quantity
from server.deploy.yamlio import HEADER, to_yaml
from server.errors import ConfigError
from server.settings import Settings
from server.validation import bounded_like

__all__ = [
    "FILE_NAMES",
    "HEADER",
    "Manifest",
    "RenderOptions",
    "container_env",
    "main",
    "render",
    "termination_grace_seconds",
    "to_yaml",
]

Manifest = dict[str, Any]

CONTAINER_PORT_NAME = "http"
LIVENESS_PATH = "/health/live"
READINESS_PATH = "/health/ready"
RUN_AS_UID = 10001  # the USER of Dockerfile.cpu / Dockerfile.gpu
# Where the auth Secret is mounted, and its item: the keys file `scorehost keys generate` writes.
AUTH_MOUNT = "/var/run/scorehost/auth"
AUTH_KEYS_ITEM = "keys.json"
COLLECT_MOUNT = "/var/lib/scorehost/modeldata"  # SCOREHOST_COLLECT_DIR in Dockerfile.cpu / .gpu
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
    http_processes: Annotated[int, bounded_like(Settings, "http_processes")] | None = None
    shutdown_delay_s: Annotated[float, bounded_like(Settings, "shutdown_delay_s")] = 2.0
    graceful_timeout_s: Annotated[float, bounded_like(Settings, "graceful_timeout_s")] = 30.0
    env: dict[str, str] = Field(default_factory=dict)
    # keda / hpa: on the pods' utilisation gauge; cpu: the CPU fallback (see autoscale.py).
    autoscaler: Autoscaler = "keda"
    prometheus_url: str = DEFAULT_PROMETHEUS  # KEDA's Prometheus server
    auth_secret: str | None = None  # the Secret holding keys.json; None: "<name>-auth"
    part_of: str | None = None  # the endpoint this deployment is a version of (a label)

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
    """The selector labels: one instance per Deployment."""
    return {"app.kubernetes.io/name": "scorehost", "app.kubernetes.io/instance": name}


def _all_labels(opts: RenderOptions) -> dict[str, str]:
    labels = _labels(opts.name)
    if opts.part_of:
        labels["app.kubernetes.io/part-of"] = opts.part_of
    return labels


def _metadata(opts: RenderOptions, namespace: str | None) -> Manifest:
    meta: Manifest = {"name": opts.name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _all_labels(opts)
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
    if opts.http_processes is not None:
        env["SCOREHOST_HTTP_PROCESSES"] = str(opts.http_processes)
    if opts.entry_script:
        env["AZUREML_ENTRY_SCRIPT"] = opts.entry_script
    if config.collect_model_data:  # written under the image's SCOREHOST_COLLECT_DIR (docs/collect.md)
        env["SCOREHOST_COLLECT_MODEL_DATA"] = "true"
    for key, value in opts.env.items():
        if key in env:
            raise ConfigError(f"--env {key}: set by the renderer; use the matching option or config field")
        env[key] = value
    if config.auth_enabled:
        # The keys come from a Secret mounted as a volume (see auth_volume): the server re-reads
        # the file when the kubelet updates it, so `scorehost keys regen` + a Secret update rotates
        # a key with no restart. (A subPath mount would never be updated.)
        env["SCOREHOST_AUTH_MODE"] = "key"
        env["SCOREHOST_KEYS_FILE"] = f"{AUTH_MOUNT}/{AUTH_KEYS_ITEM}"
    else:
        env["SCOREHOST_AUTH_MODE"] = "none"  # the image defaults to key auth
    return [{"name": k, "value": v} for k, v in env.items()]


def auth_secret_name(opts: RenderOptions) -> str:
    return opts.auth_secret or f"{opts.name}-auth"


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
    """Deployment, Service, PodDisruptionBudget and, with autoscaling, its autoscaler."""
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
        # Read-only root: the server writes only to /tmp (an emptyDir) and the declared volumes.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {}}]
    if config.collect_model_data:
        # The root file system is read-only: collected data needs a volume at the image's
        # SCOREHOST_COLLECT_DIR (an emptyDir here; mount a persistent volume to keep the files).
        container["volumeMounts"].append({"name": "modeldata", "mountPath": COLLECT_MOUNT})
        volumes.append({"name": "modeldata", "emptyDir": {}})
    if config.auth_enabled:
        container["volumeMounts"].append({"name": "auth", "mountPath": AUTH_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "auth",
                "secret": {
                    "secretName": auth_secret_name(opts),
                    # keys.json: {"primaryKey": ..., "secondaryKey": ...}, as `scorehost keys generate` writes.
                    "items": [{"key": AUTH_KEYS_ITEM, "path": AUTH_KEYS_ITEM}],
                    "defaultMode": 0o440,
                },
            }
        )
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
        "volumes": volumes,
    }
    if gpu:
        # GPU node pools are commonly tainted so that only pods asking for a GPU land there.
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    deployment_spec: Manifest = {}
    if not config.autoscale_enabled:
        # With an HPA the replica count is left out: re-applying must not undo its scaling.
        deployment_spec["replicas"] = config.num_replicas or 1
    template_meta: Manifest = {"labels": _all_labels(opts)}
    if config.autoscale_enabled and opts.autoscaler != "cpu":
        # The autoscaler reads scorehost_utilization, scraped from each pod's /metrics.
        template_meta["annotations"] = scrape_annotations(opts.port)
    deployment_spec |= {
        "selector": {"matchLabels": _labels(name)},
        # maxUnavailable 0: a rollout never drops below the serving capacity.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {"metadata": template_meta, "spec": pod},
    }
    manifests: list[Manifest] = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(opts, namespace),
            "spec": deployment_spec,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(opts, namespace),
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
            "metadata": _metadata(opts, namespace),
            # maxUnavailable rather than minAvailable: with one replica, minAvailable 1 would block
            # every node drain for good; this still limits voluntary evictions to one pod at a time.
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)}},
        },
    ]
    if config.autoscale_enabled:
        manifests.append(
            autoscaler_manifest(
                config,
                name,
                _metadata(opts, namespace),
                opts.autoscaler,
                namespace=namespace,
                prometheus_url=opts.prometheus_url,
            )
        )
    return manifests


def _check_options(config: DeployConfig, opts: RenderOptions) -> None:
    if config.autoscale_enabled and opts.autoscaler != "cpu":
        # The utilisation autoscalers read GET /metrics on the server port.
        if opts.env.get("SCOREHOST_METRICS", "true").strip().lower() in ("0", "false", "no", "off"):
            raise ConfigError("--env SCOREHOST_METRICS: the utilisation autoscaler needs /metrics (or use cpu)")
        if opts.env.get("SCOREHOST_METRICS_ENDPOINT", "main") != "main":
            raise ConfigError("--env SCOREHOST_METRICS_ENDPOINT: the autoscaler scrapes /metrics on the server port")
    concurrent = config.replica_max_concurrent_requests
    if opts.workers is not None and concurrent is not None and concurrent < opts.workers:
        # The server refuses to start with fewer slots than workers; say so before deploying.
        raise ConfigError(f"replica_max_concurrent_requests ({concurrent}) must be at least --workers ({opts.workers})")
    fronts = opts.http_processes or 1
    if fronts > 1 and (opts.workers or 1) < fronts:
        # Each HTTP front owns a share of the workers: the server refuses fewer workers than fronts.
        raise ConfigError(f"--http-processes {fronts} needs --workers {fronts} or more (got {opts.workers or 1})")


# One file per object with ``-o DIR``.
FILE_NAMES = {
    "Deployment": "deployment.yaml",
    "Service": "service.yaml",
    "PodDisruptionBudget": "pdb.yaml",
    "HorizontalPodAutoscaler": "hpa.yaml",
    "ScaledObject": "scaledobject.yaml",
    "HTTPRoute": "httproute.yaml",
}


def main(argv: list[str]) -> int:
    """Entry point of ``scorehost k8s``; returns the exit status (2 for a bad configuration)."""
    from server.deploy.commands import k8s_main

    return k8s_main(argv)
