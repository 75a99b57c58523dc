"""Request bodies: from files, generated Azure-style, or generated from V2 model metadata.

    python -m loadtests.payloads                       # (re)write loadtests/payloads/score_b{1,8,64}.json
    python -m loadtests.payloads --host http://127.0.0.1:5001 --model mlp --batch 64 --out b64.json

Generated values are deterministic (seeded), so two runs send the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAYLOAD_DIR = HERE / "payloads"
REPO = HERE.parent
EXAMPLE_REQUEST = REPO / "examples" / "sample-request.json"

# Values per V2 datatype: floats in [-1, 1), small non-negative ints, bools, short strings.
_FLOAT = {"FP16", "FP32", "FP64", "BF16"}
_INT = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


@dataclass(frozen=True)
class Payload:
    label: str
    body: bytes
    batch: int | None  # rows in the body, when it can be told

    @property
    def size_text(self) -> str:
        n = len(self.body)
        return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KB"


def score_body(batch: int, features: int, seed: int = 0) -> bytes:
    """An Azure-style body ``{"data": [[f, ...], ...]}`` with ``batch`` rows."""
    rng = random.Random(seed)
    rows = [", ".join(f"{rng.uniform(-1.0, 1.0):.6f}" for _ in range(features)) for _ in range(batch)]
    return ('{"data": [' + ", ".join(f"[{r}]" for r in rows) + "]}").encode()


def _values(datatype: str, count: int, rng: random.Random) -> list[Any]:
    dt = datatype.upper()
    if dt in _FLOAT:
        return [round(rng.uniform(-1.0, 1.0), 6) for _ in range(count)]
    if dt in _INT:
        return [rng.randrange(0, 100) for _ in range(count)]
    if dt == "BOOL":
        return [rng.random() < 0.5 for _ in range(count)]
    if dt == "BYTES":
        return ["x" * rng.randrange(1, 8) for _ in range(count)]
    raise ValueError(f"unsupported V2 datatype {datatype!r}")


def concrete_shape(shape: list[int], batch: int) -> list[int]:
    """Dynamic dims (-1 or unknown) become ``batch`` in front and 1 elsewhere."""
    out = []
    for i, dim in enumerate(shape):
        if isinstance(dim, int) and dim > 0:
            out.append(dim)
        else:
            out.append(batch if i == 0 else 1)
    return out


def v2_body(inputs: list[dict[str, Any]], batch: int, seed: int = 0) -> bytes:
    """A V2 inference request for the inputs of ``GET /v2/models/{name}`` (name/datatype/shape)."""
    rng = random.Random(seed)
    tensors = []
    for spec in inputs:
        shape = concrete_shape(list(spec.get("shape") or [-1]), batch)
        count = 1
        for dim in shape:
            count *= dim
        tensors.append(
            {
                "name": spec["name"],
                "shape": shape,
                "datatype": spec["datatype"],
                "data": _values(spec["datatype"], count, rng),
            }
        )
    return json.dumps({"inputs": tensors}, separators=(",", ":")).encode()


def fetch_metadata(host: str, model: str, headers: dict[str, str], timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET /v2/models/{model}`` from the target (V2 model metadata)."""
    url = f"{host.rstrip('/')}/v2/models/{model}"
    req = urllib.request.Request(url, headers=headers, method="GET")
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        meta: dict[str, Any] = json.loads(resp.read())
    if not meta.get("inputs"):
        raise ValueError(f"{url} lists no inputs: {meta}")
    return meta


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _tensor_rows(tensors: Any) -> int | None:
    """``shape[0]`` of the first tensor of a V2 ``inputs``/``outputs`` list; None when it is not one."""
    if isinstance(tensors, list) and tensors and isinstance(tensors[0], dict):
        shape = tensors[0].get("shape") or []
        if shape and isinstance(shape[0], int):
            return int(shape[0])
    return None


def batch_of(body: bytes) -> int | None:
    """Rows in an Azure-style or V2 body; None when the format is not known."""
    doc = _json(body)
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    if isinstance(data, list) and data and isinstance(data[0], list):
        return len(data)
    return _tensor_rows(doc.get("inputs"))


def response_batch(body: bytes) -> int | None:
    """Rows in a response: ``{"predictions": [...]}`` (or a bare list) or V2 ``outputs[0].shape[0]``."""
    doc = _json(body)
    if isinstance(doc, list):
        return len(doc)
    if not isinstance(doc, dict):
        return None
    preds = doc.get("predictions")
    return len(preds) if isinstance(preds, list) else _tensor_rows(doc.get("outputs"))
    if isinstance(doc, list):
        return len(doc)
    if isinstance(doc, dict):
        preds = doc.get("predictions")
        if isinstance(preds, list):
            return len(preds)
        outputs = doc.get("outputs")
        if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
            shape = outputs[0].get("shape") or []
            if shape and isinstance(shape[0], int):
                return shape[0]
    return None


def load_files(spec: str) -> list[Payload]:
    """Comma-separated files; a folder stands for every ``*.json`` in it (sorted)."""
    paths: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        path = Path(part).expanduser()
        if path.is_dir():
            paths.extend(sorted(path.glob("*.json")))
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"payload file not found: {part}")
    if not paths:
        raise FileNotFoundError(f"no payload files in {spec!r}")
    out = []
    for path in paths:
        body = path.read_bytes()
        out.append(Payload(path.stem, body, batch_of(body)))
    return out


def generated_score_payloads(batches: list[int], features: int) -> list[Payload]:
    return [Payload(f"b{b}", score_body(b, features, seed=b), b) for b in batches]


def standard_files(features: int = 64, batches: tuple[int, ...] = (1, 8, 64)) -> dict[int, Path]:
    """``loadtests/payloads/score_b{N}.json``, written if missing. Batch 1 is the example's own
    sample request when it exists (the body the reference baseline used)."""
    PAYLOAD_DIR.mkdir(parents=True, exist_ok=True)
    out: dict[int, Path] = {}
    for b in batches:
        path = PAYLOAD_DIR / f"score_b{b}.json"
        if not path.exists():
            path.write_bytes(score_body(b, features, seed=b))
        out[b] = path
    return out


def b1_file() -> Path:
    return EXAMPLE_REQUEST if EXAMPLE_REQUEST.exists() else standard_files()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--host", help="fetch V2 metadata from this server (127.0.0.1 or your deployment)")
    parser.add_argument("--model", help="V2 model name (with --host)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--out", help="output file (with --model) or folder")
    args = parser.parse_args(argv)
    if args.model:
        if not args.host:
            parser.error("--model needs --host")
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        meta = fetch_metadata(args.host, args.model, headers)
        body = v2_body(meta["inputs"], args.batch)
        out = Path(args.out or f"v2_{args.model}_b{args.batch}.json")
        out.write_bytes(body)
        print(f"wrote {out} ({len(body)} bytes)")
        return
    batches = tuple(int(b) for b in args.batches.split(",") if b)
    for b in batches:
        path = Path(args.out or PAYLOAD_DIR) / f"score_b{b}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(score_body(b, args.features, seed=b))
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
