"""Model data collection: request/response payloads and script collectors, written locally.

Nothing here runs unless ``collect_model_data`` is on. The pieces:

* :mod:`.settings` - the ``collect_*`` settings (a base class of :class:`server.settings.Settings`);
* :mod:`.writer` - in the HTTP process: :class:`~.writer.PayloadCollector`, whose ``score()`` the
  ``/score`` handler calls once per request (a sampling test and a ``deque.append``: scoring
  never waits on disk) and whose ``frame()`` takes the COLLECT frames of the workers; one
  background thread drains the bounded queue, serialises records and writes them;
* :mod:`.records` - the record format (docs/collect.md), one JSON object per line;
* :mod:`.sinks` - JSON-lines segments rotated by time (``collect_rolling_rate``) and size, gzip
  (or Parquet, :mod:`.parquet`) on rotation, restrictive permissions, recovery after a crash;
* :mod:`.outbox` - in a worker: the thread-safe, never-blocking path from a script's
  ``collect()`` (:mod:`server.entry.monitoring`) to the HTTP process.

This package imports nothing heavy at import time: pyarrow only when Parquet is asked for, and
never in a worker.
"""
