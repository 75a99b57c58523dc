"""The Open Inference Protocol handler, in-process: open_store + V2Handler.handle.

tritonclient's own request builder and response parser check the wire format; one
test drives the real tritonclient HTTP client through a minimal stdlib HTTP adapter.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from conftest import wait_pool_ready
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
from server.http.app import create_app
from server.settings import Settings
from server.store import tensors
from server.store.store import ModelStore, open_store
from server.store.v2 import DATATYPES, V2Handler
from server.workers.pool import WorkerPool
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
            "parameters": {
                "batching": {
                    "enabled": False,
                    "max_batch_size": 1,
                    "max_queue_delay_us": 0,
                    "preferred_batch_sizes": [],
                    "reason": "off (max_batch_size is 1)",
                }
            },
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


# --- hardening: no client input is a 500 (issue item 8) ------------------------------------------------
def raw_json(value: Any) -> bytes:
    """json, not orjson: these bodies hold integers past 64 bits."""
    return json.dumps(value).encode()


def _binary_body(item: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = raw_json({"inputs": [item]})
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize(
    ("model", "body", "headers", "needle"),
    [
        # Used to be 500s: reshape outside the try, unhashable datatypes.
        ("id_fp32", infer_body("x", "FP32", [1] * 100, [1.0]), {}, "at most 64 integers"),
        ("id_fp32", infer_body("x", "FP32", [0, 2**62, 2**62], []), {}, "larger than any request can fill"),
        ("id_fp32", infer_body("x", "FP32", [0, 3] + [1] * 63, []), {}, "at most 64 integers"),
        ("id_fp32", infer_body("x", ["FP32"], [1, 3], [1, 2, 3]), {}, "unknown datatype ['FP32']"),
        ("id_fp32", infer_body("x", {"a": 1}, [1, 3], [1, 2, 3]), {}, "unknown datatype {'a': 1}"),
        ("id_bytes", infer_body("x", "BYTES", [0, 2**62, 2**62], []), {}, "larger than any request"),
        # Silently accepted before: now refused, naming the field.
        ("id_fp32", infer_body("x", "FP32", [1, 3], [1, 2, 3], id={"a": 1}), {}, "'id' must be a string"),
        ("id_fp32", infer_body("x", "FP32", [1, 3], [1, 2, 3], id=7), {}, "'id' must be a string"),
        (
            "id_fp32",
            infer_body("x", "FP32", [1, 3], [1, 2, 3], parameters={"binary_data_output": "yes"}),
            {},
            "parameters.binary_data_output must be true or false, not 'yes'",
        ),
        (
            "id_fp32",
            infer_body("x", "FP32", [1, 3], [1, 2, 3], outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
            {},
            "binary_data must be true or false, not 1",
        ),
        ("id_fp32", infer_body("x", "FP32", [1, 3], [1, 2, 3]), {"Inference-Header-Content-Length": "1_0"}, "number"),
        (
            "id_fp32",
            infer_body("x", "FP32", [1, 3], [1, 2, 3]),
            {"Inference-Header-Content-Length": "\u0661"},
            "number",
        ),
        (
            "id_fp32",
            infer_body("x", "FP32", [1, 3], [1, 2, 3]),
            {"Inference-Header-Content-Length": "9" * 5000},
            "number",
        ),
    ],
)
def test_client_errors_are_400_not_500(
    handler: V2Handler, model: str, body: Any, headers: dict[str, str], needle: str
) -> None:
    reply = handler.handle("POST", f"/v2/models/{model}/infer", "", raw_json(body), headers=headers)
    assert reply.status == 400, reply.body
    assert needle in as_json(reply)["error"]


@pytest.mark.parametrize(
    ("datatype", "shape", "size"),
    [("FP32", [2**62, 2**62, 0], 0), ("BYTES", [2**62, 0, 2**62], 0), ("FP32", [1] * 65, 4)],
)
def test_binary_shapes_are_checked_before_any_array_is_made(
    handler: V2Handler, datatype: str, shape: list[int], size: int
) -> None:
    item = {"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
    body, headers = _binary_body(item, bytes(size))
    reply = call(handler, "POST", f"/v2/models/id_{datatype.lower()}/infer", body, headers)
    assert reply.status == 400 and "shape" in as_json(reply)["error"], reply.body


_WEIRD: list[Any] = [
    None, True, -1, 0, 2**63, 2**64 - 1, 1.5, 1e308, "", "x", "FP32", [], {}, [[]], [None], [True], [-1],
    [2**62, 2**62, 0], [1] * 70, ["1"], [[1, 2], [3]], {"binary_data_size": 2**62}, [{"name": "y"}] * 3,
]  # fmt: skip


@pytest.mark.parametrize("field", ["name", "shape", "datatype", "data", "parameters", "id", "outputs", "request"])
def test_no_value_in_any_field_is_a_500(handler: V2Handler, field: str) -> None:
    for value in _WEIRD:
        item: dict[str, Any] = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
        body: dict[str, Any] = {"inputs": [item]}
        if field in item:
            item[field] = value
        elif field == "request":
            body["parameters"] = value if isinstance(value, dict) else {"binary_data_output": value}
        else:
            body[field] = value
        reply = handler.handle("POST", "/v2/models/id_fp32/infer", "", raw_json(body))
        assert reply.status in (200, 400), (field, value, reply.body)
        if reply.status == 400:
            answer = as_json(reply)
            assert answer["message"] == answer["error"] and answer["error"], (field, value)


# --- strict datatypes (issue item 9) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("datatype", "data", "needle"),
    [
        ("INT64", [1.5, 2.7, -3.9], "'x': INT64 data must be JSON integers; 1.5 at index 0 is a float"),
        ("INT32", [1, 2.0, 3], "'x': INT32 data must be JSON integers; 2.0 at index 1 is a float"),
        ("INT64", [0, True, 1], "'x': INT64 data must be JSON integers; true at index 1 is a boolean"),
        ("FP32", ["1", "2", "3.5"], "'x': FP32 data must be JSON numbers; '1' at index 0 is a string"),
        ("FP64", [1, None, 2], "'x': FP64 data must be JSON numbers; null at index 1 is null"),
        ("FP32", [False, 0, 1], "'x': FP32 data must be JSON numbers; false at index 0 is a boolean"),
        (
            "FP16",
            [1e10, 1, 2],
            "'x': 10000000000.0 at index 0 is outside the FP16 range (largest finite value 65504.0)",
        ),
        ("FP16", [1, 2, -65520], "'x': -65520 at index 2 is outside the FP16 range"),
        ("FP32", [1, 2, 1e39], "'x': 1e+39 at index 2 is outside the FP32 range"),
        ("BOOL", [1, 0, 1], "'x': BOOL data must be true or false; 1 at index 0 is an integer"),
        ("BOOL", [True, "false", True], "'x': BOOL data must be true or false; 'false' at index 1 is a string"),
        ("UINT8", [1, -1, 2], "'x': -1 at index 1 is outside the UINT8 range [0, 255]"),
        ("UINT64", [0, 0, -1], "'x': -1 at index 2 is outside the UINT64 range [0, 18446744073709551615]"),
        ("INT8", [128, 0, 0], "'x': 128 at index 0 is outside the INT8 range [-128, 127]"),
        ("INT16", [0, -32769, 0], "'x': -32769 at index 1 is outside the INT16 range [-32768, 32767]"),
        ("INT32", [2**31, 0, 0], "'x': 2147483648 at index 0 is outside the INT32 range"),
        ("BYTES", ["a", 1, "b"], "'x': BYTES data must be JSON strings; 1 at index 1 is an integer"),
        ("FP32", [[1, 2], [{"a": 1}]], "'x': FP32 data must be JSON numbers; {'a': 1} at index 2 is an object"),
    ],
)
def test_values_the_datatype_cannot_hold_exactly_are_400(
    handler: V2Handler, datatype: str, data: Any, needle: str
) -> None:
    count = len(data) if not isinstance(data[0], list) else 3
    body = infer_body("x", datatype, [1, count], data)
    reply = call(handler, "POST", f"/v2/models/id_{datatype.lower()}/infer", body)
    assert reply.status == 400, reply.body
    assert needle in as_json(reply)["error"]


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT8", [-128, 127, 0], None),
        ("UINT8", [0, 255, 7], None),
        ("INT64", [-(2**63), 2**63 - 1, 0], None),
        ("UINT64", [2**64 - 1, 0, 1], None),
        ("FP16", [65504, -65504, 65519], [65504.0, -65504.0, 65504.0]),  # 65519 rounds down, 65520 overflows
        ("FP16", [65504.0, -0.0, 65519.99], [65504.0, -0.0, 65504.0]),
        ("FP32", [3.4028234663852886e38, -1, 2**64], [3.4028234663852886e38, -1.0, 1.8446744073709552e19]),
        ("FP64", [1e308, -5e-324, 2**64], [1e308, -5e-324, 1.8446744073709552e19]),
        ("BOOL", [True, False, True], None),
    ],
)
def test_values_at_the_edges_of_each_datatype_are_kept(
    handler: V2Handler, datatype: str, data: list[Any], expected: list[Any] | None
) -> None:
    body = raw_json(infer_body("x", datatype, [1, 3], data))
    reply = call(handler, "POST", f"/v2/models/id_{datatype.lower()}/infer", body)
    assert reply.status == 200, reply.body
    got = as_json(reply)["outputs"][0]["data"]
    if expected is None:
        assert got == data
    else:  # compared in the datatype: JSON writes the shortest text that reads back the same value
        dtype = DATATYPES[datatype]
        np.testing.assert_array_equal(np.asarray(got, np.float64).astype(dtype), np.asarray(expected).astype(dtype))


def test_binary_bool_bytes_must_be_0_or_1(handler: V2Handler) -> None:
    item = {"name": "x", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}}
    body, headers = _binary_body(item, b"\x01\x00\x02")
    reply = call(handler, "POST", "/v2/models/id_bool/infer", body, headers)
    assert reply.status == 400 and "BOOL byte 2 at index 2 is not 0 or 1" in as_json(reply)["error"]
    body, headers = _binary_body(item, b"\x01\x00\x01")
    assert as_json(call(handler, "POST", "/v2/models/id_bool/infer", body, headers))["outputs"][0]["data"] == [
        True,
        False,
        True,
    ]


# --- large JSON tensors: parsed in chunks straight into the array (issue item 15) -------------------------
@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every "data" array goes through from_span, in chunks of about 64 bytes."""
    monkeypatch.setattr(tensors, "SPAN_MIN_BODY", 0)
    monkeypatch.setattr(tensors, "SPAN_MIN_BYTES", 0)
    monkeypatch.setattr(tensors, "CHUNK_BYTES", 64)


