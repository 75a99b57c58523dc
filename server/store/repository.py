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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from annotated_types import Ge
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from server.errors import ConfigError, DiscoveryError
from server.settings import Settings
from server.store.sessions import GRAPH_LEVELS, ProviderSpec, TensorSpec, parse_device
from server.validation import bounded_like, describe

# ConfigError and DiscoveryError live in server.errors; importing them from here still works.
__all__ = [
    "CONFIG_SUFFIX",
    "MODEL_SUFFIX",
    "ConfigError",
    "DiscoveryError",
    "ModelConfig",
    "ModelSource",
    "WarmupTensor",
    "discover",
    "parse_config",
    "read_config",
]

CONFIG_SUFFIX = ".scorehost.json"
MODEL_SUFFIX = ".onnx"
_MAX_DEPTH = 8  # bounds the walk; a symlink loop cannot make it run forever

# Keys refused on purpose, with the reason (extra="forbid" refuses them; this says why).
_NOT_SUPPORTED = {
    "max_batch_time_ms": "not a scorehost key; use max_queue_delay_us (microseconds)",
    "max_queue_delay_microseconds": "not a scorehost key; use max_queue_delay_us",
    "preferred_batch_size": "not a scorehost key; use preferred_batch_sizes",
}


class WarmupTensor(BaseModel):
    """One warm-up input: its shape (dynamic dims 1 if None) and optional flat data (zeros if None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: tuple[Annotated[int, Strict(), Ge(0)], ...] | None = None
    data: list[Any] | None = None


def _provider(item: object) -> object:
    if isinstance(item, str):
        return item
    if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], dict):
        return (item[0], {str(k): str(v) for k, v in item[1].items()})
    raise ValueError('each provider must be a name or ["Name", {options}]')


# A provider name, or ["Name", {options}] with the options' values as strings.
Provider = Annotated[ProviderSpec, BeforeValidator(_provider)]


def _warmup(value: object) -> object:
    if value is False or value is None:
        return ()
    if value is True:
        return ({},)  # one request, every input zeros
    if not isinstance(value, list):
        raise ValueError("must be true, false or a list of {input: {shape, data}} objects")
    return value


class ModelConfig(BaseModel):
    """What ``<model>.scorehost.json`` may set. Every key is optional; unknown keys are errors.

    ``{"device": "cuda:1", "graph_optimization_level": "all", "gpu_mem_limit_mb": 2048,
    "providers": ["CUDAExecutionProvider"], "compact": false, "warmup": true,
    "max_batch_size": 32, "max_queue_delay_us": 500, "preferred_batch_sizes": [8, 16]}``

    There is no per-model thread count: every session shares the process's pool
    (``ort_threads``), and onnxruntime refuses per-session pools once that exists.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = None  # None: the store's device setting
    providers: Annotated[tuple[Provider, ...], Field(min_length=1)] | None = None  # None: from the device
    graph_optimization_level: str = "all"
    gpu_mem_limit_mb: Annotated[int, Strict(), bounded_like(Settings, "gpu_mem_limit_mb")] | None = None
    compact: StrictBool | None = None  # None: the store's model_compact setting
    # Dynamic batching (server.store.batcher); None: the settings of the same name.
    max_batch_size: Annotated[int, Strict(), bounded_like(Settings, "max_batch_size")] | None = None
    max_queue_delay_us: Annotated[int, Strict(), bounded_like(Settings, "max_queue_delay_us")] | None = None
    preferred_batch_sizes: tuple[Annotated[int, Strict(), Ge(1)], ...] | None = None
    # Each request maps input names to tensors; inputs left out get zeros.
    warmup: Annotated[tuple[Mapping[str, WarmupTensor], ...], BeforeValidator(_warmup)] = ()

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_device(value)
            except ValueError:
                raise ValueError("must be auto, cpu, cuda or cuda:N") from None
        return value

    @model_validator(mode="after")
    def _check_preferred(self) -> ModelConfig:
        top = self.max_batch_size
        if top is not None and self.preferred_batch_sizes and max(self.preferred_batch_sizes) > top:
            raise ValueError(f"preferred_batch_sizes must not exceed max_batch_size ({top})")
        return self

    @field_validator("graph_optimization_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value not in GRAPH_LEVELS:
            raise ValueError(f"must be one of {', '.join(GRAPH_LEVELS)}")
        return value


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
    except (OSError, ConfigError) as exc:
        return ModelSource(name, version, path, error=str(exc))
    return ModelSource(name, version, path, config, size_bytes=size)


# --- the config file -----------------------------------------------------------------
def read_config(path: Path) -> ModelConfig:
    """Parse ``<model>.scorehost.json``; defaults if it does not exist. ConfigError names the problem."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ModelConfig()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"config {path.name}: invalid JSON ({exc})") from exc
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"config {path.name}: {exc}") from exc


def parse_config(data: object) -> ModelConfig:
    """Validate a decoded config object; unknown keys are errors, so typos do not pass silently."""
    if not isinstance(data, dict):
        raise ConfigError("must be a JSON object")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, ModelConfig, hints=_NOT_SUPPORTED)) from exc


def warmup_feed(inputs: Sequence[TensorSpec], request: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs of one warm-up request: given data, else zeros (empty strings for BYTES)."""
    feed: dict[str, Any] = {}
    unknown = set(request) - {spec.name for spec in inputs}
    if unknown:
        raise ValueError(f"warm-up names unknown input(s) {sorted(unknown)}")
    for spec in inputs:
        tensor = request.get(spec.name)
        shape = tensor.shape if tensor is not None and tensor.shape is not None else None
        if shape is None:
            shape = tuple(d if d >= 0 else 1 for d in spec.shape)
        if tensor is not None and tensor.data is not None:
            feed[spec.name] = np.asarray(tensor.data, dtype=spec.dtype).reshape(shape)
        elif spec.datatype == "BYTES":
            feed[spec.name] = np.full(shape, "", dtype=object)
        else:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feed
