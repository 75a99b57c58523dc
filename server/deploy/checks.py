"""What a schema cannot check: that rendered objects fit together.

:func:`problems` returns one line per thing that does not fit: a Service that selects no pods,
an autoscaler aimed at a missing Deployment or reading a metric scorehost does not export, an
HTTPRoute backend (or mirror) that names a missing Service or port, and, given the endpoint
spec, split weights that differ from the versions' effective traffic, a version without its
header pin, or a mirror that differs from the spec's. The renderers call it on their own
output; the tests call it on broken objects to show that it catches them.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from typing import Any

from server.deploy.autoscale import EXPORTED_METRICS, metric_names
from server.deploy.versions import PIN_HEADER, EndpointSpec, deployment_name, effective_traffic

__all__ = ["problems"]

Manifest = dict[str, Any]
AUTOSCALER_KINDS = ("HorizontalPodAutoscaler", "ScaledObject")


def _key(manifest: Manifest) -> tuple[str | None, str]:
    meta = manifest.get("metadata", {})
    return meta.get("namespace"), meta.get("name", "")


def _backend_refs(route: Manifest) -> Iterator[tuple[str, Manifest]]:
    for i, rule in enumerate(route["spec"].get("rules", [])):
        for ref in rule.get("backendRefs", []):
            yield f"rules[{i}].backendRefs", ref
        for f in rule.get("filters", []):
            if f.get("type") == "RequestMirror":
                yield f"rules[{i}].filters.requestMirror", f["requestMirror"]["backendRef"]


def _is_pin(rule: Manifest) -> bool:
    return any(m.get("headers") for m in rule.get("matches", []))


def problems(manifests: list[Manifest], spec: EndpointSpec | None = None) -> list[str]:
    found: list[str] = []
    deployments = {_key(m): m for m in manifests if m.get("kind") == "Deployment"}
    services = {_key(m): m for m in manifests if m.get("kind") == "Service"}
    pod_labels = {k: d["spec"]["template"]["metadata"]["labels"] for k, d in deployments.items()}

    for (ns, name), service in services.items():
        selector = service["spec"].get("selector", {})
        if not any(selector and selector.items() <= labels.items() for (n, _), labels in pod_labels.items() if n == ns):
            found.append(f"Service {name}: its selector matches no Deployment's pods")

    for m in manifests:
        if m.get("kind") not in AUTOSCALER_KINDS:
            continue
        ns, name = _key(m)
        target = m["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or (ns, target.get("name")) not in deployments:
            found.append(f"{m['kind']} {name}: scaleTargetRef names no rendered Deployment ({target.get('name')})")
        for metric in metric_names(m):
            resource = m["kind"] == "HorizontalPodAutoscaler" and metric == "cpu"
            if metric not in EXPORTED_METRICS and not resource:
                found.append(f"{m['kind']} {name}: metric {metric!r} is not one scorehost exports")

    routes = [m for m in manifests if m.get("kind") == "HTTPRoute"]
    for route in routes:
        ns, name = _key(route)
        for where, ref in _backend_refs(route):
            target = services.get((ref.get("namespace", ns), ref.get("name", "")))
            if target is None:
                found.append(f"HTTPRoute {name} {where}: no Service {ref.get('name')!r}")
            elif ref.get("port") not in {p["port"] for p in target["spec"]["ports"]}:
                found.append(f"HTTPRoute {name} {where}: Service {ref['name']!r} has no port {ref.get('port')}")
        if spec is not None:
            found += _route_matches_spec(route, spec)
    if spec is not None and spec.versions and len(routes) != 1:
        found.append(f"expected one HTTPRoute for endpoint {spec.name}, found {len(routes)}")
    return found


def _route_matches_spec(route: Manifest, spec: EndpointSpec) -> list[str]:
    found: list[str] = []
    rules = route["spec"]["rules"]
    splits = [r for r in rules if not _is_pin(r)]
    if len(splits) != 1:
        return [f"HTTPRoute {spec.name}: expected one split rule, found {len(splits)}"]
    split = splits[0]
    refs = {ref["name"]: ref.get("weight", 1) for ref in split.get("backendRefs", [])}
    total = sum(refs.values())
    for version, percent in effective_traffic(spec).items():
        backend = deployment_name(spec, version)
        if backend not in refs:
            found.append(f"HTTPRoute {spec.name}: version {version} has no backendRef")
        elif total == 0 or Fraction(refs[backend], total) * 100 != percent:
            share = float(Fraction(refs[backend], total or 1) * 100)
            found.append(
                f"HTTPRoute {spec.name}: version {version} gets {share:g} %, the spec says {float(percent):g} %"
            )
    extra = set(refs) - {deployment_name(spec, v.version_name) for v in spec.versions}
    if extra:
        found.append(f"HTTPRoute {spec.name}: backends {sorted(extra)} are no version of the spec")
    pins = {
        h["value"]: [ref["name"] for ref in r.get("backendRefs", [])]
        for r in rules
        if _is_pin(r)
        for m in r["matches"]
        for h in m.get("headers", [])
        if h.get("name", "").lower() == PIN_HEADER
    }
    for v in spec.versions:
        if pins.get(v.version_name) != [deployment_name(spec, v)]:
            found.append(f"HTTPRoute {spec.name}: no {PIN_HEADER}: {v.version_name} rule to {deployment_name(spec, v)}")
    mirrors = [f["requestMirror"] for f in split.get("filters", []) if f.get("type") == "RequestMirror"]
    wanted = [] if spec.mirror is None else [(deployment_name(spec, spec.mirror.version), spec.mirror.percent)]
    if [(m["backendRef"]["name"], m.get("percent")) for m in mirrors] != wanted:
        found.append(f"HTTPRoute {spec.name}: the mirror differs from the spec's ({wanted or 'none'})")
    return found
