"""AMLRequest / AMLResponse / rawhttp and the reference import paths."""

from __future__ import annotations

import importlib
import json

import pytest

from server.entry import aml, compat
from server.errors import BadRequest, UnsupportedMediaType


def make(body: bytes = b"", ctype: str = "application/json", query: str = "a=1&a=2&b=x") -> aml.AMLRequest:
    return aml.AMLRequest(
        "POST", "/score", query, [("content-type", ctype), ("x-request-id", "r1")], body, "http://host:5001"
    )


def test_request_api_matches_flask_usage() -> None:
    req = make(b'{"k": [1, 2]}')
    assert req.method == "POST" and req.full_path == "/score?a=1&a=2&b=x"
    assert req.url == "http://host:5001/score?a=1&a=2&b=x"
    assert req.get_data() == b'{"k": [1, 2]}' and req.get_data(as_text=True) == '{"k": [1, 2]}'
    assert req.get_json() == {"k": [1, 2]} and req.json == {"k": [1, 2]}
    assert req.headers.get("X-Request-Id") == "r1" and req.headers["content-type"] == "application/json"
    assert ("Content-Type", "application/json") in list(req.headers)
    assert (
        req.args.get("a") == "1" and req.args.getlist("a") == ["1", "2"] and req.args.to_dict() == {"a": "1", "b": "x"}
    )
    assert req.args.get("a", type=int) == 1 and req.args.get("b", 5, type=int) == 5


def test_get_json_errors() -> None:
    with pytest.raises(UnsupportedMediaType):
        make(b"{}", ctype="text/plain").get_json()
    assert make(b"{}", ctype="text/plain").get_json(silent=True) is None
    assert make(b"{}", ctype="text/plain").get_json(force=True) == {}
    with pytest.raises(BadRequest):
        make(b"{bad").get_json()


def test_response_semantics() -> None:
    r = aml.AMLResponse({"a": 1}, 200, json_str=True)
    assert json.loads(r.data) == {"a": 1} and r.mimetype == "application/json"
    assert aml.AMLResponse(None, 202).data == b"{}"
    r = aml.AMLResponse("text", 400, {"X-Multi": "a, b", "Content-Type": "text/plain"})
    assert r.data == b"text" and r.mimetype is None
    assert r.headers == [("X-Multi", "a"), ("X-Multi", "b"), ("Content-Type", "text/plain")]
    assert aml.AMLResponse(b"\x00\x01", 200).data == b"\x00\x01"


def test_reference_module_paths_resolve_here() -> None:
    compat.install()
    for name in ("azureml_inference_server_http.api.aml_request", "azureml.contrib.services.aml_request"):
        module = importlib.import_module(name)
        assert module.rawhttp is aml.rawhttp and module.AMLRequest is aml.AMLRequest
    for name in ("azureml_inference_server_http.api.aml_response", "azureml.contrib.services.aml_response"):
        assert importlib.import_module(name).AMLResponse is aml.AMLResponse
