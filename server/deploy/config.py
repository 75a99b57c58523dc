"""Azure ML deployment configurations (``az ml model deploy --dc deploymentconfig.json``).

Parses and validates either JSON form, the SDK's flat names (``cpu_cores``, ``autoscale_enabled``
...) or the CLI file's nested camelCase ones (``containerResourceRequirements.cpu`` ...), into a
:class:`DeployConfig` with Azure's defaults, for :mod:`server.deploy.k8s` to render. Pure: no I/O
beyond :func:`load_config` reading the one file. Unknown fields are errors (a misspelt
``autoscale_max_replica`` must not silently fall back to a default); fields Azure has but
Kubernetes has no place for are accepted with a warning.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The deployment configuration is not usable; the message says which field and why."""


@dataclass(frozen=True)
class DeployConfig:
    """One deployment, with Azure ML's defaults (AksWebservice.deploy_configuration)."""

    compute_type: str = "aks"
    cpu_cores: float = 0.1
    memory_gb: float = 0.5
    gpu_cores: int = 0
    cpu_cores_limit: float | None = None  # None: same as cpu_cores
    memory_gb_limit: float | None = None  # None: same as memory_gb
    num_replicas: int | None = None
    autoscale_enabled: bool = True
    autoscale_min_replicas: int = 1
    autoscale_max_replicas: int = 10
    autoscale_refresh_seconds: int = 1
    autoscale_target_utilization: int = 70
    scoring_timeout_ms: int = 60_000
    replica_max_concurrent_requests: int | None = None  # None: the server's default (CPUs available)
    max_request_wait_time: int = 500
    period_seconds: int = 10
    initial_delay_seconds: int = 310
    timeout_seconds: int = 2
    success_threshold: int = 1
    failure_threshold: int = 3
    namespace: str | None = None
    auth_enabled: bool = False

    @property
    def cpu_limit(self) -> float:
        return self.cpu_cores if self.cpu_cores_limit is None else self.cpu_cores_limit

    @property
    def memory_limit_gb(self) -> float:
        return self.memory_gb if self.memory_gb_limit is None else self.memory_gb_limit


# --- field checks --------------------------------------------------------------------------------
Check = Callable[[str, object], object]


