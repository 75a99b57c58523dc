"""The model store through its public API: open_store, get_store, ModelStore, Model."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from onnx_models import (
    make_corrupt,
    make_identity,
    make_mlp,
    make_two_inputs,
    make_unsupported_op,
    mlp_reference,
)

from server.errors import ConfigError, InvalidInput, ModelNotFound, ModelNotReady, ScoreHostError
from server.settings import Settings
from server.store.repository import discover, parse_config
from server.store.sessions import (
    CPU,
    CUDA,
    Device,
    ProviderPlan,
    fallback_warning,
    parse_device,
    plan_providers,
)
from server.store.store import ModelState, ModelStore, ModelStoreError, current_store, get_store, open_store

Opener = Callable[..., ModelStore]


def settings(**overrides: Any) -> Settings:
    # ort_threads=1 unless a test says otherwise: single-threaded sessions leave no
    # process-wide onnxruntime state behind for other tests in this process.
    overrides.setdefault("ort_threads", 1)
    return Settings(**overrides)


@pytest.fixture
def open_models() -> Iterator[Opener]:
    """open_store(Settings(model_dir=..., **overrides)); every store is closed afterwards."""
    stores: list[ModelStore] = []

    def _open(model_dir: Path, progress: Callable[[dict[str, Any]], None] | None = None, **kw: Any) -> ModelStore:
        store = open_store(settings(model_dir=str(model_dir), **kw), progress)
        stores.append(store)
        return store

    yield _open
    for store in stores:
        store.close()


def _x(batch: int = 1) -> np.ndarray:
    return np.arange(batch * 16, dtype=np.float32).reshape(batch, 16) / 10


def _write_config(model: Path, config: dict[str, Any] | bytes) -> None:
    raw = config if isinstance(config, bytes) else orjson.dumps(config)
    model.with_name(model.stem + ".scorehost.json").write_bytes(raw)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _threads_settle_at_most(limit: int, timeout_s: float = 2.0) -> int:
    # A joined Python thread can linger in /proc for a moment while the OS thread exits.
    deadline = time.monotonic() + timeout_s
    while _threads() > limit and time.monotonic() < deadline:
        time.sleep(0.01)
    return _threads()


# --- discovery -----------------------------------------------------------------------------
def test_flat_layout_serves_each_file_as_version_1(tmp_path: Path, open_models: Opener) -> None:
    make_mlp(tmp_path / "a.onnx")
    make_mlp(tmp_path / "b.onnx", seed=1)
    store = open_models(tmp_path)
    assert [(m.name, m.version, m.state) for m in store.list()] == [
        ("a", "1", ModelState.READY),
        ("b", "1", ModelState.READY),
    ]
    y = store.get("b").run({"x": _x()})["y"]
    np.testing.assert_allclose(y, mlp_reference(_x(), seed=1), rtol=1e-4, atol=1e-4)


def test_azure_layout_defaults_to_the_newest_version_by_number(tmp_path: Path, open_models: Opener) -> None:
    for version, seed in (("2", 2), ("10", 10), ("9", 9)):
        make_mlp(tmp_path / "fraud" / version / "model.onnx", seed=seed)
    store = open_models(tmp_path)
    assert store.versions("fraud") == ["2", "9", "10"]
    assert store.get("fraud").version == "10"
    y = store.get("fraud", "9").run({"x": _x()})["y"]
    np.testing.assert_allclose(y, mlp_reference(_x(), seed=9), rtol=1e-4, atol=1e-4)


def test_model_dir_may_be_a_single_onnx_file(tmp_path: Path, open_models: Opener) -> None:
    path = make_mlp(tmp_path / "only.onnx")
    make_mlp(tmp_path / "other.onnx")
    store = open_models(path)
    assert [(m.name, m.version) for m in store.list()] == [("only", "1")]


def test_azure_single_model_dir_takes_its_name_from_the_parent(tmp_path: Path, open_models: Opener) -> None:
    # AZUREML_MODEL_DIR=.../azureml-models/<name>/<version> for a one-model deployment.
    make_mlp(tmp_path / "churn" / "3" / "exported" / "model.onnx")
    store = open_models(tmp_path / "churn" / "3")
    assert [(m.name, m.version) for m in store.list()] == [("churn", "3")]


def test_nested_folder_without_versions_is_version_1_and_hidden_folders_are_skipped(tmp_path: Path) -> None:
    make_mlp(tmp_path / "ranker" / "onnx" / "model.onnx")
    make_mlp(tmp_path / ".ipynb_checkpoints" / "old.onnx")
    assert [(s.name, s.version) for s in discover(tmp_path)] == [("ranker", "1")]


def test_several_onnx_files_for_one_model_fail_that_model_only(tmp_path: Path, open_models: Opener) -> None:
    make_mlp(tmp_path / "pipe" / "1" / "encoder.onnx")
    make_mlp(tmp_path / "pipe" / "1" / "decoder.onnx")
    make_mlp(tmp_path / "pick" / "1" / "model.onnx")
    make_mlp(tmp_path / "pick" / "1" / "extra.onnx")
    make_mlp(tmp_path / "ok.onnx")
    store = open_models(tmp_path)
    states = {m.name: m for m in store.list()}
    assert states["pick"].state is ModelState.READY and states["pick"].path
    assert states["pick"].path.endswith("model.onnx")
    assert states["pipe"].state is ModelState.FAILED
    assert "encoder.onnx" in (states["pipe"].reason or "") and "decoder.onnx" in (states["pipe"].reason or "")
    with pytest.raises(ModelNotReady, match=r"several \.onnx files"):
        store.get("pipe")
    assert store.get("ok").run({"x": _x()})["y"].shape == (1, 2)


def test_more_models_than_max_models_is_a_start_up_error(tmp_path: Path, open_models: Opener) -> None:
    for i in range(4):
        make_identity(tmp_path / f"m{i}.onnx")
    with pytest.raises(ModelStoreError, match=r"found 4 models .*max_models=3") as err:
        open_models(tmp_path, max_models=3)
    assert isinstance(err.value, ScoreHostError)
    assert len(open_models(tmp_path, max_models=4).list()) == 4


@pytest.mark.parametrize("case", ["missing", "empty", "unset", "not-onnx"])
def test_unusable_model_dir_is_a_start_up_error(tmp_path: Path, case: str) -> None:
    target = {
        "missing": str(tmp_path / "nope"),
        "empty": str(tmp_path),
        "unset": None,
        "not-onnx": str(tmp_path / "notes.txt"),
    }[case]
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelStoreError):
        open_store(settings(model_dir=target))


# --- config file -----------------------------------------------------------------------------
def test_config_file_is_read_and_bad_configs_fail_only_their_model(tmp_path: Path, open_models: Opener) -> None:
    good = make_mlp(tmp_path / "good" / "1" / "model.onnx")
    _write_config(good, {"device": "cpu", "warmup": True, "graph_optimization_level": "basic"})
    typo = make_mlp(tmp_path / "typo.onnx")
    _write_config(typo, {"devcie": "cpu"})
    broken = make_mlp(tmp_path / "broken.onnx")
    _write_config(broken, b"{not json")
    warm = make_mlp(tmp_path / "warm.onnx")
    _write_config(warm, {"warmup": [{"nope": {"shape": [1, 16]}}]})
    store = open_models(tmp_path)
    info = {m.name: m for m in store.list()}
    assert info["good"].state is ModelState.READY
    assert info["typo"].state is ModelState.FAILED
    assert "config typo.scorehost.json: unknown key 'devcie' (did you mean 'device'?)" in (info["typo"].reason or "")
    assert info["broken"].state is ModelState.FAILED and "invalid JSON" in (info["broken"].reason or "")
    assert info["warm"].state is ModelState.FAILED and "warm-up" in (info["warm"].reason or "")


def test_parse_config_accepts_the_documented_keys() -> None:
    cfg = parse_config(
        {
            "device": "cuda:1",
            "providers": ["CUDAExecutionProvider", ["CPUExecutionProvider", {"x": 1}]],
            "graph_optimization_level": "extended",
            "gpu_mem_limit_mb": 512,
            "warmup": [{"x": {"shape": [2, 16]}}, {"x": {"data": [0.0] * 16, "shape": [1, 16]}}],
            "compact": True,
        }
    )
    assert cfg.device == "cuda:1" and cfg.gpu_mem_limit_mb == 512
    assert cfg.providers == ("CUDAExecutionProvider", ("CPUExecutionProvider", {"x": "1"}))
    assert len(cfg.warmup) == 2 and cfg.warmup[0]["x"].shape == (2, 16)
    assert cfg.compact is True
    assert parse_config({}).compact is None


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"device": "tpu"},
        {"intra_op_threads": 2},
        {"gpu_mem_limit_mb": -1},
        {"gpu_mem_limit_mb": True},
        {"graph_optimization_level": "max"},
        {"warmup": "yes"},
        {"warmup": [{"x": {"shape": [1, -1]}}]},
        {"providers": []},
        {"providers": [["CPUExecutionProvider"]]},
        {"max_batch_size": 0},
        {"max_batch_time_ms": 0},
        {"compact": "yes"},
    ],
)
def test_parse_config_rejects_bad_values(raw: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert next(iter(raw), "JSON object") in str(caught.value), "the message names the key"


def test_batching_keys_turn_batching_on_and_old_names_fail_their_model(tmp_path: Path, open_models: Opener) -> None:
    # max_batch_time_ms was once accepted and ignored; batching's keys are now max_batch_size and
    # max_queue_delay_us (server.store.batcher), and the old name fails its model saying so.
    batched = make_mlp(tmp_path / "batched.onnx")
    _write_config(batched, {"device": "cpu", "max_batch_size": 8, "max_queue_delay_us": 100})
    old = make_mlp(tmp_path / "old.onnx")
    _write_config(old, {"max_batch_time_ms": 2})
    store = open_models(tmp_path)
    info = {m.name: m for m in store.list()}
    assert info["batched"].state is ModelState.READY
    batching = store.metadata("batched").batching
    assert batching is not None and batching.enabled and batching.max_queue_delay_us == 100
    assert info["old"].state is ModelState.FAILED
    assert info["old"].reason == (
        "config old.scorehost.json: max_batch_time_ms: not a scorehost key; use max_queue_delay_us (microseconds)"
    )
    with pytest.raises(ModelNotReady, match="use max_queue_delay_us"):
        store.get("old")


def test_warmup_runs_the_requests_given(tmp_path: Path, open_models: Opener) -> None:
    path = make_two_inputs(tmp_path / "two.onnx")
    _write_config(path, {"warmup": [{"a": {"shape": [3, 4]}}, {"b": {"shape": [1, 4], "data": [1, 2, 3, 4]}}]})
    assert open_models(tmp_path).status("two").state is ModelState.READY


# --- loading, failures, readiness, progress ---------------------------------------------------------
def test_failed_models_are_reported_and_do_not_take_the_others_down(tmp_path: Path, open_models: Opener) -> None:
    make_mlp(tmp_path / "good.onnx")
    make_corrupt(tmp_path / "corrupt.onnx")
    make_unsupported_op(tmp_path / "exotic" / "1" / "model.onnx")
    reports: list[dict[str, Any]] = []
    store = open_models(tmp_path, progress=reports.append)
    ready, report = store.readiness()
    assert ready
    assert report["loaded"] == 1 and report["failed"] == 2 and report["total"] == 3
    assert "Protobuf" in report["failures"]["corrupt/1"]
    assert "FooBarOp" in report["failures"]["exotic/1"]
    assert reports[0] == {"loaded": 0, "failed": 0, "total": 3, "failures": {}}
    assert reports[-1] == report
    with pytest.raises(ModelNotReady, match="FooBarOp") as err:
        store.get("exotic")
    assert err.value.status_code == 503 and err.value.headers["Retry-After"]
    with pytest.raises(ModelNotFound):
        store.get("nope")
    with pytest.raises(ModelNotFound):
        store.get("good", "7")
    assert store.get("good").run({"x": _x()})["y"].shape == (1, 2)


def test_progress_is_throttled_and_a_failing_callback_does_not_stop_loading(
    tmp_path: Path, open_models: Opener
) -> None:
    for i in range(40):
        make_identity(tmp_path / f"m{i:02d}.onnx")
    calls: list[dict[str, Any]] = []

    def callback(report: dict[str, Any]) -> None:
        calls.append(report)
        raise RuntimeError("the front is gone")

    store = open_models(tmp_path, progress=callback, model_load_concurrency=4)
    assert store.readiness()[0]
    assert calls[-1]["loaded"] == 40
    assert len(calls) < 40  # ~10 per second, plus first and last


def test_readiness_counts_only_models_that_can_load(tmp_path: Path, open_models: Opener) -> None:
    make_corrupt(tmp_path / "a.onnx")
    make_corrupt(tmp_path / "b.onnx")
    ready, report = open_models(tmp_path).readiness()
    assert not ready and report["failed"] == 2  # nothing loaded: never ready
    make_mlp(tmp_path / "c.onnx")
    assert open_models(tmp_path, ready_min_models=1.0).readiness()[0]
    assert open_models(tmp_path, ready_min_models=0.0).readiness()[0]


def test_failure_list_is_capped_but_counted(tmp_path: Path, open_models: Opener) -> None:
    for i in range(60):
        make_corrupt(tmp_path / f"bad{i:02d}.onnx")
    make_mlp(tmp_path / "good.onnx")
    _, report = open_models(tmp_path).readiness()
    assert report["failed"] == 60 and len(report["failures"]) == 50 and report["failures_omitted"] == 10


# --- Model.run -----------------------------------------------------------------------------------
@pytest.fixture
def mlp_store(tmp_path: Path, open_models: Opener) -> ModelStore:
    make_mlp(tmp_path / "mlp.onnx")
    make_two_inputs(tmp_path / "two.onnx")
    return open_models(tmp_path)


def test_model_metadata_describes_inputs_and_outputs(mlp_store: ModelStore) -> None:
    md = mlp_store.get("mlp").metadata
    assert (md.name, md.version, md.platform) == ("mlp", "1", "onnxruntime_onnx")
    assert [(t.name, t.datatype, t.shape) for t in md.inputs] == [("x", "FP32", (-1, 16))]
    assert [(t.name, t.datatype, t.shape) for t in md.outputs] == [("y", "FP32", (-1, 2))]
    assert md.providers == (CPU,)


def test_run_matches_numpy_and_accepts_lists(mlp_store: ModelStore) -> None:
    model = mlp_store.get("mlp")
    np.testing.assert_allclose(model.run({"x": _x(4)})["y"], mlp_reference(_x(4)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.run({"x": _x(1).tolist()})["y"], mlp_reference(_x(1)), rtol=1e-4, atol=1e-4)


def test_run_returns_only_the_outputs_asked_for(mlp_store: ModelStore) -> None:
    a = np.ones((2, 4), np.float32)
    out = mlp_store.get("two").run({"a": a, "b": a * 3}, outputs=["diff"])
    assert list(out) == ["diff"] and (out["diff"] == -2).all()
    assert list(mlp_store.get("two").run({"a": a, "b": a}, outputs=[])) == ["sum", "diff"]
    with pytest.raises(InvalidInput, match="'prod'"):
        mlp_store.get("two").run({"a": a, "b": a}, outputs=["prod"])


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"z": np.zeros((1, 16), np.float32)}, "no input 'z'"),
        ({"x": np.zeros((1, 16), np.float64)}, "dtype float64.*float32"),
        ({"x": np.zeros((1, 15), np.float32)}, r"shape \[1, 15\]"),
        ({"x": np.zeros((16,), np.float32)}, r"shape \[16\]"),
        ({"x": [["a"] * 16]}, "'x': not convertible"),
        ({}, "missing input"),
    ],
)
def test_run_rejects_wrong_inputs_naming_them(mlp_store: ModelStore, inputs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInput, match=match) as err:
        mlp_store.get("mlp").run(inputs)
    assert err.value.status_code == 400


@pytest.mark.parametrize("mode", ["on", "off"])
def test_compact_sessions_give_the_same_results(tmp_path: Path, open_models: Opener, mode: str) -> None:
    make_mlp(tmp_path / "a.onnx", n_hidden=256)
    flipped = make_mlp(tmp_path / "b.onnx", n_hidden=256)
    _write_config(flipped, {"compact": mode == "off"})
    store = open_models(tmp_path, model_compact=mode)
    for name in ("a", "b"):
        np.testing.assert_allclose(
            store.get(name).run({"x": _x(3)})["y"], mlp_reference(_x(3), n_hidden=256), rtol=1e-4, atol=1e-3
        )


def test_run_is_safe_from_many_threads(mlp_store: ModelStore) -> None:
    model = mlp_store.get("mlp")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        x = np.random.default_rng(seed).standard_normal((3, 16)).astype(np.float32)
        try:
            for _ in range(50):
                np.testing.assert_allclose(model.run({"x": x})["y"], mlp_reference(x), rtol=1e-4, atol=1e-4)
        except BaseException as exc:  # collected and asserted in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors


# --- threads -----------------------------------------------------------------------------------
def test_os_threads_do_not_grow_with_the_number_of_models(tmp_path: Path, open_models: Opener) -> None:
    make_mlp(tmp_path / "few" / "m.onnx")
    open_models(tmp_path / "few")  # the shared pool exists from here on
    for i in range(60):
        make_mlp(tmp_path / "many" / f"m{i}.onnx", seed=i)
    before = _threads()
    store = open_models(tmp_path / "many", model_load_concurrency=4)
    for info in store.list():
        store.get(info.name).run({"x": _x()})
    assert _threads_settle_at_most(before) <= before


_GLOBAL_POOL_PROBE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np
import onnxruntime as ort
from onnx_models import make_mlp
from server.store.store import open_store
from server.settings import Settings

def threads():
    time.sleep(0.05)  # joined loader threads may linger in /proc for a moment
    return len(os.listdir("/proc/self/task"))

root = sys.argv[1]
make_mlp(root + "/one/m.onnx")
for i in range(60):
    make_mlp(root + f"/many/m{i}.onnx", seed=i)
start = threads()
open_store(Settings(model_dir=root + "/one", ort_threads=3))
one = threads()
store = open_store(Settings(model_dir=root + "/many", ort_threads=3, model_load_concurrency=4))
for info in store.list():
    store.get(info.name).run({"x": np.ones((1, 16), np.float32)})
many = threads()
try:
    ort.InferenceSession(root + "/one/m.onnx", providers=["CPUExecutionProvider"])
    own_session = "ok"
except Exception as exc:
    own_session = str(exc)
print(json.dumps({"start": start, "one": one, "many": many, "own_session": own_session}))
"""


