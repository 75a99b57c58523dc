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
from fractions import Fraction
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Strict,
    StrictBool,
    ValidationError,
    model_validator,
)

from server.errors import ConfigError
from server.settings import Settings
from server.validation import WholeNumber, bounded_like, describe

# ConfigError lives in server.errors; importing it from here still works.
__all__ = [
    "CLI_NAMES",
    "FIELDS",
    "IGNORED",
    "REFUSED",
    "ConfigError",
    "DeployConfig",
    "Namespace",
    "cpu_quantity",
    "estimate_replicas",
    "flatten",
    "is_dns_label",
    "load_config",
    "memory_quantity",
    "parse_config",
    "parse_flat",
    "read_json",
]

log = logging.getLogger(__name__)


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


# A finite number (an int is fine, true or "1" is not).
Number = Annotated[float, Strict(), AllowInfNan(False)]
Cores = Annotated[Number, Gt(0), Le(1024)]
Gigabytes = Annotated[Number, Gt(0), Le(4096)]
Replicas = Annotated[WholeNumber, Ge(1), Le(10_000)]
ProbeSeconds = Annotated[WholeNumber, Ge(1), Le(3600)]
Threshold = Annotated[WholeNumber, Ge(1), Le(100)]


def _namespace(value: str) -> str:
    if not is_dns_label(value):
        raise ValueError("not a valid namespace (a DNS-1123 label)")
    return value


Namespace = Annotated[str, AfterValidator(_namespace)]


class DeployConfig(BaseModel):
    """One deployment, with Azure ML's defaults (AksWebservice.deploy_configuration).

    The runtime fields take their bounds from the server's own settings, so a configuration the
    renderer accepts also starts the server.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute_type: Annotated[Literal["aks", "kubernetes", "aci", "local"], BeforeValidator(_lower)] = "aks"
    cpu_cores: Cores = 0.1
    memory_gb: Gigabytes = 0.5
    gpu_cores: Annotated[WholeNumber, Ge(0), Le(64)] = 0
    cpu_cores_limit: Cores | None = None  # None: same as cpu_cores
    memory_gb_limit: Gigabytes | None = None  # None: same as memory_gb
    num_replicas: Replicas | None = None
    autoscale_enabled: StrictBool = True
    autoscale_min_replicas: Replicas = 1
    autoscale_max_replicas: Replicas = 10
    # Upper bound: the largest periodSeconds of an HPA scaling policy.
    autoscale_refresh_seconds: Annotated[WholeNumber, Ge(1), Le(1800)] = 1
    autoscale_target_utilization: Annotated[WholeNumber, Ge(1), Le(100)] = 70
    scoring_timeout_ms: Annotated[WholeNumber, bounded_like(Settings, "scoring_timeout_ms")] = 60_000
    # None: the server's default (CPUs available).
    replica_max_concurrent_requests: (
        Annotated[WholeNumber, bounded_like(Settings, "max_concurrent_requests")] | None
    ) = None
    max_request_wait_time: Annotated[WholeNumber, bounded_like(Settings, "max_queue_wait_ms")] = 500
    period_seconds: ProbeSeconds = 10
    initial_delay_seconds: Annotated[WholeNumber, Ge(0), Le(3600)] = 310
    timeout_seconds: ProbeSeconds = 2
    success_threshold: Threshold = 1
    failure_threshold: Threshold = 3
    namespace: Namespace | None = None
    # Key auth is on by default on the seeds' platform (AKS), and the image refuses to start
    # without keys unless told auth_mode=none, so the renderer says which one it is.
    auth_enabled: StrictBool = True
    # Model data collection (server.collect): env SCOREHOST_COLLECT_MODEL_DATA.
    collect_model_data: StrictBool = False

    @model_validator(mode="before")
    @classmethod
    def _fixed_replicas(cls, data: Any) -> Any:
        # Azure: autoscaling is on unless a fixed replica count is given, and the two exclude each other.
        if isinstance(data, dict) and data.get("num_replicas") is not None:
            if data.get("autoscale_enabled") is True:
                raise ValueError("num_replicas and autoscale_enabled=true exclude each other; choose one")
            data = {"autoscale_enabled": False, **data}  # a wrong type stays, and is refused
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        if self.cpu_limit < self.cpu_cores:
            raise ValueError(f"cpu_cores_limit ({self.cpu_limit:g}) must not be below cpu_cores ({self.cpu_cores:g})")
        if self.memory_limit_gb < self.memory_gb:
            raise ValueError(
                f"memory_gb_limit ({self.memory_limit_gb:g}) must not be below memory_gb ({self.memory_gb:g})"
            )
        if self.autoscale_max_replicas < self.autoscale_min_replicas:
            raise ValueError(
                f"autoscale_max_replicas ({self.autoscale_max_replicas}) must not be below "
                f"autoscale_min_replicas ({self.autoscale_min_replicas})"
            )
        return self

    @property
    def cpu_limit(self) -> float:
        return self.cpu_cores if self.cpu_cores_limit is None else self.cpu_cores_limit

    @property
    def memory_limit_gb(self) -> float:
        return self.memory_gb if self.memory_gb_limit is None else self.memory_gb_limit


# Azure's flat field names: DeployConfig's, but for computeType. JSON null means "Azure's default".
_AZURE_NAMES = {"compute_type": "computeType"}
FIELDS: dict[str, str] = {_AZURE_NAMES.get(name, name): name for name in DeployConfig.model_fields}

# Azure fields with no Kubernetes counterpart: accepted (a config written for Azure should
# render), reported as ignored.
IGNORED = frozenset({"description", "tags", "properties", "enable_app_insights", "compute_target_name"})

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


def flatten(raw: object) -> dict[str, tuple[object, str]]:
    """Either form of a configuration as flat SDK name -> (value, the name the user wrote).

    Unknown fields and fields given twice are refused; values are not validated yet.
    """
    if not isinstance(raw, dict):
        raise ConfigError("the deployment configuration must be a JSON object")
    return _flatten(raw)


def parse_config(raw: object) -> DeployConfig:
    """Validate a decoded deployment configuration; raise :class:`ConfigError` on the first problem."""
    return parse_flat(flatten(raw))


def parse_flat(flat: dict[str, tuple[object, str]]) -> DeployConfig:
    """Validate the output of :func:`flatten` (fields may have been taken out of it)."""
    values: dict[str, Any] = {}
    written: dict[str, str] = {}  # DeployConfig field -> the name the user wrote, for messages
    for name, (value, where) in flat.items():
        if name in REFUSED and value not in (None, False):
            raise ConfigError(f"{where}: not supported: {REFUSED[name]}")
        if name in IGNORED or name in REFUSED:
            log.warning("deployment configuration: %s has no Kubernetes equivalent; ignored", where)
            continue
        if value is not None:
            values[FIELDS[name]] = value
            written[FIELDS[name]] = where
    try:
        return DeployConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(describe(exc, DeployConfig, names=written)) from exc


def read_json(path: str) -> object:
    """A decoded JSON file (``-``: standard input); unreadable or invalid JSON is a :class:`ConfigError`."""
    try:
        if path == "-":
            return json.load(sys.stdin)
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


def load_config(path: str) -> DeployConfig:
    """Read and validate a deployment configuration file (``-``: standard input)."""
    return parse_config(read_json(path))


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
