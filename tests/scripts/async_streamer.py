"""An async run() that returns an async generator of tokens; {"marker": path} is written on close."""

import asyncio
import json


def init():
    pass


async def _tokens(req):
    try:
        for i in range(req.get("n", 3)):
            await asyncio.sleep(req.get("delay_ms", 0) / 1000)
            yield f"a{i} "
    finally:
        if req.get("marker"):
            with open(req["marker"], "w") as f:
                f.write("closed")


async def run(data):
    return _tokens(json.loads(data))
