"""Model data collection, in process: settings, records, the writer's queue, sinks and compat classes.

The servers that run it for real (entry scripts in workers, SIGTERM, disks that fail) are in
tests/test_collect_server.py.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ROOT

from server.collect import outbox, sinks
from server.collect.records import RecordMaker, model_identity, payload, safe_name
from server.collect.sampling import sampled
from server.collect.writer import PayloadCollector
from server.settings import Settings
from server.workers.protocol import Collected, FrameBuffer, decode_collect

JSON = [(b"content-type", b"application/json")]


def make(tmp_path: Path, **values: Any) -> PayloadCollector:
    settings = Settings(collect_model_data=True, collect_dir=str(tmp_path / "dc"), **values)
    return PayloadCollector(settings, str(tmp_path))


def score(c: PayloadCollector, body: bytes = b'{"data": [1, 2]}', reply: bytes | None = b"[3]", **kw: Any) -> str:
    rid = kw.pop("rid", str(uuid.uuid4()))
    c.score("POST", (rid, kw.pop("client", None), None), b"application/json", body, kw.pop("status", 200), reply,
            JSON, time.perf_counter())  # fmt: skip
    return rid


def files(root: Path, suffix: str = "") -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffix))


def read_records(root: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in files(root):
        if path.name.endswith(".jsonl.gz"):
            data = gzip.decompress(path.read_bytes())
        elif path.name.endswith(".jsonl"):
            data = path.read_bytes()
        else:
            continue
        assert data.endswith(b"\n") or not data, f"{path} ends mid-line"
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


def drained(c: PayloadCollector) -> None:
    """Wait (bounded) until the writer thread has taken everything queued."""
    deadline = time.monotonic() + 5
    while c.queue and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and written it


def finish(c: PayloadCollector) -> None:
    """What close() does, without the thread: write, close every segment, finish them."""
    c.drain()
    c.segments.close_all()
    assert c.finisher.stop(time.monotonic() + 10)


# --- settings -------------------------------------------------------------------------------------------
def test_settings_names_and_azure_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AML_MODEL_DC_STORAGE_ENABLED", "True")
    monkeypatch.setenv("SCOREHOST_COLLECT_PAYLOADS", "Response")
    monkeypatch.setenv("SCOREHOST_COLLECT_ROLLING_RATE", "Minute")
    s = Settings()
    assert s.collect_model_data and s.collect_payloads == ["response"] and s.collect_rolling_rate == "minute"
    assert s.resolved_collect_dir("/app") == "/app/modeldata"
    monkeypatch.setenv("AML_MODEL_DC_STORAGE_ENABLED", "storage-account-string")  # not a true word: off
    monkeypatch.setenv("SCOREHOST_COLLECT_PAYLOADS", "")
    assert not Settings().collect_model_data and Settings().collect_payloads == []
    monkeypatch.setenv("SCOREHOST_COLLECT_MODEL_DATA", "false")  # ours wins over the Azure name
    monkeypatch.setenv("AML_MODEL_DC_STORAGE_ENABLED", "true")
    assert not Settings().collect_model_data


BAD_SETTINGS = [("collect_sampling_rate", "1.5"), ("collect_format", "csv"), ("collect_payloads", "request,headers"),
                ("collect_rolling_rate", "week")]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("SCOREHOST_" + name.upper(), value)
    with pytest.raises(ValidationError):
        Settings()


# --- records ----------------------------------------------------------------------------------------------
def test_sampling_is_decided_by_request_id() -> None:
    ids = [str(uuid.uuid4()) for _ in range(20_000)]
    kept = [i for i in ids if sampled(i, 0.25)]
    assert 0.22 < len(kept) / len(ids) < 0.28
    assert all(sampled(i, 0.25) for i in kept), "the same id, the same answer (in every process)"
    assert all(sampled(i, 1.0) for i in ids[:10]) and not any(sampled(i, 0.0) for i in ids[:100])


def test_payloads_are_embedded_as_json_text_or_base64() -> None:
    def line(value: Any) -> Any:
        return orjson.loads(orjson.dumps({"data": value}))["data"]

    data, enc = payload(b'{"a": [1, 2]}', "", False)
    assert line(data) == {"a": [1, 2]} and enc is None
    data, enc = payload(b'{\n  "pretty": true\n}', "application/json", False)
    assert b"\n" not in orjson.dumps(data) and line(data) == {"pretty": True}
    assert payload(b"plain text", "text/plain", False) == ("plain text", None)
    assert payload(b"{not json", "application/json", False) == ("{not json", None)
    assert payload(b"\xff\x00\x01", "application/octet-stream", False) == ("/wAB", "base64")
    assert payload("aé".encode()[:2], "", True) == ("a", None), "a cut inside the last character"
    assert payload(b'{"a": 1', "application/json", True) == ('{"a": 1', None), "truncated: never parsed"
    assert payload(b"", "", False) == (None, None)


def test_names_and_model_identity() -> None:
    assert safe_name("../etc/passwd") == ".._etc_passwd" and safe_name("..") == "_" and safe_name("a b") == "a_b"
    assert model_identity("/var/azureml-app/azureml-models/sklearn_mnist/3") == ("sklearn_mnist", "3")
    assert model_identity("./examples/model/") == ("model", "") and model_identity(None) == ("", "")


def test_record_fields(tmp_path: Path) -> None:
    model_dir = str(tmp_path / "azureml-models" / "mnist" / "7")
    maker = RecordMaker(model_dir, "blue", "1.2", ["request", "response"], embed_json=True)
    at = 1764300000.5
    entry = (10, at, 1.23456, 201, "rid", "client", "POST", b"application/json", b'{"x":1}', 7, b"ok", 2, None)
    (f1, t1, req), (f2, _, resp) = list(maker.score(entry))
    request, response = orjson.loads(req), orjson.loads(resp)
    assert (f1, f2, t1) == ("request", "response", int(at)) and req.endswith(b"\n") and req.count(b"\n") == 1
    assert request == request | {
        "specversion": "1.0", "type": "azureml.inference.request", "collection": "request",
        "time": "2025-11-28T03:20:00.500Z", "datacontenttype": "application/json", "data": {"x": 1},
        "truncated": False, "datasize": 7, "xrequestid": "rid", "correlationid": "client", "path": "/score",
        "method": "POST", "status": 201, "latency_ms": 1.235, "model": "mnist", "deployment": "blue",
        "modelversion": "7", "agent": "scorehost/1.2",
    }  # fmt: skip
    assert response["type"] == "azureml.inference.response" and response["data"] == "ok"
    assert response["datacontenttype"] is None and request["id"] != response["id"]
    ((_, _, text_line),) = RecordMaker(model_dir, "blue", "1.2", ["request"]).score(entry)
    assert orjson.loads(text_line)["data"] == '{"x":1}', "by default: the text as sent"
    mdc = Collected("inputs", "azureml.monitoring.inputs", b'[{"f1":1}]', at, "c", "rid", "best", "", "python.list", 10)
    folder, _, line = maker.script(mdc)
    record = orjson.loads(line)
    assert folder == "mdc/best/inputs" and record["model"] == "best" and record["modelversion"] == "7"
    assert record["data"] == [{"f1": 1}] and record["status"] is None and record["collectdatatype"] == "python.list"


# --- the writer ---------------------------------------------------------------------------------------------
def test_records_are_written_with_restrictive_permissions(tmp_path: Path) -> None:
    c = make(tmp_path, collect_rolling_rate="day")
    c.finisher.start(recover=False)
    rid = score(c, client="client-1")
    c.drain()
    active = files(tmp_path / "dc", ".jsonl")
    assert len(active) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in active)
    assert [len(p.relative_to(tmp_path / "dc").parts) for p in active] == [5, 5]  # folder/yyyy/MM/dd/file
    for folder in (p for p in (tmp_path / "dc").rglob("*") if p.is_dir()):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    finish(c)
    assert len(files(tmp_path / "dc", ".jsonl.gz")) == 2 and not files(tmp_path / "dc", ".jsonl")
    got = read_records(tmp_path / "dc")
    assert {r["collection"] for r in got} == {"request", "response"}
    assert all(r["xrequestid"] == rid and r["correlationid"] == "client-1" for r in got)
    assert c.written == 2 and c.dropped == 0


def test_rotation_by_time_and_size(tmp_path: Path) -> None:
    c = make(tmp_path, collect_rolling_rate="minute", collect_max_file_bytes=2048, collect_payloads="request")
    c.finisher.start(recover=False)
    base = (int(time.time()) // 60 - 3) * 60 + 10.0  # three minutes ago
    for minute in range(2):
        for i in range(3):
            body = b'{"n": %d, "pad": "%s"}' % (i, b"x" * 400)
            c.queue.append((len(body), base + 60 * minute + i, 1.0, 200, f"r{minute}{i}", None, "POST", None, body,
                            len(body), None, 0, None))  # fmt: skip
            c.drain()  # one batch per record: the size limit splits the minute
    c.segments.tick(time.time())  # the last minute is over too: rotated without a new record
    assert c.finisher.stop(time.monotonic() + 10)
    finished = files(tmp_path / "dc", ".jsonl.gz")
    minutes = {p.parent.relative_to(tmp_path / "dc" / "request").parts for p in finished}
    assert len(minutes) == 2 and all(len(parts) == 5 for parts in minutes)  # yyyy/MM/dd/HH/mm
    assert len(finished) == 4, "two files per minute: 2,048 bytes hold two records"
    assert sorted(r["xrequestid"] for r in read_records(tmp_path / "dc")) == ["r00", "r01", "r02", "r10", "r11", "r12"]


def test_truncation_is_flagged(tmp_path: Path) -> None:
    c = make(tmp_path, collect_max_record_bytes=64)
    score(c, body=b'{"data": "' + b"y" * 1000 + b'"}', reply=b"short")
    finish(c)
    request, response = sorted(read_records(tmp_path / "dc"), key=lambda r: r["collection"])
    assert request["truncated"] and request["datasize"] == 1012 and request["data"] == '{"data": "' + "y" * 54
    assert not response["truncated"] and response["data"] == "short"


def test_a_full_queue_drops_counts_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = make(tmp_path, collect_queue_size=5)
    with caplog.at_level(logging.WARNING, logger="scorehost.collect"):
        for _ in range(25):
            score(c)
    assert len(c.queue) == 5 and c.dropped_full == 20 and c.dropped == 20
    assert caplog.text.count("queue is full") == 1, "at most once a minute"
    c2 = make(tmp_path, collect_queue_bytes=64 * 1024)
    for _ in range(3):
        score(c2, body=b"z" * 40_000)
    assert len(c2.queue) == 1 and c2.dropped_full == 2, "the byte bound too"
    finish(c)
    assert len(read_records(tmp_path / "dc")) == 10 and c.counters()["dropped_queue_full"] == 20


def test_an_unwritable_directory_drops_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "dc").write_text("a file where the folder should be")
    c = make(tmp_path)
    with caplog.at_level(logging.INFO, logger="scorehost.collect"):
        c.start()
        for _ in range(3):
            score(c)
            drained(c)  # several failed batches
        (tmp_path / "dc").unlink()  # writable again
        score(c)
        c.close(5)
    assert c.dropped_error == 6 and c.written == 2
    assert caplog.text.count("cannot write") == 1 and "Not a directory" in caplog.text
    assert "writing again" in caplog.text and "dropped 6" in caplog.text


def test_a_full_disk_drops_the_batch_and_keeps_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = make(tmp_path, collect_payloads="request")
    score(c)
    c.drain()
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        if len(data) > 10:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(sinks.os, "write", half_then_full)
    score(c)
    score(c)
    c.drain()
    monkeypatch.undo()
    assert c.dropped_error == 2 and c.written == 1
    score(c)
    finish(c)
    assert len(read_records(tmp_path / "dc")) == 2, "every file holds whole lines only"


def test_recovery_finishes_what_a_crash_left(tmp_path: Path) -> None:
    c = make(tmp_path)
    score(c)
    c.drain()
    (active,) = [p for p in files(tmp_path / "dc", ".jsonl") if "request" in p.parts]
    with open(active, "ab") as f:
        f.write(b'{"cut": ')  # a write cut short
    for seg in list(c.segments.open.values()):
        os.close(seg.fd)  # the process "dies": its locks go
    c2 = make(tmp_path)
    c2.finisher.start(recover=True)
    assert c2.finisher.stop(time.monotonic() + 10)
    assert not files(tmp_path / "dc", ".jsonl") and len(files(tmp_path / "dc", ".jsonl.gz")) == 2
    assert len(read_records(tmp_path / "dc")) == 2


def test_a_live_segment_is_not_recovered(tmp_path: Path) -> None:
    c = make(tmp_path)
    score(c)
    c.drain()
    c2 = make(tmp_path)
    c2.finisher.start(recover=True)
    assert c2.finisher.stop(time.monotonic() + 10)
    assert len(files(tmp_path / "dc", ".jsonl")) == 2, "held by flock: left alone"
    finish(c)


def test_parquet_files(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    c = make(tmp_path, collect_format="parquet")
    c.finisher.start(recover=False)
    rids = [score(c, body=b'{"n": %d}' % i, reply=b"\xff\xfe") for i in range(3)]
    frame = FrameBuffer()  # a script's record, as a worker sends it
    from server.workers.protocol import encode_collect

    record = Collected("model_inputs", "azureml.inference.model_inputs", b'[{"a":1}]', time.time(), "ctx", rids[0])
    (view,) = frame.feed(encode_collect(record))
    c.frame(view)
    finish(c)
    paths = files(tmp_path / "dc", ".parquet")
    assert (
        len(paths) == 3
        and not files(tmp_path / "dc", ".jsonl")
        and all(p.stat().st_mode & 0o777 == 0o600 for p in paths)
    )
    table = pq.read_table(tmp_path / "dc" / "request").to_pylist()
    assert sorted(r["xrequestid"] for r in table) == sorted(rids) and table[0]["status"] == 200
    assert table[0]["time"].tzinfo is not None and orjson.loads(table[0]["data"]).keys() == {"n"}
    response = pq.read_table(tmp_path / "dc" / "response").to_pylist()[0]
    assert response["dataencoding"] == "base64" and response["data"] == "//4="
    (inputs,) = pq.read_table(tmp_path / "dc" / "model_inputs").to_pylist()
    assert orjson.loads(inputs["data"]) == [{"a": 1}] and inputs["correlationid"] == "ctx"


def test_pandas_reads_the_directory(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    c = make(tmp_path)
    for _ in range(4):
        score(c)
    finish(c)
    frames = [pd.read_json(p, lines=True) for p in files(tmp_path / "dc" / "request", ".jsonl.gz")]
    frame = pd.concat(frames)
    assert len(frame) == 4 and set(frame["status"]) == {200}


# --- the worker side ---------------------------------------------------------------------------------------
def test_the_outbox_never_blocks_and_reports_its_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.setattr(outbox, "LIMIT_BYTES", 300)
    box = outbox.Outbox()
    sent: list[bytes] = []
    for _ in range(10):  # before the loop runs (init()): held, up to the limit
        box.put(Collected("c", "t", b"x" * 100, 1.0))
    assert box.dropped > 0 and box.dropped < 10

    async def attach() -> None:
        box.attach(asyncio.get_running_loop(), sent.append, lambda: 0)
        await asyncio.sleep(0.01)
        assert box.put(Collected("c", "t", b"y", 2.0))
        await asyncio.sleep(0.01)

    asyncio.run(attach())
    frames = FrameBuffer().feed(b"".join(sent))
    records = [decode_collect(f) for f in frames]
    assert len(records) == 10 - box.dropped + 1 and records[-1].dropped == box.dropped and records[-1].data == b"y"


def test_compat_modules_resolve_and_keep_their_signatures() -> None:
    code = """
