"""Reports which of the top-level packages named in the request body are imported in the worker."""

import json
import sys


def init():
    pass


def run(data):
    wanted = json.loads(data)
    return sorted({m.split(".")[0] for m in sys.modules} & set(wanted))
