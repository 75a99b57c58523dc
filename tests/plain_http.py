"""Plain-HTTP clients for the tests, all sharing one TLS context.

httpx builds a TLS context for every client it makes, loading certifi's CA bundle: about 55 ms of
CPU each on a 2-core CI machine. The suite makes about 900 plain ``http://`` clients, often 24 at
once beside a live server on the same two cores, and that load once starved a server past its
500 ms queue wait. An ``http://`` URL never uses the context, so every client here shares one.
Tests that speak TLS build their own clients with their own ``verify``.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

_UNUSED_FOR_HTTP = ssl.create_default_context()


def client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(verify=_UNUSED_FOR_HTTP, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, verify=_UNUSED_FOR_HTTP, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, verify=_UNUSED_FOR_HTTP, **kwargs)
