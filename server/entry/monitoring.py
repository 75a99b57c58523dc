"""``azureml.monitoring.ModelDataCollector`` and ``azureml.ai.monitoring.Collector``, written locally.

Entry scripts from the AKS era collect with ``ModelDataCollector(model_name, designation="inputs",
feature_names=[...]).collect(data)``; scripts for managed online endpoints with
``Collector(name="model_inputs").collect(df, context)``. When the real packages are not installed,
the worker makes both module paths resolve here (:mod:`server.entry.compat`), with the real
signatures and return values: ``collect()`` takes lists, numpy arrays and pandas DataFrames (pandas
and numpy are used only if the script already imported them) and returns the correlation
dictionary (``ModelDataCollector``, designation ``inputs``) or a correlation context (``Collector``).

A record is made in the calling thread (the data turned into JSON text, cut at
``collect_max_record_bytes``) and handed to the worker's event loop (:mod:`server.collect.outbox`),
which sends it to the HTTP process's writer: ``collect()`` never waits on disk or on the network,
and drops (and counts) a record rather than block. Differences from the real packages: with
``collect_model_data`` off, a collector records nothing and raises nothing (the real ``Collector``
calls ``on_error``, which raises by default); a dropped record is counted, never raised.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import orjson

from server import log, settings
from server.collect import outbox
from server.collect.sampling import sampled
from server.workers.protocol import Collected

__all__ = ["BasicCorrelationContext", "Collector", "CorrelationContext", "ModelDataCollector", "get_context"]

logger = logging.getLogger("scorehost.collect")

DESIGNATIONS = ("inputs", "predictions", "labels", "signals", "general")
NO_REQUEST_ID = "00000000-0000-0000-0000-000000000000"
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_said_off = False
# The correlation id of this thread's (or task's) last ModelDataCollector "inputs" record, with its
# request id: a "predictions" record of the same request carries it too.
_last_correlation: ContextVar[tuple[str, str]] = ContextVar("scorehost_mdc_correlation", default=("", ""))


def _limits() -> tuple[float, int]:
    s = settings.current()
    return s.collect_sampling_rate, s.collect_max_record_bytes


def _on() -> bool:
    """Collection is on (the worker got the server's settings); records flow once the outbox is there."""
    return settings.current().collect_model_data


def _say_off(what: str) -> None:
    global _said_off
    if not _said_off:
        _said_off = True
        logger.info(
            "Model data collection is off (collect_model_data / AML_MODEL_DC_STORAGE_ENABLED): %s records nothing", what
        )


def _type_name(data: Any) -> str:
    cls = type(data)
    return f"python.{cls.__qualname__}" if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=_OPTIONS)


def to_json(data: Any, feature_names: list[str] | None = None, rows: bool = False) -> bytes | None:
    """JSON text for what ``collect()`` takes; None for a type it does not. ``rows``: tabular, as
    ModelDataCollector sees it (a flat list is one row; with ``feature_names``, rows become objects)."""
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(data, pd.DataFrame):
        text: str = data.to_json(orient="records", date_format="iso")
        return text.encode()
    np = sys.modules.get("numpy")
    if np is not None and isinstance(data, np.ndarray):
        data = data.tolist()
    elif isinstance(data, tuple):
        data = list(data)
    elif isinstance(data, dict) and not rows:
        return _json(data)
    if not isinstance(data, list):
        return None
    if rows:
        if data and not isinstance(data[0], (list, tuple, dict)):
            data = [data]
        if feature_names:
            n = len(feature_names)
            data = [dict(zip(feature_names, r, strict=False)) if isinstance(r, (list, tuple)) and len(r) == n else r
                    for r in data]  # fmt: skip
    return _json(data)


def _send(record: Collected, text: bytes, limit: int) -> bool:
    box = outbox.current()
    if box is None:
        return False
    record.size = len(text)
    record.truncated = len(text) > limit
    record.data = text[:limit] if record.truncated else text
    return box.put(record)