def test_shared_pool_threads_are_fixed_whatever_the_model_count(tmp_path: Path) -> None:
    # A subprocess: the global pool is process-wide and permanent, so this test's
    # pool must not leak into the other tests of this process.
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", _GLOBAL_POOL_PROBE, str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    probe = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["one"] == probe["start"] + 2  # a pool of 3: the caller plus 2 pool threads
    assert probe["many"] == probe["one"]
    # onnxruntime's rule that docs/models.md warns about: with the global pool in
    # place, a session that asks for its own pool (the default) is refused.
    assert "use_per_session_threads must be false" in probe["own_session"]


# --- lazy mode ----------------------------------------------------------------------------------
def test_lazy_store_is_ready_at_once_and_loads_on_first_use(tmp_path: Path, open_models: Opener) -> None:
    for i in range(3):
        make_mlp(tmp_path / f"m{i}.onnx", seed=i)
    store = open_models(tmp_path, lazy_models=True)
    ready, report = store.readiness()
    assert ready and report["loaded"] == 0 and report["total"] == 3
    assert {m.state for m in store.list()} == {ModelState.UNLOADED}
    np.testing.assert_allclose(store.get("m2").run({"x": _x()})["y"], mlp_reference(_x(), seed=2), rtol=1e-4, atol=1e-4)
    assert store.status("m2").state is ModelState.READY
    assert store.readiness()[1]["loaded"] == 1


