"""The Open Inference Protocol handler, in-process: open_store + V2Handler.handle.

tritonclient's own request builder and response parser check the wire format; one
test drives the real tritonclient HTTP client through a minimal stdlib HTTP adapter.
"""

from __future__ import annotations

import gzip
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from onnx_models import (
    make_corrupt,
    make_identity,
    make_mlp,
    make_sequence_output,
    make_two_inputs,
    make_unsupported_op,
    mlp_reference,
)
from tritonclient.utils import InferenceServerException

import server
from server.settings import Settings
from server.store.store import ModelStore, open_store
from server.store.v2 import DATATYPES, V2Handler
from server.workers.protocol import Reply

NUMERIC = [d for d in DATATYPES if d != "BYTES"]


def settings(**overrides: Any) -> Settings:
    overrides.setdefault("ort_threads", 1)  # no process-wide onnxruntime pool in the test process
    return Settings(**overrides)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v2models")
    make_mlp(root / "mlp" / "1" / "model.onnx")
    make_mlp(root / "mlp" / "2" / "model.onnx", seed=2)
    make_two_inputs(root / "two.onnx")
    make_sequence_output(root / "seq.onnx")
    make_unsupported_op(root / "exotic.onnx")
    make_corrupt(root / "corrupt.onnx")
    for datatype in DATATYPES:
        make_identity(root / f"id_{datatype.lower()}.onnx", datatype)
    return root


@pytest.fixture(scope="module")
def store(model_dir: Path) -> Iterator[ModelStore]:
    s = open_store(settings(model_dir=str(model_dir)))
    yield s
    s.close()


@pytest.fixture(scope="module")
def handler(store: ModelStore, model_dir: Path) -> V2Handler:
    return V2Handler(store, settings(model_dir=str(model_dir), max_request_bytes=1 << 20))


def call(handler: V2Handler, method: str, path: str, body: Any = b"", headers: dict[str, str] | None = None) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return handler.handle(method, path, "", raw, headers=headers)


def as_json(reply: Reply) -> Any:
    return orjson.loads(reply.body)


def infer_body(name: str, datatype: str, shape: Any, data: Any, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}], **extra}


X = (np.arange(32, dtype=np.float32).reshape(2, 16) / 10).tolist()


# --- metadata and readiness ---------------------------------------------------------------------
def test_server_metadata(handler: V2Handler) -> None:
    reply = call(handler, "GET", "/v2")
    assert reply.status == 200 and reply.content_type == "application/json"
    assert as_json(reply) == {
        "name": "scorehost",
        "version": server.__version__,
        "extensions": ["binary_tensor_data"],
    }


def test_model_metadata(handler: V2Handler) -> None:
    for path in ("/v2/models/mlp", "/v2/models/mlp/", "/v2/models/mlp/versions/1"):
        reply = call(handler, "GET", path)
        assert reply.status == 200, path
        assert as_json(reply) == {
            "name": "mlp",
            "versions": ["1", "2"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        }


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/mlp/ready", 200),
        ("/v2/models/mlp/versions/1/ready", 200),
        ("/v2/models/mlp/versions/3/ready", 404),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/exotic/ready", 503),
        ("/v2/models/corrupt/versions/1/ready", 503),
    ],
)
def test_model_ready(handler: V2Handler, path: str, status: int) -> None:
    reply = call(handler, "GET", path)
    assert reply.status == status
    if status != 200:
        assert "error" in as_json(reply)
    if status == 503:
        assert ("Retry-After", "1") in reply.headers
        assert "failed to load" in as_json(reply)["error"]


def test_failed_model_says_why(handler: V2Handler) -> None:
    reply = call(handler, "POST", "/v2/models/exotic/infer", infer_body("x", "FP32", [1], [1.0]))
    assert reply.status == 503 and "FooBarOp" in as_json(reply)["error"]
    reply = call(handler, "GET", "/v2/models/corrupt")
    assert reply.status == 503 and "Protobuf" in as_json(reply)["error"]


def test_health_and_repository_index(handler: V2Handler) -> None:
    assert call(handler, "GET", "/v2/health/live").status == 200
    assert call(handler, "GET", "/v2/health/ready").status == 200
    rows = as_json(call(handler, "POST", "/v2/repository/index"))
    states = {(r["name"], r["version"]): r["state"] for r in rows}
    assert states[("mlp", "2")] == "READY" and states[("corrupt", "1")] == "FAILED"
    ready_only = as_json(call(handler, "POST", "/v2/repository/index", {"ready": True}))
    assert all(r["state"] == "READY" for r in ready_only) and len(ready_only) == len(rows) - 2


