"""Reports which HTTP-stack modules are loaded in the worker process."""

import sys


def init():
    pass


def run(data):
    return sorted(m for m in sys.modules if m.split(".")[0] in ("uvicorn", "starlette", "httptools"))
