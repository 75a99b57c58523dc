"""Endpoint versions and their traffic split, with the rules of Azure's ``AksEndpoint``.

An endpoint spec (YAML or JSON) lists up to six versions behind one endpoint, each with the
AksEndpoint fields ``version_name``, ``traffic_percentile``, ``is_default`` and
``is_control_version_type`` plus its own deployment configuration and image::

    name: fraud                      # the endpoint: HTTPRoute name, prefix of every version's objects
    namespace: models
    gateway: {name: public, namespace: gateway-infra}
    versions:
    - version_name: versiona
      traffic_percentile: 20
      image: registry.example.com/fraud:1
      deployment_config: deploymentconfig.json     # a file beside the spec, or the object inline
    - version_name: versionb
      traffic_percentile: 10
      is_control_version_type: true
      image: registry.example.com/fraud:2
      deployment_config: {cpu_cores: 1, memory_gb: 2}
    mirror: {version: versionc, percent: 10}       # optional: copies of live traffic, answers dropped

The seeds' rules (:func:`check_rules`; a violation names its rule): at most six versions; at most
one control (any number of treatments); at most one version marked default, and the first one
is the default unless another is marked; the percentiles sum to at most 100 and the default
version takes the remainder (20 % + 10 % -> the default gets 70 + 20 = 90 %). Versions are
created, updated and deleted one at a time (:func:`create_version`, :func:`update_version`,
:func:`delete_version`), and the default cannot be deleted while other versions remain.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictBool, ValidationError

from server.deploy.autoscale import DEFAULT_PROMETHEUS, Autoscaler
from server.deploy.config import DeployConfig, Namespace, flatten, is_dns_label, parse_config, read_json
from server.deploy.yamlio import read_document, write_document
from server.errors import ConfigError
from server.validation import describe

__all__ = [
    "MAX_MIRROR_PERCENT",
    "MAX_VERSIONS",
    "PIN_HEADER",
    "EndpointSpec",
    "VersionSpec",
    "check_rules",
    "create_version",
    "default_version",
    "delete_version",
    "deployment_name",
    "effective_traffic",
    "load_spec",
    "merge_config",
    "save_spec",
    "update_version",
    "version_config",
    "weights",
]

MAX_VERSIONS = 6  # the seeds: "You can deploy up to six versions behind a single endpoint"
PIN_HEADER = "azureml-model-deployment"  # managed online endpoints' header that picks a deployment
MAX_MIRROR_PERCENT = 50  # managed online endpoints: mirrored traffic is at most 50 %
MAX_DECIMALS = 4  # percentiles become integer Gateway API weights (at most 1,000,000 in all)

# The rules, by the name a refusal quotes.
RULE_MAX_VERSIONS = f"at most {MAX_VERSIONS} versions behind one endpoint"
RULE_ONE_CONTROL = "at most one control version (is_control_version_type); any number of treatments"
RULE_ONE_DEFAULT = "one default version: the first unless another is marked is_default"
RULE_TRAFFIC = "traffic percentiles sum to at most 100; the default version takes the remainder"
RULE_KEEP_DEFAULT = "the default version cannot be deleted while other versions remain"
RULE_UNIQUE = "version names are unique"
RULE_MIRROR = (
    f"the mirror copies at most {MAX_MIRROR_PERCENT} % of live traffic to one existing version "
    "that receives no live traffic"
)


def _refuse(rule: str, detail: str) -> ConfigError:
    return ConfigError(f"rule '{rule}': {detail}")


def _version_name(value: str) -> str:
    if not (is_dns_label(value) and value[0].isalpha()):
        raise ValueError("must be lower-case letters, digits and '-', a letter first")
    return value


def _decimals(value: float) -> float:
    if (Fraction(str(value)) * 10**MAX_DECIMALS).denominator != 1:
        raise ValueError(f"at most {MAX_DECIMALS} decimal places")
    return value


# A version or endpoint name: a DNS-1035 label, as the Services named after it must be.
Label = Annotated[str, AfterValidator(_version_name)]
Name = Annotated[str, Field(min_length=1, max_length=253)]
Percentile = Annotated[float, Strict(), AllowInfNan(False), Ge(0), Le(100), AfterValidator(_decimals)]


class VersionSpec(BaseModel):
    """One version: AksEndpoint's version fields, its deployment configuration and image."""

    model_config = ConfigDict(extra="forbid")

    version_name: Label
    traffic_percentile: Percentile = 0
    is_default: StrictBool | None = None  # None: not marked (the first version is the default then)
    is_control_version_type: StrictBool = False
    image: str | None = None  # None: scorehost:cpu, or scorehost:gpu with gpu_cores
    entry_script: str | None = None
    workers: int | None = None
    http_processes: int | None = None
    env: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    # A deployment configuration (either JSON form), inline or as a file relative to the spec.
    deployment_config: dict[str, Any] | str = Field(default_factory=dict)