def test_lazy_store_evicts_the_least_recently_used(tmp_path: Path, open_models: Opener) -> None:
    for i in range(4):
        make_mlp(tmp_path / f"m{i}.onnx", seed=i)
    store = open_models(tmp_path, lazy_models=True, max_loaded_models=2)
    store.get("m0")
    store.get("m1")
    store.get("m0")  # m1 is now the coldest
    store.get("m2")
    states = {m.name: m.state for m in store.list()}
    assert states == {
        "m0": ModelState.READY,
        "m1": ModelState.UNLOADED,
        "m2": ModelState.READY,
        "m3": ModelState.UNLOADED,
    }
    assert store.readiness()[1]["loaded"] == 2
    # Evicted models reload transparently; metadata survives eviction without a reload.
    assert store.metadata("m1").inputs[0].name == "x"
    assert store.status("m1").state is ModelState.UNLOADED
    np.testing.assert_allclose(store.get("m1").run({"x": _x()})["y"], mlp_reference(_x(), seed=1), rtol=1e-4, atol=1e-4)


def test_lazy_store_keeps_to_the_memory_budget(tmp_path: Path, open_models: Opener) -> None:
    for i in range(3):
        make_mlp(tmp_path / f"m{i}.onnx", n_hidden=6144, seed=i)  # ~470 KB each: two fit in 1 MB
    store = open_models(tmp_path, lazy_models=True, model_memory_budget_mb=1)
    for i in range(3):
        store.get(f"m{i}")
    states = {m.name: m.state for m in store.list()}
    assert states == {"m0": ModelState.UNLOADED, "m1": ModelState.READY, "m2": ModelState.READY}
    assert sum(m.size_bytes for m in store.list() if m.state is ModelState.READY) <= 1024 * 1024


