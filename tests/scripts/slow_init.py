import os
import time


def init():
    time.sleep(float(os.environ.get("SLOW_INIT_S", "3")))


def run(data):
    return {"ok": True}
