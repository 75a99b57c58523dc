import numpy as np


def init():
    pass


def run(data, request_headers):
    return {
        "data": data,
        "agent": request_headers.get("User-Agent"),
        "rid": request_headers.get("X-Request-Id"),
        "arr": np.arange(3, dtype=np.int64),
        "scalar": np.float32(1.5),
        "view": np.arange(6)[::2],
    }