# --- JSON inference ---------------------------------------------------------------------------------
def test_infer_json(handler: V2Handler) -> None:
    reply = call(handler, "POST", "/v2/models/mlp/versions/1/infer", infer_body("x", "FP32", [2, 16], X, id="r1"))
    assert reply.status == 200, reply.body
    body = as_json(reply)
    assert (body["model_name"], body["model_version"], body["id"]) == ("mlp", "1", "r1")
    [out] = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("y", "FP32", [2, 2])
    expected = mlp_reference(np.asarray(X, np.float32))
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(2, 2), expected, rtol=1e-4, atol=1e-4)
    assert reply.exec_ms is not None and reply.exec_ms >= 0


def test_infer_defaults_to_newest_version_and_makes_an_id(handler: V2Handler) -> None:
    flat = [v for row in X for v in row]  # flat data is the canonical form; nested works too
    body = as_json(call(handler, "POST", "/v2/models/mlp/infer", infer_body("x", "FP32", [2, 16], flat)))
    assert body["model_version"] == "2" and len(body["id"]) >= 8
    expected = mlp_reference(np.asarray(X, np.float32), seed=2)
    np.testing.assert_allclose(np.asarray(body["outputs"][0]["data"]).reshape(2, 2), expected, rtol=1e-4, atol=1e-4)
    with_header = call(
        handler,
        "POST",
        "/v2/models/mlp/infer",
        infer_body("x", "FP32", [2, 16], flat),
        {"X-Request-Id": "abc"},
    )
    assert as_json(with_header)["id"] == "abc"
    raw = orjson.dumps(infer_body("x", "FP32", [2, 16], flat))
    from_front = handler.handle("POST", "/v2/models/mlp/infer", "", raw, request_id="rid-1")
    assert as_json(from_front)["id"] == "rid-1"


def test_infer_returns_only_requested_outputs(handler: V2Handler) -> None:
    body = {
        "inputs": [
            {"name": "a", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "b", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]},
        ],
        "outputs": [{"name": "diff"}],
    }
    [out] = as_json(call(handler, "POST", "/v2/models/two/infer", body))["outputs"]
    assert out == {"name": "diff", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 1.0, 2.0, 3.0]}


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips_as_json(handler: V2Handler, datatype: str) -> None:
    data: Any = {
        "BOOL": [True, False, True, False, False, True],
        "BYTES": ["a", "bé", "", "x y", "0", "z"],
    }.get(datatype, [0, 1, 2, 3, 4, 100])
    reply = call(handler, "POST", f"/v2/models/id_{datatype.lower()}/infer", infer_body("x", datatype, [2, 3], data))
    assert reply.status == 200, reply.body
    [out] = as_json(reply)["outputs"]
    assert (out["datatype"], out["shape"], out["data"]) == (datatype, [2, 3], data)


# --- binary tensors, through tritonclient's own encoder and parser ---------------------------------------
def _triton_request(
    name: str, array: np.ndarray, binary_in: bool, binary_out: bool | None
) -> tuple[bytes, dict[str, str]]:
    datatype = "BYTES" if array.dtype == object else triton.np_to_triton_dtype(array.dtype)
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary_in)
    outputs = None if binary_out is None else [triton.InferRequestedOutput("y", binary_data=binary_out)]
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs=outputs, request_id="t")
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    return body, headers