import inspect
from server.entry import compat
compat.install()
from azureml.monitoring import ModelDataCollector
from azureml.ai.monitoring import Collector
from azureml.ai.monitoring.context import BasicCorrelationContext, CorrelationContext
import azureml.monitoring.modeldatacollector as m
assert m.ModelDataCollector is ModelDataCollector
print(inspect.signature(ModelDataCollector), inspect.signature(ModelDataCollector.collect))
print(inspect.signature(Collector), inspect.signature(Collector.collect))
# collection off: nothing is recorded, nothing raises, the real return values
assert ModelDataCollector("m", designation="inputs").collect([1, 2]) is None
context = Collector(name="model_inputs").collect([{"a": 1}])
assert isinstance(context, CorrelationContext) and len(context.get_id()) == 36 and str(context) == context.get_id()
given = BasicCorrelationContext(id="abc")
assert Collector(name="x").collect([1], given) is given
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOREHOST_", "AML_", "AZUREML_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "(model_name: 'str', designation: 'str' = 'default', feature_names: 'list[str] | None' = None, "
        "workspace: 'str' = 'default/default/default', webservice_name: 'str' = 'default', "
        "model_version: 'str' = 'default', collection_name: 'str' = 'default') -> 'None' "
        "(self, input_data: 'Any', user_correlation_id: 'str' = '') -> 'dict[str, Any] | None'",
        "(*, name: 'str', on_error: 'Callable[[Exception], Any] | None' = None) -> 'None' "
        "(self, data: 'Any', correlation_context: 'CorrelationContext | None' = None) -> 'CorrelationContext'",
    ]


