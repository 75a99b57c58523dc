"""Sleeps for the milliseconds given in the request: {"sleep_ms": N}; "mode" picks how:
"sleep" (time.sleep), "spin" (pure Python loop), "nogil" (hashlib.pbkdf2_hmac, a C call
that releases the GIL) or "gil" (one C call that holds the GIL for the whole time:
sum() over a range, which never returns to the interpreter loop)."""

import hashlib
import json
import time

_NS_PER_ITEM = 10.0


def init():
    global _NS_PER_ITEM
    start = time.perf_counter()
    sum(range(2_000_000))
    _NS_PER_ITEM = (time.perf_counter() - start) * 1e9 / 2_000_000


def _gil_hold(ms):
    sum(range(int(ms * 1e6 / _NS_PER_ITEM)))


def run(data):
    req = json.loads(data) if data else {}
    ms = float(req.get("sleep_ms", 0))
    mode = req.get("mode", "sleep")
    start = time.perf_counter()
    if mode == "sleep":
        time.sleep(ms / 1000)
    elif mode == "spin":
        while (time.perf_counter() - start) * 1000 < ms:
            pass
    elif mode == "nogil":
        iterations = int(req.get("iterations", 200_000))
        hashlib.pbkdf2_hmac("sha256", b"password", b"salt", iterations)
    elif mode == "gil":
        _gil_hold(ms)
    return {"slept_ms": round((time.perf_counter() - start) * 1000, 1), "mode": mode}
