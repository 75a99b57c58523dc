"""Tiny ONNX models for the multi-model profile, made locally with the ``onnx`` package.

    python -m loadtests.models --count 20 --out /tmp/models    # <out>/mlp-000/1/model.onnx ...

Nothing is downloaded. The model is a small MLP (input ``input``: FP32 [-1, features]
-> Gemm -> Relu -> Gemm -> output ``output``: FP32 [-1, outputs]), seeded per model so
every copy differs, as separate customer models would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

MODEL_PREFIX = "mlp-"


def make_mlp(path: Path, features: int = 64, hidden: int = 32, outputs: int = 10, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((features, hidden)).astype(np.float32) * 0.1, "w1")
    b1 = numpy_helper.from_array(np.zeros(hidden, dtype=np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, outputs)).astype(np.float32) * 0.1, "w2")
    b2 = numpy_helper.from_array(np.zeros(outputs, dtype=np.float32), "b2")
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["output"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])],
        initializer=[w1, b1, w2, b2],
    )
    # Opset 17 / IR 8: loadable by every onnxruntime the project supports (>= 1.18).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def model_names(count: int, prefix: str = MODEL_PREFIX) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def make_model_repo(root: Path, count: int, prefix: str = MODEL_PREFIX) -> list[str]:
    """``<root>/<name>/1/model.onnx`` for ``count`` models; existing files are kept."""
    names = model_names(count, prefix)
    for i, name in enumerate(names):
        path = root / name / "1" / "model.onnx"
        if not path.exists():
            make_mlp(path, seed=i)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--prefix", default=MODEL_PREFIX)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    names = make_model_repo(Path(args.out), args.count, args.prefix)
    print(f"{len(names)} models under {args.out}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")


if __name__ == "__main__":
    main()