def test_collect_takes_lists_numpy_and_dataframes() -> None:
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    from server.entry.monitoring import ModelDataCollector, to_json

    assert orjson.loads(to_json([1, 2], ["a", "b"], rows=True) or b"") == [{"a": 1, "b": 2}]
    assert orjson.loads(to_json([[1, 2], [3]], ["a", "b"], rows=True) or b"") == [{"a": 1, "b": 2}, [3]]
    assert orjson.loads(to_json(np.array([[1.5, 2]]), ["a", "b"], rows=True) or b"") == [{"a": 1.5, "b": 2.0}]
    frame = pd.DataFrame({"a": [1, 2], "when": pd.to_datetime(["2026-01-01", "2026-01-02"])})
    assert orjson.loads(to_json(frame) or b"")[1] == {"a": 2, "when": "2026-01-02T00:00:00.000"}
    assert orjson.loads(to_json({"k": np.int64(3)}) or b"") == {"k": 3}
    assert to_json(object()) is None and to_json({"k": 1}, rows=True) is None
    dc = ModelDataCollector("m", designation="inputs")
    correlations = {"$aml_dc_correlation_id": "c", "$aml_request_id": "r"}
    assert dc.add_correlations([1], correlations)[:2] == [1, "c"]
    assert dc.add_correlations(np.array([1, 2]), correlations).shape == (1, 10)
    assert list(dc.add_correlations(pd.DataFrame({"a": [1]}), correlations).columns)[:2] == [
        "a",
        "$aml_dc_correlation_id",
    ]


