"""Defines its own prometheus_client metrics: a counter of run() calls, a live gauge per worker,
and a histogram. Returns its pid and the multiprocess folder it writes to."""

import os

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter("user_calls", "run() calls, all workers")
UP = Gauge("user_worker_up", "1 per live worker", multiprocess_mode="livesum")
SIZES = Histogram("user_body_bytes", "Request body sizes", buckets=(1, 10, 100))


def init():
    UP.set(1)


def run(data):
    CALLS.inc()
    SIZES.observe(len(data))
    return {"pid": os.getpid(), "dir": os.environ.get("PROMETHEUS_MULTIPROC_DIR")}
