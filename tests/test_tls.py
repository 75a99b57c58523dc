"""TLS with real clients: certificates made at test time, HTTPS through httpx and the ssl module,
client certificates (mutual TLS), certificates re-read on SIGHUP, and a plain-HTTP health port."""

from __future__ import annotations

import signal
import socket
import ssl
import time
from pathlib import Path

import httpx
import plain_http
import pytest
from conftest import SCRIPTS, ServerHandle, launch
from cryptography import x509
from security_util import CA

pytestmark = pytest.mark.slow


def serve_tls(env: dict[str, str]) -> ServerHandle:
    handle = launch(None, {"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py"), **env})
    assert handle.url.startswith("https://"), handle.log
    return handle


def wait_ready(url: str, verify: ssl.SSLContext | bool, handle: ServerHandle, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=verify, timeout=2) as c:
        while time.monotonic() < deadline:
            assert handle.proc.poll() is None, handle.log
            try:
                if c.get(url + "/health/ready").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise AssertionError(f"not ready:\n{handle.log}")


def client_context(ca: CA, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


def peer_serial(url: str, ca: CA) -> int:
    """The serial number of the certificate a fresh connection is shown (the ssl module, no httpx)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        client_context(ca).wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def wait_serial(url: str, ca: CA, serial: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while peer_serial(url, ca) != serial:
        assert time.monotonic() < deadline, "the new certificate was not served in time"
        time.sleep(0.1)


def test_https_with_a_real_client_and_sighup_reload(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    first = ca.issue("127.0.0.1", stem="server")
    handle = serve_tls({"SCOREHOST_SSL_CERTFILE": str(first.cert), "SCOREHOST_SSL_KEYFILE": str(first.key),
                        "SCOREHOST_PRIMARY_KEY": "tls-key"})  # fmt: skip
    try:
        wait_ready(handle.url, client_context(ca), handle)
        with httpx.Client(verify=client_context(ca), timeout=10) as c:
            r = c.post(handle.url + "/score", content=b'{"x": 1}', headers={"Authorization": "Bearer tls-key"})
            assert r.status_code == 200 and r.json() == '{"x": 1}'
            assert c.post(handle.url + "/score", content=b"1").status_code == 401
        # Plain HTTP to the TLS port gets nothing usable; an unknown CA fails the handshake.
        with pytest.raises(httpx.HTTPError):
            plain_http.get(handle.url.replace("https://", "http://") + "/health/live", timeout=3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(handle.url + "/health/live", timeout=3, verify=client_context(CA(tmp_path, "other CA")))
        assert peer_serial(handle.url, ca) == first.serial

        # A new certificate in the same files, then SIGHUP: new connections get it.
        second = ca.issue("127.0.0.1", stem="server")
        assert second.serial != first.serial
        with httpx.Client(verify=client_context(ca), timeout=10) as kept:  # a connection made before
            assert kept.get(handle.url + "/health/live").status_code == 200
            handle.proc.send_signal(signal.SIGHUP)
            handle.wait_for_log("TLS certificates re-read")
            wait_serial(handle.url, ca, second.serial, 1.0)
            assert kept.get(handle.url + "/health/live").status_code == 200

        # A broken pair (key of another certificate) is refused; the certificate in force stays.
        third = ca.issue("127.0.0.1", stem="third")
        first.key.write_bytes(third.key.read_bytes())
        handle.proc.send_signal(signal.SIGHUP)
        handle.wait_for_log("the certificates in force stay")
        assert peer_serial(handle.url, ca) == second.serial
        assert handle.proc.poll() is None

        # Renewed in place (cert-manager does this to a Secret volume), no signal: picked up too.
        fourth = ca.issue("127.0.0.1", stem="server")
        wait_serial(handle.url, ca, fourth.serial, 5.0)
    finally:
        handle.stop()
    assert "BEGIN" not in handle.log and "tls-key" not in handle.log


def test_client_certificates_are_required_with_ssl_ca_certs_and_the_health_port_stays_plain(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    server = ca.issue("127.0.0.1", stem="server")
    client = ca.issue("client-one", server=False)
    stranger = CA(tmp_path, "stranger CA").issue("client-two", server=False)
    handle = serve_tls({
        "SCOREHOST_SSL_CERTFILE": str(server.cert), "SCOREHOST_SSL_KEYFILE": str(server.key),
        "SCOREHOST_SSL_CA_CERTS": str(ca.path),
        "SEPERATE_HEALTH_ENDPOINT": "true", "HEALTH_PORT": "0",
    })  # fmt: skip
    try:
        health = handle.wait_for_log(r"Health probes on http://")
        health_url = "http://" + health.split("http://", 1)[1].strip()
        mtls = client_context(ca, client.cert, client.key)
        wait_ready(handle.url, mtls, handle)
        with httpx.Client(verify=mtls, timeout=10) as c:
            assert c.post(handle.url + "/score", content=b"1").status_code == 200  # auth_mode none here
        for ctx in (client_context(ca), client_context(ca, stranger.cert, stranger.key)):
            with pytest.raises(httpx.HTTPError), httpx.Client(verify=ctx, timeout=5) as c:
                c.get(handle.url + "/health/live")
        # The probes' port: plain HTTP, no certificate needed.
        assert plain_http.get(health_url + "/health/ready", timeout=5).status_code == 200
        assert plain_http.get(health_url + "/score", timeout=5).status_code == 404
    finally:
        handle.stop()


def test_unusable_certificate_files_exit_2(tmp_path: Path) -> None:
    handle = launch(None, {"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py"),
                           "SCOREHOST_SSL_CERTFILE": str(tmp_path / "none.pem")}, wait_listening=False)  # fmt: skip
    assert handle.wait_exit(30) == 2
    assert "TLS: cannot use" in handle.log