def _keep(request_id: str | None, rate: float) -> bool:
    """Sampling: by request id, as the server samples payloads (outside a request: at random)."""
    if request_id is None:
        return rate >= 1.0 or random.random() < rate
    return sampled(request_id, rate)


# --- azureml.ai.monitoring ------------------------------------------------------------------
class CorrelationContext:
    """What ``Collector.collect`` returns: pass it to the next ``collect`` to correlate records."""

    def get_id(self) -> str:
        return ""

    def __str__(self) -> str:
        return self.get_id()

    def __repr__(self) -> str:
        return self.__str__()


class BasicCorrelationContext(CorrelationContext):
    def __init__(self, id: str | None = None, timestamp: int | None = None, headers: dict[str, Any] | None = None):
        self.id = id or str(uuid.uuid4())
        self.timestamp = timestamp or int(time.time())
        self.headers = headers or {}

    def get_id(self) -> str:
        return self.id

    def get_timestamp(self) -> int:
        return self.timestamp

    def get_headers(self) -> dict[str, Any]:
        return self.headers


def get_context() -> CorrelationContext:
    return BasicCorrelationContext()


class Collector:
    """``azureml.ai.monitoring.Collector``: custom logging of a named collection."""

    def __init__(self, *, name: str, on_error: Callable[[Exception], Any] | None = None) -> None:
        if not name:
            raise ValueError("collection name is not provided")
        self.name = name
        self.on_error = on_error
        if not _on():
            _say_off(f"Collector(name={name!r})")

    def collect(self, data: Any, correlation_context: CorrelationContext | None = None) -> CorrelationContext:
        """Record ``data`` (a pandas DataFrame; lists, dicts and numpy arrays too); returns the
        context to pass to the next ``collect`` of the same request."""
        context = correlation_context if correlation_context is not None else get_context()
        if outbox.current() is None:
            return context
        rate, limit = _limits()
        rid = log.request_id_var.get()
        if not _keep(rid, rate):
            return context
        text = to_json(data)
        if text is None:
            error = TypeError(f"data type ({type(data).__name__}) not supported, supported types: pandas.DataFrame")
            if self.on_error is None:
                raise error
            self.on_error(error)
            return context
        record = Collected(self.name, f"azureml.inference.{self.name}", b"", time.time(), context.get_id(),
                           rid or "", data_type=_type_name(data))  # fmt: skip
        _send(record, text, limit)
        return context


