"""uvicorn's httptools protocol, with one write per response and the connection-level bounds.

Everything here happens before a request is routed or authenticated:

* **One write per response.** uvicorn writes a response's head and body with two
  ``transport.write`` calls; wrapping the transport in
  :class:`~server.workers.writer.CoalescingTransport` sends them in one.
* **Request head limits.** More than ``max_header_bytes`` of request line plus header fields, or
  more than ``max_headers`` fields, is answered 431 and the connection closes. The bytes are
  counted as they arrive and nothing past the limit is parsed, so an endless header costs what
  reading ``max_header_bytes`` costs (httptools grows a header by concatenation: quadratic).
* **Read deadlines.** A request head not complete ``header_read_timeout_s`` after its first
  byte, or a body not complete ``body_read_timeout_s`` after its head, is answered 408 and the
  connection closes (a body cut short never reaches ``run()``). An idle connection is closed
  ``keepalive_timeout_s`` after its last response; a new one that sends nothing, after the header
  timeout. There is no timer per request: each connection notes when its current phase began,
  from a clock that one sweep per server refreshes, and the sweep (every quarter of the shortest
  timeout, at most 1 s) closes the connections past their deadline. A deadline therefore fires
  between its value and its value plus two sweep intervals. While the client waits for our answer,
  or we hold reading paused, its clock restarts.
* **max_connections.** A connection beyond it gets a canned 503 and is closed in
  ``connection_made``, before any byte of it is read. Connections to the health port are exempt.
* **Malformed requests.** A parser error (400) or a head limit (431) that comes while an earlier
  request of the connection is still being answered waits for that answer, is sent after it, and
  the connection closes: a valid request pipelined before garbage keeps its answer. These answers
  are JSON ``{"message": ...}`` like every other error (uvicorn's own are plain text).
* **Draining.** From SIGTERM on, every response carries ``Connection: close`` (see :func:`drain`),
  so clients stop reusing connections that are about to close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from server.errors import BadRequest, HeaderTooLarge, Overloaded, RequestTimeout, ScoreHostError
from server.http.responses import render_error
from server.settings import Settings
from server.workers.writer import CoalescingTransport

logger = logging.getLogger("scorehost.http")

# Scope key: the error that ended a request while its body was being read (a body read timeout,
# a malformed body). Its handler, woken with http.disconnect, raises it instead of "client gone".
ABORTED = "scorehost.aborted"


class DrainFlag(Protocol):
    draining: bool


class _NeverDraining:
    draining = False


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keepalive_timeout_s: float = 5.0
    max_connections: int = 4096
    health_port: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, health_port: int | None = None) -> Limits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_read_timeout_s,
            body_timeout_s=settings.body_read_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            max_connections=settings.max_connections,
            health_port=health_port,
        )

    @property
    def sweep_interval_s(self) -> float:
        shortest = min(self.header_timeout_s, self.body_timeout_s, self.keepalive_timeout_s)
        return min(1.0, max(0.05, shortest / 4))


class Counters:
    """What the connection layer refused or closed, since start (a metrics exporter reads these)."""

    __slots__ = (
        "bad_requests",
        "body_timeouts",
        "header_timeouts",
        "header_too_large",
        "idle_closed",
        "refused",
        "too_many_headers",
    )

    def __init__(self) -> None:
        self.bad_requests = 0  # parser errors (400)
        self.header_too_large = 0  # head over max_header_bytes (431)
        self.too_many_headers = 0  # more than max_headers fields (431)
        self.header_timeouts = 0  # head not complete in time (408)
        self.body_timeouts = 0  # body not complete in time (408)
        self.idle_closed = 0  # keep-alive or new connections closed for idleness
        self.refused = 0  # over max_connections (503)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def error_bytes(error: ScoreHostError, default_headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A whole HTTP response for ``error`` (rendered as every error is), closing the connection."""
    response = render_error(error)
    parts = [STATUS_LINE[response.status_code]]
    for name, value in (*default_headers, *response.raw_headers):
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"connection: close\r\n\r\n")
    parts.append(bytes(response.body))
    return b"".join(parts)


