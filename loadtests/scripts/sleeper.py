"""Sleeper entry script for the timeout profile.

The request says how long run() takes: ``{"sleep_ms": 600}``. A share of slow requests
then passes a short ``SCORING_TIMEOUT_MS`` while the rest stay fast.
"""

import json
import time

# A request can never hold a worker thread longer than this, whatever it asks for.
MAX_SLEEP_MS = 60_000.0


def init() -> None:
    pass


def run(raw_data: str) -> dict[str, float]:
    request = json.loads(raw_data)
    sleep_ms = min(max(float(request.get("sleep_ms", 0.0)), 0.0), MAX_SLEEP_MS)
    if sleep_ms:
        time.sleep(sleep_ms / 1000.0)
    return {"slept_ms": sleep_ms}
