"""An endpoint's manifests: each version's objects, and one Gateway API HTTPRoute in front.

Every version renders as a deployment of its own (:func:`server.deploy.k8s.render`: Deployment,
Service, PodDisruptionBudget, autoscaler), named ``ENDPOINT-VERSION``. The HTTPRoute
(``gateway.networking.k8s.io/v1``) splits the endpoint's traffic:

* one rule per version matching the header ``azureml-model-deployment: VERSION``, the header
  managed online endpoints use to pin a deployment; it wins over the split because Gateway API
  gives precedence to the match with more header matches when the paths tie;
* one rule with weighted ``backendRefs``, the weights in proportion to the versions' effective
  traffic (:func:`server.deploy.versions.weights`), and, with ``mirror``, a ``RequestMirror``
  filter copying that percentage to the mirror version (``percent`` needs Gateway API >= 1.3,
  where it is in the standard channel). Requests pinned by the header are not mirrored.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from server.deploy.autoscale import Autoscaler
from server.deploy.checks import problems
from server.deploy.k8s import RenderOptions, render
from server.deploy.versions import (
    PIN_HEADER,
    EndpointSpec,
    default_version,
    deployment_name,
    version_config,
    weights,
)
from server.errors import ConfigError
from server.validation import describe

__all__ = ["httproute", "render_endpoint"]

Manifest = dict[str, Any]
ROOT_PATH = {"type": "PathPrefix", "value": "/"}


def httproute(spec: EndpointSpec, namespace: str | None) -> Manifest:
    """The endpoint's HTTPRoute: header pins, then the weighted split (and the mirror)."""

    def backend(version: str) -> Manifest:
        return {"name": deployment_name(spec, version), "port": spec.service_port}

    rules: list[Manifest] = [
        {
            "matches": [
                {
                    "path": dict(ROOT_PATH),
                    "headers": [{"type": "Exact", "name": PIN_HEADER, "value": v.version_name}],
                }
            ],
            "backendRefs": [backend(v.version_name)],
        }
        for v in spec.versions
    ]
    split: Manifest = {"matches": [{"path": dict(ROOT_PATH)}]}
    if spec.mirror is not None:
        split["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": backend(spec.mirror.version), "percent": spec.mirror.percent},
            }
        ]
    split["backendRefs"] = [{**backend(name), "weight": weight} for name, weight in weights(spec).items()]
    rules.append(split)
    parent: Manifest = {"name": spec.gateway.name}
    if spec.gateway.namespace:
        parent["namespace"] = spec.gateway.namespace
    if spec.gateway.section_name:
        parent["sectionName"] = spec.gateway.section_name
    metadata: Manifest = {"name": spec.name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {
        "app.kubernetes.io/name": "scorehost",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/part-of": spec.name,
    }
    route_spec: Manifest = {"parentRefs": [parent]}
    if spec.hostnames:
        route_spec["hostnames"] = list(spec.hostnames)
    route_spec["rules"] = rules
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": metadata, "spec": route_spec}


def render_endpoint(
    spec: EndpointSpec,
    spec_dir: str = ".",
    *,
    autoscaler: Autoscaler | None = None,
    prometheus_url: str | None = None,
) -> list[Manifest]:
    """Every version's objects, then the HTTPRoute; nothing for an endpoint without versions.

    ``autoscaler`` and ``prometheus_url`` override the spec's. The result is checked with
    :func:`server.deploy.checks.problems` (backends exist, weights match the percentiles, metrics
    are scorehost's) before it is returned.
    """
    manifests: list[Manifest] = []
    namespaces: set[str | None] = set()
    for version in spec.versions:
        config = version_config(spec_dir, version)
        namespace = spec.namespace or config.namespace
        namespaces.add(namespace)
        try:
            opts = RenderOptions(
                name=deployment_name(spec, version),
                image=version.image,
                namespace=namespace,
                port=spec.port,
                service_port=spec.service_port,
                entry_script=version.entry_script,
                workers=version.workers,
                http_processes=version.http_processes,
                env=version.env,
                autoscaler=autoscaler or spec.autoscaler,
                prometheus_url=prometheus_url or spec.prometheus_url,
                auth_secret=f"{spec.name}-auth",
                part_of=spec.name,
            )
            manifests += render(config, opts)
        except ValidationError as exc:
            raise ConfigError(f"version {version.version_name!r}: {describe(exc, RenderOptions)}") from exc
        except ConfigError as exc:
            raise ConfigError(f"version {version.version_name!r}: {exc}") from exc
    if not spec.versions:
        return manifests
    if len(namespaces) > 1:
        found = ", ".join(sorted(n or "(none)" for n in namespaces))
        raise ConfigError(
            f"the versions of one endpoint share one namespace (found {found}); set namespace in the spec"
        )
    manifests.append(httproute(spec, namespaces.pop()))
    found_problems = problems(manifests, spec)
    if found_problems:  # a renderer bug, not a user error
        raise RuntimeError("rendered objects do not fit together: " + "; ".join(found_problems))
    return manifests


def default_name(spec: EndpointSpec) -> str:
    version = default_version(spec)
    return version.version_name if version else "(none)"


def spec_dir_of(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))
