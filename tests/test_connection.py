"""The connection layer (server/http/connection.py) against a real server: head limits, read
deadlines, max_connections, pipelining after garbage, Connection: close while draining; and the
request-level fixes that go with them (truncated bodies, the access line's query, the bearer
scheme, 405 Allow). Raw sockets throughout: these are about bytes on the wire."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import SCRIPTS, ServerHandle, launch

KEY = "k3y"
AUTH = b"Authorization: Bearer " + KEY.encode() + b"\r\n"


# --- helpers ----------------------------------------------------------------------------
def connect(server: ServerHandle, timeout: float = 5.0) -> socket.socket:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


class Response:
    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status = status
        self.head = head
        self.body = body

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode()
        return None

    def json(self) -> object:
        return json.loads(self.body)


class Reader:
    """Reads responses one after another from one socket (keep-alive, pipelining)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        self.buf += data
        return bool(data)

    def response(self) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._more():
                raise ConnectionError(f"connection closed before a response; got {self.buf!r}")
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
        length = int(match.group(1)) if match else 0
        self.buf = rest
        while len(self.buf) < length:
            if not self._more():
                raise ConnectionError("connection closed inside a body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(int(head.split(b" ", 2)[1]), head, body)

    def closed(self) -> bool:
        """True once the server has closed the connection (EOF or reset), with nothing more sent."""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return not self.buf
            if not data:
                return not self.buf
            self.buf += data


def request(server: ServerHandle, raw: bytes) -> Response:
    with connect(server) as sock:
        sock.sendall(raw)
        return Reader(sock).response()


def post(body: bytes, extra: bytes = b"") -> bytes:
    return b"POST /score HTTP/1.1\r\nHost: x\r\n" + AUTH + extra + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def _server(script: str, **env: str) -> Iterator[ServerHandle]:
    handle = launch(None, {"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / script), **env})
    try:
        handle.wait_ready()
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def echo() -> Iterator[ServerHandle]:
    """Default limits, an API key."""
    yield from _server("echo.py", SCOREHOST_API_KEY=KEY)


@pytest.fixture(scope="module")
def quick() -> Iterator[ServerHandle]:
    """Half-second read deadlines; printer.py logs what run() receives."""
    yield from _server(
        "printer.py",
        SCOREHOST_HEADER_READ_TIMEOUT_S="0.5",
        SCOREHOST_BODY_READ_TIMEOUT_S="0.5",
        SCOREHOST_KEEPALIVE_TIMEOUT_S="0.5",
    )


# --- item 2: head limits -------------------------------------------------------------------
def test_oversized_head_gets_431_and_close_without_reading_on(echo: ServerHandle) -> None:
    sent = 0
    with connect(echo, timeout=10) as sock:
        sock.sendall(b"GET /score HTTP/1.1\r\nHost: x\r\n" + AUTH + b"X-Big: ")
        chunk = b"a" * 65536
        try:
            while sent < 8 * 1024 * 1024:  # before the limit existed, all of it was read, then 200
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what we want
        reader = Reader(sock)
        response = reader.response()
        assert response.status == 431, response.head
        assert response.json() == {"message": "Request line and header fields exceed the limit of 65536 bytes."}
        assert response.header("connection") == "close" and response.header("content-type") == "application/json"
        assert reader.closed()
    assert sent < 8 * 1024 * 1024
    # A head just under the limit is fine, also when it arrives in one piece with its body.
    near = b"X-Pad: " + b"p" * 60_000 + b"\r\n"
    assert request(echo, post(b'"x"', near)).status == 200
    # A long request line counts too.
    assert request(echo, b"GET /score?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n").status == 431


def test_more_than_max_headers_gets_431(echo: ServerHandle) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(101))  # with Host, Authorization, Content-Length: 104
    response = request(echo, post(b'"x"', many))
    assert response.status == 431 and response.header("connection") == "close"
    assert response.json() == {"message": "A request may have at most 100 header fields."}
    assert request(echo, post(b'"x"', many[: many.index(b"X-H97:")])).status == 200  # 100 fields


# --- item 10: a valid request before garbage keeps its answer -------------------------------
def test_pipelined_request_is_answered_before_the_400(echo: ServerHandle) -> None:
    with connect(echo) as sock:
        # Content-Length 3 with 8 bytes: "abc" is the body, "defgh" is a broken next request.
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Length: 3\r\n\r\nabcdefgh")
        reader = Reader(sock)
        first = reader.response()
        assert first.status == 200 and first.json() == "abc"
        second = reader.response()
        assert second.status == 400 and second.header("connection") == "close"
        assert second.json() == {"message": "Invalid HTTP request received: Invalid method encountered."}
        assert reader.closed()
    with connect(echo, timeout=10) as sock:  # the same for a head over the limit after two valid requests
        sock.sendall(post(b'"1"') + post(b'"2"') + b"GET / HTTP/1.1\r\nX-Big: ")
        try:
            for _ in range(64):  # a head that starts in the read where a request ends may pass by one read
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        reader = Reader(sock)
        assert [reader.response().body for _ in range(2)] == [b'"\\"1\\""', b'"\\"2\\""']
        assert reader.response().status == 431
        assert reader.closed()


# --- item 14: JSON parser errors, the bearer scheme, 405 Allow -------------------------------
def test_parser_errors_are_json(echo: ServerHandle) -> None:
    response = request(echo, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
    assert response.status == 400 and response.header("content-type") == "application/json"
    assert response.header("connection") == "close"
    assert response.json() == {"message": "Invalid HTTP request received: Invalid header token."}


def test_bearer_scheme_is_case_insensitive(echo: ServerHandle) -> None:
    def status(auth: bytes) -> int:
        raw = b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth + b"\r\nContent-Length: 1\r\n\r\n1"
        return request(echo, raw).status

    key = KEY.encode()
    for ok in (b"Bearer " + key, b"bearer " + key, b"BEARER " + key, b"Bearer   " + key):
        assert status(ok) == 200, ok
    for bad in (b"Bearer nope", b"Basic " + key, key, b"Bearer", b"Bearer " + key + b"x", b"Bearerx " + key):
        assert status(bad) == 401, bad


def test_405_from_starlette_routes_has_allow(echo: ServerHandle) -> None:
    response = request(echo, b"PUT /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert response.status == 405 and set(str(response.header("allow")).split(", ")) == {"GET", "HEAD"}
    assert response.json() == {"message": "The method is not allowed for the requested URL."}
    response = request(echo, b"PUT /score HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert response.status == 405 and response.header("allow") == "GET, POST, OPTIONS"


# --- item 13: the access line leaves the query out ------------------------------------------
def test_access_line_has_no_query_string(echo: ServerHandle) -> None:
    rid = b"query-check-1"
    raw = b"GET /score?password=hunter2 HTTP/1.1\r\nHost: x\r\n" + AUTH + b"x-request-id: " + rid + b"\r\n\r\n"
    assert request(echo, raw).status == 200
    line = echo.wait_for_log(r"scorehost\.access - GET /score.*query-check-1")
    assert "hunter2" not in echo.log and "GET /score 200" in line


def test_access_line_query_when_asked(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", SCOREHOST_ACCESS_LOG_QUERY="true")
    assert request(server, b"GET /score?a=1 HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    server.wait_for_log(r"scorehost\.access - GET /score\?a=1 200")


# --- item 4: a body cut short never reaches run() --------------------------------------------
def test_truncated_body_never_reaches_run(quick: ServerHandle) -> None:
    rid = b"cut-short-1"
    with connect(quick) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nx-request-id: " + rid + b"\r\nContent-Length: 1000\r\n\r\n")
        sock.sendall(b"0123456789")
        time.sleep(0.1)
    line = quick.wait_for_log(r"POST /score -> 499: .*cut-short-1")
    assert "after 10 byte(s) of the request body (1000 declared); run() was not called" in line
    assert re.search(r"Incomplete bodies so far: \d+", line)
    quick.wait_for_log(r"scorehost\.access - POST /score 499 .*cut-short-1")
    assert "scoring 0123456789" not in quick.log


# --- item 5: read deadlines, keep-alive, max_connections -------------------------------------
def test_slow_head_gets_408_and_close(quick: ServerHandle) -> None:
    with connect(quick) as silent, connect(quick) as slow:
        started = time.monotonic()
        slow.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
        reader = Reader(slow)
        response = reader.response()
        waited = time.monotonic() - started
        assert response.status == 408 and response.header("connection") == "close"
        assert response.json() == {"message": "Request header not complete within 0.5 s."}
        assert reader.closed()
        assert 0.45 <= waited < 3.0, waited
        assert Reader(silent).closed()  # a connection that sends nothing is closed, without an answer
    quick.wait_for_log(r"Closed \d+ connection\(s\) whose request head was not complete within 0.5 s \(408\)")


def test_slow_body_gets_408_and_never_runs(quick: ServerHandle) -> None:
    with connect(quick) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nx-request-id: slow-body-1\r\nContent-Length: 100\r\n\r\n12345"
        )
        reader = Reader(sock)
        response = reader.response()
        assert response.status == 408 and response.header("connection") == "close"
        assert response.json() == {"message": "Request body not complete within 0.5 s."}
        assert 0.45 <= time.monotonic() - started < 3.0
        assert reader.closed()
    quick.wait_for_log(r"scorehost\.access - POST /score 408 .*slow-body-1")
    assert "scoring 12345" not in quick.log


def test_keepalive_timeout_is_a_setting(quick: ServerHandle) -> None:
    with connect(quick) as sock:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1")
        reader = Reader(sock)
        assert reader.response().status == 200
        started = time.monotonic()
        assert reader.closed()  # uvicorn's fixed 5 s before
        assert 0.45 <= time.monotonic() - started < 3.0
    # A request in time on a kept-alive connection is not cut (the clock restarts per phase).
    with connect(quick) as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1")
            assert reader.response().status == 200
            time.sleep(0.3)


def test_max_connections_refuses_with_503_and_exempts_the_health_port(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "echo.py", SCOREHOST_MAX_CONNECTIONS="3", SCOREHOST_SEPARATE_HEALTH_ENDPOINT="true", SCOREHOST_HEALTH_PORT="0"
    )
    match = re.search(r"Health probes on http://[^\s]+:(\d+)", server.wait_for_log(r"Health probes on http://"))
    assert match
    health_port = int(match.group(1))
    held: list[socket.socket] = []
    try:
        while len(held) < 3:  # answered, so accepted: they count (the readiness poll's may linger a moment)
            sock = connect(server)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            if Reader(sock).response().status == 200:
                held.append(sock)
            else:
                sock.close()
                time.sleep(0.05)
        with connect(server) as extra:
            reader = Reader(extra)
            response = reader.response()  # sent before we say anything
            assert response.status == 503 and response.header("retry-after") == "1"
            assert response.header("connection") == "close"
            assert "max_connections (3)" in str(response.json())
            assert reader.closed()
        with socket.create_connection(("127.0.0.1", health_port), timeout=5) as probe:
            probe.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert Reader(probe).response().status == 200
        server.wait_for_log(r"max_connections \(3\) reached: refused 1 connection\(s\) with 503")
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # freed slots are usable again
        with connect(server) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            if Reader(sock).response().status == 200:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)


# --- item 11: Connection: close on every response after SIGTERM --------------------------------
def test_every_response_after_sigterm_closes_its_connection(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("sleeper.py", SCOREHOST_SHUTDOWN_DELAY_S="3", SCOREHOST_MAX_CONCURRENT_REQUESTS="4")
    idle = connect(server)
    busy = connect(server)
    try:
        idle_reader, busy_reader = Reader(idle), Reader(busy)
        idle.sendall(post(b'{"sleep_ms": 0}'))
        assert idle_reader.response().header("connection") is None  # kept alive before SIGTERM
        busy.sendall(post(b'{"sleep_ms": 600}'))  # in flight across the signal
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        in_flight = busy_reader.response()
        assert in_flight.status == 200 and in_flight.header("connection") == "close"
        assert busy_reader.closed()
        idle.sendall(post(b'{"sleep_ms": 0}'))  # a kept-alive connection, reused in the delay
        reused = idle_reader.response()
        assert reused.status == 200 and reused.header("connection") == "close"
        assert idle_reader.closed()
        statuses: list[tuple[int, str | None]] = []

        def fresh() -> None:  # new connections during the delay are served, and closed
            with connect(server) as sock:
                sock.sendall(post(b'{"sleep_ms": 0}'))
                response = Reader(sock).response()
                statuses.append((response.status, response.header("connection")))

        threads = [threading.Thread(target=fresh) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert statuses == [(200, "close")] * 4
    finally:
        idle.close()
        busy.close()
    assert server.wait_exit(timeout=15) == 0