def _number(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(name: str, value: object) -> object:
        # NOTE: bool is an int subclass; `"cpu_cores": true` is a mistake, not 1 core.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{name}: expected a number, got {json.dumps(value)}")
        if value < low or (low_open and value == low) or value > high:
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            raise ConfigError(f"{name}: {value:g} is out of range (must be {bound} and <= {high:g})")
        return float(value)

    return check


def _integer(low: int, high: int) -> Check:
    def check(name: str, value: object) -> object:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON writers may emit 2.0 for 2
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected a whole number, got {json.dumps(value)}")
        if not low <= value <= high:
            raise ConfigError(f"{name}: {value} is out of range ({low}..{high})")
        return value

    return check


def _boolean(name: str, value: object) -> object:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {json.dumps(value)}")
    return value


def _compute_type(name: str, value: object) -> object:
    allowed = ("aks", "kubernetes", "aci", "local")
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ConfigError(f"{name}: expected one of {', '.join(allowed)}, got {json.dumps(value)}")
    return value.lower()


def _namespace(name: str, value: object) -> object:
    if not isinstance(value, str) or not is_dns_label(value):
        raise ConfigError(f"{name}: {json.dumps(value)} is not a valid namespace (a DNS-1123 label)")
    return value


# Azure field name -> (DeployConfig attribute, check). JSON null means "Azure's default".
FIELDS: dict[str, tuple[str, Check]] = {
    "computeType": ("compute_type", _compute_type),
    "cpu_cores": ("cpu_cores", _number(0, 1024, low_open=True)),
    "memory_gb": ("memory_gb", _number(0, 4096, low_open=True)),
    "gpu_cores": ("gpu_cores", _integer(0, 64)),
    "cpu_cores_limit": ("cpu_cores_limit", _number(0, 1024, low_open=True)),
    "memory_gb_limit": ("memory_gb_limit", _number(0, 4096, low_open=True)),
    "num_replicas": ("num_replicas", _integer(1, 10_000)),
    "autoscale_enabled": ("autoscale_enabled", _boolean),
    "autoscale_min_replicas": ("autoscale_min_replicas", _integer(1, 10_000)),
    "autoscale_max_replicas": ("autoscale_max_replicas", _integer(1, 10_000)),
    # Upper bound: the largest periodSeconds of an HPA scaling policy.
    "autoscale_refresh_seconds": ("autoscale_refresh_seconds", _integer(1, 1800)),
    "autoscale_target_utilization": ("autoscale_target_utilization", _integer(1, 100)),
    # The bounds of server/settings.py, so a config the renderer accepts also starts the server.
    "scoring_timeout_ms": ("scoring_timeout_ms", _integer(1, 86_400_000)),
    "replica_max_concurrent_requests": ("replica_max_concurrent_requests", _integer(1, 10_000)),
    "max_request_wait_time": ("max_request_wait_time", _integer(0, 3_600_000)),
    "period_seconds": ("period_seconds", _integer(1, 3600)),
    "initial_delay_seconds": ("initial_delay_seconds", _integer(0, 3600)),
    "timeout_seconds": ("timeout_seconds", _integer(1, 3600)),
    "success_threshold": ("success_threshold", _integer(1, 100)),
    "failure_threshold": ("failure_threshold", _integer(1, 100)),
    "namespace": ("namespace", _namespace),
    "auth_enabled": ("auth_enabled", _boolean),
}

# Azure fields with no Kubernetes counterpart: accepted (a config written for Azure should
# render), reported as ignored.
IGNORED = frozenset(
    {"description", "tags", "properties", "enable_app_insights", "collect_model_data", "compute_target_name"}
)

# Azure fields we refuse, with the reason.
REFUSED = {
    "primary_key": "keys do not belong in manifests; put the key in the Secret named by "
    "`scorehost k8s render` (see docs/deploy.md) and set auth_enabled",
    "secondary_key": "only one key is supported (SCOREHOST_API_KEY); use primary key rotation via the Secret",
    "token_auth_enabled": "token (Azure AD) authentication has no scorehost equivalent; use auth_enabled",
}


def is_dns_label(value: str) -> bool:
    """A DNS-1123 label: what Kubernetes accepts as a namespace."""
    return (
        0 < len(value) <= 63
        and value.isascii()
        and value[0].isalnum()
        and value[-1].isalnum()
        and all(c.isdigit() or c == "-" or ("a" <= c <= "z") for c in value)
    )


# `az ml model deploy --dc FILE` reads Azure's service JSON names, camelCase and partly nested
# (azureml-core's deploy_config_dict_to_obj); the flat names above are those of the SDK's
# AksWebservice.deploy_configuration(). Both are accepted: file name -> flat name.
CLI_NAMES: dict[str, str | dict[str, str]] = {
    "authEnabled": "auth_enabled",
    "tokenAuthEnabled": "token_auth_enabled",
    "appInsightsEnabled": "enable_app_insights",
    "scoringTimeoutMs": "scoring_timeout_ms",
    "maxConcurrentRequestsPerContainer": "replica_max_concurrent_requests",
    "maxQueueWaitMs": "max_request_wait_time",
    "numReplicas": "num_replicas",
    "gpuCores": "gpu_cores",
    "computeTargetName": "compute_target_name",
    "autoScaler": {
        "autoscaleEnabled": "autoscale_enabled",
        "minReplicas": "autoscale_min_replicas",
        "maxReplicas": "autoscale_max_replicas",
        "refreshPeriodInSeconds": "autoscale_refresh_seconds",
        "targetUtilization": "autoscale_target_utilization",
    },
    "containerResourceRequirements": {
        "cpu": "cpu_cores",
        "memoryInGB": "memory_gb",
        "cpuLimit": "cpu_cores_limit",
        "memoryInGBLimit": "memory_gb_limit",
    },
    "livenessProbeRequirements": {
        "periodSeconds": "period_seconds",
        "initialDelaySeconds": "initial_delay_seconds",
        "timeoutSeconds": "timeout_seconds",
        "successThreshold": "success_threshold",
        "failureThreshold": "failure_threshold",
    },
    "dataCollection": {"storageEnabled": "collect_model_data"},
    "keys": {"primaryKey": "primary_key", "secondaryKey": "secondary_key"},
}


def _unknown(where: str, key: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ConfigError(f"unknown field {where!r}{did_you_mean}; known fields: {', '.join(known)}")


def _flatten(raw: dict[str, object]) -> dict[str, tuple[object, str]]:
    """Flat name -> (value, the name the user wrote), from either form; a field given twice is an error."""
    flat: dict[str, tuple[object, str]] = {}
    known = [*FIELDS, *(k for k in CLI_NAMES if k not in FIELDS)]

    def put(name: str, value: object, where: str) -> None:
        if name in flat:
            raise ConfigError(f"{where} and {flat[name][1]} set the same field; give it once")
        flat[name] = (value, where)

    for key, value in raw.items():
        target = CLI_NAMES.get(key)
        if isinstance(target, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected an object, got {json.dumps(value)}")
            for sub, sub_value in value.items():
                if sub not in target:
                    raise _unknown(f"{key}.{sub}", sub, list(target))
                put(target[sub], sub_value, f"{key}.{sub}")
        elif target is not None:
            put(target, value, key)
        elif key in FIELDS or key in IGNORED or key in REFUSED:
            put(key, value, key)
        else:
            raise _unknown(key, key, known)
    return flat


def parse_config(raw: object) -> DeployConfig:
    """Validate a decoded deployment configuration; raise :class:`ConfigError` on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError("the deployment configuration must be a JSON object")
    values: dict[str, Any] = {}
    for name, (value, where) in _flatten(raw).items():
        if name in REFUSED and value not in (None, False):
            raise ConfigError(f"{where}: not supported: {REFUSED[name]}")
        if name in IGNORED or name in REFUSED:
            log.warning("deployment configuration: %s has no Kubernetes equivalent; ignored", where)
            continue
        if value is None:
            continue
        attribute, check = FIELDS[name]
        values[attribute] = check(where, value)
    # Azure: autoscaling is on unless a fixed replica count is given, and the two exclude each other.
    if "num_replicas" in values:
        if values.get("autoscale_enabled") is True:
            raise ConfigError("num_replicas and autoscale_enabled=true exclude each other; choose one")
        values["autoscale_enabled"] = False
    config = DeployConfig(**values)
    _check_consistency(config)
    return config


def _check_consistency(config: DeployConfig) -> None:
    if config.cpu_limit < config.cpu_cores:
        raise ConfigError(f"cpu_cores_limit ({config.cpu_limit:g}) must not be below cpu_cores ({config.cpu_cores:g})")
    if config.memory_limit_gb < config.memory_gb:
        raise ConfigError(
            f"memory_gb_limit ({config.memory_limit_gb:g}) must not be below memory_gb ({config.memory_gb:g})"
        )
    if config.autoscale_max_replicas < config.autoscale_min_replicas:
        raise ConfigError(
            f"autoscale_max_replicas ({config.autoscale_max_replicas}) must not be below "
            f"autoscale_min_replicas ({config.autoscale_min_replicas})"
        )


def load_config(path: str) -> DeployConfig:
    """Read and validate a deployment configuration file (``-``: standard input)."""
    try:
        if path == "-":
            raw = json.load(sys.stdin)
        else:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return parse_config(raw)


# --- quantities and the replica estimate --------------------------------------------------------
def cpu_quantity(cores: float) -> str:
    """Cores as a Kubernetes CPU quantity: whole cores as such, else millicores (0.1 -> ``100m``)."""
    milli = max(1, round(cores * 1000))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(gb: float) -> str:
    """Azure's ``memory_gb`` (GiB, as Azure allocates it) as a quantity: ``Gi`` if whole, else ``Mi``."""
    mib = max(1, math.ceil(gb * 1024))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def estimate_replicas(
    target_rps: str | float,
    request_seconds: str | float,
    target_utilization_pct: str | float,
    max_concurrent: int,
) -> int:
    """Azure ML's sizing rule: ``ceil(target_rps * request_seconds / utilisation / max_concurrent)``.

    Computed in exact rational arithmetic from the decimal inputs: in floating point
    10 * 0.07 / 0.7 is 1.0000000000000002 and would round up to 2 replicas.
    """
    try:
        rps, seconds, pct = (Fraction(str(v)) for v in (target_rps, request_seconds, target_utilization_pct))
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(f"not a number: {exc}") from exc
    if rps <= 0 or seconds <= 0:
        raise ConfigError("the target rate and the request time must be > 0")
    if not 0 < pct <= 100:
        raise ConfigError("the target utilisation must be a percentage in (0, 100]")
    if max_concurrent < 1:
        raise ConfigError("the concurrent requests per replica must be >= 1")
    return max(1, math.ceil(rps * seconds / (pct / 100) / max_concurrent))
