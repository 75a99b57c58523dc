"""TLS for the main port: uvicorn's SSL options, plus certificates re-read on SIGHUP.

``ssl_certfile`` / ``ssl_keyfile`` go to uvicorn as they are; ``ssl_ca_certs`` too, with client
certificates required (mutual TLS). uvicorn builds one :class:`ssl.SSLContext` at start-up and
every listener keeps it, so a reload cannot replace it. Instead :meth:`TlsReloader.attach` hangs a
callback on it that OpenSSL calls early in every handshake (the server-name callback, which runs
with or without SNI), and the callback hands the handshake the newest context. SIGHUP builds that
context from the files, and so does a change of them (their ``stat`` is checked once a second, as
the keys file's: a Secret volume renewed by cert-manager needs no signal). Files that cannot be used
(a key that does not match its certificate, a file half-written) are logged and the certificates in
force stay. Connections already open keep the certificate they were set up with.

What a reload cannot change: whether client certificates are required (``ssl_ca_certs`` set or
not at start-up); the CA certificates themselves are re-read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import Any

from server.errors import SettingsError
from server.settings import Settings

logger = logging.getLogger("scorehost.tls")


class TlsReloader:
    def __init__(self, settings: Settings) -> None:
        assert settings.ssl_certfile
        self.certfile: str = settings.ssl_certfile
        self.keyfile = settings.ssl_keyfile
        self.ca_certs = settings.ssl_ca_certs
        self.current: ssl.SSLContext | None = None  # the newest context; None: the one uvicorn built
        self.reloads = 0
        self._files = [f for f in (self.certfile, self.keyfile, self.ca_certs) if f]
        self._signature = self._stat()
        self._loop: asyncio.AbstractEventLoop | None = None

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config``."""
        return {
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_ca_certs": self.ca_certs,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if self.ca_certs else ssl.CERT_NONE,
        }

    def build(self) -> ssl.SSLContext:
        """A server context from the files, as uvicorn builds it; SettingsError if they cannot be used."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.certfile, self.keyfile)
            if self.ca_certs:
                ctx.load_verify_locations(self.ca_certs)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (self.certfile, self.keyfile, self.ca_certs) if f)
            raise SettingsError(f"TLS: cannot use {files}: {exc}") from None
        return ctx

    def attach(self, live: ssl.SSLContext) -> None:
        """Make handshakes on ``live`` (uvicorn's context) use the newest context."""
        live.minimum_version = ssl.TLSVersion.TLSv1_2
        live.sni_callback = self._pick

    def _pick(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self.current
        if current is not None and current is not ctx:
            conn.context = current

    def _stat(self) -> tuple[tuple[int, int, int, int, int] | None, ...]:
        out: list[tuple[int, int, int, int, int] | None] = []
        for path in self._files:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(out)

    def watch(self, loop: asyncio.AbstractEventLoop, interval_s: float = 1.0) -> None:
        """Re-read the files when they change (checked every ``interval_s`` on ``loop``)."""
        if self._loop is loop:
            return
        self._loop = loop

        def poll() -> None:
            if loop.is_closed():
                return
            try:
                signature = self._stat()
                if signature != self._signature:
                    self._signature = signature
                    self.reload()
            except Exception:  # a bug of ours must not stop the watching
                logger.exception("Watching the certificate files failed")
            finally:
                loop.call_later(interval_s, poll)

        loop.call_later(interval_s, poll)

    def reload(self) -> bool:
        """Re-read the certificate files (SIGHUP); False, and the old ones kept, if they cannot be used."""
        try:
            ctx = self.build()
        except SettingsError as exc:
            logger.warning("%s; the certificates in force stay", exc)
            return False
        self.current = ctx
        self.reloads += 1
        logger.info("TLS certificates re-read from %s", self.certfile)
        return True
