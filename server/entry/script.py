"""The entry-script host: load ``score.py``, call ``init()`` once, call ``run()``.

It runs inside a worker process and knows nothing of HTTP: a :class:`Call`
comes in, a :class:`Reply` goes out. The four forms of ``run()`` are told apart
once, at load time:

* plain ``run(data)``: the UTF-8 request body as a string (GET: the query
  arguments as a JSON string), exactly as the reference passes it;
* inference-schema decorated ``run(**params)``: the JSON body's keys as keyword
  arguments, after the reference's 400/415 checks;
* ``@rawhttp`` ``run(request)``: an :class:`~server.entry.aml.AMLRequest`;
* ``async def run(...)``: any of the above, awaited on the worker's event loop.

A ``request_headers`` parameter receives the request headers as a dict.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

import orjson

from server.entry import aml, compat
from server.errors import BadRequest, ScoreHostError, UnsupportedMediaType
from server.workers.protocol import Call, Reply

logger = logging.getLogger("scorehost.entry")

MODE_STRING = "string"
MODE_SCHEMA = "schema"
MODE_RAW = "raw"

# How much request metadata the HTTP process must send with each call.
META_NONE = 0  # body (and the query string for GET)
META_CONTENT_TYPE = 1  # + content type
META_FULL = 2  # + path, query, all headers

SCRIPT_ERROR_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."
SERIALIZE_ERROR_MESSAGE = "An unexpected internal error occurred. Check the logs for more info."
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


class EntryScriptError(ScoreHostError):
    """The script could not be loaded, or its init() failed. Fatal for the worker."""


@dataclass
class ScriptInfo:
    """What the HTTP process needs to know about the loaded script."""

    mode: str
    is_async: bool
    meta_level: int
    param_names: list[str] = field(default_factory=list)
    input_schema: Any = None
    output_schema: Any = None
    swagger_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "is_async": self.is_async,
            "meta_level": self.meta_level,
            "param_names": self.param_names,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
            "swagger_versions": self.swagger_versions,
        }


def _json_default(obj: Any) -> Any:
    # NOTE: orjson serialises C-contiguous numpy arrays natively; this catches the
    # rest (non-contiguous arrays, numpy scalars of odd types, objects with tolist).
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def query_to_dict(query: str) -> dict[str, Any]:
    """The reference's GET mapping: values parsed as JSON, repeated keys as lists."""
    grouped: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        grouped.setdefault(key, []).append(value)

    def parse(value: str) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            return value

    return {k: parse(v[0]) if len(v) == 1 else [parse(x) for x in v] for k, v in grouped.items()}


def model_dir_tree(model_dir: str | None, limit: int = 200) -> str:
    """A listing of the model directory, logged when init() fails (as the reference does)."""
    if not model_dir:
        return "AZUREML_MODEL_DIR is not set"
    if not os.path.isdir(model_dir):
        return f"{model_dir} (not a directory)"
    lines = [model_dir]
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        depth = root[len(model_dir) :].count(os.sep)
        for name in sorted(files):
            lines.append("  " * (depth + 1) + name)
            if len(lines) >= limit:
                lines.append("  ... (truncated)")
                return "\n".join(lines)
        if root != model_dir:
            lines.append("  " * depth + os.path.basename(root) + "/")
    return "\n".join(lines)


