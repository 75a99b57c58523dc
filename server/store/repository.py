"""Finding models on disk: the directory layouts and the per-model config file.

    discover(model_dir) -> [ModelSource(name, version, path, config, error), ...]

Layouts, all under ``model_dir`` (``AZUREML_MODEL_DIR``)::

    model.onnx                      model_dir itself is a file: one model "model", version "1"
    <name>.onnx                     a model <name>, version "1"
    <name>/<version>/.../*.onnx     the Azure ML layout; <version> is all digits
    <name>/.../*.onnx               a model <name>, version "1"
    .../<name>/<version>/ (root)    Azure ML single-model deployment: model_dir ends in
                                    <name>/<digits> and holds exactly one .onnx file

Several .onnx files for one (name, version) are ambiguous unless one is called
``model.onnx``. Hidden files and folders (``.git``, ``.ipynb_checkpoints``) are skipped.

The optional config file sits beside the .onnx file and is named after it:
``model.onnx`` -> ``model.scorehost.json``. A problem with a model (ambiguity, a bad
config) is recorded on its ModelSource and reported as that model's load failure;
only an unusable ``model_dir`` raises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from server.store.sessions import GRAPH_LEVELS, ProviderSpec, parse_device

CONFIG_SUFFIX = ".scorehost.json"
MODEL_SUFFIX = ".onnx"
_MAX_DEPTH = 8  # bounds the walk; a symlink loop cannot make it run forever


class DiscoveryError(Exception):
    """model_dir is missing or unusable."""


@dataclass(frozen=True, slots=True)
class WarmupTensor:
    """One warm-up input: its shape (dynamic dims 1 if None) and optional flat data (zeros if None)."""

    shape: tuple[int, ...] | None = None
    data: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What ``<model>.scorehost.json`` may set. Every key is optional.

    ``{"device": "cuda:1", "graph_optimization_level": "all", "gpu_mem_limit_mb": 2048,
    "providers": ["CUDAExecutionProvider"], "compact": false, "warmup": true,
    "max_batch_size": 0, "max_batch_time_ms": 0}``

    There is no per-model thread count: every session shares the process's pool
    (``ort_threads``), and onnxruntime refuses per-session pools once that exists.
    """

    device: str | None = None
    providers: tuple[ProviderSpec, ...] | None = None
    graph_optimization_level: str = "all"
    gpu_mem_limit_mb: int | None = None
    compact: bool | None = None  # None: the store's model_compact setting
    # Each request maps input names to tensors; inputs left out get zeros.
    warmup: tuple[Mapping[str, WarmupTensor], ...] = ()
    # Reserved for request batching: validated and kept, not yet acted on.
    max_batch_size: int = 0
    max_batch_time_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelSource:
    """A model found on disk. ``error`` set: it cannot be loaded, and this is why."""

    name: str
    version: str
    path: Path | None
    config: ModelConfig = field(default_factory=ModelConfig)
    error: str | None = None
    size_bytes: int = 0

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"


# --- discovery ---------------------------------------------------------------------
def discover(model_dir: str | os.PathLike[str]) -> list[ModelSource]:
    """All models under ``model_dir``, sorted by name then version."""
    root = Path(model_dir).expanduser()
    if root.is_file():
        if root.suffix != MODEL_SUFFIX:
            raise DiscoveryError(f"model_dir {str(root)!r} is a file but not an {MODEL_SUFFIX} model")
        return [_source(root.stem, "1", [root], root.parent)]
    if not root.is_dir():
        raise DiscoveryError(f"model_dir {str(root)!r} does not exist or is not a directory")
    files = _model_files(root)
    if len(files) == 1 and root.name.isdigit() and root.parent.name:
        # Azure ML's single-model deployment points AZUREML_MODEL_DIR at <name>/<version>.
        return [_source(root.parent.name, root.name, files, root)]
    groups: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        parts = path.relative_to(root).parts
        if len(parts) == 1:
            key = (path.stem, "1")
        elif len(parts) >= 3 and parts[1].isdigit():
            key = (parts[0], parts[1])
        else:
            key = (parts[0], "1")
        groups.setdefault(key, []).append(path)
    sources = [_source(name, version, paths, root) for (name, version), paths in groups.items()]
    sources.sort(key=lambda s: (s.name, _version_order(s.version)))
    return sources


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def _model_files(root: Path) -> list[Path]:
    found: list[Path] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        depth = len(Path(dirpath).parts) - base_depth
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth < _MAX_DEPTH else []
        found.extend(Path(dirpath, f) for f in sorted(filenames) if f.endswith(MODEL_SUFFIX) and not f.startswith("."))
    return found