def _both_ways(handler: V2Handler, monkeypatch: pytest.MonkeyPatch, model: str, body: bytes) -> tuple[Reply, Reply]:
    """The reply through from_span in tiny chunks, then through the general path."""
    with monkeypatch.context() as m:
        m.setattr(tensors, "SPAN_MIN_BODY", 0)
        m.setattr(tensors, "SPAN_MIN_BYTES", 0)
        m.setattr(tensors, "CHUNK_BYTES", 64)
        chunked = handler.handle("POST", f"/v2/models/{model}/infer", "", body, request_id="r")
    whole = handler.handle("POST", f"/v2/models/{model}/infer", "", body, request_id="r")
    return chunked, whole


_ROWS = 40


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", (np.arange(_ROWS * 3) - 7.25) / 3),
        ("FP16", np.linspace(-65504, 65504, _ROWS * 3)),
        ("FP64", np.linspace(-1e300, 1e300, _ROWS * 3)),
        ("INT64", np.arange(_ROWS * 3) * 2**50 - 2**62),
        ("UINT8", np.arange(_ROWS * 3) % 256),
        ("BOOL", np.arange(_ROWS * 3) % 3 == 0),
    ],
)
def test_chunked_parsing_gives_the_same_tensors(
    handler: V2Handler, monkeypatch: pytest.MonkeyPatch, datatype: str, values: np.ndarray, nested: bool
) -> None:
    data = values.reshape(_ROWS, 3).tolist() if nested else values.tolist()
    body = orjson.dumps(infer_body("x", datatype, [_ROWS, 3], data))
    chunked, whole = _both_ways(handler, monkeypatch, f"id_{datatype.lower()}", body)
    assert chunked.status == whole.status == 200, chunked.body
    assert chunked.body == whole.body
    dtype = DATATYPES[datatype]
    got = np.asarray(as_json(chunked)["outputs"][0]["data"]).astype(dtype)
    np.testing.assert_array_equal(got, values.astype(dtype))