def _triton_result(reply: Reply) -> Any:
    assert reply.status == 200, reply.body
    length = dict(reply.headers).get("Inference-Header-Content-Length")
    return triton.InferenceServerClient.parse_response_body(
        reply.body, header_length=None if length is None else int(length)
    )


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, None), (True, False), (False, True), (False, False)])
def test_tritonclient_wire_format(handler: V2Handler, datatype: str, binary_in: bool, binary_out: bool | None) -> None:
    if datatype == "BYTES":
        array = np.array([[b"ab", b"", "é".encode()], [b"1", b"22", b"333"]], dtype=object)
    else:
        array = (np.arange(6) % (2 if datatype == "BOOL" else 100)).astype(DATATYPES[datatype]).reshape(2, 3)
    body, headers = _triton_request("x", array, binary_in, binary_out)
    reply = call(handler, "POST", f"/v2/models/id_{datatype.lower()}/infer", body, headers)
    result = _triton_result(reply)
    got = result.as_numpy("y")
    assert got.shape == (2, 3)
    if datatype == "BYTES":
        assert [v if isinstance(v, bytes) else v.encode() for v in got.ravel()] == list(array.ravel())
    else:
        np.testing.assert_array_equal(got, array)
    binary_sent = binary_out is not False  # tritonclient asks for binary when it names no outputs
    assert ("Inference-Header-Content-Length" in dict(reply.headers)) is binary_sent
    assert result.get_response()["id"] == "t"


def test_gzip_and_deflate_request_bodies(handler: V2Handler) -> None:
    body, headers = _triton_request("x", np.asarray(X, np.float32), True, None)
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        reply = call(handler, "POST", "/v2/models/mlp/infer", packed, {**headers, "Content-Encoding": encoding})
        np.testing.assert_allclose(
            _triton_result(reply).as_numpy("y"),
            mlp_reference(np.asarray(X, np.float32), seed=2),
            rtol=1e-4,
            atol=1e-4,
        )
    assert call(handler, "POST", "/v2/models/mlp/infer", body, {**headers, "Content-Encoding": "br"}).status == 415


def test_decompressed_body_is_bounded(handler: V2Handler) -> None:
    bomb = gzip.compress(b"[" + b" " * (2 << 20) + b"]")
    reply = call(handler, "POST", "/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip"})
    assert reply.status == 413


# --- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (infer_body("z", "FP32", [1, 16], [0] * 16), 400, "'z'"),
        (infer_body("x", "FP64", [1, 16], [0] * 16), 400, "'x' has datatype FP64"),
        (infer_body("x", "FP32", [1, 15], [0] * 15), 400, "'x' has shape [1, 15]"),
        (infer_body("x", "FP32", [1, 16], [0] * 15), 400, "holds 16 values but data has 15"),
        (infer_body("x", "FP32", [1, 16], ["a"] * 16), 400, "'x': FP32 data must be JSON numbers; 'a' at index 0"),
        (infer_body("x", "FP99", [1, 16], [0] * 16), 400, "unknown datatype 'FP99'"),
        (infer_body("x", "FP32", [1, -16], [0] * 16), 400, "'x': shape must be"),
        (infer_body("x", "FP32", "1,16", [0] * 16), 400, "'x': shape must be"),
        ({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32"}]}, 400, "'x' has neither data"),
        ({"inputs": []}, 400, "'inputs'"),
        ({"input": []}, 400, "'inputs'"),
        ([1, 2], 400, "JSON object"),
        (b"{nope", 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (infer_body("x", "FP32", [1, 16], [0] * 16, outputs=[{"name": "q"}]), 400, "no output 'q'"),
        (infer_body("x", "FP32", [1, 16], [0] * 16, parameters=[1]), 400, "parameters"),
    ],
)
def test_bad_infer_requests_are_400_naming_the_problem(handler: V2Handler, body: Any, status: int, needle: str) -> None:
    reply = call(handler, "POST", "/v2/models/mlp/infer", body)
    assert reply.status == status
    assert needle in as_json(reply)["error"]


def test_uint8_overflow_is_400(handler: V2Handler) -> None:
    reply = call(handler, "POST", "/v2/models/id_uint8/infer", infer_body("x", "UINT8", [1, 3], [1, 2, 300]))
    assert reply.status == 400 and "'x'" in as_json(reply)["error"]


def test_binary_framing_errors_are_400(handler: V2Handler) -> None:
    head = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]}
    )
    data = np.zeros(16, np.float32).tobytes()
    cases = [
        (head, {}, "no Inference-Header-Content-Length"),
        (head + data[:60], {"Inference-Header-Content-Length": str(len(head))}, "past the end"),
        (head + data + b"xx", {"Inference-Header-Content-Length": str(len(head))}, "not claimed"),
        (head + data, {"Inference-Header-Content-Length": "x"}, "not a number"),
        (head + data, {"Inference-Header-Content-Length": "99999"}, "outside"),
    ]
    for body, headers, needle in cases:
        reply = call(handler, "POST", "/v2/models/mlp/infer", body, headers)
        assert reply.status == 400 and needle in as_json(reply)["error"], (needle, reply.body)
    bad_strings = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": 14}}]}
    )
    reply = call(
        handler,
        "POST",
        "/v2/models/id_bytes/infer",
        bad_strings + struct.pack("<I", 99) + b"ab" + bytes(8),
        {"Inference-Header-Content-Length": str(len(bad_strings))},
    )
    assert reply.status == 400 and "malformed BYTES" in as_json(reply)["error"]
    # Three strings need at least 12 bytes of lengths: refused before anything is unpacked.
    short = bad_strings.replace(b'"binary_data_size":14', b'"binary_data_size":6')
    reply = call(
        handler,
        "POST",
        "/v2/models/id_bytes/infer",
        short + bytes(6),
        {"Inference-Header-Content-Length": str(len(short))},
    )
    assert reply.status == 400 and "3 BYTES values need at least 12 bytes" in as_json(reply)["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v2/models/nope/infer", 404),
        ("GET", "/v2/models/nope", 404),
        ("POST", "/v2/models/mlp/versions/9/infer", 404),
        ("GET", "/v2/models/mlp/infer", 405),
        ("POST", "/v2/models/mlp", 405),
        ("DELETE", "/v2", 405),
        ("GET", "/v2/models/mlp/stats", 404),
        ("GET", "/v2/nothing", 404),
        ("GET", "/score", 404),
    ],
)
def test_routing_errors(handler: V2Handler, method: str, path: str, status: int) -> None:
    reply = call(handler, method, path, infer_body("x", "FP32", [1, 16], [0] * 16))
    assert reply.status == status and "error" in as_json(reply)


