"""Tiny ONNX models built with the ``onnx`` package, for tests and benchmarks (never downloaded).

make_mlp(path)                       x[batch,16] FP32 -> y[batch,2]   (MatMul, Add, Relu)
make_identity(path, "INT64")         x[batch,3] -> y, for every V2 datatype
make_two_inputs(path)                a[batch,4] + b[batch,4] -> sum, and also -> diff
make_sequence_output(path)           an output that is an ONNX sequence (not a tensor)
make_unsupported_op(path)            a valid graph with an op onnxruntime does not have
make_corrupt(path)                   bytes that are not a model
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime >= 1.14

ELEM_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: str | Path, extra_opsets: tuple[tuple[str, int], ...] = ()) -> Path:
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="scorehost-tests")
    model.ir_version = IR_VERSION
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp_weights(n_in: int = 16, n_hidden: int = 64, n_out: int = 2, seed: int = 0) -> list[np.ndarray]:
    """The weights make_mlp uses, so tests can compute the expected output with numpy."""
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((n_in, n_hidden)).astype(np.float32),
        rng.standard_normal(n_hidden).astype(np.float32),
        rng.standard_normal((n_hidden, n_out)).astype(np.float32),
        rng.standard_normal(n_out).astype(np.float32),
    ]


def mlp_reference(x: np.ndarray, n_in: int = 16, n_hidden: int = 64, n_out: int = 2, seed: int = 0) -> np.ndarray:
    w1, b1, w2, b2 = mlp_weights(n_in, n_hidden, n_out, seed)
    return np.asarray(np.maximum(x @ w1 + b1, 0) @ w2 + b2, dtype=np.float32)


def make_mlp(path: str | Path, n_in: int = 16, n_hidden: int = 64, n_out: int = 2, seed: int = 0) -> Path:
    """A two-layer perceptron: input ``x`` [batch, n_in] FP32, output ``y`` [batch, n_out]."""
    w1, b1, w2, b2 = mlp_weights(n_in, n_hidden, n_out, seed)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    return _save(graph, path)


def make_identity(path: str | Path, datatype: str = "FP32", width: int = 3) -> Path:
    """``y = x`` for one V2 datatype, shape [batch, width]."""
    elem = ELEM_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, [None, width])],
        [helper.make_tensor_value_info("y", elem, [None, width])],
    )
    return _save(graph, path)


def make_two_inputs(path: str | Path) -> Path:
    """Inputs ``a`` and ``b`` FP32 [batch, 4]; outputs ``sum`` and ``diff``."""
    spec = [None, 4]
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Sub", ["a", "b"], ["diff"])],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, spec),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, spec),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, spec),
            helper.make_tensor_value_info("diff", TensorProto.FLOAT, spec),
        ],
    )
    return _save(graph, path)


def make_sequence_output(path: str | Path) -> Path:
    """Input ``x`` FP32 [2]; output ``seq`` is a sequence of tensors, which V2 cannot carry."""
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["seq"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])],
    )
    return _save(graph, path)


def make_unsupported_op(path: str | Path) -> Path:
    """A well-formed model whose only node is an op no onnxruntime kernel implements."""
    graph = helper.make_graph(
        [helper.make_node("FooBarOp", ["x"], ["y"], domain="com.example")],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return _save(graph, path, extra_opsets=(("com.example", 1),))


def make_corrupt(path: str | Path) -> Path:
    """A file with the .onnx name and no model in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x08\x07this is not an ONNX model" * 8)
    return path
