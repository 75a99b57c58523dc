"""Build the example model: a small deterministic MLP (64 -> 64 -> 64 -> 8, ReLU).

Run ``python examples/make_model.py`` to (re)create ``examples/model/model.onnx``.
The weights come from a fixed seed, so the file is the same on every machine.
"""

from __future__ import annotations

import itertools
import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_IN, N_HIDDEN, N_OUT = 64, 64, 8


def build(path: pathlib.Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    inits = []
    nodes = []
    prev, sizes = "data", [N_IN, N_HIDDEN, N_HIDDEN, N_OUT]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        out = "predictions" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}" if out != "predictions" else out]))
        if out != "predictions":
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "example_mlp",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, ["batch", N_OUT])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="scorehost")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).parent / "model" / "model.onnx"
    build(target)
    print(target)
