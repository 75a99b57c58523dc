"""Untrusted input inside the worker: every parse fails as 400/415, never as a dead worker or a 500."""

from __future__ import annotations

import time

import orjson
import plain_http
import pytest
from conftest import load_script as load

from server.entry import inputs
from server.errors import BadRequest
from server.workers.protocol import Call, Reply, Target

DEEP = "%5B" * 5000 + "1" + "%5D" * 5000  # url-encoded [[[...1...]]], 5,000 deep


pytestmark = pytest.mark.usefixtures("fresh_script_state")


def call(method: str, body: bytes = b"", query: str = "", ctype: str = "", headers: list[tuple[str, str]] = []) -> Call:  # noqa: B006
    return Call(1, Target.SCORE, method, "rid", body, time.monotonic() + 60, query=query, content_type=ctype,
                path="/score", headers=headers)  # fmt: skip


def reply_of(result: object) -> Reply:
    assert isinstance(result, Reply)
    return result


def test_query_values_parse_as_the_reference_and_deep_json_is_400() -> None:
    assert inputs.query_to_dict("a=1&b=[1,2]&c=x&c=y&d=null&e=%7Bbad") == {
        "a": 1, "b": [1, 2], "c": ["x", "y"], "d": None, "e": "{bad"}  # fmt: skip
    with pytest.raises(BadRequest, match="nested too deeply"):
        inputs.query_as_json("a=" + DEEP)
    reply = reply_of(load("echo.py").call_sync(call("GET", query="a=" + DEEP)))
    assert reply.status == 400 and "nested too deeply" in orjson.loads(reply.body)["message"]


@pytest.mark.parametrize(
    "body",
    [b'"just a string"', b'{"data": "text"}', b'{"data": [[1, 2], [3]]}', b'{"data": null}', b"null"],
)
def test_schema_run_given_wrong_shapes_is_400(body: bytes) -> None:
    reply = reply_of(load("schema_run.py").call_sync(call("POST", body, ctype="application/json")))
    assert reply.status == 400, reply.body
    assert orjson.loads(reply.body)["message"]
    assert not reply.run_failed


def test_schema_run_with_deep_query_is_400() -> None:
    reply = reply_of(load("schema_run.py").call_sync(call("GET", query="data=" + DEEP)))
    assert reply.status == 400


@pytest.mark.parametrize(
    ("body", "ctype", "status"),
    [(b"{not json", "application/json", 400), (b"[" * 100000 + b"]" * 100000, "application/json", 400),
     (b'{"a": 1}', "text/plain", 415)],
)  # fmt: skip
def test_get_json_errors_keep_their_status(body: bytes, ctype: str, status: int) -> None:
    script = load("json_rawhttp.py")
    reply = reply_of(script.call_sync(call("POST", body, headers=[("content-type", ctype)])))
    assert reply.status == status and orjson.loads(reply.body)["message"]


@pytest.mark.slow
def test_deep_query_does_not_kill_the_worker(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", SCOREHOST_MAX_CONCURRENT_REQUESTS="1")
    with plain_http.client(base_url=server.url, timeout=10) as c:
        for _ in range(5):  # it once killed the worker each time, and the restarts backed off to 30 s
            bad = c.get("/score?a=" + DEEP)
            assert bad.status_code == 400 and "nested too deeply" in bad.json()["message"]
        assert c.post("/score", content=b"fine").text == '"fine"'
    assert "exited unexpectedly" not in server.log and "restarting" not in server.log
