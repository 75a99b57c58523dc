"""Frames between the HTTP process and workers."""

from __future__ import annotations

import orjson

from server.workers import protocol
from server.workers.protocol import Reply


def test_call_round_trip_across_partial_reads() -> None:
    frames = protocol.encode_call(7, protocol.TARGET_V2, "POST", "rid-ü", b"\x00body", orjson.dumps({"q": "a=1"}))
    frames += protocol.encode_message(protocol.STOP)
    buf = protocol.FrameBuffer()
    got = []
    for i in range(len(frames)):  # one byte at a time
        got.extend(buf.feed(frames[i : i + 1]))
    call = protocol.decode_call(got[0])
    assert (call.call_id, call.target, call.method, call.request_id, call.body, call.meta) == (
        7, protocol.TARGET_V2, "POST", "rid-ü", b"\x00body", {"q": "a=1"})
    assert got[1][0] == protocol.STOP


def test_reply_round_trip() -> None:
    reply = Reply(201, b"data", "text/plain", [("X-A", "1")], True, 1.25)
    frame = protocol.FrameBuffer().feed(protocol.encode_reply(9, reply))[0]
    call_id, back = protocol.decode_reply(frame)
    assert call_id == 9 and back == reply
    plain = Reply(200, b"{}")
    assert protocol.decode_reply(protocol.FrameBuffer().feed(protocol.encode_reply(1, plain))[0])[1] == plain


def test_messages() -> None:
    frame = protocol.FrameBuffer().feed(protocol.encode_message(protocol.READY, {"pid": 3}))[0]
    assert frame[0] == protocol.READY and protocol.decode_message(frame) == {"pid": 3}
