"""Logging set-up shared by the HTTP process and the workers.

Text lines follow the reference server's format, with the request id added when a
line belongs to a request:

    2026-11-21 04:39:10,772 I [4901] scorehost.access - POST /score 200 0.540ms [rid 1f0c...]

``log_format=json`` writes one JSON object per line instead. The handler does not
flush after every record: at ten thousand requests a second a flush per access line
would be a system call per request. It flushes at least every 0.2 s, at once for
warnings and errors, and at exit.
"""

from __future__ import annotations

import atexit
import contextvars
import io
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import orjson

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_FLUSH_EVERY_S = 0.2
_TEXT_FORMAT = "%(asctime)s %(levelname).1s [%(process)d] %(name)s - %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [rid {rid}]" if rid else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class DeferredFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that batches writes; see the module docstring."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._dirty = False
        self._flusher = threading.Thread(target=self._flush_loop, name="log-flush", daemon=True)
        self._flusher.start()
        atexit.register(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(msg + "\n")
                self._dirty = True
                if record.levelno >= logging.WARNING:
                    self.stream.flush()
                    self._dirty = False
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.stream and hasattr(self.stream, "flush"):
                try:
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
            self._dirty = False

    def _flush_loop(self) -> None:
        while True:
            time.sleep(_FLUSH_EVERY_S)
            if self._dirty:
                self.flush()


def configure(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Install our handler on the root logger (idempotent per process)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, DeferredFlushHandler):
            root.removeHandler(handler)
    handler = DeferredFlushHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own loggers propagate to ours; its access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


class PrintToLog(io.TextIOBase):
    """Stands in for ``sys.stdout`` in a worker: each printed line becomes a log record
    of ``scorehost.print``, so it carries the request id of the call that printed it."""

    def __init__(self, logger_name: str = "scorehost.print", level: int = logging.INFO) -> None:
        self._logger = logging.getLogger(logger_name)
        self._level = level
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        pending: str = getattr(self._local, "pending", "") + text
        *lines, rest = pending.split("\n")
        for line in lines:
            if line:
                self._logger.log(self._level, "%s", line)
        self._local.pending = rest
        return len(text)

    def flush(self) -> None:
        rest = getattr(self._local, "pending", "")
        if rest:
            self._local.pending = ""
            self._logger.log(self._level, "%s", rest)


class AccessLog:
    """The per-request access line, written without the ``logging`` machinery.

    One line per request is the hottest log call there is: building a LogRecord,
    formatting its time and walking the handlers cost about a third of a request on
    one core. This writes the same line (same format, same stream, same batched
    flush) from a cached timestamp and one ``%`` format.
    """

    def __init__(self, fmt: str = "text", name: str = "scorehost.access") -> None:
        self.json = fmt == "json"
        self.name = name
        self.pid = os.getpid()
        self._second = -1
        self._stamp = ""
        self._handler = next((h for h in logging.getLogger().handlers if isinstance(h, DeferredFlushHandler)), None)

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return "%s,%03d" % (self._stamp, int((now - second) * 1000))  # noqa: UP031 - hot path

    def write(self, method: str, path: str, status: int, ms: float, size: int, request_id: str) -> None:
        if self.json:
            line = orjson.dumps(
                {
                    "time": self._now(),
                    "level": "INFO",
                    "pid": self.pid,
                    "logger": self.name,
                    "message": f"{method} {path} {status} {ms:.3f}ms {size}",
                    "request_id": request_id,
                }
            ).decode()
        else:
            line = "%s I [%d] %s - %s %s %d %.3fms %d [rid %s]" % (  # noqa: UP031 - hot path
                self._now(),
                self.pid,
                self.name,
                method,
                path,
                status,
                ms,
                size,
                request_id,
            )
        handler = self._handler
        if handler is None:
            logging.getLogger(self.name).info("%s", line)
            return
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(line + "\n")
            handler._dirty = True
