"""Fuzzing real servers (run by .ci/run, bounded: about a minute on 2 cores).

* schemathesis, from the OpenAPI documents: ``/score`` of a schema-decorated script (the server's
  own ``/swagger.json?version=3``) and ``/v2`` of the model store (``docs/openapi-v2.json``),
  positive and negative data, a bounded number of examples per operation.
* a raw-socket fuzzer: malformed request lines, oversized and repeated headers, bad chunked
  encoding, Content-Length / Transfer-Encoding conflicts, truncated bodies.
* V2 tensors: shapes whose value count overflows or would need more than ``max_request_bytes``,
  binary sizes that lie, wrong datatypes, compressed bombs; all 400 (or 413) before allocation.

Every case asserts: a 4xx with a JSON message (or, for HTTP that cannot be parsed, a clean close),
the server and its workers alive (same worker processes, liveness 200), and at the end the
server's RSS (HTTP process plus workers) not grown beyond a bound.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import plain_http
import pytest
from conftest import EXAMPLES, ROOT, SCRIPTS, ServerHandle, launch
from security_util import process_tree_rss_kb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

KEY = "fuzz-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 256 * 1024  # max_request_bytes of the fuzzed servers
MAX_HEAD = 8 * 1024
RSS_GROWTH_KB = 32 * 1024  # the whole process tree (measured: under 2 MiB); malloc keeps some of what it freed


@dataclass
class Target:
    handle: ServerHandle
    workers: list[int]
    rss0_kb: int

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def assert_alive(self) -> None:
        assert self.handle.proc.poll() is None, self.handle.log[-3000:]
        with plain_http.client(timeout=10) as c:
            assert c.get(self.url + "/health/live").status_code == 200
            assert c.get(self.url + "/health/ready").status_code == 200, self.handle.log[-3000:]
        assert _children(self.handle.proc.pid) == self.workers, "a worker died or was replaced"

    def assert_bounded(self) -> None:
        grown = process_tree_rss_kb(self.handle.proc.pid) - self.rss0_kb
        assert grown < RSS_GROWTH_KB, f"RSS grew by {grown} KiB"


def _children(pid: int) -> list[int]:
    return sorted(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def _target(env: dict[str, str]) -> Iterator[Target]:
    base = {
        "SCOREHOST_PRIMARY_KEY": KEY,
        "SCOREHOST_MAX_REQUEST_BYTES": str(MAX_BODY),
        "SCOREHOST_MAX_HEADER_BYTES": str(MAX_HEAD),
        "SCOREHOST_HEADER_READ_TIMEOUT_S": "2",
        "SCOREHOST_BODY_READ_TIMEOUT_S": "2",
        "SCOREHOST_ACCESS_LOG": "false",
    }
    handle = launch(None, {**base, **env})
    try:
        handle.wait_ready()
        with plain_http.client(timeout=10) as c:  # warm up, then take the baseline
            for _ in range(20):
                c.get(handle.url + "/health/ready")
        target = Target(handle, _children(handle.proc.pid), process_tree_rss_kb(handle.proc.pid))
        yield target
        target.assert_alive()
        target.assert_bounded()
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def score_target() -> Iterator[Target]:
    yield from _target({"AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "schema_run.py")})


@pytest.fixture(scope="module")
def v2_target() -> Iterator[Target]:
    yield from _target({"AZUREML_MODEL_DIR": str(EXAMPLES / "model")})


def assert_json_error(status: int, body: bytes, what: object, *, v2: bool = False) -> None:
    assert 400 <= status < 500, (status, body[:300], what)
    doc = json.loads(body)
    assert isinstance(doc, dict) and isinstance(doc.get("message"), str) and doc["message"], (doc, what)
    if v2:
        assert doc.get("error") == doc["message"], doc


# --- schemathesis ----------------------------------------------------------------------------------
def _fuzz_schema(target: Target, raw_schema: dict[str, Any], examples: int, budget_s: float, **fixed: Any) -> int:
    import hypothesis
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase

    schema = schemathesis.openapi.from_dict(raw_schema)
    session = requests.Session()
    deadline = time.monotonic() + budget_s
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        path_parameters = {k: v for k, v in fixed.items() if f"{{{k}}}" in operation.path} or None
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(mode, path_parameters=path_parameters)

            @hypothesis.settings(
                max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )  # fmt: skip
            @hypothesis.given(case=strategy)
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                if time.monotonic() > deadline:
                    return
                try:
                    response = case.call(base_url=target.url, session=session, headers=AUTH, timeout=20)
                except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError):
                    return  # a request the client library itself refuses to send
                calls += 1
                status = response.status_code
                assert status < 500, (status, response.content[:300], case.as_curl_command())
                if status >= 400:
                    assert_json_error(status, response.content, case.as_curl_command())

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to break (no parameters)
    return calls


def test_schemathesis_score(score_target: Target) -> None:
    doc = plain_http.get(score_target.url + "/swagger.json", params={"version": "3"}, timeout=10).json()
    assert "/score" in doc["paths"]
    calls = _fuzz_schema(score_target, doc, examples=60, budget_s=40)
    assert calls >= 50
    score_target.assert_alive()


def test_schemathesis_v2(v2_target: Target) -> None:
    doc = json.loads((ROOT / "docs" / "openapi-v2.json").read_text(encoding="utf-8"))
    calls = _fuzz_schema(v2_target, doc, examples=25, budget_s=50, model_name="model", model_version="1")
    assert calls >= 150
    v2_target.assert_alive()


# --- raw sockets -----------------------------------------------------------------------------------
def exchange(target: Target, payload: bytes, *, shut: bool = False, timeout: float = 6.0) -> tuple[int | None, bytes]:
    """Send ``payload`` on a new connection; (status, body) of the first response, or (None, b"") when
    the server closed the connection without one. ``shut``: half-close after sending (a truncated body)."""
    with socket.create_connection(target.address, timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close before reading everything (431): its answer is still there
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data:
                return None, b""
            head, _, body = data.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                 if line.lower().startswith(b"content-length:")),
                None,
            )  # fmt: skip
            while length is not None and len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        except ConnectionResetError:
            if not data:
                return None, b""
            raise
        return status, body


def _req(head: bytes, body: bytes = b"", auth: bool = True) -> bytes:
    auth_line = f"Authorization: Bearer {KEY}\r\n".encode() if auth else b""
    return head + auth_line + b"\r\n" + body


P = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY = b'{"data": [[1.0, 2.0, 3.0]]}'
# (name, bytes, expectation): "4xx" a JSON 4xx; "4xx|close" that or a clean close; "close" no answer.
RAW_CASES: list[tuple[str, bytes, str]] = [
    # request lines
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) + b"\r\n\r\n", "4xx|close"),
    ("nul in method", b"PO\x00ST /score HTTP/1.1\r\nHost: x\r\n\r\n", "4xx|close"),
    ("no version", b"GET /score\r\nHost: x\r\n\r\n", "4xx|close"),
    ("bad version", b"GET /score HTTP/9.9\r\nHost: x\r\n\r\n", "4xx|close"),
    ("space in target", b"GET /sc ore HTTP/1.1\r\nHost: x\r\n\r\n", "4xx|close"),
    ("control in target", b"GET /score\x01 HTTP/1.1\r\nHost: x\r\n\r\n", "4xx|close"),
    ("only CRLFs", b"\r\n" * 5000, "4xx|close"),
    ("lf only", b"GET /score HTTP/1.1\nHost: x\n\n", "4xx|close"),
    ("huge request line", b"GET /" + b"a" * (MAX_HEAD * 2) + b" HTTP/1.1\r\nHost: x\r\n\r\n", "4xx"),
    ("unknown method", _req(b"BREW /score HTTP/1.1\r\nHost: x\r\n"), "4xx|close"),
    ("absolute form", _req(b"POST http://evil.example/score HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"), "4xx"),
    # headers
    ("oversized header", _req(P + b"X-Big: " + b"b" * (MAX_HEAD * 4) + b"\r\n"), "4xx"),
    ("too many headers", _req(P + b"".join(b"X-%d: v\r\n" % i for i in range(300))), "4xx"),
    ("header without colon", _req(P + b"NoColonHere\r\n"), "4xx|close"),
    ("space before colon", _req(P + b"Content-Length : 1\r\n", b"1"), "4xx|close"),
    ("obs-fold", _req(P + b"X-A: 1\r\n  folded\r\n"), "4xx|close"),
    ("nul in value", _req(P + b"X-A: a\x00b\r\n"), "4xx|close"),
    ("repeated content-length", _req(P + b"Content-Length: 5\r\nContent-Length: 6\r\n", b"123456"), "4xx|close"),
    ("repeated authorization", _req(P + b"Authorization: Bearer nope\r\nContent-Length: 2\r\n", b"{}"), "4xx"),
    ("bad content-length", _req(P + b"Content-Length: 1x\r\n", b"1"), "4xx|close"),
    ("negative content-length", _req(P + b"Content-Length: -1\r\n"), "4xx|close"),
    ("huge content-length", _req(P + b"Content-Length: 99999999999999999999999\r\n"), "4xx|close"),
    ("too large content-length", _req(P + b"Content-Length: %d\r\n" % (MAX_BODY + 1), b"x" * 100), "4xx"),
    ("no key", _req(P + b"Content-Length: 2\r\n", b"{}", auth=False), "4xx"),
    ("wrong scheme", P + b"Authorization: Basic " + KEY.encode() + b"\r\nContent-Length: 2\r\n\r\n{}", "4xx"),
    ("long request id", _req(P + b"x-request-id: " + b"r" * 500 + b"\r\nContent-Length: 2\r\n", b"{}"), "4xx"),
    # chunked encoding
    ("chunk size not hex", _req(P + b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), "4xx|close"),
    (
        "chunk size overflow",
        _req(P + b"Transfer-Encoding: chunked\r\n", b"f" * 40 + b"\r\nx\r\n0\r\n\r\n"),
        "4xx|close",
    ),
    ("chunk missing crlf", _req(P + b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"), "4xx|close"),
    ("chunk longer than said", _req(P + b"Transfer-Encoding: chunked\r\n", b"2\r\nhello\r\n0\r\n\r\n"), "4xx|close"),
    (
        "chunks over the limit",
        _req(P + b"Transfer-Encoding: chunked\r\n", (b"10000\r\n" + b"1" * 0x10000 + b"\r\n") * 5 + b"0\r\n\r\n"),
        "4xx",
    ),
    ("bad chunk extension", _req(P + b"Transfer-Encoding: chunked\r\n", b"5;\x01=\r\nhello\r\n0\r\n\r\n"), "4xx|close"),
    ("unknown transfer coding", _req(P + b"Transfer-Encoding: gzip, chunked, zz\r\n", b"0\r\n\r\n"), "4xx|close"),
    ("TE not chunked last", _req(P + b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"), "4xx|close"),
    (
        "repeated TE",
        _req(P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        "4xx|close",
    ),
    # Content-Length against Transfer-Encoding (request smuggling)
    ("CL and TE", _req(P + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), "4xx|close"),
    (
        "TE and CL",
        _req(P + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
        "4xx|close",
    ),
    ("TE with space", _req(P + b"Transfer-Encoding : chunked\r\nContent-Length: 2\r\n", b"{}"), "4xx|close"),
    # truncated bodies: the client half-closes; run() never sees them and nobody is left to answer
    ("truncated body", _req(P + b"Content-Length: 100\r\n", b'{"data": ['), "truncated"),
    ("truncated chunk", _req(P + b"Transfer-Encoding: chunked\r\n", b"100\r\n" + b"1" * 10), "truncated"),
    ("truncated head", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Le", "truncated"),
]


@pytest.mark.parametrize("name, payload, expect", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_raw_socket_fuzz(score_target: Target, name: str, payload: bytes, expect: str) -> None:
    status, body = exchange(score_target, payload, shut=expect == "truncated")
    if expect == "truncated":
        assert status is None or (400 <= status < 500 and status != 499), (status, body[:200])
    elif status is None:
        assert expect == "4xx|close", f"{name}: closed without an answer"
    else:
        assert_json_error(status, body, name)
    score_target.assert_alive()


def test_a_valid_request_still_works_between_the_fuzz(score_target: Target) -> None:
    status, body = exchange(score_target, _req(P + b"Content-Length: %d\r\n" % len(BODY), BODY))
    assert status == 200, body


# --- V2 tensors ------------------------------------------------------------------------------------
INFER = "/v2/models/model/infer"


def _infer(target: Target, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    with plain_http.client(timeout=20) as c:
        return c.post(target.url + INFER, content=body,
                      headers={**AUTH, "Content-Type": "application/json", **(headers or {})})  # fmt: skip


def _tensor(shape: Any, datatype: Any = "FP32", data: Any = None, **extra: Any) -> bytes:
    item: dict[str, Any] = {"name": "data", "shape": shape, "datatype": datatype, **extra}
    if data is not None:
        item["data"] = data
    return json.dumps({"inputs": [item]}).encode()


def _binary(shape: Any, size: Any, payload: bytes, header_length: str | None = None, datatype: str = "FP32") -> tuple[
    bytes, dict[str, str]
]:  # fmt: skip
    head = json.dumps(
        {"inputs": [{"name": "data", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}]}
    ).encode()
    return head + payload, {"Inference-Header-Content-Length": header_length or str(len(head))}


BIG = 2**62
V2_CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("shape product overflows int64", _tensor([2**32, 2**32, 2**32], data=[1.0]), {}),
    ("shape of 2**63", _tensor([2**63, 2], data=[1.0]), {}),
    ("shape beyond max_request_bytes", _tensor([1, MAX_BODY], data=[]), {}),
    ("shape of 10**30", _tensor([10**30], data=[1.0]), {}),
    ("empty tensor of huge dims", _tensor([0, BIG, BIG], data=[]), {}),
    ("65 dimensions", _tensor([1] * 65, data=[1.0]), {}),
    ("negative dim", _tensor([-1, 64], data=[0.0] * 64), {}),
    ("float dim", _tensor([1.0, 64], data=[0.0] * 64), {}),
    ("bool dim", _tensor([True, 64], data=[0.0] * 64), {}),
    ("string dim", _tensor(["1", "64"], data=[0.0] * 64), {}),
    ("shape not a list", _tensor({"a": 1}, data=[0.0]), {}),
    ("count mismatch", _tensor([1, 64], data=[0.0] * 63), {}),
    ("ragged data", _tensor([2, 2], data=[[1.0, 2.0], [3.0]]), {}),
    (
        "deep nesting",
        b'{"inputs": [{"name": "data", "shape": [1], "datatype": "FP32", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
        {},
    ),
    ("wrong datatype name", _tensor([1, 64], "FLOAT32", [0.0] * 64), {}),
    ("lower-case datatype", _tensor([1, 64], "fp32", [0.0] * 64), {}),
    ("datatype null", _tensor([1, 64], None, [0.0] * 64), {}),
    ("datatype not the model's", _tensor([1, 64], "INT64", [0] * 64), {}),
    ("strings as FP32", _tensor([1, 64], "FP32", ["1.0"] * 64), {}),
    ("null in FP32", _tensor([1, 64], "FP32", [None] * 64), {}),
    ("FP32 overflow", _tensor([1, 64], "FP32", [1e39] * 64), {}),
    ("INT8 out of range", _tensor([1, 2], "INT8", [1, 300]), {}),
    ("BOOL as 2", _tensor([1, 2], "BOOL", [True, 2]), {}),
    (
        "unknown input",
        json.dumps({"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode(),
        {},
    ),
    ("no data", _tensor([1, 64]), {}),
    ("inputs not a list", b'{"inputs": {"name": "data"}}', {}),
    ("not JSON", b'{"inputs": [', {}),
    ("JSON of NaN", b'{"inputs": [{"name": "data", "shape": [1], "datatype": "FP32", "data": [NaN]}]}', {}),
    ("binary size lies (larger)", *_binary([1, 64], 4 * 64, b"\x00" * 16)),
    ("binary size lies (smaller)", *_binary([1, 64], 16, b"\x00" * 256)),
    ("binary size negative", *_binary([1, 64], -256, b"\x00" * 256)),
    ("binary size huge", *_binary([1, 64], 2**64, b"\x00" * 256)),
    ("binary size float", *_binary([1, 64], 256.0, b"\x00" * 256)),
    ("binary size vs shape", *_binary([1, 1 << 40], 256, b"\x00" * 256)),
    ("binary not a multiple of the dtype", *_binary([1, 64], 255, b"\x00" * 255)),
    ("header length past the body", *_binary([1, 64], 256, b"\x00" * 256, header_length="999999")),
    ("header length negative", *_binary([1, 64], 256, b"\x00" * 256, header_length="-5")),
    ("header length not a number", *_binary([1, 64], 256, b"\x00" * 256, header_length="12abc")),
    ("header length huge", *_binary([1, 64], 256, b"\x00" * 256, header_length="9" * 40)),
    ("BYTES element length lies", *_binary([1], 8, struct.pack("<I", 0xFFFFFFF0) + b"abcd", datatype="BYTES")),
]
GZIP_BOMB = gzip.compress(b"0" * (MAX_BODY * 64), compresslevel=9)


@pytest.mark.parametrize("name, body, headers", V2_CASES, ids=[c[0] for c in V2_CASES])
def test_v2_tensor_fuzz(v2_target: Target, name: str, body: bytes, headers: dict[str, str]) -> None:
    r = _infer(v2_target, body, headers)
    assert r.status_code == 400, (name, r.status_code, r.text[:300])
    assert_json_error(r.status_code, r.content, name, v2=True)
    v2_target.assert_alive()


def test_v2_compressed_bomb_and_oversized_bodies(v2_target: Target) -> None:
    r = _infer(v2_target, GZIP_BOMB, {"Content-Encoding": "gzip"})
    assert r.status_code == 413 and len(GZIP_BOMB) < MAX_BODY, r.text[:200]
    assert_json_error(r.status_code, r.content, "gzip bomb", v2=True)
    r = _infer(v2_target, b"[" + b"1.0," * (MAX_BODY // 4) + b"1.0]")
    assert r.status_code == 413
    assert_json_error(r.status_code, r.content, "oversized", v2=True)
    # ...and the model still answers a good request.
    good = _infer(v2_target, _tensor([1, 64], "FP32", [0.5] * 64))
    assert good.status_code == 200, good.text[:300]
    v2_target.assert_alive()
    v2_target.assert_bounded()
