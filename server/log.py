"""Logging set-up shared by the HTTP process and the workers.

Text lines follow the reference server's format, with the request id added when a
line belongs to a request:

    2026-11-21 04:39:10,772 I [4901] scorehost.access - POST /score 200 0.540ms [rid 1f0c...]

``log_format=json`` writes one JSON object per line instead. The handler does not
write every record at once: at ten thousand requests a second a write per access
line would be a system call per request. In the HTTP process it holds lines and
writes them at least every 0.2 s (or once 64 KiB are held), at once for warnings and
errors, and at exit; workers write each line at once and flush on that clock.

``log_names=azmlinfsrv`` (the ``azmlinfsrv`` command) writes what the reference writes,
so existing log queries keep matching: its logger names (``azmlinfsrv`` for the server
and the per-request line, ``azmlinfsrv.print``, ``azmlinfsrv.user_script``), UTC times,
and no request id appended::

    2026-11-21 04:39:10,772 I [4901] azmlinfsrv - POST /score 200 0.540ms 55

A ``logging.json`` in the app root or next to the entry script is applied on top with
``logging.config.dictConfig`` (:func:`apply_logging_file`), in every process.
"""

from __future__ import annotations

import atexit
import contextvars
import importlib
import io
import json
import logging
import logging.config
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TextIO

import orjson

from server.errors import LoggingFileError

if TYPE_CHECKING:
    from server.settings import Settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# With tracing on (server.tracing): the current span's (trace id, span id), for every line.
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def set_trace_ids(source: Callable[[], tuple[str, str] | None] | None) -> None:
    """Stamp log lines with the current span's ids (None: tracing is off, nothing is added)."""
    global _trace_ids
    _trace_ids = source


_FLUSH_EVERY_S = 0.2
_MAX_HELD = 64 * 1024  # characters held before a write, whatever the clock says
_TEXT_FORMAT = "%(asctime)s %(levelname).1s [%(process)d] %(name)s - %(message)s"
LOGGING_FILE = "logging.json"

Names = Literal["scorehost", "azmlinfsrv"]
Role = Literal["server", "access", "print", "user_script"]
# The loggers a line is written under, per naming mode. The reference writes its
# per-request line under "azmlinfsrv" itself (routes.py), not under an ".access" child.
LOGGER_NAMES: dict[str, dict[str, str]] = {
    "scorehost": {
        "server": "scorehost",
        "access": "scorehost.access",
        "print": "scorehost.print",
        "user_script": "scorehost.entry",
    },
    "azmlinfsrv": {
        "server": "azmlinfsrv",
        "access": "azmlinfsrv",
        "print": "azmlinfsrv.print",
        "user_script": "azmlinfsrv.user_script",
    },
}
# In azmlinfsrv mode, lines of our own loggers are shown under the reference's names.
_AZMLINFSRV_DISPLAY = {
    "scorehost": "azmlinfsrv",
    "scorehost.access": "azmlinfsrv",
    "scorehost.http": "azmlinfsrv",
    "scorehost.entry": "azmlinfsrv.user_script",
    "scorehost.print": "azmlinfsrv.print",
    "scorehost.swagger": "azmlinfsrv.swagger",
}

_names: str = "scorehost"
_logging_file: str | None = None  # the logging.json applied in this process, if any


def naming() -> str:
    """The naming mode of this process: ``scorehost`` or ``azmlinfsrv``."""
    return _names


def logger_name(role: Role) -> str:
    """The logger a ``role`` (server, access, print, user_script) writes under in this process."""
    return LOGGER_NAMES[_names][role]


def display_name(name: str) -> str:
    """The logger name a line shows: the reference's names in ``azmlinfsrv`` mode."""
    if _names != "azmlinfsrv":
        return name
    shown = _AZMLINFSRV_DISPLAY.get(name)
    if shown is not None:
        return shown
    if name.startswith("scorehost."):
        return "azmlinfsrv." + name[len("scorehost.") :]
    return name


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if _trace_ids is not None and not hasattr(record, "trace_id"):
            ids = _trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class TextFormatter(logging.Formatter):
    """The reference's line; ours appends the request id, the azmlinfsrv mode (UTC times,
    the reference's logger names) leaves the line exactly as the reference writes it."""

    def __init__(self, names: str = "scorehost") -> None:
        super().__init__(_TEXT_FORMAT)
        self.reference = names == "azmlinfsrv"
        if self.reference:
            self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        if self.reference:
            name = record.name
            record.name = display_name(name)
            try:
                return super().format(record)
            finally:
                record.name = name
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        if rid:
            line = f"{line} [rid {rid}]"
        trace = getattr(record, "trace_id", None)
        return f"{line} [trace {trace}]" if trace else line


