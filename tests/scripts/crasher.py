"""Kills its own process when asked: {"crash": true}; otherwise echoes."""

import json
import os
import signal


def init():
    pass


def run(data):
    if json.loads(data).get("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"alive": True, "pid": os.getpid()}
