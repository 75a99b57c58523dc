"""HTTP process side: the bounded queue, and the one background thread that writes it.

The ``/score`` handler calls :meth:`PayloadCollector.score` after its response is known, and the
supervisor hands COLLECT frames from the workers to :meth:`PayloadCollector.frame`; both run on the
event loop, check the bounds, and append a tuple to a ``deque`` (no lock, no wake-up: the writer
polls it every :data:`DRAIN_EVERY_S`, or sooner when it is half full). Past ``collect_queue_size`` records or
``collect_queue_bytes`` payload bytes, a record is dropped and counted, with a warning at most once
a minute: scoring never waits on disk.

The writer thread serialises the records (:mod:`.records`) and appends each batch to its folder's
segment (:mod:`.sinks`). When writing fails (disk full, folder gone or unwritable), the batch is
dropped and counted, the cause is logged once, and every later batch tries again.

Counters for ``/metrics`` (not exported yet): :attr:`PayloadCollector.dropped` (total), and
:meth:`PayloadCollector.counters` by reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from server.collect import parquet
from server.collect.records import RecordMaker, ScoreEntry, host_tag
from server.collect.sampling import sampled
from server.collect.sinks import Finisher, Segments, makedirs
from server.settings import Settings
from server.workers.protocol import decode_collect

logger = logging.getLogger("scorehost.collect")

DRAIN_EVERY_S = 0.2  # large batches: few GIL hand-overs and one write per folder each
BATCH = 4096
WARN_EVERY_S = 60.0
LOG_CAUSE_EVERY_S = 3600.0
# A queued COLLECT frame (its size first, as a score entry's).
_FRAME = "f"


class PayloadCollector:
    """Payload and script records of one server: queue, writer thread, counters."""

    def __init__(self, settings: Settings, app_root: str) -> None:
        from server import __version__

        self.root = settings.resolved_collect_dir(app_root)
        self.rate = settings.collect_sampling_rate
        self.max_record = settings.collect_max_record_bytes
        self.max_entries = settings.collect_queue_size
        self.max_bytes = settings.collect_queue_bytes
        self.payloads = bool(settings.collect_payloads)
        self.rolling = settings.collect_rolling_rate
        self.queue: deque[Any] = deque()
        # Counters: each has one writing thread (the loop, or the writer), so no lock is needed.
        self.queued_bytes = 0  # loop: payload bytes ever queued
        self.drained_bytes = 0  # writer: payload bytes ever taken off the queue
        self.dropped_full = 0  # loop: queue full
        self.dropped_error = 0  # writer: the disk refused the batch
        self.dropped_worker = 0  # writer: reported by workers (their outbound buffer was full)
        self.written = 0  # writer: records written
        self._warned = -WARN_EVERY_S
        self._failing: str | None = None  # the cause of the current write failure
        self._logged: dict[str, float] = {}  # cause -> when it was last logged (monotonic)
        self._say_recovered = False
        self.parquet = settings.collect_format == "parquet"
        if self.parquet and not parquet.available():
            logger.error(
                "collect_format=parquet needs pyarrow (pip install 'scorehost[collect-parquet]'); "
                "finished files are gzip-compressed JSON lines instead"
            )
            self.parquet = False
        self.maker = RecordMaker(settings.model_dir, settings.service_name, __version__, settings.collect_payloads,
                                 settings.collect_embed_json)  # fmt: skip
        host = host_tag()
        self.finisher = Finisher(self.root, self.parquet, f"-{host}-")
        self.segments = Segments(self.root, self.rolling, settings.collect_max_file_bytes, self.finisher.submit)
        self.segments.tag = f"-{host}-{os.getpid()}"
        self._stop = False
        self._wake = threading.Event()  # set at shutdown, and when the queue is half full
        self._half = max(1, self.max_entries // 2)
        self._thread = threading.Thread(target=self._run, name="collect-writer", daemon=True)

    @classmethod
    def from_settings(cls, settings: Settings, cwd: str) -> PayloadCollector | None:
        if not settings.collect_model_data:
            return None
        return cls(settings, settings.resolved_app_root(cwd))

    # --- the event loop's side ------------------------------------------------------
    def score(
        self,
        method: str,
        ids: tuple[str, str | None, str | None],
        ctype: bytes | None,
        body: bytes | None,
        status: int,
        reply: bytes | None,
        reply_headers: list[tuple[bytes, bytes]] | None,
        started: float,
    ) -> None:
        """One ``/score`` request whose response is known (``reply`` None: streamed, or not kept)."""
        rid = ids[0]
        if not self.payloads or (self.rate < 1.0 and not sampled(rid, self.rate)):
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        body_size = len(body) if body is not None else 0
        reply_size = len(reply) if reply is not None else 0
        limit = self.max_record
        if body is not None and body_size > limit:
            body = body[:limit]
        if reply is not None and reply_size > limit:
            reply = reply[:limit]
        size = min(body_size, limit) + min(reply_size, limit)
        if len(self.queue) >= self.max_entries or self.queued_bytes - self.drained_bytes + size > self.max_bytes:
            self._drop()
            return
        self.queued_bytes += size
        entry: ScoreEntry = (size, time.time(), latency_ms, status, rid, ids[1], method, ctype, body, body_size,
                             reply, reply_size, reply_headers)  # fmt: skip
        self.queue.append(entry)
        if len(self.queue) == self._half:
            self._wake.set()

    def frame(self, frame: memoryview) -> None:
        """A COLLECT frame from a worker (decoded on the writer thread)."""
        size = len(frame)
        if len(self.queue) >= self.max_entries or self.queued_bytes - self.drained_bytes + size > self.max_bytes:
            self._drop()
            return
        self.queued_bytes += size
        self.queue.append((size, _FRAME, bytes(frame)))
        if len(self.queue) == self._half:
            self._wake.set()

    def _drop(self) -> None:
        self.dropped_full += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_S:
            self._warned = now
            logger.warning(
                "Model data collection cannot keep up: the queue is full (%d records or %d bytes); "
                "%d record(s) dropped so far",
                self.max_entries,
                self.max_bytes,
                self.dropped,
            )

    @property
    def dropped(self) -> int:
        """Records dropped for any reason (for ``/metrics``)."""
        return self.dropped_full + self.dropped_error + self.dropped_worker

    def counters(self) -> dict[str, int]:
        return {
            "written": self.written,
            "queued": len(self.queue),
            "dropped_queue_full": self.dropped_full,
            "dropped_write_error": self.dropped_error,
            "dropped_in_worker": self.dropped_worker,
        }

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        logger.info(
            "Model data collection: writing %s under %s (sampling %g, new files every %s)",
            "payloads and script records" if self.payloads else "script records",
            self.root,
            self.rate,
            self.rolling,
        )
        try:
            makedirs(self.root)
        except OSError as exc:
            self._failed(exc)
        self.finisher.start(recover=self._failing is None)
        self._thread.start()

    def close(self, timeout_s: float) -> None:
        """Write what is queued, close the files, finish them within ``timeout_s``; then log the totals."""
        deadline = time.monotonic() + max(1.0, timeout_s)
        self._stop = True
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.error("Model data collection: the writer did not finish within %.1f s", timeout_s)
        elif not self.finisher.stop(deadline):
            logger.warning("Model data collection: some files were left as JSON lines (finished at the next start)")
        logger.info(
            "Model data collection stopped: %d record(s) written under %s; dropped %d (queue full %d, "
            "write errors %d, in workers %d)",
            self.written,
            self.root,
            self.dropped,
            self.dropped_full,
            self.dropped_error,
            self.dropped_worker,
        )

    # --- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._wake.wait(DRAIN_EVERY_S)
            self._wake.clear()
            stopping = self._stop
            self.drain()
            try:
                self.segments.tick(time.time())
            except OSError as exc:
                self._failed(exc)
            if stopping:
                break
        try:
            self.segments.close_all()
        except OSError as exc:
            self._failed(exc)

    def drain(self) -> None:
        """Write everything queued now (the writer thread; tests call it directly)."""
        queue, maker, bucket, step = self.queue, self.maker, self.segments.bucket, self.segments.step
        # What is queued now, in large batches: entries that arrive meanwhile wait for the next
        # round (a loop until the queue is empty would chase them one by one, a write each).
        left = len(queue)
        while left:
            count = min(left, BATCH)
            left -= count
            groups: dict[tuple[str, int], list[bytes]] = {}
            taken = 0
            scores = []
            for _ in range(count):
                entry = queue.popleft()
                taken += entry[0]
                if entry[1] != _FRAME:
                    scores.append(entry)
                    continue
                try:
                    record = decode_collect(entry[2])
                    self.dropped_worker += record.dropped
                    folder, at, line = maker.script(record)
                    groups.setdefault((folder, bucket(at)), []).append(line)
                except Exception:  # a record we cannot serialise must not stop the writer
                    logger.exception("Model data collection: could not serialise a record; dropped")
                    self.dropped_error += 1
            failed = maker.score_batch(scores, step, groups)
            if failed:
                logger.error("Model data collection: could not serialise %d call(s): %r", failed, maker.last_error)
                self.dropped_error += failed
            self.drained_bytes += taken
            for (folder, period), lines in groups.items():
                try:
                    self.segments.write(folder, period, b"".join(lines))
                except OSError as exc:
                    self.dropped_error += len(lines)
                    self._failed(exc)
                else:
                    self.written += len(lines)
                    if self._failing is not None:
                        self._recovered()

    def _failed(self, exc: OSError) -> None:
        """A write failed: the cause is logged once (a full disk that frees up and fills again,
        as rotation compresses files, is not logged again within the hour)."""
        cause = f"{exc.filename or self.root}: {exc.strerror or exc}"
        now = time.monotonic()
        if self._failing is None and now - self._logged.get(cause, -LOG_CAUSE_EVERY_S) >= LOG_CAUSE_EVERY_S:
            self._logged[cause] = now
            self._say_recovered = True
            logger.error(
                "Model data collection cannot write (%s); records are dropped and counted until it can "
                "(scoring is not affected)",
                cause,
            )
        self._failing = cause

    def _recovered(self) -> None:
        if self._say_recovered:
            self._say_recovered = False
            logger.warning(
                "Model data collection is writing again (%d record(s) dropped so far because it could not)",
                self.dropped_error,
            )
        self._failing = None
