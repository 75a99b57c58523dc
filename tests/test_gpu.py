"""The model store and the server on a real CUDA device.

Every test here needs onnxruntime-gpu and a visible NVIDIA GPU, and skips without
them, so CI (no GPU) runs none of it. ``loadtests/gpu_check.sh`` runs this file on a
lent GPU machine; the figures it printed there are in docs/benchmarks.md ("GPU").
The CPU half of the same behaviour (planning, fallback with a warning) is tested in
tests/test_models.py on every machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import plain_http
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_mlp, mlp_reference

from loadtests.gpu_memory import gpu_memory_used_mib
from server.errors import ScoreHostError
from server.settings import Settings
from server.store.store import ModelState, ModelStore, open_store

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


GPUS = _gpu_count() if CUDA in ort.get_available_providers() else 0
PRESET_CUBLAS_WORKSPACE = os.environ.get("CUBLAS_WORKSPACE_CONFIG")  # an operator's value wins
pytestmark = pytest.mark.skipif(GPUS == 0, reason="needs onnxruntime-gpu and an NVIDIA GPU")

Opener = Callable[..., ModelStore]


@pytest.fixture
def open_models() -> Iterator[Opener]:
    stores: list[ModelStore] = []

    def _open(model_dir: Path, **kw: Any) -> ModelStore:
        kw.setdefault("ort_threads", 1)
        store = open_store(Settings(model_dir=str(model_dir), **kw))
        stores.append(store)
        return store

    yield _open
    for store in stores:
        store.close()


def _x(batch: int = 1, width: int = 16) -> np.ndarray:
    return (np.arange(batch * width, dtype=np.float32).reshape(batch, width) % 97) / 10


def _config(model: Path, **config: Any) -> None:
    model.with_name(model.stem + ".scorehost.json").write_bytes(orjson.dumps(config))


def _make_wide(path: Path, width: int) -> Path:
    """x FP32 [batch, width] -> y = x @ W (W: width x width): an output of batch*width floats."""
    w = np.full((width, width), 1.0 / width, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


# --- the store on CUDA ---------------------------------------------------------------------
def test_models_run_on_cuda_and_agree_with_the_cpu(tmp_path: Path, open_models: Opener) -> None:
    for seed in range(3):
        make_mlp(tmp_path / f"m{seed}.onnx", seed=seed)
    gpu = open_models(tmp_path, device="cuda:0")
    cpu = open_models(tmp_path, device="cpu")
    # gpu_cublas_workspace_mb's default, set before CUDA loaded (docs/models.md, "GPU memory per model").
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (PRESET_CUBLAS_WORKSPACE or ":4096:1")
    for seed in range(3):
        model = gpu.get(f"m{seed}")
        assert model.metadata.providers[0] == CUDA, model.metadata.providers
        assert cpu.get(f"m{seed}").metadata.providers == (CPU,)
        for batch in (1, 7, 256):
            y = model.run({"x": _x(batch)})["y"]
            np.testing.assert_allclose(y, cpu.get(f"m{seed}").run({"x": _x(batch)})["y"], rtol=1e-2, atol=1e-2)
            np.testing.assert_allclose(y, mlp_reference(_x(batch), seed=seed), rtol=1e-2, atol=1e-2)


def test_device_auto_chooses_cuda_and_a_model_config_may_pin_the_cpu(tmp_path: Path, open_models: Opener) -> None:
    make_mlp(tmp_path / "auto.onnx")
    _config(make_mlp(tmp_path / "pinned.onnx"), device="cpu")
    store = open_models(tmp_path, device="auto")
    assert store.get("auto").metadata.providers[0] == CUDA
    assert store.get("pinned").metadata.providers == (CPU,)


def test_a_device_that_does_not_exist_runs_on_the_cpu_with_one_warning_naming_it(
    tmp_path: Path, open_models: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    make_mlp(tmp_path / "good.onnx")
    missing = f"cuda:{GPUS + 7}"
    for i in range(3):
        _config(make_mlp(tmp_path / f"missing{i}.onnx"), device=missing)
    with caplog.at_level(logging.WARNING, logger="server"):
        store = open_models(tmp_path, device="cuda:0")
    assert store.get("good").metadata.providers[0] == CUDA
    for i in range(3):
        assert store.get(f"missing{i}").metadata.providers == (CPU,)
        np.testing.assert_allclose(store.get(f"missing{i}").run({"x": _x()})["y"], mlp_reference(_x()), rtol=1e-4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and missing in warnings[0] and "runs on ['CPUExecutionProvider']" in warnings[0]


def test_gpu_mem_limit_bounds_the_arena_and_a_call_over_it_fails_alone(tmp_path: Path, open_models: Opener) -> None:
    width = 4096
    _config(_make_wide(tmp_path / "capped.onnx", width), gpu_mem_limit_mb=256)
    _make_wide(tmp_path / "free.onnx", width)
    store = open_models(tmp_path, device="cuda:0")
    capped, free = store.get("capped"), store.get("free")
    small = _x(8, width)
    np.testing.assert_allclose(capped.run({"x": small})["y"], free.run({"x": small})["y"], rtol=1e-4, atol=1e-4)
    # 32,768 x 4,096 floats in and out: 512 MiB each, twice the capped arena.
    big = np.ones((32768, width), dtype=np.float32)
    with pytest.raises(ScoreHostError) as info:
        capped.run({"x": big})
    print("over the limit:", info.value.status_code, str(info.value)[:300])
    assert info.value.status_code >= 500
    assert free.run({"x": big})["y"].shape == (32768, width)
    # The capped model still serves after the failure.
    np.testing.assert_allclose(capped.run({"x": small})["y"], free.run({"x": small})["y"], rtol=1e-4, atol=1e-4)


def test_lazy_loading_bounds_the_gpu_memory_of_many_models(tmp_path: Path, open_models: Opener) -> None:
    # Each CUDA session holds its own cuBLAS/cuDNN handles and arena (docs/models.md, "GPU
    # memory"): the GPU memory of many models is bounded by how many stay loaded.
    count, kept = 60, 10
    for i in range(count):
        make_mlp(tmp_path / f"m{i:03d}.onnx", seed=i)
    store = open_models(tmp_path, device="cuda:0", lazy_models=True, max_loaded_models=kept)
    base = gpu_memory_used_mib()
    for i in range(kept):
        store.get(f"m{i:03d}").run({"x": _x(4)})
    with_kept = gpu_memory_used_mib()
    per_model = (with_kept - base) / kept
    for i in range(count):
        model = store.get(f"m{i:03d}")
        assert model.metadata.providers[0] == CUDA
        np.testing.assert_allclose(model.run({"x": _x(4)})["y"], mlp_reference(_x(4), seed=i), rtol=1e-2, atol=1e-2)
    after = gpu_memory_used_mib()
    print(
        f"GPU memory per loaded CUDA model: {per_model:.1f} MiB; {count} models through {kept} slots: "
        f"{with_kept - base} -> {after - base} MiB"
    )
    assert sum(1 for m in store.list() if m.state == ModelState.READY) <= kept
    if PRESET_CUBLAS_WORKSPACE is None:  # gpu_cublas_workspace_mb's default (4 MB): 18-26 MiB a model on an H200
        assert per_model < 64
    assert after - base <= (with_kept - base) * 1.5 + 256


def test_batching_on_cuda_gives_each_caller_its_rows(tmp_path: Path, open_models: Opener) -> None:
    _config(make_mlp(tmp_path / "mlp.onnx"), max_batch_size=32, max_queue_delay_us=2000)
    store = open_models(tmp_path, device="cuda:0")
    model = store.get("mlp")
    assert model.metadata.providers[0] == CUDA
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = model.run({"x": _x(1 + i % 3) + i})["y"]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(48)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 48
    for i, y in results.items():
        np.testing.assert_allclose(y, mlp_reference(_x(1 + i % 3) + i), rtol=1e-2, atol=1e-2)


# --- the server on CUDA -------------------------------------------------------------------
def test_server_serves_v2_on_cuda_from_its_workers(tmp_path: Path, start_server: Any) -> None:
    make_mlp(tmp_path / "models" / "mlp" / "1" / "model.onnx", seed=3)
    server = start_server(
        args=["--model_dir", str(tmp_path / "models")],
        SCOREHOST_DEVICE="cuda",
        SCOREHOST_WORKERS="2",
    )
    body = {"inputs": [{"name": "x", "shape": [5, 16], "datatype": "FP32", "data": _x(5).ravel().tolist()}]}
    with plain_http.client(base_url=server.url, timeout=30) as client:
        for _ in range(20):
            r = client.post("/v2/models/mlp/infer", json=body)
            assert r.status_code == 200, r.text
        y = np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(5, 2)
        np.testing.assert_allclose(y, mlp_reference(_x(5), seed=3), rtol=1e-2, atol=1e-2)
        assert client.get("/v2/models/mlp/ready").status_code == 200
    assert "running on CPU" not in server.log
