"""The HTTP contract, in-process (httpx ASGITransport) against a real worker pool."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import SCRIPTS, wait_pool_ready
from onnx_models import make_mlp, mlp_reference

from server.http.app import create_app
from server.settings import Settings
from server.workers.pool import WorkerPool

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def client_for(script: str | None, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(entry_script=str(SCRIPTS / script) if script else None, access_log=False, **overrides)
    pool = WorkerPool(settings)
    app = create_app(settings, pool, manage_pool=False)
    await pool.start()
    try:
        await wait_pool_ready(pool)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client
    finally:
        await pool.stop(5)


async def test_score_headers_and_ids() -> None:
    async with client_for("echo.py") as c:
        r = await c.post("/score", content=b'{"x": [1, 2]}', headers={"content-type": "application/json"})
        assert r.status_code == 200 and json.loads(r.json()) == {"x": [1, 2]}
        assert r.headers["x-ms-run-function-failed"] == "False"
        assert float(r.headers["x-ms-run-fn-exec-ms"]) >= 0
        assert r.headers["x-ms-server-version"].startswith("scorehost/")
        assert len(r.headers["x-request-id"]) == 36 and r.headers["x-ms-request-id"] == r.headers["x-request-id"]
        r = await c.post(
            "/score", content=b"1", headers={"x-ms-client-request-id": "abc", "x-request-id": "rid1", "TraceId": "tr1"}
        )
        assert (
            r.headers["x-request-id"],
            r.headers["x-ms-request-id"],
            r.headers["x-ms-client-request-id"],
            r.headers["traceid"],
        ) == ("rid1", "abc", "abc", "tr1")
        r = await c.post("/score", content=b"1", headers={"x-ms-request-id": "legacy1"})
        assert r.headers["x-ms-request-id"] == "legacy1" == r.headers["x-ms-client-request-id"]
        r = await c.post("/score", content=b"1", headers={"x-request-id": "r" * 101})
        assert r.status_code == 431
        assert r.json() == {"message": "x-request-id must not exceed 100 characters"}


async def test_routes_methods_and_errors() -> None:
    async with client_for("echo.py") as c:
        assert (await c.get("/")).text == "Healthy"
        assert (await c.get("/health/live")).json() == {"status": "live"}
        assert (await c.get("/health/ready")).json()["ready"] is True
        put = await c.put("/score")
        assert put.status_code == 405 and put.json() == {"message": "The method is not allowed for the requested URL."}
        assert (await c.post("/")).status_code == 405
        missing = await c.get("/nope")
        assert missing.status_code == 404 and missing.json()["message"].startswith("The requested URL was not found")
        options = await c.options("/score")
        assert options.status_code == 200 and options.content == b""
        got = await c.get("/score", params=[("a", "1"), ("b", "[1,2]"), ("c", "x"), ("c", "y")])
        assert json.loads(got.json()) == {"a": 1, "b": [1, 2], "c": ["x", "y"]}
        bad = await c.post("/score", content=b"\xff\xfe")
        assert bad.status_code == 400 and bad.json()["message"].startswith("Input cannot be decoded as UTF-8")


async def test_run_failures() -> None:
    async with client_for("raising_run.py") as c:
        r = await c.post("/score", content=b"{}")
        assert r.status_code == 500 and r.headers["x-ms-run-function-failed"] == "True"
        assert "x-ms-run-fn-exec-ms" not in r.headers
    async with client_for("returns.py") as c:
        r = await c.post("/score", json={"kind": "set"})
        assert r.status_code == 500 and r.headers["x-ms-run-function-failed"] == "False"
        assert (await c.post("/score", json={"kind": "none"})).content == b"{}"


async def test_rawhttp_passthrough() -> None:
    async with client_for("rawhttp_run.py") as c:
        r = await c.post("/score", content=b"abc", headers={"x-request-id": "r7"})
        assert r.status_code == 201 and r.content == b"cba"
        assert r.headers.get_list("x-custom") == ["a", "b"] and r.headers["x-rid"] == "r7"
        assert r.headers["content-type"] == "application/octet-stream"
        assert (await c.options("/score")).status_code == 204  # rawhttp run() sees OPTIONS too
        got = await c.get("/score", params={"x": "1"})
        assert got.json()["url"] == "http://test/score?x=1"
        failed = await c.post("/score", content=b"fail")
        assert failed.status_code == 503 and failed.headers["x-ms-run-function-failed"] == "True"


async def test_schema_script_and_swagger() -> None:
    async with client_for("schema_run.py", service_name="My svc", service_path_prefix="/api") as c:
        r = await c.post("/score", json={"data": [[1, 2, 3]]})
        assert r.status_code == 200 and r.json() == [6.0]
        wrong = await c.post("/score", content=b'{"data": 1}', headers={"content-type": "text/plain"})
        assert wrong.status_code == 415
        for version, key in (("2", "swagger"), ("3", "openapi"), ("3.1", "openapi")):
            doc = (await c.get("/swagger.json", params={"version": version})).json()
            assert key in doc and doc["info"]["title"] == "My svc"
            assert "/api/score" in doc["paths"]
        doc2 = (await c.get("/swagger.json")).json()
        assert doc2["definitions"]["ServiceInput"]["properties"]["data"]["type"] == "array"
        assert (await c.get("/swagger.json", params={"version": "3.1"})).json()["openapi"] == "3.1.0"
        bad = await c.get("/swagger.json", params={"version": "4"})
        assert bad.status_code == 404 and bad.json()["message"].startswith("Swagger version [4] is not valid")


async def test_api_key_and_cors() -> None:
    async with client_for("echo.py", api_key="s3cret", cors_origins=["https://app.example"]) as c:
        denied = await c.post("/score", content=b"1")
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        ok = await c.post(
            "/score", content=b"1", headers={"authorization": "Bearer s3cret", "origin": "https://app.example"}
        )
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        assert (await c.get("/health/live")).status_code == 200  # probes need no key
        pre = await c.options(
            "/score", headers={"origin": "https://app.example", "access-control-request-method": "POST"}
        )
        assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]


@pytest.mark.parametrize("cors", [[], ["https://app.example"]], ids=["fast-path", "with-cors-through-starlette"])
async def test_v2_inference_answers_the_same_on_either_path(tmp_path: Path, cors: list[str]) -> None:
    # Without CORS, V2 inference skips Starlette's router (server.http.app.ScoreHostApp); with it,
    # the request goes through the middleware. The answers must not tell the two apart.
    make_mlp(tmp_path / "mlp" / "1" / "model.onnx")
    x = np.arange(32, dtype=np.float32).reshape(2, 16) / 10
    body = {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.ravel().tolist()}]}
    origin = {"origin": "https://app.example"}
    async with client_for(None, model_dir=str(tmp_path), cors_origins=cors) as c:
        for path in ("/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"):
            ok = await c.post(path, json=body, headers=origin)
            assert ok.status_code == 200, ok.text
            y = np.array(ok.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 2)
            np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-4)
            assert ok.headers["x-request-id"] and ok.json()["model_name"] == "mlp"
            assert ok.headers.get("access-control-allow-origin") == (cors[0] if cors else None)
        missing = await c.post("/v2/models/nope/infer", json=body)
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        bad = await c.post("/v2/models/mlp/infer", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "error" in bad.json()
        wrong = await c.get("/v2/models/mlp/infer")
        assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]
        assert (await c.get("/v2/models/mlp/ready")).status_code == 200  # not inference: Starlette's route
        assert (await c.get("/v2/health/ready")).status_code == 200  # the probe, never a worker


async def test_v2_without_models_is_404_json() -> None:
    async with client_for("echo.py") as c:
        r = await c.get("/v2/models/none")
        assert r.status_code == 404 and "error" in r.json()
        assert (await c.get("/v2/health/ready")).status_code == 200
