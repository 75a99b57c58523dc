"""Parquet files from finished JSON-lines segments (``collect_format=parquet``; needs pyarrow, the
``collect-parquet`` extra). Imported by the finisher thread only, when a segment is finished.

One column per record field (:data:`server.collect.records.FIELDS`). ``time`` is a UTC timestamp
(milliseconds); ``data`` is text: a payload's text as sent, or a collector's rows (or an embedded
JSON payload) as JSON text (DuckDB: ``data::JSON``; pandas: ``json.loads``), since payloads differ
in shape from record to record.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import orjson

from server.collect.records import FIELDS

ROWS_PER_GROUP = 10_000
_INTS = {"datasize": "int64", "status": "int32"}
_BOOLS = {"truncated"}
_FLOATS = {"latency_ms"}


def available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _schema() -> Any:
    import pyarrow as pa

    fields = []
    for name in FIELDS:
        if name == "time":
            kind = pa.timestamp("ms", tz="UTC")
        elif name in _INTS:
            kind = pa.int64() if _INTS[name] == "int64" else pa.int32()
        elif name in _BOOLS:
            kind = pa.bool_()
        elif name in _FLOATS:
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _columns(lines: list[bytes]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in FIELDS}
    for line in lines:
        record = orjson.loads(line)
        for name in FIELDS:
            value = record.get(name)
            if name == "data":  # a payload's text as it is; collected rows as JSON text
                value = value if value is None or isinstance(value, str) else orjson.dumps(value).decode()
            elif name == "time" and value is not None:
                value = int(datetime.fromisoformat(value).timestamp() * 1000)
            columns[name].append(value)
    return columns


def convert(path: str, out: str) -> None:
    """Write the records of the JSON-lines file ``path`` to the Parquet file ``out`` (mode 0600)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as raw:
        with open(path, "rb") as src, pq.ParquetWriter(raw, schema, compression="zstd") as writer:
            batch: list[bytes] = []
            for line in src:
                if line.strip():
                    batch.append(line)
                if len(batch) >= ROWS_PER_GROUP:
                    writer.write_table(pa.Table.from_pydict(_columns(batch), schema=schema))
                    batch = []
            if batch:
                writer.write_table(pa.Table.from_pydict(_columns(batch), schema=schema))
        raw.flush()
        os.fsync(raw.fileno())