class AMLLogFormatter(logging.Formatter):
    """Stand-in for ``azureml_inference_server_http.log_config.AMLLogFormatter`` (UTC times), which
    the reference's logging.json, and files copied from it, name."""

    def __init__(self, fmt: str = _TEXT_FORMAT, datefmt: str | None = None, style: Any = "%") -> None:
        super().__init__(fmt=fmt, datefmt=datefmt, style=style)
        self.converter = time.gmtime


class RootAccessFilter(logging.Filter):
    """Stand-in for the reference's filter that keeps ``GET /`` probes out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "GET / HTTP/1.1" not in record.getMessage()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "pid": record.process,
            "logger": display_name(record.name),
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        trace = getattr(record, "trace_id", None)
        if trace:
            entry["trace_id"] = trace
            entry["span_id"] = getattr(record, "span_id", None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class DeferredFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that batches writes; see the module docstring.

    It keeps its own buffer rather than relying on the stream's: containers set
    ``PYTHONUNBUFFERED=1`` (our images do), which makes ``sys.stdout`` write through,
    so every access line was one ``write(2)``: at one connection, a quarter of the
    HTTP process's time per request. Lines leave in one write every
    ``_FLUSH_EVERY_S``, once ``_MAX_HELD`` characters are held, at once for warnings
    and errors, and at exit.

    ``hold=False`` (the workers, where user code runs) writes each line to the stream at
    once, as before, and only flushes on that clock: a line ``run()`` logged just before
    it crashed the process must not die in our buffer.
    """

    def __init__(self, stream: TextIO, hold: bool = True) -> None:
        super().__init__(stream)
        self.hold = hold
        self._held: list[str] = []
        self._held_chars = 0
        self._dirty = False  # hold=False: written to the stream, not flushed yet
        self._flusher = threading.Thread(target=self._flush_loop, name="log-flush", daemon=True)
        self._flusher.start()
        atexit.register(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)

    def write_line(self, line: str, *, urgent: bool = False) -> None:
        """Queue one line (without its newline); ``urgent`` writes everything held now."""
        with self.lock:  # type: ignore[union-attr]
            if not self.hold:
                try:
                    self.stream.write(line + "\n")
                except (OSError, ValueError):
                    return
                self._dirty = True
                if urgent:
                    self._write_held()
                return
            self._held.append(line)
            self._held_chars += len(line) + 1
            if urgent or self._held_chars >= _MAX_HELD:
                self._write_held()

    def _write_held(self) -> None:
        # Called with the lock held.
        if not (self._held or self._dirty):
            return
        try:
            if self._held:
                self._held.append("")  # the last line's newline
                text = "\n".join(self._held)
                self._held.clear()
                self._held_chars = 0
                self.stream.write(text)
            self._dirty = False
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.stream is not None:
                self._write_held()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(_FLUSH_EVERY_S)
            if self._held or self._dirty:
                self.flush()


