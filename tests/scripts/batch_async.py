"""An async run() whose work goes through an async @batch function (`from server.batching import batch`).

The body is {"x": number}; the answer is {"y": x + 1, "batch": size of the batch it ran in}.
{"x": "slow"} makes its batch take 2 s: the calls behind it wait, and with a short scoring
timeout their deadline passes while they wait.
"""

import asyncio
import json

from server.batching import batch


def init():
    pass


@batch(max_batch_size=16, max_delay_ms=5)
async def add_one(items):
    await asyncio.sleep(2.0 if "slow" in items else 0.01)
    return [{"y": (x + 1) if x != "slow" else None, "batch": len(items)} for x in items]


async def run(data):
    return await add_one(json.loads(data)["x"])