def _source(name: str, version: str, paths: list[Path], root: Path) -> ModelSource:
    if len(paths) > 1:
        named = [p for p in paths if p.name == "model" + MODEL_SUFFIX]
        if len(named) != 1:
            listed = ", ".join(str(p.relative_to(root)) for p in paths)
            return ModelSource(
                name,
                version,
                None,
                error=f"several .onnx files for one model ({listed}); keep one, or name one model.onnx",
            )
        paths = named
    path = paths[0]
    try:
        size = path.stat().st_size
        config = read_config(path.with_name(path.stem + CONFIG_SUFFIX))
    except (OSError, ValueError) as exc:
        return ModelSource(name, version, path, error=str(exc))
    return ModelSource(name, version, path, config, size_bytes=size)


# --- the config file -----------------------------------------------------------------
def read_config(path: Path) -> ModelConfig:
    """Parse ``<model>.scorehost.json``; defaults if it does not exist. ValueError names the problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ModelConfig()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"config {path.name}: invalid JSON ({exc})") from exc
    try:
        return parse_config(data)
    except ValueError as exc:
        raise ValueError(f"config {path.name}: {exc}") from exc


_KEYS = {
    "device",
    "providers",
    "graph_optimization_level",
    "gpu_mem_limit_mb",
    "compact",
    "warmup",
    "max_batch_size",
    "max_batch_time_ms",
}


def parse_config(data: object) -> ModelConfig:
    """Validate a decoded config object; unknown keys are errors, so typos do not pass silently."""
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; known: {sorted(_KEYS)}")
    device = data.get("device")
    if device is not None:
        if not isinstance(device, str):
            raise ValueError("device must be a string")
        parse_device(device)
    level = data.get("graph_optimization_level", "all")
    if level not in GRAPH_LEVELS:
        raise ValueError(f"graph_optimization_level must be one of {list(GRAPH_LEVELS)}")
    gpu_mem = data.get("gpu_mem_limit_mb")
    if gpu_mem is not None:
        gpu_mem = _int(data, "gpu_mem_limit_mb")
    compact = data.get("compact")
    if compact is not None and not isinstance(compact, bool):
        raise ValueError("compact must be true or false")
    time_ms = data.get("max_batch_time_ms", 0)
    if isinstance(time_ms, bool) or not isinstance(time_ms, int | float) or time_ms < 0:
        raise ValueError("max_batch_time_ms must be a number >= 0")
    return ModelConfig(
        device=device,
        providers=_providers(data.get("providers")),
        graph_optimization_level=level,
        gpu_mem_limit_mb=gpu_mem,
        compact=compact,
        warmup=_warmup(data.get("warmup", False)),
        max_batch_size=_int(data, "max_batch_size"),
        max_batch_time_ms=float(time_ms),
    )


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be an integer >= 0")
    return value


def _providers(value: object) -> tuple[ProviderSpec, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValueError("providers must be a non-empty list")
    out: list[ProviderSpec] = []
    for item in value:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
            out.append((item[0], {str(k): str(v) for k, v in item[1].items()}))
        else:
            raise ValueError('each provider must be a name or ["Name", {options}]')
    return tuple(out)


def _warmup(value: object) -> tuple[Mapping[str, WarmupTensor], ...]:
    if value is False or value is None:
        return ()
    if value is True:
        return ({},)
    if not isinstance(value, list):
        raise ValueError("warmup must be true, false or a list of {input: {shape, data}} objects")
    requests: list[Mapping[str, WarmupTensor]] = []
    for request in value:
        if not isinstance(request, dict):
            raise ValueError("each warmup request must be an object of input name -> {shape, data}")
        tensors: dict[str, WarmupTensor] = {}
        for name, spec in request.items():
            if not isinstance(spec, dict) or set(spec) - {"shape", "data"}:
                raise ValueError(f"warmup input {name!r} must be an object with shape and/or data")
            shape = spec.get("shape")
            if shape is not None and not (
                isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            ):
                raise ValueError(f"warmup input {name!r}: shape must be a list of integers >= 0")
            data = spec.get("data")
            if data is not None and not isinstance(data, list):
                raise ValueError(f"warmup input {name!r}: data must be a list")
            tensors[name] = WarmupTensor(None if shape is None else tuple(shape), data)
        requests.append(tensors)
    return tuple(requests)
