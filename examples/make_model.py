"""Build the example model: a small deterministic MLP (64 -> 64 -> 64 -> 8, ReLU).

Run ``python examples/make_model.py [PATH]`` to (re)create ``examples/model/model.onnx``
(input ``data`` FP32 [batch, 64], output ``predictions`` FP32 [batch, 8], as
``examples/score.py`` expects). The weights come from a fixed seed, so the file is the
same on every machine. The generator is ``loadtests/models.py``, shared with the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Run as a file, so the repository root (where loadtests/ lives) is not on sys.path yet.
sys.path.insert(0, str(REPO))

from loadtests.models import make_mlp  # noqa: E402

DEFAULT_PATH = REPO / "examples" / "model" / "model.onnx"


def build(path: Path = DEFAULT_PATH, seed: int = 0) -> Path:
    return make_mlp(
        path,
        n_in=64,
        n_hidden=64,
        n_out=8,
        seed=seed,
        hidden_layers=2,
        input_name="data",
        output_name="predictions",
        graph_name="example_mlp",
    )


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH))
