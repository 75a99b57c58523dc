"""server.store.cuda: what a process does before its first CUDA session. Without a GPU this
checks the rule and that a CPU-only build is left alone; tests/test_gpu.py checks, on a GPU, that
the store sets the cuBLAS workspace, and loadtests/gpu_memory.py measures what it saves."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort
import pytest
from onnx_models import make_mlp

from server.settings import Settings
from server.store.cuda import CUDA, cublas_workspace_config
from server.store.store import open_store


def test_cublas_workspace_is_sized_as_asked_and_never_over_the_operator() -> None:
    # Only where onnxruntime has CUDA: the test below checks that a CPU-only build is left alone.
    assert cublas_workspace_config(4, current=None) == ":4096:1"
    assert cublas_workspace_config(32, current=None) == ":32768:1"
    assert cublas_workspace_config(0, current=None) is None
    assert cublas_workspace_config(4, current=":16:8") is None


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="a CPU-only onnxruntime (tests/test_gpu.py: CUDA)")
def test_a_cpu_only_build_leaves_the_cublas_workspace_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mlp(tmp_path / "m.onnx")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    store = open_store(Settings(model_dir=str(tmp_path), device="cuda:0", gpu_cublas_workspace_mb=8, ort_threads=1))
    try:
        assert store.get("m").run({"x": [[0.0] * 16]})["y"].shape == (1, 2)
    finally:
        store.close()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
