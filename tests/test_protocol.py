"""Frames between the HTTP process and workers: every message type round-trips."""

from __future__ import annotations

import math
import time

import orjson
import pytest

from server.errors import BadRequest, ScoringTimeout, error_body
from server.workers import protocol
from server.workers.protocol import Call, Kind, MetaLevel, Ready, Reply, RunMode, ScriptInfo, Target


def frames_of(data: bytes, step: int) -> list[memoryview]:
    buf = protocol.FrameBuffer()
    got: list[memoryview] = []
    for i in range(0, len(data), step):
        got.extend(buf.feed(data[i : i + step]))
    return got


@pytest.mark.parametrize("step", [1, 3, 7, 4096])
def test_call_round_trip_across_partial_reads(step: int) -> None:
    call = Call(7, Target.V2, "POST", "rid-ü", b"\x00body", time.monotonic() + 5, 12.5, "a=1&b=%5B", "application/json",
                "/v2/models/m/infer", [("host", "x"), ("x-a", "ü")],
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")  # fmt: skip
    data = protocol.encode_call(call) + protocol.encode_message(Kind.STOP)
    got = frames_of(data, step)
    assert len(got) == 2
    assert protocol.decode_call(got[0]) == call
    assert got[1][0] == Kind.STOP


def test_call_without_metadata() -> None:
    call = Call(1, Target.SCORE, "GET", "r", b"", 3.0)
    back = protocol.decode_call(protocol.FrameBuffer().feed(protocol.encode_call(call))[0])
    assert back == call and back.start_by == math.inf and back.headers == [] and back.traceparent == ""


def test_reply_round_trip() -> None:
    reply = Reply(201, b"data", "text/plain", [("X-A", "1")], True, 1.25, started_at=time.monotonic())
    frame = protocol.FrameBuffer().feed(protocol.encode_reply(9, reply))[0]
    call_id, back = protocol.decode_reply(frame)
    assert call_id == 9 and back == reply and back.started_at == reply.started_at
    plain = Reply(200, b"{}")
    assert protocol.decode_reply(protocol.FrameBuffer().feed(protocol.encode_reply(1, plain))[0])[1] == plain
    head = Reply(200, b"", "text/event-stream", stream=True)
    assert protocol.decode_reply(protocol.FrameBuffer().feed(protocol.encode_reply(2, head))[0])[1] == head


def test_stream_frames_round_trip() -> None:
    data = protocol.encode_chunk(5, b"tok") + protocol.encode_end(5, failed=True) + protocol.encode_end(6)
    data += protocol.encode_credit(5, 2**40) + protocol.encode_cancel(5)
    chunk, end_failed, end_ok, credit, cancel = frames_of(data, 2)
    assert chunk[0] == Kind.CHUNK and protocol.decode_id(chunk) == 5 and protocol.chunk_data(chunk) == b"tok"
    assert protocol.decode_end(end_failed) == (5, True) and protocol.decode_end(end_ok) == (6, False)
    assert credit[0] == Kind.CREDIT and protocol.decode_credit(credit) == (5, 2**40)
    assert cancel[0] == Kind.CANCEL and protocol.decode_id(cancel) == 5


def test_ready_round_trip_with_script_info() -> None:
    info = ScriptInfo(RunMode.SCHEMA, True, MetaLevel.CONTENT_TYPE, ["data"], {"type": "object"}, None, ["2", "3"])
    for ready in (Ready(42, info, None), Ready(7, None, {"loaded": 3, "total": 3})):
        frame = protocol.FrameBuffer().feed(protocol.encode_ready(ready))[0]
        assert frame[0] == Kind.READY and protocol.decode_ready(frame) == ready


def test_messages() -> None:
    frame = protocol.FrameBuffer().feed(protocol.encode_message(Kind.FAILED, {"message": "boom"}))[0]
    assert frame[0] == Kind.FAILED and protocol.decode_message(frame) == {"message": "boom"}
    stats = {"counts": {"loaded": 1}, "loads": 1, "evictions": 0, "models": [["m", "1", "loaded", 0.5, 3, 0]]}
    frame = protocol.FrameBuffer().feed(protocol.encode_message(Kind.STATS, stats))[0]
    assert frame[0] == Kind.STATS and protocol.decode_message(frame) == stats


def test_error_body_is_one_renderer() -> None:
    reply = Reply.from_error(BadRequest("bad"), v2=True)
    assert reply.status == 400 and orjson.loads(reply.body) == {"message": "bad", "error": "bad"}
    timeout = Reply.from_error(ScoringTimeout(5))
    assert timeout.status == 504 and timeout.run_failed
    # A foreign exception never leaks its text (it may hold paths).
    status, body, _, _ = error_body(RuntimeError("/secret/path exploded"))
    assert status == 500 and b"/secret" not in body


def test_large_frame_assembles_in_linear_time() -> None:
    body = b"x" * (64 * 1024 * 1024)
    data = protocol.encode_call(Call(1, Target.SCORE, "POST", "r", body, 1.0))
    started = time.perf_counter()
    frames = frames_of(data, 64 * 1024)  # 1,024 reads, as a socket delivers them
    assert protocol.decode_call(frames[0]).body == body
    # Quadratic assembly copied the whole buffer per read: ~30 GB here, tens of seconds.
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize("step", [1, 5, 4096])
def test_collect_round_trip(step: int) -> None:
    from server.workers.protocol import Collected

    record = Collected("model_inputs", "azureml.inference.model_inputs", b'[{"a":1}]', 1764300000.125, "corr-ü",
                       "rid-1", "best_model", "3", "pandas.core.frame.DataFrame", 9, False, 4)  # fmt: skip
    cut = Collected("inputs", "azureml.monitoring.inputs", b'[{"a":"xxx', 2.5, size=10_000, truncated=True)
    got = frames_of(protocol.encode_collect(record) + protocol.encode_collect(cut), step)
    assert [f[0] for f in got] == [Kind.COLLECT, Kind.COLLECT]
    assert protocol.decode_collect(got[0]) == record
    assert protocol.decode_collect(bytes(got[1])) == cut
