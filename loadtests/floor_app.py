"""The floor: the least a Starlette server can do to serve an Azure-style score.py.

It imports the same score.py, calls ``init()`` once, then calls ``run()`` directly on
the event loop in the handler and answers with ``orjson.dumps`` of the result. No
worker processes, no queue, no timeout, no access log: whatever scorehost adds on top
of this is its overhead, so the compare table shows how close it gets to the limit of
its own stack (Starlette + uvicorn + uvloop + httptools + orjson).

    .venv/bin/python loadtests/floor_app.py --entry_script S --model_dir D --port N

Prints ``Listening on http://HOST:PORT`` once the socket is bound, like scorehost.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import socket
import sys
from types import ModuleType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

log = logging.getLogger("floor_app")


def load_script(path: str) -> ModuleType:
    """Import score.py by path, with its folder on sys.path as Azure ML does."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location("score", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_app(script: ModuleType) -> Starlette:
    run = script.run

    async def score(request: Request) -> Response:
        body = await request.body()
        # NOTE: run() on the loop on purpose: this is the floor, the cheapest path there is.
        result: Any = run(body.decode())
        return Response(orjson.dumps(result), media_type="application/json")

    async def ready(_: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    return Starlette(
        routes=[
            Route("/score", score, methods=["POST"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route("/", ready, methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry_script", required=True)
    parser.add_argument("--model_dir", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    args = parser.parse_args(argv)

    if args.model_dir:
        os.environ["AZUREML_MODEL_DIR"] = os.path.abspath(args.model_dir)
    script = load_script(os.path.abspath(args.entry_script))
    script.init()
    app = build_app(script)

    # Bind first so the "Listening on" line carries the real port (also with --port 0).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    print(f"Listening on http://{host}:{port}", flush=True)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
