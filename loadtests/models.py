"""Small MLP ONNX models, built locally with the ``onnx`` package (nothing is downloaded).

The one generator behind the example model (``examples/make_model.py``), the tests'
models (``tests/onnx_models.py``), the multi-model load profile and ``bench_models.py``.

    python -m loadtests.models --count 20 --out /tmp/models    # <out>/mlp-000/1/model.onnx ...

The model: input FP32 [batch, n_in] -> (Gemm -> Relu) per hidden layer -> Gemm -> output
FP32 [batch, n_out], with seeded weights, so every seed gives a different model (as
separate customer models would be) and ``mlp_reference`` can recompute any output.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

MODEL_PREFIX = "mlp-"
# Opset 17 / IR 8: loadable by every onnxruntime the project supports (>= 1.18).
OPSET = 17
IR_VERSION = 8

# onnx is imported inside the functions: `loadtests.run` imports this module for
# make_model_repo, and only the `loadtest`/`dev` extras bring onnx in.


def save_model(
    graph: onnx.GraphProto,
    path: str | Path,
    *,
    producer: str = "scorehost",
    extra_opsets: Sequence[tuple[str, int]] = (),
) -> Path:
    """Wrap ``graph`` in a model at the project's opset and IR version, and write it."""
    import onnx
    from onnx import helper

    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
    model.ir_version = IR_VERSION
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def layer_sizes(n_in: int, n_hidden: int, n_out: int, hidden_layers: int = 1) -> list[int]:
    return [n_in, *([n_hidden] * hidden_layers), n_out]


def mlp_weights(
    n_in: int = 16, n_hidden: int = 64, n_out: int = 2, seed: int = 0, *, hidden_layers: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) per layer, drawn in that order from one seeded generator.

    Weights are scaled by 1/sqrt(fan-in) and biases by 0.1, so activations stay near unit
    size at any width: wide test models neither overflow FP32 nor vanish under the
    tolerance of the tests that compare against ``mlp_reference``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for a, b in itertools.pairwise(layer_sizes(n_in, n_hidden, n_out, hidden_layers)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        out.append((w, bias))
    return out


def mlp_reference(
    x: np.ndarray, n_in: int = 16, n_hidden: int = 64, n_out: int = 2, seed: int = 0, *, hidden_layers: int = 1
) -> np.ndarray:
    """What ``make_mlp`` with the same arguments computes for ``x``, in numpy."""
    layers = mlp_weights(n_in, n_hidden, n_out, seed, hidden_layers=hidden_layers)
    h = np.asarray(x, dtype=np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return np.asarray(h, dtype=np.float32)


def make_mlp(
    path: str | Path,
    n_in: int = 16,
    n_hidden: int = 64,
    n_out: int = 2,
    seed: int = 0,
    *,
    hidden_layers: int = 1,
    input_name: str = "x",
    output_name: str = "y",
    graph_name: str = "mlp",
    producer: str = "scorehost",
) -> Path:
    """An MLP: ``input_name`` FP32 [batch, n_in] -> ``output_name`` FP32 [batch, n_out]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = mlp_weights(n_in, n_hidden, n_out, seed, hidden_layers=hidden_layers)
    inits, nodes = [], []
    prev = input_name
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [output_name if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    path = save_model(graph, path, producer=producer)
    # Catch a malformed graph here, not as a load failure deep in a server test.
    onnx.checker.check_model(str(path))
    return path


def model_names(count: int, prefix: str = MODEL_PREFIX) -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def make_model_repo(root: Path, count: int, prefix: str = MODEL_PREFIX, n_hidden: int = 64) -> list[str]:
    """``<root>/<name>/1/model.onnx`` for ``count`` models, one seed each; existing files are kept."""
    names = model_names(count, prefix)
    for i, name in enumerate(names):
        path = root / name / "1" / "model.onnx"
        if not path.exists():
            make_mlp(path, n_hidden=n_hidden, seed=i)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--prefix", default=MODEL_PREFIX)
    parser.add_argument("--hidden", type=int, default=64, help="hidden width")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    names = make_model_repo(Path(args.out), args.count, args.prefix, args.hidden)
    print(f"{len(names)} models under {args.out}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")


if __name__ == "__main__":
    main()
