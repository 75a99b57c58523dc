"""The dynamic-batching part of the settings: a base class of :class:`server.settings.Settings`,
kept in a module of its own (as :mod:`server.security_settings`). The same rules as every setting:
``SCOREHOST_`` + the name in upper case, every field documented, the object frozen and free of I/O.

These are the defaults of every ONNX model; a model's ``<stem>.scorehost.json`` overrides them
(:class:`server.store.repository.ModelConfig`, bounded like these fields). How batching works:
:mod:`server.store.batcher` and docs/models.md.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings

MAX_BATCH_SIZE = 65_536
MAX_QUEUE_DELAY_US = 1_000_000


def _env(name: str) -> AliasChoices:
    """``SCOREHOST_<NAME>`` (as :func:`server.settings._env`; these settings have no Azure ML name)."""
    return AliasChoices("SCOREHOST_" + name.upper())


class BatchSettings(BaseSettings):
    """Dynamic batching of ONNX models. Its own model_config is Settings'."""

    max_batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE, validation_alias=_env("max_batch_size"))
    """Dynamic batching for every ONNX model: the most rows (first-dimension entries) that calls for
    one model may add up to in one ``session.run``. 1 (default): off. Only models whose inputs and
    outputs all have a dynamic first dimension are batched, and only where rows are independent of
    each other (a model config can turn it off again with ``"max_batch_size": 1``)."""

    max_queue_delay_us: int = Field(0, ge=0, le=MAX_QUEUE_DELAY_US, validation_alias=_env("max_queue_delay_us"))
    """With batching on: how long calls that already wait together may wait for more before they
    run (µs). A call that finds nothing else waiting never waits. 0 (default): batch only what is
    already waiting (calls that arrived together or while the previous batch ran)."""
