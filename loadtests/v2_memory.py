"""Peak memory of one large V2 (Open Inference Protocol) request, in-process.

    .venv/bin/python loadtests/v2_memory.py                         # 50 MB JSON FP32 request, twice
    .venv/bin/python loadtests/v2_memory.py --mb 20 --datatype INT64 --requests 3
    .venv/bin/python loadtests/v2_memory.py --binary                # the same tensor, binary extension
    .venv/bin/python loadtests/v2_memory.py --nested                # JSON data as nested rows
    .venv/bin/python loadtests/v2_memory.py --json out.json

The parent writes an identity model (``y = x``, [batch, --width]) and a request body of
about ``--mb`` MB to a temporary folder; a fresh child process reads the body, opens the
store, answers one small warm-up request, then calls ``V2Handler.handle`` ``--requests``
times with the big body and reports, from ``/proc/self/status`` (Linux):

* the RSS before the first big call (the body is already in memory, so it is not counted);
* the peak RSS above that baseline during each call (``VmHWM``, the kernel's high-water
  mark, reset before each call through ``/proc/self/clear_refs``), and per MB of body;
* the RSS left after each call (what a worker keeps between requests).

The identity model answers with a tensor as large as the request's, so the figure includes
encoding the response, the worst case for a V2 worker. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_MB = 1024 * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    assert found is not None, field
    return int(found.group(1))


def _rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _peak_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def _write_model(path: Path, datatype: str, width: int) -> None:
    import onnx
    from onnx import TensorProto, helper

    elem = getattr(TensorProto, {"FP32": "FLOAT", "FP64": "DOUBLE", "FP16": "FLOAT16"}.get(datatype, datatype))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, [None, width])],
        [helper.make_tensor_value_info("y", elem, [None, width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _write_body(path: Path, datatype: str, width: int, mb: float, binary: bool, nested: bool) -> dict[str, Any]:
    import numpy as np
    import orjson

    dtypes = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
    dtype = np.dtype(dtypes[datatype])
    rng = np.random.default_rng(0)
    # Short random values, as a client's features typically are (about 8-10 bytes each in JSON).
    probe = rng.random(10_000) if dtype.kind == "f" else rng.integers(-100_000, 100_000, 10_000)
    per_value = len(orjson.dumps(probe.astype(dtype), option=orjson.OPT_SERIALIZE_NUMPY)) / probe.size
    rows = max(1, int(mb * _MB / per_value / width))
    values = (
        rng.random((rows, width)) if dtype.kind == "f" else rng.integers(-100_000, 100_000, (rows, width))
    ).astype(dtype)
    item: dict[str, Any] = {"name": "x", "shape": [rows, width], "datatype": datatype}
    headers: dict[str, str] = {}
    if binary:
        raw = values.tobytes()
        item["parameters"] = {"binary_data_size": len(raw)}
        head = orjson.dumps({"inputs": [item], "parameters": {"binary_data_output": True}})
        path.write_bytes(head + raw)
        headers["Inference-Header-Content-Length"] = str(len(head))
    else:
        data = orjson.dumps(values if nested else values.reshape(-1), option=orjson.OPT_SERIALIZE_NUMPY)
        head = orjson.dumps({"inputs": [item]})
        # Splice the flat data text in as the input's "data": no Python list is built here.
        path.write_bytes(head[:-3] + b',"data":' + data + b"}]}")
    return {"elements": int(values.size), "headers": headers}


def _child(args: argparse.Namespace) -> None:
    import logging

    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # appended: a PYTHONPATH given to measure another tree wins
    logging.disable(logging.CRITICAL)
    from server.settings import Settings
    from server.store.store import open_store
    from server.store.v2 import V2Handler

    work = Path(args.child)
    meta = json.loads((work / "meta.json").read_text())
    body = (work / "body.bin").read_bytes()
    settings = Settings(model_dir=str(work / "models"), ort_threads=1, max_request_bytes=max(len(body), 1 << 20))
    store = open_store(settings)
    handler = V2Handler(store, settings)
    small = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, args.width], "datatype": args.datatype, "data": [1] * args.width}]}
    ).encode()
    assert handler.handle("POST", "/v2/models/m/infer", "", small).status == 200
    gc.collect()
    baseline = _rss_bytes()
    rows: list[dict[str, Any]] = []
    for _ in range(args.requests):
        _reset_peak()
        started = time.perf_counter()
        reply = handler.handle("POST", "/v2/models/m/infer", "", body, headers=meta["headers"])
        seconds = time.perf_counter() - started
        status, size = reply.status, len(reply.body)
        del reply
        peak = _peak_bytes()
        gc.collect()
        rows.append(
            {
                "status": status,
                "seconds": round(seconds, 3),
                "reply_mb": round(size / _MB, 1),
                "peak_above_baseline_mb": round((peak - baseline) / _MB, 1),
                "rss_after_mb": round(_rss_bytes() / _MB, 1),
            }
        )
    result = {
        "datatype": args.datatype,
        "binary": args.binary,
        "nested": args.nested,
        "body_mb": round(len(body) / _MB, 1),
        "elements": meta["elements"],
        "rss_baseline_mb": round(baseline / _MB, 1),
        "calls": rows,
    }
    worst = max(row["peak_above_baseline_mb"] for row in rows)
    result["peak_mb_per_request_mb"] = round(worst / (len(body) / _MB), 2)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50.0, help="request body size in MB (default 50)")
    parser.add_argument("--datatype", default="FP32", choices=["FP16", "FP32", "FP64", "INT32", "INT64"])
    parser.add_argument("--width", type=int, default=1000, help="values per row (default 1000)")
    parser.add_argument("--requests", type=int, default=2, help="big calls in a row (default 2)")
    parser.add_argument("--binary", action="store_true", help="binary tensor extension instead of JSON data")
    parser.add_argument("--nested", action="store_true", help="JSON data as nested rows instead of flat")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="v2mem-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        _write_model(work / "models" / "m.onnx", args.datatype, args.width)
        meta = _write_body(work / "body.bin", args.datatype, args.width, args.mb, args.binary, args.nested)
        (work / "meta.json").write_text(json.dumps(meta))
        command = [sys.executable, __file__, "--child", str(work), "--datatype", args.datatype]
        command += ["--width", str(args.width), "--requests", str(args.requests)]
        command += (["--binary"] if args.binary else []) + (["--nested"] if args.nested else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        return done.returncode
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