class Guard:
    """One per server: the limits, the drain flag, the counters and the deadline sweep."""

    def __init__(self, limits: Limits, drain: DrainFlag | None = None) -> None:
        self.limits = limits
        self.drain: DrainFlag = drain if drain is not None else _NeverDraining()
        self.counters = Counters()
        self.interval = limits.sweep_interval_s
        # Refreshed by the sweep; connections read it to note when a phase began (no clock call).
        self.now = 0.0
        self._refusal: bytes | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[Any] = set()
        self._reported = (0, 0)

    def watch(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Start the sweep on this loop, once."""
        if self._loop is loop:
            return
        self._loop = loop
        self._connections = connections
        self.now = loop.time()
        loop.call_later(self.interval, self._sweep)

    @property
    def refusal(self) -> bytes:
        """The canned 503 for a connection over max_connections (built on first use, after start-up
        has configured the response headers)."""
        if self._refusal is None:
            limit = self.limits.max_connections
            self._refusal = error_bytes(
                Overloaded(f"Too many connections: the server already holds max_connections ({limit}).", retry_after=1)
            )
        return self._refusal

    def exempt(self, transport: asyncio.BaseTransport) -> bool:
        port = self.limits.health_port
        if port is None:
            return False
        sockname = transport.get_extra_info("sockname")
        return isinstance(sockname, tuple) and len(sockname) >= 2 and sockname[1] == port

    def _sweep(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            now = self.now = loop.time()
            for conn in list(self._connections):
                expire = getattr(conn, "expire", None)
                if expire is not None:
                    expire(now)
            self._report()
        except Exception:  # a bug of ours must not stop the deadlines
            logger.exception("Connection sweep failed")
        finally:
            loop.call_later(self.interval, self._sweep)

    def _report(self) -> None:
        """One line per sweep for what comes in floods (slow heads, refused connections)."""
        c = self.counters
        timeouts, refused = c.header_timeouts, c.refused
        seen_timeouts, seen_refused = self._reported
        if timeouts != seen_timeouts:
            logger.info(
                "Closed %d connection(s) whose request head was not complete within %g s (408)",
                timeouts - seen_timeouts,
                self.limits.header_timeout_s,
            )
        if refused != seen_refused:
            logger.warning(
                "max_connections (%d) reached: refused %d connection(s) with 503",
                self.limits.max_connections,
                refused - seen_refused,
            )
        self._reported = (timeouts, refused)


class _TooManyHeaders(Exception):
    pass


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """Use :func:`protocol_class` to get one bound to a server's limits and drain flag."""

    guard: ClassVar[Guard] = Guard(Limits())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guard = self.guard
        self._drain = guard.drain
        self._max_head = guard.limits.max_header_bytes
        self._max_headers = guard.limits.max_headers
        self._head = True  # between requests, or reading a request head
        self._head_bytes = 0  # bytes of the current request head received so far
        self._since = 0.0  # when the current phase (idle, head, body) began, on the guard's clock
        self._pending: bytes | None = None  # a rejection sent once the earlier answers are out

    # --- connection -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        guard = self.guard
        if len(self.connections) >= guard.limits.max_connections and not guard.exempt(transport):
            # NOTE: before uvicorn builds anything for it; connection_lost copes with this state.
            self.transport = transport
            guard.counters.refused += 1
            transport.write(guard.refusal)
            transport.close()
            return
        wrapped = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)  # type: ignore[arg-type]
        guard.watch(self.loop, self.connections)
        self._since = guard.now

    def data_received(self, data: bytes) -> None:
        if self._head:
            received = self._head_bytes
            if not received:
                self._since = self.guard.now
            self._head_bytes = received + len(data)
            if self._head_bytes > self._max_head:
                self._head_overflow(data, received)
                return
        # NOTE: uvicorn's version also cancels its keep-alive timer here; we arm none (see expire).
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._upgrade()
        except httptools.HttpParserError as exc:
            self._parse_error(exc)

    def _head_overflow(self, data: bytes, received: int) -> None:
        """This piece takes the head past the limit: parse only what fits. If the head ends
        within it, go on with the rest; otherwise 431."""
        room = self._max_head - received
        if room > 0:
            view = memoryview(data)
            try:
                self.parser.feed_data(view[:room])
            except httptools.HttpParserUpgrade:
                self._upgrade()
                return
            except httptools.HttpParserError as exc:
                self._parse_error(exc)
                return
            if not (self._head and self._head_bytes > self._max_head):
                # The head ended in time; the rest is its body or the next request.
                self.data_received(bytes(view[room:]))
                return
        self._reject(
            HeaderTooLarge(f"Request line and header fields exceed the limit of {self._max_head} bytes."),
            "header_too_large",
        )

    def _upgrade(self) -> None:
        if self._should_upgrade():
            self.handle_websocket_upgrade()
        else:
            self._unsupported_upgrade_warning()

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc.__context__, _TooManyHeaders):
            self._reject(
                HeaderTooLarge(f"A request may have at most {self._max_headers} header fields."), "too_many_headers"
            )
        elif isinstance(exc, httptools.HttpParserCallbackError):
            self._reject(BadRequest("Invalid HTTP request received."), "bad_requests")
        else:
            self._reject(BadRequest(f"Invalid HTTP request received: {exc}."), "bad_requests")

    def send_400_response(self, msg: str) -> None:
        self._reject(BadRequest(msg), "bad_requests")

    def _reject(self, error: ScoreHostError, counter: str) -> None:
        """Answer ``error`` and close: now, or after the answers still owed to earlier requests."""
        transport = self.transport
        if self._pending is not None or transport.is_closing():
            return
        counters = self.guard.counters
        setattr(counters, counter, getattr(counters, counter) + 1)
        if counter != "header_timeouts":  # those come in floods: the sweep sums them up
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            logger.info("%s: %d %s; closing the connection", client, error.status_code, error.message)
        payload = error_bytes(error, self.server_state.default_headers)
        transport.pause_reading()
        cycle = self.cycle
        if not self._head and cycle is not None and not cycle.response_started:
            # The request whose body was being read is the one at fault: it never gets an answer
            # from the app. If it waits in the pipeline, drop it; if its handler is reading the
            # body, wake it with the reason (it raises it, and its send goes nowhere).
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()
                self._pending = payload  # an earlier request is being answered
                return
            cycle.scope[ABORTED] = error  # type: ignore[literal-required]
            cycle.disconnected = True
            cycle.message_event.set()
        elif self.pipeline or (cycle is not None and not cycle.response_complete):
            self._pending = payload
            return
        transport.write(payload)
        transport.close()

    # --- parser callbacks ----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        if len(headers) >= self._max_headers:
            raise _TooManyHeaders  # feed_data raises HttpParserCallbackError with it as context
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head = False
        self._since = self.guard.now
        HttpToolsProtocol.on_headers_complete(self)  # NOTE: not super(): this runs per request
        if self._drain.draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._head = True
        self._head_bytes = 0
        self._since = self.guard.now
        # uvicorn's, inlined (per request)
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.more_body = False
        cycle.message_event.set()

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer (the sweep closes idle connections), and with
        # a pending rejection sent once the last answer owed is out.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._since = self.guard.now
        if self.pipeline:
            self.flow.resume_reading()
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._pending is not None:
            self.transport.write(self._pending)
            self.transport.close()
        else:
            self.flow.resume_reading()

    # --- deadlines -------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Called by the sweep: close this connection if its current phase is past its deadline."""
        transport = self.transport
        if transport is None or self.flow is None or transport.is_closing():
            return
        cycle = self.cycle
        if self.flow.read_paused or self._pending is not None:
            self._since = now  # we are not reading: not the client's time
            return
        limits = self.guard.limits
        slack = self.guard.interval  # _since may be one sweep old: never fire early
        if self._head:
            if cycle is not None and not cycle.response_complete:
                self._since = now  # the client waits for our answer
                return
            if self._head_bytes:
                if now - self._since >= limits.header_timeout_s + slack:
                    self._reject(
                        RequestTimeout(f"Request header not complete within {limits.header_timeout_s:g} s."),
                        "header_timeouts",
                    )
                return
            idle = limits.header_timeout_s if cycle is None else limits.keepalive_timeout_s
            if now - self._since >= idle + slack:
                self.guard.counters.idle_closed += 1
                transport.close()
            return
        if now - self._since < limits.body_timeout_s + slack:
            return
        if cycle is not None and cycle.response_complete:
            self.guard.counters.idle_closed += 1  # answered already; the client never sent the rest
            transport.close()
            return
        self._reject(RequestTimeout(f"Request body not complete within {limits.body_timeout_s:g} s."), "body_timeouts")


def protocol_class(limits: Limits, drain: DrainFlag | None = None) -> type[CoalescingHttpToolsProtocol]:
    """The protocol uvicorn instantiates per connection, bound to one server's limits and its
    drain flag (``WorkerPool.draining``)."""

    class ScoreHostHttpProtocol(CoalescingHttpToolsProtocol):
        pass

    ScoreHostHttpProtocol.guard = Guard(limits, drain)
    return ScoreHostHttpProtocol


def drain(connections: Iterable[object]) -> None:
    """From now on every response closes its connection: mark the newest request of every
    connection whose response has not started (requests that arrive later are marked as their
    head completes). Safe in a signal handler: it only sets flags."""
    for conn in list(connections):
        cycle = getattr(conn, "cycle", None)
        if cycle is not None and not cycle.response_started:
            cycle.keep_alive = False
