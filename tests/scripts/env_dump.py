"""Reports what user code can see of its process environment."""

import os


def init():
    pass


def run(data):
    with open("/proc/self/environ", "rb") as f:
        raw = f.read().decode("utf-8", "replace")
    return {"environ": dict(os.environ), "proc_environ": raw}