class EntryScript:
    """One loaded entry script."""

    def __init__(self, path: str, app_root: str, source_directory: str | None = None) -> None:
        self.path = path
        self.app_root = app_root
        self.source_directory = source_directory
        self.module: ModuleType | None = None
        self._init: Callable[[], Any] | None = None
        self._run: Callable[..., Any] | None = None
        self._data_param = "data"
        self._pass_headers = False
        self.info = ScriptInfo(MODE_STRING, False, META_NONE)

    # --- loading -----------------------------------------------------------
    def load(self) -> ScriptInfo:
        """Import the script and analyse ``run()``. Raises :class:`EntryScriptError`."""
        for folder in (
            self.app_root,
            *([os.path.join(self.app_root, self.source_directory)] if self.source_directory else []),
        ):
            if folder not in sys.path:
                sys.path.append(folder)
        compat.install()
        if not os.path.isfile(self.path):
            raise EntryScriptError(f"Entry script not found: {self.path}")
        try:
            spec = importlib.util.spec_from_file_location("entry_module", self.path)
            if spec is None or spec.loader is None:
                raise EntryScriptError(f"Cannot import entry script {self.path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules["entry_module"] = module
            spec.loader.exec_module(module)
        except EntryScriptError:
            raise
        except BaseException as exc:
            raise EntryScriptError(f"Failed to import entry script {self.path}: {type(exc).__name__}: {exc}") from exc
        for name in ("init", "run"):
            if not callable(getattr(module, name, None)):
                raise EntryScriptError(f"Entry script {self.path} does not define a {name}() function.")
        self.module = module
        self._init = module.init
        driver = getattr(module, "driver_module", None)
        run = driver.run if isinstance(driver, ModuleType) and hasattr(driver, "run") else module.run
        self._run = run
        self.info = self._analyse(run)
        logger.info(
            "Loaded entry script %s (run mode: %s%s)",
            self.path,
            self.info.mode,
            ", async" if self.info.is_async else "",
        )
        return self.info

    def _analyse(self, run: Callable[..., Any]) -> ScriptInfo:
        params = list(inspect.signature(run).parameters.values())
        allowed = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if any(p.kind not in allowed for p in params):
            raise EntryScriptError("run() cannot accept positional-only arguments, *args, or **kwargs.")
        self._pass_headers = any(p.name == "request_headers" for p in params)
        params = [p for p in params if p.name != "request_headers"]
        if not params:
            raise EntryScriptError("run() needs to accept an argument for input data.")
        self._data_param = params[0].name
        is_async = inspect.iscoroutinefunction(run) or inspect.iscoroutinefunction(inspect.unwrap(run))
        decorated = _schema_decorated(run)
        if aml.raw_http_requested() and decorated:
            raise EntryScriptError("run() cannot be decorated with both @rawhttp and @input_schema")
        if aml.raw_http_requested():
            mode, meta = MODE_RAW, META_FULL
        elif decorated:
            mode, meta = MODE_SCHEMA, META_CONTENT_TYPE
        else:
            mode, meta = MODE_STRING, META_NONE
        if self._pass_headers:
            meta = META_FULL
        info = ScriptInfo(mode, is_async, meta, [p.name for p in params])
        self._params = params
        if decorated:
            info.input_schema, info.output_schema, info.swagger_versions = _schemas(run)
        else:
            info.swagger_versions = ["2", "3", "3.1"]
        return info

    def call_init(self) -> None:
        """Run the user's ``init()``. Raises :class:`EntryScriptError`."""
        assert self._init is not None
        logger.info("Invoking user's init function")
        started = time.perf_counter()
        try:
            result = self._init()
            if inspect.isawaitable(result):
                import asyncio

                asyncio.run(_await(result))
        except BaseException as exc:
            raise EntryScriptError(f"User's init function failed: {type(exc).__name__}: {exc}") from exc
        logger.info("User's init has completed successfully in %.1f s", time.perf_counter() - started)

    # --- calling -------------------------------------------------------------
    def _arguments(self, call: Call) -> dict[str, Any]:
        meta = call.meta or {}
        mode = self.info.mode
        if mode == MODE_RAW:
            kwargs: dict[str, Any] = {self._data_param: self._aml_request(call, meta)}
        elif mode == MODE_STRING:
            if call.method == "GET":
                data = json.dumps(query_to_dict(meta.get("q", "")))
            else:
                try:
                    data = call.body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise BadRequest(f"Input cannot be decoded as UTF-8: {exc}") from None
            kwargs = {self._data_param: data}
        else:
            kwargs = self._schema_arguments(call, meta)
        if self._pass_headers:
            kwargs["request_headers"] = {
                "-".join(p.capitalize() for p in k.split("-")): v for k, v in meta.get("h", [])
            }
        return kwargs

    def _schema_arguments(self, call: Call, meta: dict[str, Any]) -> dict[str, Any]:
        if call.method == "GET":
            payload: Any = query_to_dict(meta.get("q", ""))
        else:
            ctype = str(meta.get("ct") or "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                raise UnsupportedMediaType("Expects Content-Type to be application/json")
            if not call.body.strip():
                raise BadRequest("POST body is empty. Expecting a JSON dictionary.")
            try:
                payload = orjson.loads(call.body)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"POST body could not be decoded as JSON: {exc}") from None
            if not isinstance(payload, dict):
                raise BadRequest("POST body should be a JSON dictionary.")
        kwargs = {}
        for param in self._params:
            if param.name in payload:
                kwargs[param.name] = payload[param.name]
            elif param.default is inspect.Parameter.empty:
                raise BadRequest(f"A value is not provided for the '{param.name}' parameter.")
            else:
                # NOTE: inference-schema's decorator indexes every declared parameter,
                # so defaults are passed explicitly rather than left out.
                kwargs[param.name] = param.default
        return kwargs

    @staticmethod
    def _aml_request(call: Call, meta: dict[str, Any]) -> aml.AMLRequest:
        headers = [(k, v) for k, v in meta.get("h", [])]
        # The HTTP process serves plain HTTP; the client's Host header names the server.
        host = next((v for k, v in headers if k.lower() == "host"), "localhost")
        return aml.AMLRequest(
            call.method, meta.get("p", "/score"), meta.get("q", ""), headers, call.body, f"http://{host}"
        )

    def _prepare(self, call: Call) -> dict[str, Any] | Reply:
        """The keyword arguments for ``run()``, or the 400/415 reply for bad input."""
        try:
            return self._arguments(call)
        except ScoreHostError as exc:
            logger.info("Rejected input: %s", exc.message)
            return Reply.error(exc.status_code, exc.message)

    @staticmethod
    def _raised() -> Reply:
        logger.exception("run() raised an exception")
        return Reply.error(500, SCRIPT_ERROR_MESSAGE, run_failed=True)

    def call_sync(self, call: Call) -> Reply:
        """Run a synchronous ``run()`` for one call; never raises."""
        assert self._run is not None
        kwargs = self._prepare(call)
        if isinstance(kwargs, Reply):
            return kwargs
        started = time.perf_counter()
        try:
            result = self._run(**kwargs)
        except Exception:
            return self._raised()
        return self.render(result, (time.perf_counter() - started) * 1000.0)

    async def call_async(self, call: Call) -> Reply:
        """Await an ``async def run()`` for one call; never raises."""
        assert self._run is not None
        kwargs = self._prepare(call)
        if isinstance(kwargs, Reply):
            return kwargs
        started = time.perf_counter()
        try:
            result = self._run(**kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            return self._raised()
        return self.render(result, (time.perf_counter() - started) * 1000.0)

    @staticmethod
    def render(result: Any, exec_ms: float) -> Reply:
        """Turn what ``run()`` returned into a reply, as the reference does."""
        if isinstance(result, aml.AMLResponse):
            failed = result.run_function_failed or result.status_code >= 500
            return Reply(result.status_code, result.data, result.mimetype, result.headers, failed, exec_ms)
        if result is None:
            return Reply(200, b"{}", exec_ms=exec_ms)
        try:
            body = orjson.dumps(result, default=_json_default, option=_NUMPY)
        except TypeError:
            logger.exception("run() returned a value that cannot be serialised to JSON")
            return Reply.error(500, SERIALIZE_ERROR_MESSAGE)
        return Reply(200, body, exec_ms=exec_ms)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _schema_decorated(run: Callable[..., Any]) -> bool:
    try:
        from inference_schema.schema_util import is_schema_decorated
    except ImportError:  # pragma: no cover - inference-schema is a dependency
        return False
    return bool(is_schema_decorated(run))


def _schemas(run: Callable[..., Any]) -> tuple[Any, Any, list[str]]:
    from inference_schema.schema_util import get_input_schema, get_output_schema, get_supported_versions

    versions = sorted(str(v) for v in get_supported_versions(run))
    return get_input_schema(run), get_output_schema(run), versions