def test_sequence_output_is_a_clear_500(handler: V2Handler) -> None:
    reply = call(handler, "POST", "/v2/models/seq/infer", infer_body("x", "FP32", [2], [1, 2]))
    assert reply.status == 500 and "zipmap=False" in as_json(reply)["error"]


def test_handle_never_raises_on_garbage(handler: V2Handler) -> None:
    garbage: list[Any] = [
        {"inputs": [None]},
        {"inputs": [{"name": 3}]},
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": {"a": 1}}]},
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [[0] * 8, [0] * 7]}]},
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": -1}}]},
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}], "outputs": "y"},
        {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}] * 2},
        b"\xff\xfe",
    ]
    for body in garbage:
        reply = call(handler, "POST", "/v2/models/mlp/infer", body)
        assert 400 <= reply.status < 500, (body, reply.body)
        assert "error" in as_json(reply)


# --- the real tritonclient HTTP client, over a minimal stdlib adapter -----------------------------------
@pytest.fixture(scope="module")
def http_url(handler: V2Handler) -> Iterator[str]:
    class Adapter(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path, _, query = self.path.partition("?")
            reply = handler.handle(self.command, path, query, body, headers=dict(self.headers.items()))
            self.send_response(reply.status)
            if reply.content_type:
                self.send_header("Content-Type", reply.content_type)
            for key, value in reply.headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Adapter)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_tritonclient_http_client_end_to_end(http_url: str) -> None:
    client = triton.InferenceServerClient(http_url, connection_timeout=5, network_timeout=5)
    try:
        assert client.get_server_metadata()["name"] == "scorehost"
        assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
        assert not client.is_model_ready("corrupt")
        assert client.get_model_metadata("mlp")["inputs"][0]["shape"] == [-1, 16]
        x = np.asarray(X, np.float32)
        tensor = triton.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(x)  # binary by default, as tritonclient does
        result = client.infer("mlp", [tensor], model_version="1", request_compression_algorithm="gzip")
        np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x), rtol=1e-4, atol=1e-4)
        with pytest.raises(InferenceServerException, match="Model nope not found") as err:
            client.infer("nope", [tensor])
        assert err.value.status() == "404"
        with pytest.raises(InferenceServerException, match="FooBarOp") as err:
            client.infer("exotic", [tensor])
        assert err.value.status() == "503"
        wrong = triton.InferInput("x", [2, 16], "FP64")
        wrong.set_data_from_numpy(x.astype(np.float64), binary_data=False)
        with pytest.raises(InferenceServerException, match="FP64") as err:
            client.infer("mlp", [wrong])
        assert err.value.status() == "400"
    finally:
        client.close()
