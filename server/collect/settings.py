"""The model data collection part of the settings (docs/collect.md): a base class of
:class:`server.settings.Settings`, kept in a module of its own. The same rules as every setting:
``SCOREHOST_`` + the name in upper case, every field documented, the object frozen and free of I/O.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode

PAYLOADS = ("request", "response")
Payload = Literal["request", "response"]


def _all_payloads() -> list[Payload]:
    return ["request", "response"]


_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})


def _env(name: str, *azure: str) -> AliasChoices:
    """``SCOREHOST_<NAME>``, then the Azure ML names (as :func:`server.settings._env`)."""
    return AliasChoices("SCOREHOST_" + name.upper(), *azure)


class CollectSettings(BaseSettings):
    """What is collected, and where it is written. Its own model_config is Settings'."""

    collect_model_data: bool = Field(False, validation_alias=_env("collect_model_data", "AML_MODEL_DC_STORAGE_ENABLED"))
    """Model data collection (the AKS deployment's ``collect_model_data``; Azure ML
    ``AML_MODEL_DC_STORAGE_ENABLED``, where only a true word turns it on): ``/score`` request and
    response payloads (``collect_payloads``) and the records of the script's
    ``azureml.monitoring.ModelDataCollector`` / ``azureml.ai.monitoring.Collector`` are written under
    ``collect_dir``. Off: the script's collectors record nothing, and nothing is written."""

    collect_dir: str | None = Field(None, validation_alias=_env("collect_dir"))
    """Where collected data is written (created with mode 0700; files 0600). Default: ``modeldata``
    in the app root. The container images set a volume path, ``/var/lib/scorehost/modeldata``."""

    collect_payloads: Annotated[list[Payload], NoDecode] = Field(
        default_factory=_all_payloads, validation_alias=_env("collect_payloads")
    )
    """Which ``/score`` payloads the server records itself, comma-separated: ``request``,
    ``response``, both (default) or none (empty: only the script's collectors). A streamed reply's
    response is never recorded (its request is)."""

    collect_sampling_rate: float = Field(1.0, ge=0.0, le=1.0, validation_alias=_env("collect_sampling_rate"))
    """Fraction of requests recorded (the platform's ``sampling_rate``). Decided per request id, so
    a request's payloads and its script records are kept or left out together."""

    collect_embed_json: bool = Field(False, validation_alias=_env("collect_embed_json"))
    """How a request or response payload is kept in a record's ``data``: as a string, its text
    exactly as sent (default), or, when it is valid JSON, as that JSON value, as the platform's
    records have it. Embedding parses every JSON payload once to validate it: about twice the
    writer's CPU per request with the example model's 64-number payload."""

    collect_rolling_rate: Literal["minute", "hour", "day"] = Field(
        "hour", validation_alias=_env("collect_rolling_rate")
    )
    """A new file per collection every minute, hour (default) or day (the platform's
    ``rolling_rate``: Minute, Hour, Day); the folders follow it (``yyyy/MM/dd[/HH[/mm]]``)."""

    collect_max_record_bytes: int = Field(
        256 * 1024, ge=64, le=64 * 1024 * 1024, validation_alias=_env("collect_max_record_bytes")
    )
    """Largest payload kept in one record; a larger one is cut to this size, kept as text, and the
    record says ``"truncated": true`` with the original ``datasize``."""

    collect_max_file_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, le=64 * 1024**3, validation_alias=_env("collect_max_file_bytes")
    )
    """A file is also rotated when it grows past this size (before compression)."""

    collect_format: Literal["jsonl", "parquet"] = Field("jsonl", validation_alias=_env("collect_format"))
    """Finished files: ``jsonl`` (JSON lines, gzip-compressed on rotation) or ``parquet`` (needs
    pyarrow: the ``collect-parquet`` extra). The file being written is JSON lines either way."""

    collect_queue_size: int = Field(10_000, ge=1, le=10_000_000, validation_alias=_env("collect_queue_size"))
    """Records that may wait for the writer; past it (or ``collect_queue_bytes``) a record is dropped
    and counted, never waited for. A crash loses at most what is queued."""

    collect_queue_bytes: int = Field(
        64 * 1024 * 1024, ge=64 * 1024, le=16 * 1024**3, validation_alias=_env("collect_queue_bytes")
    )
    """Payload bytes that may wait for the writer (the memory bound of the queue)."""

    @field_validator("collect_model_data", mode="before")
    @classmethod
    def _collect_switch(cls, value: object) -> object:
        # An Azure ML switch: only a true word turns it on; anything else is off, never an error.
        return value.strip().lower() in _TRUE_WORDS if isinstance(value, str) else value

    @field_validator("collect_payloads", mode="before")
    @classmethod
    def _split_payloads(cls, value: object) -> object:
        if isinstance(value, str):
            return [p.strip().lower() for p in value.split(",") if p.strip()]
        return value

    @field_validator("collect_rolling_rate", "collect_format", mode="before")
    @classmethod
    def _lower_word(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def resolved_collect_dir(self, app_root: str) -> str:
        """``collect_dir``, relative paths taken from the app root; default ``<app root>/modeldata``."""
        return os.path.abspath(os.path.join(app_root, os.path.expanduser(self.collect_dir or "modeldata")))
