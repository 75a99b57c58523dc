"""Pod-wide ``/metrics`` when several HTTP fronts share the port (``http_processes`` > 1).

The kernel hands a scrape to any front (``SO_REUSEPORT``), and each front records only what it
served. A scrape that showed one front's counters would jump between the fronts' values from one
scrape to the next, which Prometheus reads as counter resets. So the front that is scraped asks
every other front for its own exposition and answers with all of them, each sample labelled
``front="<index>"``; ``sum without (front)`` gives the pod's totals. Every front is asked fresh,
so nothing is computed between scrapes.

The fronts talk over Unix sockets in a folder the parent creates for them, mode 0700 (only the
server's user can connect): one connection per request, the request is the line ``METRICS``, the
answer an 8-byte big-endian length and the front's own exposition in the Prometheus text format.
A front that does not answer within :data:`PEER_TIMEOUT_S` (starting, restarting, hung) is left out
of that scrape, and ``scorehost_front_up{front=...}`` says so (0). This is not HTTP: no key, TLS or
connection limit applies, and nothing but the exposition is served.

Pure asyncio and ``prometheus_client``; no Starlette here (the route is :mod:`server.http.observe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger("scorehost.metrics")

PEER_TIMEOUT_S = 2.0
FRONT_LABEL = "front"
MAX_EXPOSITION_BYTES = 256 * 1024 * 1024  # a peer's length prefix is checked before any read
_REQUEST = b"METRICS\n"

# The front's own exposition, Prometheus text format.
Exposition = Callable[[], Awaitable[bytes]]


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"front-{index}.sock")


class PodMetrics:
    """One front's part: serve its own exposition to the others, and gather theirs when scraped."""

    def __init__(self, index: int, count: int, directory: str, own: Exposition) -> None:
        self.index = index
        self.count = count
        self.directory = directory
        self.own = own
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = socket_path(self.directory, self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this front's previous life (a restart after a crash)
        self._server = await asyncio.start_unix_server(self._answer, path=path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                os.unlink(socket_path(self.directory, self.index))
            self._server = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), PEER_TIMEOUT_S)
            if line == _REQUEST:
                body = await self.own()
                writer.write(len(body).to_bytes(8, "big") + body)
                await asyncio.wait_for(writer.drain(), PEER_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            logger.debug("Metrics request from another front failed: %r", exc)
        finally:
            writer.close()

    async def _fetch(self, index: int) -> bytes | None:
        try:
            return await asyncio.wait_for(self._fetch_now(index), PEER_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            logger.info("HTTP front %d did not give its metrics (%r); left out of this scrape", index, exc)
            return None

    async def _fetch_now(self, index: int) -> bytes:
        reader, writer = await asyncio.open_unix_connection(socket_path(self.directory, index))
        try:
            writer.write(_REQUEST)
            size = int.from_bytes(await reader.readexactly(8), "big")
            if size > MAX_EXPOSITION_BYTES:
                raise ValueError(f"exposition of {size} bytes announced")
            return await reader.readexactly(size)
        finally:
            writer.close()

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every front's exposition, labelled and merged, in the format ``accept`` asks for."""
        others = [i for i in range(self.count) if i != self.index]
        own, *fetched = await asyncio.gather(self.own(), *(self._fetch(i) for i in others))
        parts = {self.index: own, **dict(zip(others, fetched, strict=True))}
        encoder, content_type = choose_encoder(accept or "")
        families = await asyncio.to_thread(merge, parts)
        return await asyncio.to_thread(encoder, _Families(families)), content_type


def merge(parts: dict[int, bytes | None]) -> list[Metric]:
    """The fronts' expositions as one: each sample gains ``front="<index>"``, each family is
    declared once, and ``scorehost_front_up`` says which fronts answered."""
    families: dict[str, Metric] = {}
    up = Metric("scorehost_front_up", "1 if this HTTP front's metrics are in this scrape, 0 if it did not answer.",
                "gauge")  # fmt: skip
    for index in sorted(parts):
        text = parts[index]
        up.add_sample("scorehost_front_up", {FRONT_LABEL: str(index)}, 0.0 if text is None else 1.0)
        if text is None:
            continue
        for family in text_string_to_metric_families(text.decode("utf-8")):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            label = str(index)
            merged.samples.extend(s._replace(labels={**s.labels, FRONT_LABEL: label}) for s in family.samples)
    return [*families.values(), up]


class _Families:
    """What the library's encoders read: an object with ``collect()``."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families
