"""Streams its answer. The JSON body picks the form:

{"form": "plain"|"aml"|"sse"|"raise"|"empty"|"json", "n": chunks, "delay_ms": gap,
 "first_delay_ms": before the first chunk, "marker": file written when the generator closes,
 "progress": file holding the index of the last item produced}
"""

import json
import os
import time

from azureml_inference_server_http.api.aml_response import AMLResponse


def init():
    pass


def _tokens(req):
    n = req.get("n", 3)
    try:
        time.sleep(req.get("first_delay_ms", 0) / 1000)
        for i in range(n):
            if i:
                time.sleep(req.get("delay_ms", 0) / 1000)
            if req.get("form") == "raise" and i == req.get("raise_at", 2):
                raise RuntimeError("boom midway")
            if req.get("progress"):
                with open(req["progress"], "w") as f:
                    f.write(str(i))
            if req.get("form") == "json":
                yield {"i": i}
            else:
                yield req.get("chunk", f"tok{i} ")
    finally:
        marker = req.get("marker")
        if marker:
            with open(marker, "w") as f:
                f.write(str(os.getpid()))


def run(data):
    req = json.loads(data)
    form = req.get("form", "plain")
    if form == "aml":
        return AMLResponse(_tokens(req), 200, {"X-Stream": "yes"})
    if form == "sse":
        return AMLResponse((f"data: {t}\n\n" for t in _tokens(req)), 200, {"Content-Type": "text/event-stream"})
    if form == "empty":
        return (x for x in ())
    return _tokens(req)
