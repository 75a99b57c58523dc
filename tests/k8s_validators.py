"""Offline schema validation of rendered manifests, shared by the Kubernetes tests.

Core objects (Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler) go through
``kubernetes-validate --strict`` against the schemas of the oldest and newest Kubernetes it ships.
The custom resources (HTTPRoute, ScaledObject) go through ``check-jsonschema`` against their
published CRD OpenAPI schemas, kept in tests/data/ (each file's ``$comment`` names its source:
repository, path, commit, version). CRD schemas leave objects open, as Kubernetes prunes unknown
fields; :func:`strict` closes every object that lists its properties, as kubectl's strict field
validation would, so that a misspelt field fails here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from server.deploy.yamlio import to_yaml

DATA = Path(__file__).resolve().parent / "data"
# Oldest and newest schema sets kubernetes-validate ships: autoscaling/v2 and policy/v1 are GA in both.
K8S_VERSIONS = ("1.25.0", "1.37.0")
CORE_KINDS = frozenset({"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"})
CRD_SCHEMAS = {
    "HTTPRoute": ["gateway.networking.k8s.io_httproutes.v1.json"],
    "ScaledObject": [
        "keda.sh_scaledobjects.v1alpha1.json",
        "keda.sh_scaledobjects.v1alpha1.controller-gen-v0.6.1.json",
    ],
}


def kubernetes_validate(files: Iterable[Path]) -> subprocess.CompletedProcess[str]:
    versions = [arg for v in K8S_VERSIONS for arg in ("-k", v)]
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--no-warn", *versions, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists properties."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = strict(out["items"])
    if "anyOf" in out:
        out["anyOf"] = [strict(s) for s in out["anyOf"]]
    return out


def schema_file(name: str, directory: Path) -> Path:
    """The strict variant of tests/data/NAME, written into ``directory``."""
    path = directory / f"strict-{name}"
    if not path.exists():
        schema = json.loads((DATA / name).read_text(encoding="utf-8"))
        path.write_text(json.dumps(strict(schema)), encoding="utf-8")
    return path


def check_jsonschema(schema: Path, files: Iterable[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_manifests(manifests: Iterable[dict[str, Any]], directory: Path, prefix: str = "") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, manifest in enumerate(manifests):
        path = directory / f"{prefix}{i:02d}-{manifest['kind'].lower()}.yaml"
        path.write_text(to_yaml(manifest), encoding="utf-8")
        paths.append(path)
    return paths


def kind_of(path: Path) -> str:
    import yaml

    return str(yaml.safe_load(path.read_text(encoding="utf-8"))["kind"])


def validate(files: Iterable[Path], work: Path) -> list[str]:
    """Every file against its schema; the failures' output, empty when all pass."""
    by_kind: dict[str, list[Path]] = {}
    for path in files:
        by_kind.setdefault(kind_of(path), []).append(path)
    unknown = set(by_kind) - CORE_KINDS - set(CRD_SCHEMAS)
    assert not unknown, f"no schema for {unknown}"
    failures = []
    core = [p for kind in CORE_KINDS for p in by_kind.get(kind, [])]
    if core:
        result = kubernetes_validate(core)
        if result.returncode != 0:
            failures.append(result.stdout + result.stderr)
    for kind, schemas in CRD_SCHEMAS.items():
        if kind not in by_kind:
            continue
        for name in schemas:
            result = check_jsonschema(schema_file(name, work), by_kind[kind])
            if result.returncode != 0:
                failures.append(f"{name}: {result.stdout}{result.stderr}")
    return failures
