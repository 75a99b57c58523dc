"""Log formats: text with the request id, JSON lines, the access line, print() capture."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from server import log


def written(stream: io.StringIO) -> str:
    """What reached the stream once our handler wrote the lines it holds."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, log.DeferredFlushHandler):
            handler.flush()
    return stream.getvalue()


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    yield out
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, log.DeferredFlushHandler):
            root.removeHandler(handler)


def test_text_lines_carry_the_request_id(stream: io.StringIO) -> None:
    log.configure("info", "text", stream=stream)
    token = log.request_id_var.set("rid-42")
    try:
        logging.getLogger("t.text").warning("hello %s", "world")
    finally:
        log.request_id_var.reset(token)
    logging.getLogger("t.text").info("no request")
    first, second = written(stream).splitlines()
    assert " W [" in first and "t.text - hello world [rid rid-42]" in first
    assert second.endswith("t.text - no request")


def test_json_lines(stream: io.StringIO) -> None:
    log.configure("info", "json", stream=stream)
    logging.getLogger("t.json").info("x=%d", 3, extra={"request_id": "r1"})
    entry = orjson.loads(written(stream).splitlines()[0])
    assert entry["logger"] == "t.json" and entry["message"] == "x=3" and entry["request_id"] == "r1"
    assert entry["level"] == "INFO" and isinstance(entry["pid"], int)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_line(stream: io.StringIO, fmt: str) -> None:
    log.configure("info", fmt, stream=stream)
    log.AccessLog(fmt).write("POST", "/score?a=1", 200, 1.2345, 17, "rid-9")
    logging.getLogger().handlers[-1].flush()
    line = written(stream).splitlines()[-1]
    if fmt == "json":
        entry = orjson.loads(line)
        assert entry["message"] == "POST /score?a=1 200 1.234ms 17" and entry["request_id"] == "rid-9"
    else:
        assert line.endswith("scorehost.access - POST /score?a=1 200 1.234ms 17 [rid rid-9]")


def test_print_becomes_log_records(stream: io.StringIO) -> None:
    log.configure("info", "text", stream=stream)
    out = log.PrintToLog()
    print("partial", end="", file=out)
    print(" line", file=out)
    print("a\nb", file=out)
    lines = written(stream).splitlines()
    assert [line.split(" - ", 1)[1] for line in lines] == ["partial line", "a", "b"]
    assert all("scorehost.print" in line for line in lines)


@pytest.fixture
def reference_mode(stream: io.StringIO) -> io.StringIO:
    log.configure("info", "text", stream=stream, names="azmlinfsrv")
    yield stream
    log.configure("info", "text", stream=io.StringIO())  # back to our names


def test_azmlinfsrv_names_and_line(reference_mode: io.StringIO) -> None:
    token = log.request_id_var.set("rid-1")
    try:
        logging.getLogger("scorehost").info("server line")
        logging.getLogger("scorehost.entry").info("Invoking user's init function")
        logging.getLogger("scorehost.pool").warning("pool line")
        logging.getLogger("user.own").info("untouched")
        log.PrintToLog().write("printed\n")
    finally:
        log.request_id_var.reset(token)
    log.AccessLog("text").write("POST", "/score", 200, 0.5401, 55, "rid-2")
    next(h for h in logging.getLogger().handlers if isinstance(h, log.DeferredFlushHandler)).flush()
    names = [line.split("] ", 1)[1] for line in written(reference_mode).splitlines()]
    assert names == [
        "azmlinfsrv - server line",
        "azmlinfsrv.user_script - Invoking user's init function",
        "azmlinfsrv.pool - pool line",
        "user.own - untouched",
        "azmlinfsrv.print - printed",
        "azmlinfsrv - POST /score 200 0.540ms 55",
    ]
    assert "rid" not in written(reference_mode)
    assert log.logger_name("print") == "azmlinfsrv.print" and log.logger_name("access") == "azmlinfsrv"


def test_azmlinfsrv_times_are_utc(reference_mode: io.StringIO) -> None:
    import time

    ours = next(h for h in logging.getLogger().handlers if isinstance(h, log.DeferredFlushHandler))
    formatter = ours.formatter
    assert isinstance(formatter, log.TextFormatter) and formatter.converter is time.gmtime
    assert log.AccessLog("text")._clock is time.gmtime
    assert log.TextFormatter().converter is not time.gmtime  # our own mode keeps local time


def test_azmlinfsrv_json_logger_field(stream: io.StringIO) -> None:
    log.configure("info", "json", stream=stream, names="azmlinfsrv")
    try:
        logging.getLogger("scorehost.entry").info("x")
        assert orjson.loads(written(stream).splitlines()[0])["logger"] == "azmlinfsrv.user_script"
    finally:
        log.configure("info", "text", stream=io.StringIO())


def test_configure_from_settings(stream: io.StringIO, tmp_path: object) -> None:
    from server.settings import Settings

    try:
        assert log.configure_from(Settings(log_names="azmlinfsrv", app_root=str(tmp_path)), stream=stream) is None
        assert log.naming() == "azmlinfsrv"
        assert log.PrintToLog()._logger.name == "azmlinfsrv.print"
    finally:
        log.configure("info", "text", stream=io.StringIO())
    assert log.naming() == "scorehost" and log.PrintToLog()._logger.name == "scorehost.print"


def test_lines_are_held_and_written_together(stream: io.StringIO) -> None:
    # Containers run with PYTHONUNBUFFERED=1: a write per line would be a system call per
    # request. Info lines wait for the flush; a warning takes everything held with it.
    log.configure("info", "text", stream=stream)
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, log.DeferredFlushHandler))
    access = log.AccessLog("text")
    for n in range(3):
        access.write("POST", "/score", 200, 0.5, n, f"rid-{n}")
    logging.getLogger("t.held").info("info line")
    assert stream.getvalue() == ""
    logging.getLogger("t.held").warning("warning line")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1].endswith("warning line") and "[rid rid-0]" in lines[0]
    handler.flush()
    assert len(stream.getvalue().splitlines()) == 5  # nothing written twice


def test_held_lines_are_bounded(stream: io.StringIO) -> None:
    log.configure("info", "text", stream=stream)
    line = "x" * 1000
    for _ in range(80):  # 80 kB: past the bound, so some must have been written already
        logging.getLogger("t.bound").info("%s", line)
    assert len(stream.getvalue()) >= 64 * 1024


def test_held_lines_are_written_within_the_flush_interval(stream: io.StringIO) -> None:
    import time

    log.configure("info", "text", stream=stream)
    logging.getLogger("t.clock").info("eventually")
    deadline = time.monotonic() + 5.0
    while "eventually" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "eventually" in stream.getvalue()


def test_workers_write_each_line_at_once(stream: io.StringIO) -> None:
    # Where user code runs (hold=False), a line logged just before a crash must already be in
    # the stream: nothing waits in our buffer.
    log.configure("info", "text", stream=stream, hold=False)
    logging.getLogger("t.worker").info("before the crash")
    assert "before the crash" in stream.getvalue()