def test_concurrent_first_calls_load_a_lazy_model_once(tmp_path: Path, open_models: Opener) -> None:
    make_mlp(tmp_path / "m.onnx", n_hidden=2048)
    store = open_models(tmp_path, lazy_models=True)
    barrier = threading.Barrier(8)
    got: list[Any] = []

    def first_call() -> None:
        barrier.wait(timeout=10)
        got.append(store.get("m"))

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 8 and all(m is got[0] for m in got)
    assert store.readiness()[1]["loaded"] == 1


def test_lazy_eviction_under_concurrent_calls(tmp_path: Path, open_models: Opener) -> None:
    for i in range(6):
        make_mlp(tmp_path / f"m{i}.onnx", seed=i)
    store = open_models(tmp_path, lazy_models=True, max_loaded_models=2)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(60):
                i = int(rng.integers(6))
                y = store.get(f"m{i}").run({"x": _x()})["y"]
                np.testing.assert_allclose(y, mlp_reference(_x(), seed=i), rtol=1e-4, atol=1e-4)
        except BaseException as exc:  # collected and asserted in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert store.readiness()[1]["loaded"] <= 2
    assert sum(m.state is ModelState.READY for m in store.list()) <= 2


def test_lazy_failures_are_remembered(tmp_path: Path, open_models: Opener) -> None:
    make_corrupt(tmp_path / "bad.onnx")
    make_mlp(tmp_path / "good.onnx")
    store = open_models(tmp_path, lazy_models=True)
    for _ in range(2):
        with pytest.raises(ModelNotReady, match="Protobuf"):
            store.get("bad")
    ready, report = store.readiness()
    assert ready and report["failed"] == 1 and "bad/1" in report["failures"]


