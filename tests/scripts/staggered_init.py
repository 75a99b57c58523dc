"""init() is quick in the first worker to start and slow (``SLOW_INIT_S``) in every other one:
the first worker to create ``INIT_DIR/first`` wins. With one worker per HTTP front, one front is
ready long before the other."""

import os
import time


def init():
    try:
        os.close(os.open(os.path.join(os.environ["INIT_DIR"], "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        time.sleep(float(os.environ.get("SLOW_INIT_S", "2")))


def run(data):
    return {"pid": os.getpid(), "ppid": os.getppid()}
