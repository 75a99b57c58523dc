"""The entry-script host, in-process: loading, the four run() forms, rendering."""

from __future__ import annotations

import importlib
import json
import time

import numpy as np
import orjson
import pytest
from conftest import ROOT, SCRIPTS
from conftest import load_script as load

from server.entry import aml
from server.entry.inputs import query_to_dict
from server.entry.script import EntryScript, model_dir_tree
from server.errors import EntryScriptError
from server.workers.protocol import Call, Target

pytestmark = pytest.mark.usefixtures("fresh_script_state")


def call(
    method: str = "POST",
    body: bytes = b"",
    *,
    q: str = "",
    ct: str = "",
    p: str = "",
    h: list[tuple[str, str]] | None = None,
) -> Call:
    return Call(
        1, Target.SCORE, method, "rid-1", body, time.monotonic() + 60, query=q, content_type=ct, path=p, headers=h or []
    )


def test_plain_run_gets_body_string() -> None:
    script = load("echo.py")
    assert script.info.mode == "string" and script.info.meta_level == 0
    reply = script.call_sync(call(body=b'{"a": 1}'))
    assert reply.status == 200 and json.loads(orjson.loads(reply.body)) == {"a": 1}
    assert reply.exec_ms is not None and reply.exec_ms >= 0


def test_get_maps_query_arguments_like_the_reference() -> None:
    assert query_to_dict("a=1&b=[1,2]&c=x&c=y&d=null") == {"a": 1, "b": [1, 2], "c": ["x", "y"], "d": None}
    script = load("echo.py")
    reply = script.call_sync(call("GET", q="a=1&c=x&c=y"))
    assert json.loads(orjson.loads(reply.body)) == {"a": 1, "c": ["x", "y"]}


def test_invalid_utf8_is_400_with_reference_message() -> None:
    reply = load("echo.py").call_sync(call(body=b"\xff\xfe"))
    assert reply.status == 400
    assert orjson.loads(reply.body)["message"].startswith("Input cannot be decoded as UTF-8: 'utf-8' codec")


def test_raising_run_is_500_run_failed() -> None:
    reply = load("raising_run.py").call_sync(call(body=b"{}"))
    assert reply.status == 500 and reply.run_failed
    assert orjson.loads(reply.body) == {
        "message": "An unexpected error occurred in scoring script. Check the logs for more info."
    }


@pytest.mark.parametrize(
    ("kind", "status", "body", "failed"),
    [
        ("none", 200, b"{}", False),
        ("str", 200, b'"plain string"', False),
        ("set", 500, b'{"message":"An unexpected internal error occurred. Check the logs for more info."}', False),
        ("dict", 200, b'{"kind":"dict"}', False),
    ],
)
def test_return_values_render_as_the_reference(kind: str, status: int, body: bytes, failed: bool) -> None:
    reply = load("returns.py").call_sync(call(body=json.dumps({"kind": kind}).encode()))
    assert (reply.status, reply.body, reply.run_failed) == (status, body, failed)


def test_numpy_values_and_request_headers() -> None:
    script = load("headers_run.py")
    assert script.info.meta_level == 2
    reply = script.call_sync(call(body=b"x", h=[("user-agent", "ua/1"), ("x-request-id", "r9")]))
    assert orjson.loads(reply.body) == {
        "data": "x",
        "agent": "ua/1",
        "rid": "r9",
        "arr": [0, 1, 2],
        "scalar": 1.5,
        "view": [0, 2, 4],
    }


def test_schema_decorated_run() -> None:
    script = load("schema_run.py")
    assert script.info.mode == "schema" and script.info.input_schema["type"] == "object"
    ok = script.call_sync(call(body=b'{"data": [[1, 2, 3]], "scale": 2}', ct="application/json"))
    assert ok.status == 200 and orjson.loads(ok.body) == [12.0]
    cases = [
        (b'{"data": [[1,2,3]]}', "text/plain", 415, "Expects Content-Type to be application/json"),
        (b"", "application/json", 400, "POST body is empty. Expecting a JSON dictionary."),
        (b"[1]", "application/json", 400, "POST body should be a JSON dictionary."),
        (b'{"scale": 1}', "application/json", 400, "A value is not provided for the 'data' parameter."),
    ]
    for body, ctype, status, message in cases:
        reply = script.call_sync(call(body=body, ct=ctype))
        assert (reply.status, orjson.loads(reply.body)["message"]) == (status, message)
    bad_json = script.call_sync(call(body=b"{nope", ct="application/json"))
    assert bad_json.status == 400
    assert orjson.loads(bad_json.body)["message"].startswith("POST body could not be decoded as JSON")


def test_rawhttp_run_gets_request_and_returns_response() -> None:
    script = load("rawhttp_run.py")
    assert script.info.mode == "raw"
    reply = script.call_sync(call(body=b"abc", p="/score", q="", h=[("x-request-id", "r1")]))
    assert reply.status == 201 and reply.body == b"cba"
    assert ("X-Custom", "a") in reply.headers and ("X-Custom", "b") in reply.headers
    assert reply.content_type is None and ("Content-Type", "application/octet-stream") in reply.headers
    failed = script.call_sync(call(body=b"fail", p="/score", q="", h=[]))
    assert failed.status == 503 and failed.run_failed
    got = script.call_sync(call("GET", p="/score", q="x=1", h=[("host", "svc:5001")]))
    assert orjson.loads(got.body) == {"args": {"x": "1"}, "path": "/score?x=1", "url": "http://svc:5001/score?x=1"}


def test_legacy_azureml_contrib_import_path() -> None:
    script = load("legacy_rawhttp.py")
    reply = script.call_sync(call(body=b'{"k": 1}', p="/score", q="", h=[("content-type", "application/json")]))
    assert reply.status == 200 and orjson.loads(reply.body) == {"k": 1}
    assert importlib.import_module("azureml.contrib.services.aml_response").AMLResponse is aml.AMLResponse


def test_async_run_is_awaited() -> None:
    import asyncio

    script = load("async_run.py")
    assert script.info.is_async
    reply = asyncio.run(script.call_async(call(body=b'{"v": 1}')))
    assert reply.status == 200 and orjson.loads(reply.body) == {"async": True, "echo": {"v": 1}}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_run.py", "does not define a run() function"),
        ("syntax_error.py", "SyntaxError"),
        ("missing.py", "Entry script not found"),
    ],
)
def test_broken_scripts_raise_entry_script_error(name: str, message: str) -> None:
    with pytest.raises(EntryScriptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        EntryScript(str(SCRIPTS / name), str(ROOT)).load()


def test_failing_init_raises_with_cause() -> None:
    script = EntryScript(str(SCRIPTS / "bad_init.py"), str(ROOT))
    script.load()
    with pytest.raises(EntryScriptError, match="boom in init") as info:
        script.call_init()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_model_dir_tree_lists_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"x")
    tree = model_dir_tree(str(tmp_path))
    assert "model.onnx" in tree and str(tmp_path) in tree
    assert "not set" in model_dir_tree(None)


def test_numpy_result_serialises() -> None:
    from server.entry.results import render

    reply = render({"a": np.arange(3, dtype=np.float32), "b": np.int64(4)}, 1.0)
    assert orjson.loads(reply.body) == {"a": [0.0, 1.0, 2.0], "b": 4}