@pytest.mark.parametrize(
    ("datatype", "data", "needle"),
    [
        ("FP32", [*range(100), None, *range(19)], "null at index 100 is null"),
        ("FP32", [*range(110), True, *range(9)], "true at index 110 is a boolean"),
        ("INT64", [*range(90), 1.5, *range(29)], "1.5 at index 90 is a float"),
        ("INT8", [*range(100), 128, *range(19)], "128 at index 100 is outside the INT8 range"),
        ("FP16", [*range(100), 70000.0, *range(19)], "70000.0 at index 100 is outside the FP16 range"),
        ("FP32", [[*range(60)], [*range(50), 1e39, *range(9)]], "1e+39 at index 110 is outside the FP32 range"),
        ("BOOL", [True] * 100 + [0] + [False] * 19, "0 at index 100 is an integer"),
        ("FP32", list(range(119)), "holds 120 values but data has 119"),
        ("FP32", list(range(121)), "holds 120 values but data has 121"),
        ("FP32", [[*range(60)], [*range(59)]], "holds 120 values but data has 119"),
    ],
)
def test_chunked_parsing_reports_what_the_general_path_does(
    handler: V2Handler, monkeypatch: pytest.MonkeyPatch, datatype: str, data: list[Any], needle: str
) -> None:
    body = orjson.dumps(infer_body("x", datatype, [40, 3], data))
    chunked, whole = _both_ways(handler, monkeypatch, f"id_{datatype.lower()}", body)
    assert chunked.status == whole.status == 400, chunked.body
    assert needle in as_json(chunked)["error"] and needle in as_json(whole)["error"]


