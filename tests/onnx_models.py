"""Tiny ONNX models built with the ``onnx`` package, for tests and benchmarks (never downloaded).

make_mlp(path)                       x[batch,16] FP32 -> y[batch,2]   (Gemm, Relu; loadtests/models.py)
make_identity(path, "INT64")         x[batch,3] -> y, for every V2 datatype
make_two_inputs(path)                a[batch,4] + b[batch,4] -> sum, and also -> diff
make_sequence_output(path)           an output that is an ONNX sequence (not a tensor)
make_unsupported_op(path)            a valid graph with an op onnxruntime does not have
make_corrupt(path)                   bytes that are not a model

The MLP generator is shared with the example model and the load tests; this module
re-exports it and adds the models only tests need.
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parent.parent
# loadtests/ is not an installed package, and test subprocesses import this file with
# only tests/ on sys.path.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# `X as X`: re-exported, the tests import them from here.
from loadtests.models import make_mlp as make_mlp  # noqa: E402
from loadtests.models import mlp_reference as mlp_reference  # noqa: E402
from loadtests.models import save_model  # noqa: E402

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


def make_identity(path: str | Path, datatype: str = "FP32", width: int = 3) -> Path:
    """``y = x`` for one V2 datatype, shape [batch, width]."""
    elem = ELEM_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, [None, width])],
        [helper.make_tensor_value_info("y", elem, [None, width])],
    )
    return save_model(graph, path)


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
    return save_model(graph, path)


def make_sequence_output(path: str | Path) -> Path:
    """Input ``x`` FP32 [2]; output ``seq`` is a sequence of tensors, which V2 cannot carry."""
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["seq"])],
        "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])],
    )
    return save_model(graph, path)


def make_unsupported_op(path: str | Path) -> Path:
    """A well-formed model whose only node is an op no onnxruntime kernel implements."""
    graph = helper.make_graph(
        [helper.make_node("FooBarOp", ["x"], ["y"], domain="com.example")],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return save_model(graph, path, extra_opsets=(("com.example", 1),))


def make_corrupt(path: str | Path) -> Path:
    """A file with the .onnx name and no model in it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x08\x07this is not an ONNX model" * 8)
    return path
