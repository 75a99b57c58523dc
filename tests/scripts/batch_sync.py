"""A sync run() whose work goes through a @batch function (imported as `from scorehost import batch`).

The body is {"x": number} or {"x": "boom"}; the answer is {"y": 2x, "batch": size of the batch it ran in}.
A "boom" input makes the batch function raise, so its batch falls back to one call at a time and only
that call fails.
"""

import json
import threading
import time

from scorehost import batch

lock = threading.Lock()


def init():
    pass


@batch(max_batch_size=8, max_delay_ms=20)
def double(items):
    time.sleep(0.02)  # long enough for concurrent calls to pile up behind a running batch
    if any(x == "boom" for x in items):
        raise ValueError("boom")
    return [{"y": 2 * x, "batch": len(items)} for x in items]


def run(data):
    return double(json.loads(data)["x"])
