import asyncio
import json


def init():
    pass


async def run(data):
    req = json.loads(data) if data else {}
    await asyncio.sleep(float(req.get("sleep_ms", 0)) / 1000)
    return {"async": True, "echo": req}