@pytest.mark.parametrize(
    "text",
    [b"[1,2,3,]", b"[1,,2,3]", b"[,1,2,3]", b"[1 2,3]", b"[1,2,3", b"[[1,2],[3]]]", b"[1,2,3,NaN]", b"[01,2,3]"],
)
def test_chunked_parsing_refuses_bad_json(handler: V2Handler, tiny_chunks: None, text: bytes) -> None:
    body = b'{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":' + text + b"}]}"
    reply = call(handler, "POST", "/v2/models/id_fp32/infer", body)
    assert reply.status == 400 and "not valid JSON" in as_json(reply)["error"], reply.body


def test_chunks_cut_inside_deeper_nesting_fall_back_to_a_whole_parse(handler: V2Handler, tiny_chunks: None) -> None:
    data = np.arange(120, dtype=np.float32).reshape(2, 20, 3)  # cuts at "]," fall between rows of 3
    body = orjson.dumps(infer_body("x", "FP32", [40, 3], data.tolist()))
    reply = call(handler, "POST", "/v2/models/id_fp32/infer", body)
    assert reply.status == 200 and as_json(reply)["outputs"][0]["data"] == data.ravel().tolist()


def test_data_keys_elsewhere_and_forged_placeholders_change_nothing(handler: V2Handler, tiny_chunks: None) -> None:
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    body = {
        "id": '"data": [9, 9]',
        "parameters": {"data": [7, 8, 9]},
        "inputs": [
            {"name": "a", "shape": [2, 4], "datatype": "FP32", "data": [*range(8)]},
            {"name": "b", "shape": [2, 4], "datatype": "FP32", "data": [[1, 1, 1, 1], [2, 2, 2, 2]]},
        ],
        "outputs": [{"name": "sum", "parameters": {"data": rows}}],
    }
    reply = call(handler, "POST", "/v2/models/two/infer", body)
    assert reply.status == 200, reply.body
    assert as_json(reply)["outputs"] == [
        {"name": "sum", "datatype": "FP32", "shape": [2, 4], "data": [1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0]}
    ]
    assert as_json(reply)["id"] == '"data": [9, 9]'
    # A string that looks like a replacement key is only a string (and not FP32 data).
    forged = infer_body("x", "FP32", [1, 3], "\x000000000000000000:0")
    assert call(handler, "POST", "/v2/models/id_fp32/infer", forged).status == 400


