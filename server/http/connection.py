"""uvicorn's httptools protocol with one write per response.

uvicorn writes a response's head and body with two ``transport.write`` calls; wrapping
the transport in :class:`~server.workers.writer.CoalescingTransport` sends them in one.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.workers.writer import CoalescingTransport


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(wrapped)  # type: ignore[arg-type]