def configure(
    level: str = "info", fmt: str = "text", stream: TextIO | None = None, names: str = "scorehost", hold: bool = True
) -> None:
    """Install our handler on the root logger (idempotent per process); ``hold``: see
    :class:`DeferredFlushHandler`."""
    global _names, _logging_file
    if names not in LOGGER_NAMES:
        raise ValueError(f"unknown log naming {names!r}")
    _names = names
    _logging_file = None
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, DeferredFlushHandler):
            root.removeHandler(handler)
    handler = DeferredFlushHandler(stream or sys.stdout, hold=hold)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(names))
    handler.addFilter(_RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own loggers propagate to ours; its access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


def configure_from(settings: Settings, stream: TextIO | None = None, hold: bool = True) -> str | None:
    """Everything a process does to set up logging: our handler, in the settings' naming mode,
    then the user's ``logging.json`` if there is one. Returns the file applied, if any.
    Raises :class:`LoggingFileError` for a file that cannot be applied."""
    configure(settings.log_level, settings.log_format, stream=stream, names=settings.log_names, hold=hold)
    return apply_logging_file(settings)


def find_logging_file(settings: Settings, cwd: str | None = None) -> str | None:
    """``logging.json`` in the app root, else next to the entry script (the reference's order)."""
    cwd = cwd or os.getcwd()
    roots = [settings.resolved_app_root(cwd)]
    entry = settings.resolved_entry_script(cwd)
    if entry:
        roots.append(os.path.dirname(os.path.realpath(entry)))
    for root in roots:
        path = os.path.join(root, LOGGING_FILE)
        if os.path.isfile(path):
            return path
    return None


def apply_logging_file(settings: Settings, cwd: str | None = None) -> str | None:
    """Apply the user's ``logging.json`` with :func:`logging.config.dictConfig`, as the reference
    does; returns its path, or None when there is none.

    Loggers that exist already stay enabled unless the file says ``"disable_existing_loggers":
    true`` (Python's default would silence the server's own loggers). The reference's formatter
    and filter classes (``azureml_inference_server_http.log_config.*``) resolve to stand-ins
    when that package is not installed.
    """
    global _logging_file
    path = find_logging_file(settings, cwd)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        config = json.loads(text)
    except (OSError, ValueError) as exc:
        raise LoggingFileError(f"cannot read logging config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise LoggingFileError(f"logging config {path}: expected a JSON object, got {type(config).__name__}")
    config.setdefault("version", 1)
    config.setdefault("disable_existing_loggers", False)
    if "azureml_inference_server_http" in text:
        _reference_log_config()
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        raise LoggingFileError(f"cannot apply logging config {path}: {exc}") from exc
    _logging_file = path
    logging.getLogger(logger_name("server")).info("Loaded logging config from %s", path)
    return path


def logging_file() -> str | None:
    """The logging.json applied in this process, if any."""
    return _logging_file


def _reference_log_config() -> None:
    """Make ``azureml_inference_server_http.log_config`` importable: the real one when the
    reference package is installed, our stand-ins otherwise."""
    name = "azureml_inference_server_http.log_config"
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    parent = sys.modules.get("azureml_inference_server_http")
    if parent is None:
        parent = types.ModuleType("azureml_inference_server_http")
        parent.__path__ = []
        sys.modules[parent.__name__] = parent
    module = types.ModuleType(name)
    module.AMLLogFormatter = AMLLogFormatter  # type: ignore[attr-defined]
    module.RootAccessFilter = RootAccessFilter  # type: ignore[attr-defined]
    sys.modules[name] = module
    parent.log_config = module  # type: ignore[attr-defined]


class PrintToLog(io.TextIOBase):
    """Stands in for ``sys.stdout`` in a worker: each printed line becomes a log record
    of ``scorehost.print`` (``azmlinfsrv.print`` in that mode), so it carries the request id
    of the call that printed it."""

    def __init__(self, name: str | None = None, level: int = logging.INFO) -> None:
        self._logger = logging.getLogger(name or logger_name("print"))
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
    flush) from a cached timestamp and one ``%`` format. When a user's logging.json
    was applied (or our handler is gone) it goes through ``logging``, so the file's
    levels, filters and handlers apply to it.
    """

    def __init__(self, fmt: str = "text", name: str | None = None) -> None:
        self.json = fmt == "json"
        self.name = name or logger_name("access")
        self.reference = _names == "azmlinfsrv"
        self._clock = time.gmtime if self.reference else time.localtime
        self.pid = os.getpid()
        self._second = -1
        self._stamp = ""
        self._handler = None
        if _logging_file is None:
            self._handler = next((h for h in logging.getLogger().handlers if isinstance(h, DeferredFlushHandler)), None)
        self._logger = logging.getLogger(self.name)

    def _now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self._clock(second))
        return "%s,%03d" % (self._stamp, int((now - second) * 1000))  # noqa: UP031 - hot path

    def write(self, method: str, path: str, status: int, ms: float, size: int, request_id: str) -> None:
        handler = self._handler
        if handler is None:
            self._logger.info("%s %s %d %.3fms %d", method, path, status, ms, size, extra={"request_id": request_id})
            return
        if self.json:
            entry = {
                "time": self._now(),
                "level": "INFO",
                "pid": self.pid,
                "logger": self.name,
                "message": f"{method} {path} {status} {ms:.3f}ms {size}",
                "request_id": request_id,
            }
            if _trace_ids is not None and (ids := _trace_ids()) is not None:
                entry["trace_id"], entry["span_id"] = ids
            line = orjson.dumps(entry).decode()
        else:
            line = "%s I [%d] %s - %s %s %d %.3fms %d" % (  # noqa: UP031 - hot path
                self._now(),
                self.pid,
                self.name,
                method,
                path,
                status,
                ms,
                size,
            )
            if not self.reference:  # the reference's lines end there; ours name the request
                line += " [rid %s]" % request_id  # noqa: UP031 - hot path
        handler.write_line(line)