# --- azureml.monitoring -------------------------------------------------------------------------
class ModelDataCollector:
    """``azureml.monitoring.ModelDataCollector``: tabular data of one model and designation."""

    AML_DC_CORRELATION_HEADER = "$aml_dc_correlation_id"
    AML_DC_SCORING_TIMESTAMP_HEADER = "$aml_dc_scoring_timestamp"
    AML_DC_BOUNDARY_HEADER = "$aml_dc_boundary"
    AML_WORKSPACE_HEADER = "$aml_workspace"
    AML_SERVICE_NAME_HEADER = "$aml_service_name"
    AML_MODEL_NAME_HEADER = "$aml_model_name"
    AML_MODEL_VERSION_HEADER = "$aml_model_version"
    AML_REQUEST_ID_HEADER = "$aml_request_id"

    def __init__(
        self,
        model_name: str,
        designation: str = "default",
        feature_names: list[str] | None = None,
        workspace: str = "default/default/default",
        webservice_name: str = "default",
        model_version: str = "default",
        collection_name: str = "default",
    ) -> None:
        self.model_name = model_name
        self.feature_names = list(feature_names) if feature_names is not None else None
        self.workspace = workspace.lower()
        self.service_name = webservice_name
        self.model_version = model_version
        self.collection_name = collection_name
        self.designation = "general" if designation == "default" else designation
        self.enabled = _on()
        if self.designation not in DESIGNATIONS:
            supported = ", ".join(map(repr, DESIGNATIONS))
            logger.warning(
                "Incorrect designation value %r. Supported values: 'default', %s; this ModelDataCollector "
                "records nothing",
                designation,
                supported,
            )
            self.enabled = False
        elif not self.enabled:
            _say_off(f"ModelDataCollector({model_name!r}, {designation!r})")

    def _correlations(self, user_correlation_id: str) -> dict[str, Any]:
        generated = str(uuid.uuid4())
        return {
            self.AML_DC_SCORING_TIMESTAMP_HEADER: datetime.datetime.now(datetime.UTC).replace(tzinfo=None).isoformat(),
            self.AML_REQUEST_ID_HEADER: log.request_id_var.get() or NO_REQUEST_ID,
            self.AML_DC_CORRELATION_HEADER: f"{user_correlation_id}-{generated}" if user_correlation_id else generated,
            self.AML_DC_BOUNDARY_HEADER: 60 if os.environ.get("AML_MODEL_DC_BOUNDARY") == "hour" else 60 * 24,
            self.AML_WORKSPACE_HEADER: self.workspace,
            self.AML_SERVICE_NAME_HEADER: self.service_name,
            self.AML_MODEL_NAME_HEADER: self.model_name,
            self.AML_MODEL_VERSION_HEADER: self.model_version,
        }

    def collect(self, input_data: Any, user_correlation_id: str = "") -> dict[str, Any] | None:
        """Record ``input_data`` (a list, numpy array or pandas DataFrame). Returns the correlation
        headers and values for designation ``inputs`` (pass them to ``add_correlations``), else None."""
        if not self.enabled:
            return None
        rid = log.request_id_var.get()
        correlations = self._correlations(user_correlation_id) if self.designation == "inputs" else None
        if correlations is not None:
            correlation = correlations[self.AML_DC_CORRELATION_HEADER]
            _last_correlation.set((rid or "", correlation))
        else:
            last_rid, last = _last_correlation.get()
            correlation = user_correlation_id or (last if rid is not None and last_rid == rid else "")
        rate, limit = _limits()
        if not _keep(rid, rate):
            return correlations
        text = to_json(input_data, self.feature_names, rows=True)
        if text is None:
            logger.warning("collect failed: input data must be list, numpy array or pandas dataframe")
            return None
        version = "" if self.model_version == "default" else self.model_version
        record = Collected(self.designation, f"azureml.monitoring.{self.designation}", b"", time.time(), correlation,
                           rid or "", self.model_name, version, _type_name(input_data))  # fmt: skip
        _send(record, text, limit)
        return correlations

    def add_correlations(self, input_data: Any, correlations: dict[str, Any] | None) -> Any:
        """``input_data`` with the correlation values (from ``collect``) appended as columns."""
        if correlations is None:
            return input_data
        names = [self.AML_DC_CORRELATION_HEADER, self.AML_DC_SCORING_TIMESTAMP_HEADER, self.AML_DC_BOUNDARY_HEADER,
                 self.AML_WORKSPACE_HEADER, self.AML_SERVICE_NAME_HEADER, self.AML_MODEL_NAME_HEADER,
                 self.AML_MODEL_VERSION_HEADER, self.AML_REQUEST_ID_HEADER]  # fmt: skip
        values = [correlations.get(n) for n in names]
        if isinstance(input_data, list):
            return input_data + values
        np = sys.modules.get("numpy")
        if np is not None and isinstance(input_data, np.ndarray):
            table = np.array([input_data]) if input_data.ndim == 1 else input_data
            extra = np.repeat(np.array([values], dtype=object), table.shape[0], axis=0)
            return np.append(table.astype(object), extra, axis=1)
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(input_data, pd.DataFrame):
            frame = input_data.copy()
            for name, value in zip(names, values, strict=True):
                frame[name] = value
            return frame
        logger.warning("add_correlations: input data must be list, numpy array or pandas dataframe")
        return input_data
