"""Returns the pid of the worker's parent (the HTTP front that owns it) after sleeping
``sleep_ms`` of the request ({"sleep_ms": N}); with ``COUNT_DIR`` set, records how many calls
run at once: each call drops a marker file there, counts the markers, and appends the count to
``COUNT_DIR/seen`` (one small O_APPEND write: whole lines, whatever runs at the same time)."""

import json
import os
import time
import uuid


def init():
    pass


def run(data):
    req = json.loads(data) if data else {}
    count_dir = os.environ.get("COUNT_DIR")
    marker = None
    if count_dir:
        marker = os.path.join(count_dir, "running-" + uuid.uuid4().hex)
        open(marker, "w").close()
        running = sum(1 for name in os.listdir(count_dir) if name.startswith("running-"))
        fd = os.open(os.path.join(count_dir, "seen"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            os.write(fd, f"{running}\n".encode())
        finally:
            os.close(fd)
    try:
        time.sleep(float(req.get("sleep_ms", 0)) / 1000)
    finally:
        if marker:
            os.remove(marker)
    return {"ppid": os.getppid(), "pid": os.getpid()}