def test_a_large_json_tensor_needs_about_its_own_size_in_memory(
    handler: V2Handler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensors, "CHUNK_BYTES", 64 * 1024)
    values = np.random.default_rng(0).random((100_000, 3)).astype(np.float32)
    body = orjson.dumps(infer_body("x", "FP32", [100_000, 3], values.ravel()), option=orjson.OPT_SERIALIZE_NUMPY)
    assert len(body) < 1 << 22  # the handler's max_request_bytes
    big = V2Handler(handler._store, settings(max_request_bytes=1 << 22))
    tracemalloc.start()
    try:
        reply = big.handle("POST", "/v2/models/id_fp32/infer", "", body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reply.status == 200
    np.testing.assert_array_equal(np.asarray(as_json(reply)["outputs"][0]["data"], np.float32), values.ravel())
    # Before: a Python float per value, 15x the body; now the array, the reply and one chunk.
    assert peak < 4 * len(body), (peak, len(body))


# --- error bodies (issue item 14) ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v2/models/mlp/infer", b"{nope", 400),
        ("POST", "/v2/models/mlp/infer", infer_body("x", "FP32", [1, 16], ["a"] * 16), 400),
        ("POST", "/v2/models/nope/infer", b"{}", 404),
        ("GET", "/v2/models/mlp/infer", b"", 405),
        ("GET", "/v2/models/corrupt", b"", 503),
        ("POST", "/v2/models/seq/infer", infer_body("x", "FP32", [2], [1, 2]), 500),
    ],
)
def test_error_bodies_carry_message_and_error(
    handler: V2Handler, method: str, path: str, body: Any, status: int
) -> None:
    reply = call(handler, method, path, body)
    assert reply.status == status
    answer = as_json(reply)
    assert set(answer) == {"message", "error"} and answer["message"] == answer["error"] != ""


def test_worker_side_v2_errors_carry_message_and_error(model_dir: Path) -> None:
    """Through a real worker process and the HTTP app, as a client sees them."""

    async def scenario() -> list[tuple[int, Any]]:
        config = settings(model_dir=str(model_dir), access_log=False, max_request_bytes=1 << 20)
        pool = WorkerPool(config)
        app = create_app(config, pool, manage_pool=False)
        await pool.start()
        try:
            await wait_pool_ready(pool, timeout=60)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answers = [
                    await client.post("/v2/models/id_int64/infer", json=infer_body("x", "INT64", [1, 3], [1.5, 2, 3])),
                    await client.post("/v2/models/mlp/infer", json=infer_body("x", "FP32", [1] * 100, [1])),
                    await client.get("/v2/models/nope"),
                    await client.post("/v2/models/id_int64/infer", json=infer_body("x", "INT64", [1, 3], [1, 2, 3])),
                ]
                return [(r.status_code, r.json()) for r in answers]
        finally:
            await pool.stop(5)

    (s1, bad_int), (s2, dims), (s3, missing), (s4, ok) = asyncio.run(scenario())
    assert (s1, s2, s3, s4) == (400, 400, 404, 200)
    for answer in (bad_int, dims, missing):
        assert set(answer) == {"message", "error"} and answer["message"] == answer["error"]
    assert "INT64 data must be JSON integers; 1.5 at index 0" in bad_int["error"]
    assert "at most 64" in dims["error"]
    assert ok["outputs"][0]["data"] == [1, 2, 3]


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


@pytest.mark.slow
def test_tritonclient_against_the_real_server_binary_and_compressed(tmp_path: Path, start_server: Any) -> None:
    # Through uvicorn, the HTTP process and a worker: the binary extension's
    # Inference-Header-Content-Length and Content-Encoding must reach the worker's V2 handler
    # (a V2 call carries only the headers that handler reads).
    make_mlp(tmp_path / "mlp" / "1" / "model.onnx")
    server_handle = start_server(args=["--model_dir", str(tmp_path)], SCOREHOST_AUTH_MODE="none")
    address = server_handle.url.split("://", 1)[1]
    client = triton.InferenceServerClient(address, connection_timeout=5, network_timeout=10)
    try:
        x = np.asarray(X, np.float32)
        for binary_in, compression, binary_out in ((True, "gzip", True), (True, "deflate", False), (False, None, True)):
            tensor = triton.InferInput("x", [2, 16], "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary_in)
            outputs = [triton.InferRequestedOutput("y", binary_data=binary_out)]
            result = client.infer("mlp", [tensor], outputs=outputs, request_compression_algorithm=compression)
            np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x), rtol=1e-4, atol=1e-4)
        wrong = triton.InferInput("x", [2, 16], "FP64")
        wrong.set_data_from_numpy(x.astype(np.float64))
        with pytest.raises(InferenceServerException, match="FP64") as err:
            client.infer("mlp", [wrong])
        assert err.value.status() == "400"
    finally:
        client.close()
