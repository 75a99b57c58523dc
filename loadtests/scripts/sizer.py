"""Transfer entry script for loadtests/transfer.py: large bodies in, large replies out.

POST: answers the request body's length in bytes (JSON ``{"bytes": N}``), so the client
knows the server got all of it. GET ``?reply=N``: answers N bytes as
application/octet-stream. run() itself costs next to nothing, so the time measured is
the server moving the bytes (client to HTTP process to worker, and back).
"""

from __future__ import annotations

from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp  # type: ignore[import-not-found]
from azureml_inference_server_http.api.aml_response import AMLResponse  # type: ignore[import-not-found]

# The largest reply one request may ask for: the benchmark's largest size, with room.
MAX_REPLY_BYTES = 200 * 1024 * 1024

# The last reply built, by size: a benchmark asks for the same size several times in a
# row, and building 99 MB on every request would add its own cost to each reply measured.
_last: dict[int, bytes] = {}


def init() -> None:
    pass


def _reply(size: int) -> bytes:
    reply = _last.get(size)
    if reply is None:
        reply = b"x" * size
        _last.clear()  # one reply kept, so memory stays at one reply's size
        _last[size] = reply
    return reply


@rawhttp  # type: ignore[untyped-decorator]  # the server provides it at run time, untyped
def run(request: AMLRequest) -> AMLResponse:
    if request.method == "GET":
        try:
            size = int(request.args.get("reply", "0"))
        except ValueError:
            return AMLResponse({"message": "reply must be a number of bytes"}, 400, json_str=True)
        if not 0 <= size <= MAX_REPLY_BYTES:
            return AMLResponse({"message": f"reply must be 0 to {MAX_REPLY_BYTES} bytes"}, 400, json_str=True)
        return AMLResponse(_reply(size), 200, {"Content-Type": "application/octet-stream"})
    return AMLResponse({"bytes": len(request.get_data())}, 200, json_str=True)
