"""Model data collection in real servers: entry scripts in workers, sampling, disks that fail, SIGTERM.

Every test reads the files back strictly: each ``.jsonl.gz`` must decompress, each line must be
JSON, and no file may end mid-line. Drop counters are read from the shutdown summary line.
"""

from __future__ import annotations

import gzip
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from server.collect.sampling import sampled

pytestmark = pytest.mark.slow
SUMMARY = re.compile(
    r"collection stopped: (\d+) record\(s\) written .*dropped (\d+) \(queue full (\d+), write errors (\d+)"
)


def read_all(root: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        assert not path.name.endswith("-partial"), f"unfinished temporary file left: {path}"
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        assert path.name.endswith((".jsonl", ".jsonl.gz")), path
        assert not data or data.endswith(b"\n"), f"{path} ends mid-line"
        records += [orjson.loads(line) for line in data.splitlines()]
    return records


def by_collection(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["collection"], []).append(r)
    return out


def stop(server: Any) -> tuple[int, int, int, int]:
    """SIGTERM, wait, and the summary: (written, dropped, queue full, write errors)."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0, server.log
    match = SUMMARY.search(server.log)
    assert match, server.log
    written, dropped, full, errors = (int(g) for g in match.groups())
    return written, dropped, full, errors


def collecting(tmp_path: Path, **env: str) -> dict[str, str]:
    return {"SCOREHOST_COLLECT_MODEL_DATA": "true", "SCOREHOST_COLLECT_DIR": str(tmp_path / "dc"), **env}


def post(c: httpx.Client, body: Any, client_id: str | None = None) -> httpx.Response:
    headers = {"x-ms-client-request-id": client_id} if client_id else {}
    r = c.post("/score", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r


def test_model_data_collector_from_a_real_entry_script(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        "collect_mdc.py", **collecting(tmp_path, WORKER_COUNT="2", SCOREHOST_MAX_CONCURRENT_REQUESTS="2")
    )
    answers: dict[str, dict[str, Any]] = {}
    with server.client() as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # both workers: each collects once in init()
            if c.get("/health/ready").json().get("workers_ready") == 2:
                break
            time.sleep(0.05)
        for i in range(6):
            r = post(c, {"data": [[1, 2], [3, 4 + i]]}, client_id=f"client-{i}")
            answers[r.headers["x-request-id"]] = r.json()
    written, dropped, _, _ = stop(server)
    groups = by_collection(read_all(tmp_path / "dc"))
    assert dropped == 0 and written == sum(map(len, groups.values()))
    assert {r["xrequestid"] for r in groups["request"]} == set(answers) == {r["xrequestid"] for r in groups["response"]}
    for r in groups["request"] + groups["response"]:
        assert r["status"] == 200 and r["latency_ms"] > 0 and r["correlationid"].startswith("client-")
    for r in groups["request"]:  # the text as sent (collect_embed_json is off)
        assert r["data"].startswith('{"data":[[1,2],[3,') and r["datacontenttype"] == "application/json"
    inputs = [r for r in groups["inputs"] if r["xrequestid"]]
    assert len(groups["inputs"]) == 8, "one per request, and one per worker from init()"
    for r in inputs:
        correlations = answers[r["xrequestid"]]["correlations"]
        assert r["correlationid"] == correlations["$aml_dc_correlation_id"]
        assert correlations["$aml_request_id"] == r["xrequestid"] and correlations["$aml_model_name"] == "best_model"
        assert r["type"] == "azureml.monitoring.inputs" and r["model"] == "best_model"
        assert r["data"][0] == {"f1": 1, "f2": 2} and r["collectdatatype"] == "numpy.ndarray"
    predictions = {r["xrequestid"]: r for r in groups["predictions"]}
    assert set(predictions) == set(answers)
    for rid, answer in answers.items():
        assert predictions[rid]["correlationid"] == answer["correlations"]["$aml_dc_correlation_id"]
        assert predictions[rid]["data"] == [{"prediction": v} for v in answer["result"]]
    assert all(p.parts[len((tmp_path / "dc").parts)] in ("request", "response", "mdc")
               for p in (tmp_path / "dc").rglob("*.gz"))  # fmt: skip


def test_collector_from_a_real_entry_script(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("pandas")
    server = start_server("collect_collector.py", **collecting(tmp_path))
    answers: dict[str, dict[str, Any]] = {}
    with server.client() as c:
        for i in range(4):
            r = post(c, {"data": [[1, 2], [3, i]], "bad_type": i == 3})
            answers[r.headers["x-request-id"]] = r.json()
    server.wait_for_log("collect error: data type \\(object\\) not supported")
    stop(server)
    groups = by_collection(read_all(tmp_path / "dc"))
    assert all(a["same"] for a in answers.values()), "collect() returns the context it was given"
    outputs = {r["xrequestid"]: r for r in groups["model_outputs"]}
    inputs = {r["xrequestid"]: r for r in groups["model_inputs"]}
    assert set(outputs) == set(inputs) == set(answers)
    for rid, answer in answers.items():
        assert inputs[rid]["correlationid"] == outputs[rid]["correlationid"] == answer["correlation"]
        assert outputs[rid]["data"] == [{"prediction": p} for p in answer["prediction"]]
        assert re.fullmatch(r"pandas\.(core\.frame\.)?DataFrame", inputs[rid]["collectdatatype"])
        assert inputs[rid]["type"] == "azureml.inference.model_inputs"


def test_sampling_keeps_a_request_and_its_records_together(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("collect_mdc.py", **collecting(tmp_path, SCOREHOST_COLLECT_SAMPLING_RATE="0.3"))
    rids = [str(uuid.uuid4()) for _ in range(120)]
    with server.client() as c:
        for rid in rids:
            assert c.post("/score", json={"data": [[1, 2]]}, headers={"x-request-id": rid}).status_code == 200
    stop(server)
    groups = by_collection(read_all(tmp_path / "dc"))
    expected = {rid for rid in rids if sampled(rid, 0.3)}
    assert 15 < len(expected) < 60
    for name in ("request", "response", "predictions"):
        assert {r["xrequestid"] for r in groups[name]} == expected, name
    assert {r["xrequestid"] for r in groups["inputs"] if r["xrequestid"]} == expected


def test_truncation_and_streamed_replies(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("streamer.py", **collecting(tmp_path, SCOREHOST_COLLECT_MAX_RECORD_BYTES="100"))
    with server.client() as c:
        r = c.post("/score", json={"form": "plain", "n": 3, "pad": "p" * 500})
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
    stop(server)
    groups = by_collection(read_all(tmp_path / "dc"))
    (request,) = groups["request"]
    assert "response" not in groups, "a streamed reply: its request only"
    assert request["truncated"] and request["datasize"] > 500 and len(request["data"]) == 100


def test_an_unwritable_directory_at_start(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", **collecting(tmp_path, SCOREHOST_COLLECT_DIR="/proc/scorehost-modeldata"))
    with server.client() as c:
        for _ in range(5):
            post(c, {"x": 1})
            time.sleep(0.06)
    written, dropped, _, errors = stop(server)
    assert written == 0 and errors == dropped == 10
    assert server.log.count("Model data collection cannot write") == 1


def test_the_directory_going_away_mid_run(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", **collecting(tmp_path))
    dc = tmp_path / "dc"
    with server.client() as c:
        post(c, {"before": 1})
        time.sleep(0.6)  # written (the writer drains every 0.2 s)
        shutil.rmtree(dc)
        dc.write_text("not a folder any more")
        for _ in range(5):
            post(c, {"after": 1})
            time.sleep(0.06)
    written, dropped, _, errors = stop(server)
    assert written == 2 and errors == dropped == 10, server.log
    assert server.log.count("Model data collection cannot write") == 1
    assert "removed or replaced" in server.log and "Not a directory" in server.log


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_mid_run(start_server, tiny_disk: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", SCOREHOST_COLLECT_MODEL_DATA="true", SCOREHOST_COLLECT_DIR=str(tiny_disk / "dc"))
    with server.client() as c:
        for i in range(70):
            post(c, {"i": i, "pad": "q" * 2000})
            if i % 10 == 9:
                time.sleep(0.3)  # several batches: the first ones fit
    written, dropped, _, errors = stop(server)
    assert written > 0 and errors > 0 and dropped == errors
    assert server.log.count("Model data collection cannot write") == 1
    assert "No space left on device" in server.log
    assert len(read_all(tiny_disk / "dc")) == written, "what was written is whole, compressed or not"


def test_sigterm_under_load_leaves_complete_files(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("echo.py", **collecting(tmp_path, WORKER_COUNT="2", SCOREHOST_MAX_CONCURRENT_REQUESTS="4",
                                                  SCOREHOST_GRACEFUL_TIMEOUT_S="10"))  # fmt: skip
    answered: list[str] = []
    stopping = threading.Event()

    def load() -> None:
        with server.client(timeout=5) as c:
            while not stopping.is_set():
                try:
                    r = c.post("/score", json={"load": "x" * 200})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    answered.append(r.headers["x-request-id"])

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    sent_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    took = time.monotonic() - sent_at
    stopping.set()
    for t in threads:
        t.join(10)
    match = SUMMARY.search(server.log)
    assert match and int(match.group(2)) == 0, server.log
    records = read_all(tmp_path / "dc")
    assert len(answered) > 50
    assert set(answered) <= {r["xrequestid"] for r in records if r["collection"] == "request"}
    assert len(records) == int(match.group(1))
    assert took < 10, "the last batch is written within the graceful timeout"


def test_a_worker_imports_nothing_heavy_for_collection(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server("loaded_modules.py", **collecting(tmp_path, SCOREHOST_COLLECT_FORMAT="parquet"))
    with server.client() as c:
        assert post(c, ["pyarrow", "pandas", "gzip"]).json() == []
    stop(server)
