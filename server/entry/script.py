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
import logging
import os
import sys
import time
from collections.abc import Callable
from types import CodeType, ModuleType, TracebackType
from typing import Any

from server.entry import aml, compat, inputs
from server.entry.results import Stream, render
from server.errors import BadRequest, EntryScriptError, ScoreHostError, ScriptError
from server.workers.protocol import Call, MetaLevel, Reply, RunMode, ScriptInfo

logger = logging.getLogger("scorehost.entry")

SCRIPT_ERROR_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."
ALL_SWAGGER_VERSIONS = ["2", "3", "3.1"]


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
        self.info = ScriptInfo(RunMode.STRING, False, MetaLevel.NONE)
        self._params: list[inspect.Parameter] = []
        self._run_code: CodeType | None = None

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
            mode, meta = RunMode.RAW, MetaLevel.FULL
        elif decorated:
            mode, meta = RunMode.SCHEMA, MetaLevel.CONTENT_TYPE
        else:
            mode, meta = RunMode.STRING, MetaLevel.NONE
        if self._pass_headers:
            meta = MetaLevel.FULL
        info = ScriptInfo(mode, is_async, meta, [p.name for p in params])
        # What inputs.schema_arguments refuses to leave out; the swagger document says so too.
        info.required_params = [p.name for p in params if p.default is inspect.Parameter.empty]
        self._params = params
        if decorated:
            info.input_schema, info.output_schema, info.swagger_versions = _schemas(run)
        else:
            info.swagger_versions = list(ALL_SWAGGER_VERSIONS)
        # The user's own function, to tell inference-schema's input conversion
        # failing (bad input: 400) from run() failing (500).
        self._run_code = getattr(inspect.unwrap(run), "__code__", None)
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
        mode = self.info.mode
        kwargs: dict[str, Any]
        if mode is RunMode.RAW:
            kwargs = {self._data_param: self._aml_request(call)}
        elif mode is RunMode.STRING:
            data = inputs.query_as_json(call.query) if call.method == "GET" else inputs.body_as_text(call.body)
            kwargs = {self._data_param: data}
        else:
            kwargs = inputs.schema_arguments(self._params, inputs.schema_payload(call))
        if self._pass_headers:
            kwargs["request_headers"] = inputs.header_dict(call.headers)
        return kwargs

    @staticmethod
    def _aml_request(call: Call) -> aml.AMLRequest:
        # The HTTP process serves plain HTTP; the client's Host header names the server.
        host = next((v for k, v in call.headers if k.lower() == "host"), "localhost")
        return aml.AMLRequest(call.method, call.path or "/score", call.query, call.headers, call.body, f"http://{host}")

    def _prepare(self, call: Call) -> dict[str, Any] | Reply:
        """The keyword arguments for ``run()``, or the 400/415 reply for bad input."""
        try:
            return self._arguments(call)
        except ScoreHostError as exc:
            logger.info("Rejected input: %s", exc.message)
            return Reply.from_error(exc)

    def _failed(self, exc: Exception) -> Reply:
        """The reply for an exception from calling ``run()``."""
        if isinstance(exc, ScoreHostError):
            # Raised by our own request API inside run() (AMLRequest.get_json: 400/415).
            logger.info("Rejected input inside run(): %s", exc.message)
            return Reply.from_error(exc)
        if self.info.mode is RunMode.SCHEMA and not self._entered_run(exc.__traceback__):
            # inference-schema could not convert the input to the declared types, so the
            # user's run() never started: the client sent bad input.
            logger.info("Input does not match run()'s schema: %s: %s", type(exc).__name__, exc)
            return Reply.from_error(
                BadRequest(f"Input does not match the declared schema: {type(exc).__name__}: {exc}")
            )
        logger.exception("run() raised an exception")
        return Reply.from_error(ScriptError(SCRIPT_ERROR_MESSAGE))

    def _entered_run(self, tb: TracebackType | None) -> bool:
        while tb is not None:
            if tb.tb_frame.f_code is self._run_code:
                return True
            tb = tb.tb_next
        return self._run_code is None

    def call_sync(self, call: Call) -> Reply | Stream:
        """Run a synchronous ``run()`` for one call; never raises."""
        assert self._run is not None
        kwargs = self._prepare(call)
        if isinstance(kwargs, Reply):
            return kwargs
        started = time.perf_counter()
        try:
            result = self._run(**kwargs)
        except Exception as exc:
            return self._failed(exc)
        return render(result, (time.perf_counter() - started) * 1000.0)

    async def call_async(self, call: Call) -> Reply | Stream:
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
        except Exception as exc:
            return self._failed(exc)
        return render(result, (time.perf_counter() - started) * 1000.0)


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
