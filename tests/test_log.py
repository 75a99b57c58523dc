"""Log formats: text with the request id, JSON lines, the access line, print() capture."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from server import log


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
    first, second = stream.getvalue().splitlines()
    assert " W [" in first and "t.text - hello world [rid rid-42]" in first
    assert second.endswith("t.text - no request")


def test_json_lines(stream: io.StringIO) -> None:
    log.configure("info", "json", stream=stream)
    logging.getLogger("t.json").info("x=%d", 3, extra={"request_id": "r1"})
    entry = orjson.loads(stream.getvalue().splitlines()[0])
    assert entry["logger"] == "t.json" and entry["message"] == "x=3" and entry["request_id"] == "r1"
    assert entry["level"] == "INFO" and isinstance(entry["pid"], int)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_line(stream: io.StringIO, fmt: str) -> None:
    log.configure("info", fmt, stream=stream)
    log.AccessLog(fmt).write("POST", "/score?a=1", 200, 1.2345, 17, "rid-9")
    logging.getLogger().handlers[-1].flush()
    line = stream.getvalue().splitlines()[-1]
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
    lines = stream.getvalue().splitlines()
    assert [line.split(" - ", 1)[1] for line in lines] == ["partial line", "a", "b"]
    assert all("scorehost.print" in line for line in lines)