# --- get_store ----------------------------------------------------------------------------------
def test_get_store_opens_the_process_wide_store_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_mlp(tmp_path / "fraud" / "1" / "model.onnx")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("SCOREHOST_ORT_THREADS", "1")
    monkeypatch.delenv("SCOREHOST_MODEL_DIR", raising=False)
    assert current_store() is None
    store = get_store()
    try:
        assert get_store() is store and current_store() is store
        assert store.get("fraud").run({"x": _x()})["y"].shape == (1, 2)
    finally:
        store.close()
    again = get_store()
    try:
        assert again is not store
    finally:
        again.close()


# --- devices and providers ------------------------------------------------------------------------
def test_parse_device() -> None:
    assert parse_device("auto") == Device("auto")
    assert parse_device(" CUDA ") == Device("cuda", 0)
    assert parse_device("cuda:3") == Device("cuda", 3)
    assert not parse_device("cpu").wants_cuda
    for bad in ("gpu", "cuda:", "cuda:x", ""):
        with pytest.raises(ValueError):
            parse_device(bad)


def test_plan_providers_with_cuda_available() -> None:
    plan = plan_providers(Device("cuda", 1), [CUDA, CPU], gpu_mem_limit_mb=512)
    assert plan.wants_cuda and plan.warning is None
    assert plan.providers == (
        (
            CUDA,
            {"device_id": "1", "arena_extend_strategy": "kSameAsRequested", "gpu_mem_limit": str(512 << 20)},
        ),
        CPU,
    )
    auto = plan_providers(Device("auto"), [CUDA, CPU])
    assert auto.providers[0] == (CUDA, {"device_id": "0", "arena_extend_strategy": "kSameAsRequested"})
    assert plan_providers(Device("cpu"), [CUDA, CPU]).providers == (CPU,)