class GatewayRef(BaseModel):
    """The Gateway the endpoint's HTTPRoute attaches to."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    namespace: Namespace | None = None  # None: the endpoint's
    section_name: str | None = None  # a listener name


class MirrorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Label
    percent: Annotated[int, Strict(), Ge(1), Le(MAX_MIRROR_PERCENT)]


class EndpointSpec(BaseModel):
    """An endpoint and its versions (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: Label
    namespace: Namespace | None = None
    gateway: GatewayRef
    hostnames: list[str] = Field(default_factory=list)
    port: Annotated[int, Ge(1), Le(65535)] = 5001
    service_port: Annotated[int, Ge(1), Le(65535)] = 80
    autoscaler: Autoscaler = "keda"
    prometheus_url: str = DEFAULT_PROMETHEUS
    mirror: MirrorSpec | None = None
    versions: list[VersionSpec] = Field(default_factory=list)


# --- the rules -----------------------------------------------------------------------------------
def default_version(spec: EndpointSpec) -> VersionSpec | None:
    """The version marked ``is_default``, else the first; None for an endpoint without versions."""
    return next((v for v in spec.versions if v.is_default), spec.versions[0] if spec.versions else None)


def _percent(value: float) -> Fraction:
    return Fraction(str(value))


def effective_traffic(spec: EndpointSpec) -> dict[str, Fraction]:
    """Each version's share in percent: its percentile, plus the remainder for the default."""
    shares = {v.version_name: _percent(v.traffic_percentile) for v in spec.versions}
    default = default_version(spec)
    if default is not None:
        shares[default.version_name] += 100 - sum(shares.values(), Fraction(0))
    return shares


def weights(spec: EndpointSpec) -> dict[str, int]:
    """Integer Gateway API weights proportional to :func:`effective_traffic` (20 % -> 20, 12.5 % -> 125)."""
    shares = effective_traffic(spec)
    scale = next(10**k for k in range(MAX_DECIMALS + 1) if all((s * 10**k).denominator == 1 for s in shares.values()))
    return {name: int(share * scale) for name, share in shares.items()}


def deployment_name(spec: EndpointSpec, version: VersionSpec | str) -> str:
    """The name of a version's Deployment, Service, PDB and autoscaler: ``ENDPOINT-VERSION``."""
    return f"{spec.name}-{version if isinstance(version, str) else version.version_name}"


def check_rules(spec: EndpointSpec) -> None:
    """Refuse a spec that breaks one of the seeds' rules, naming the rule."""
    names = [v.version_name for v in spec.versions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _refuse(RULE_UNIQUE, f"{', '.join(map(repr, duplicates))} appears more than once")
    if len(names) > MAX_VERSIONS:
        raise _refuse(RULE_MAX_VERSIONS, f"this endpoint would have {len(names)}")
    controls = [v.version_name for v in spec.versions if v.is_control_version_type]
    if len(controls) > 1:
        raise _refuse(RULE_ONE_CONTROL, f"{' and '.join(map(repr, controls))} are both control versions")
    defaults = [v.version_name for v in spec.versions if v.is_default]
    if len(defaults) > 1:
        raise _refuse(RULE_ONE_DEFAULT, f"{' and '.join(map(repr, defaults))} are both marked is_default")
    total = sum((_percent(v.traffic_percentile) for v in spec.versions), Fraction(0))
    if total > 100:
        parts = " + ".join(f"{v.version_name} {v.traffic_percentile:g}" for v in spec.versions)
        raise _refuse(RULE_TRAFFIC, f"{parts} = {float(total):g}")
    for v in spec.versions:
        if len(deployment_name(spec, v)) > 63:
            raise ConfigError(f"{deployment_name(spec, v)!r}: endpoint and version names together exceed 63 characters")
    if spec.mirror is not None:
        live = effective_traffic(spec)
        target = spec.mirror.version
        if target not in live:
            raise _refuse(RULE_MIRROR, f"there is no version {target!r} (versions: {', '.join(names) or 'none'})")
        if live[target] > 0:
            raise _refuse(RULE_MIRROR, f"{target!r} receives {float(live[target]):g} % of live traffic")


# --- one version at a time -----------------------------------------------------------------------
def _find(spec: EndpointSpec, name: str) -> int:
    for i, v in enumerate(spec.versions):
        if v.version_name == name:
            return i
    known = ", ".join(v.version_name for v in spec.versions) or "none"
    raise ConfigError(f"endpoint {spec.name!r} has no version {name!r} (versions: {known})")


def _with_default(versions: list[VersionSpec], index: int) -> list[VersionSpec]:
    # Marking one version default unmarks the others: there is one default.
    return [
        v.model_copy(update={"is_default": True if i == index else (None if v.is_default else v.is_default)})
        for i, v in enumerate(versions)
    ]


def create_version(spec: EndpointSpec, version: VersionSpec) -> EndpointSpec:
    """Add a version; ``is_default: true`` makes it the default."""
    if any(v.version_name == version.version_name for v in spec.versions):
        raise _refuse(RULE_UNIQUE, f"{version.version_name!r} exists; change it with update-version")
    if len(spec.versions) >= MAX_VERSIONS:
        raise _refuse(
            RULE_MAX_VERSIONS, f"{version.version_name!r} would be version {len(spec.versions) + 1}; delete one first"
        )
    versions = [*spec.versions, version]
    if version.is_default:
        versions = _with_default(versions, len(versions) - 1)
    new = spec.model_copy(update={"versions": versions})
    check_rules(new)
    return new


def update_version(
    spec: EndpointSpec, name: str, changes: dict[str, Any], mirror_percent: int | None = None
) -> EndpointSpec:
    """Change fields of one version (AksEndpoint.update_version); None values are left as they are.

    ``is_default: true`` moves the default to this version; ``false`` on the default is refused
    (mark another one instead). ``mirror_percent`` mirrors that much live traffic to this version
    (0: no mirror).
    """
    index = _find(spec, name)
    changes = {k: v for k, v in changes.items() if v is not None}
    current = spec.versions[index]
    if changes.get("is_default") is False and default_version(spec) is current:
        raise _refuse(RULE_ONE_DEFAULT, f"{name!r} is the default; mark another version default instead")
    try:
        updated = VersionSpec.model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        raise ConfigError(describe(exc, VersionSpec)) from exc
    versions = list(spec.versions)
    versions[index] = updated
    if changes.get("is_default"):
        versions = _with_default(versions, index)
    update: dict[str, Any] = {"versions": versions}
    if mirror_percent:
        if not 0 < mirror_percent <= MAX_MIRROR_PERCENT:
            raise _refuse(RULE_MIRROR, f"{mirror_percent} % is outside 1..{MAX_MIRROR_PERCENT}")
        update["mirror"] = MirrorSpec(version=name, percent=mirror_percent)
    elif mirror_percent == 0:
        update["mirror"] = None
    new = spec.model_copy(update=update)
    check_rules(new)
    return new


def delete_version(spec: EndpointSpec, name: str) -> EndpointSpec:
    """Remove one version; not the default while others remain, nor the mirror's target."""
    index = _find(spec, name)
    if default_version(spec) is spec.versions[index] and len(spec.versions) > 1:
        raise _refuse(RULE_KEEP_DEFAULT, f"{name!r} is the default; make another version default first")
    if spec.mirror is not None and spec.mirror.version == name:
        raise _refuse(RULE_MIRROR, f"{name!r} is the mirror's target; remove the mirror first (--mirror-percent 0)")
    new = spec.model_copy(update={"versions": [v for i, v in enumerate(spec.versions) if i != index]})
    check_rules(new)
    return new


# --- deployment configurations -------------------------------------------------------------------
def _raw_config(spec_dir: str, version: VersionSpec) -> object:
    source = version.deployment_config
    return read_json(os.path.join(spec_dir, source)) if isinstance(source, str) else source


def version_config(spec_dir: str, version: VersionSpec) -> DeployConfig:
    """A version's validated deployment configuration (a file is read relative to the spec)."""
    try:
        return parse_config(_raw_config(spec_dir, version))
    except ConfigError as exc:
        raise ConfigError(f"version {version.version_name!r}: deployment_config: {exc}") from exc


def merge_config(spec_dir: str, version: VersionSpec, changes: dict[str, Any]) -> dict[str, Any]:
    """The version's configuration with ``changes`` applied, inline, in the SDK's flat names."""
    flat = {name: value for name, (value, _) in flatten(_raw_config(spec_dir, version)).items()}
    flat |= {name: value for name, (value, _) in flatten(changes).items()}
    return flat


# --- the spec file -------------------------------------------------------------------------------
def load_spec(path: str) -> EndpointSpec:
    raw = read_document(path)
    try:
        spec = EndpointSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe(exc, EndpointSpec)}") from exc
    check_rules(spec)
    return spec


def _tidy(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


SPEC_HEADER = "# scorehost endpoint spec: edit it, or use scorehost k8s create-version/update-version/delete-version\n"


def save_spec(path: str, spec: EndpointSpec) -> None:
    """Write the spec back, leaving out fields at their defaults."""
    document = spec.model_dump(mode="json", exclude_defaults=True)
    document["versions"] = [
        {"version_name": v.version_name, **v.model_dump(mode="json", exclude_defaults=True)} for v in spec.versions
    ]
    write_document(path, _tidy(document), SPEC_HEADER)