@pytest.mark.parametrize(
    ("body", "data", "embedded"),
    [(b"{oops", "{oops", "{oops"), (b'{\n "a": 1\n}', '{\n "a": 1\n}', {"a": 1}), (b"\xff\xfe", "//4=", "//4="),
     (b"[1, 2]", "[1, 2]", [1, 2]), (b"", None, None)],
)  # fmt: skip
@pytest.mark.parametrize("embed", [False, True])
def test_every_request_line_is_json(body: bytes, data: Any, embedded: Any, embed: bool) -> None:
    if embed:
        data = embedded
    maker = RecordMaker(None, "d", "1", ["request"], embed_json=embed)
    entry = (len(body), 1.0, 1.0, 200, 'r"1', None, "POST", b"application/json", body, len(body), None, 0, None)
    ((_, _, line),) = maker.score(entry)
    assert line.count(b"\n") == 1 and orjson.loads(line)["data"] == data and orjson.loads(line)["xrequestid"] == 'r"1'


def test_a_removed_folder_is_made_again(tmp_path: Path) -> None:
    import shutil

    c = make(tmp_path, collect_payloads="request")
    score(c)
    c.drain()
    shutil.rmtree(tmp_path / "dc")  # a clean-up job, say
    for seg in c.segments.open.values():
        seg.checked = 0.0  # looked up at the next write
    score(c)
    c.drain()
    assert c.dropped_error == 0 and c.written == 2
    finish(c)
    assert len(read_records(tmp_path / "dc")) == 1, "the first file went with the folder"
