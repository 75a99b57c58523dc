"""Streamed replies end to end: run() yields, the worker sends CHUNK frames, the client
reads chunked transfer encoding. Real server, real streaming client (httpx ``stream``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import plain_http
import pytest

pytestmark = pytest.mark.slow


def _post_stream(client: httpx.Client, body: dict[str, object]) -> tuple[httpx.Response, list[bytes]]:
    with client.stream("POST", "/score", content=json.dumps(body)) as response:
        chunks = list(response.iter_raw())
    return response, chunks


@pytest.mark.parametrize("slots", ["1", "2"])  # inline run() on the loop, and the run-thread pool
def test_plain_generator_streams_chunks_as_yielded(start_server, slots: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server("streamer.py", SCOREHOST_MAX_CONCURRENT_REQUESTS=slots)
    with server.client() as c:
        started = time.monotonic()
        with c.stream("POST", "/score", content=json.dumps({"n": 3, "delay_ms": 400})) as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            it = response.iter_raw()
            first = next(it)
            first_at = time.monotonic() - started
            rest = b"".join(it)
        total = time.monotonic() - started
    assert (first + rest) == b"tok0 tok1 tok2 "
    # The first token reached the client before the generator had produced the others.
    assert first.startswith(b"tok0") and first_at < total - 0.5
    line = server.wait_for_log(r"POST /score 200 ")
    assert " 15" in line  # the access line gives the bytes sent


def test_aml_response_generator_sse_and_json_items(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("streamer.py")
    with server.client() as c:
        response, chunks = _post_stream(c, {"form": "aml", "n": 2})
        assert response.status_code == 200 and response.headers["x-stream"] == "yes"
        assert b"".join(chunks) == b"tok0 tok1 "
        response, chunks = _post_stream(c, {"form": "sse", "n": 2})
        assert response.headers["content-type"] == "text/event-stream"
        assert b"".join(chunks) == b"data: tok0 \n\ndata: tok1 \n\n"
        response, chunks = _post_stream(c, {"form": "json", "n": 2})
        assert b"".join(chunks) == b'{"i":0}{"i":1}'
        empty = c.post("/score", content=json.dumps({"form": "empty"}))
        assert empty.status_code == 200 and empty.content == b""


def test_async_generator_streams(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("async_streamer.py")
    marker = tmp_path / "closed"
    with server.client() as c:
        response, chunks = _post_stream(c, {"n": 3, "marker": str(marker)})
    assert response.status_code == 200 and b"".join(chunks) == b"a0 a1 a2 "
    assert marker.read_text() == "closed"


def test_generator_raising_midway_cuts_the_stream(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("streamer.py")
    with server.client() as c:
        got: list[bytes] = []
        body = json.dumps({"form": "raise", "n": 5, "raise_at": 2})
        # No terminating chunk: the response is visibly incomplete.
        with pytest.raises(httpx.RemoteProtocolError), c.stream("POST", "/score", content=body) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                got.append(chunk)
        assert b"".join(got) == b"tok0 tok1 "
        server.wait_for_log("raised midway")
        assert c.post("/score", content=json.dumps({"n": 1})).status_code == 200  # the worker is fine


def test_client_disconnect_closes_the_generator_and_frees_the_slot(  # type: ignore[no-untyped-def]
    start_server, tmp_path: Path
) -> None:
    server = start_server("streamer.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1")
    marker = tmp_path / "closed"
    body = json.dumps({"n": 100000, "delay_ms": 10, "marker": str(marker)})
    with server.client() as c, c.stream("POST", "/score", content=body) as r:
        it = r.iter_raw()
        next(it)
        next(it)
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), server.log  # the generator's finally ran
    with server.client() as c:  # and its one slot is free again
        assert c.post("/score", content=json.dumps({"n": 1})).status_code == 200


def test_slow_reader_pauses_the_generator(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("streamer.py", SCOREHOST_STREAM_BUFFER_BYTES="65536")
    marker, progress = tmp_path / "closed", tmp_path / "progress"
    chunk = "x" * 65536
    body = {"n": 2000, "chunk": chunk, "marker": str(marker), "progress": str(progress)}
    with server.client() as c, c.stream("POST", "/score", content=json.dumps(body)) as r:
        it = r.iter_raw()
        next(it)
        time.sleep(1.5)  # a reader that stalls: 2,000 x 64 KiB = 128 MiB would be produced unpaused
        produced = int(progress.read_text())
        # Paused: what sits in the window, the HTTP process and the socket buffers, not all 2,000.
        assert produced < 400, produced
        time.sleep(0.3)
        assert int(progress.read_text()) == produced  # and it stays paused
        status = plain_http.get(server.url + "/health/ready").json()
        assert status["in_flight"] == 1
    log = server.log
    # Paused, then cancelled when the reader left: the generator never ran to the end.
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists()
    assert "raised midway" not in log


def test_time_to_first_chunk_is_the_scoring_timeout(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("streamer.py", SCORING_TIMEOUT_MS="300")
    with server.client() as c:
        slow = c.post("/score", content=json.dumps({"n": 2, "first_delay_ms": 1500}))
        assert slow.status_code == 504
        # Once the first chunk came in time, later gaps are the idle timeout's business.
        ok = c.post("/score", content=json.dumps({"n": 3, "delay_ms": 400}))
        assert ok.status_code == 200 and ok.content == b"tok0 tok1 tok2 "


def test_idle_gap_ends_the_stream(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("streamer.py", SCOREHOST_STREAM_IDLE_TIMEOUT_MS="300")
    marker = tmp_path / "closed"
    with server.client() as c:
        got: list[bytes] = []
        with pytest.raises(httpx.RemoteProtocolError), c.stream("POST", "/score",
                      content=json.dumps({"n": 3, "delay_ms": 2000, "marker": str(marker)})) as r:  # fmt: skip
            for chunk in r.iter_raw():
                got.append(chunk)
        assert got == [b"tok0 "]
        server.wait_for_log("made no progress")
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists()