def test_plan_providers_falls_back_to_cpu_when_cuda_is_missing() -> None:
    asked = plan_providers(Device("cuda", 0), [CPU])
    assert asked.providers == (CPU,) and not asked.wants_cuda
    assert asked.warning and "cuda:0" in asked.warning and "onnxruntime-gpu" in asked.warning
    auto = plan_providers(Device("auto"), [CPU])
    assert auto.providers == (CPU,) and auto.warning is None and auto.note


def test_plan_providers_explicit_list_drops_what_is_missing() -> None:
    plan = plan_providers(Device("cpu"), [CPU], explicit=["TensorrtExecutionProvider", CUDA])
    assert plan.providers == (CPU,)
    assert plan.warning and "TensorrtExecutionProvider" in plan.warning


def test_fallback_warning_when_the_session_did_not_get_cuda() -> None:
    plan = ProviderPlan(((CUDA, {}), CPU), wants_cuda=True)
    assert fallback_warning(plan, [CPU])
    assert fallback_warning(plan, [CUDA, CPU]) is None
    assert fallback_warning(ProviderPlan((CPU,), wants_cuda=False), [CPU]) is None


def test_cuda_request_without_cuda_runs_on_cpu_with_one_warning(
    tmp_path: Path, open_models: Opener, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        make_mlp(tmp_path / f"m{i}.onnx")
    cpu_cfg = make_mlp(tmp_path / "pinned.onnx")
    _write_config(cpu_cfg, {"device": "cpu"})
    with caplog.at_level(logging.WARNING, logger="server"):
        store = open_models(tmp_path, device="cuda:0")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "CUDA" in r.getMessage()]
    assert len(warnings) == 1 and "running on CPU" in warnings[0].getMessage()
    assert store.get("m0").metadata.providers == (CPU,)
    assert store.get("m0").run({"x": _x()})["y"].shape == (1, 2)
