"""Dynamic batching, in-process: the rule, the store's batches (run_jobs), V2 calls batched in the
worker (V2Batcher on a real event loop), Model.run from threads, the metrics, and @batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_models import make_identity, make_mlp, make_two_inputs, mlp_reference, save_model

from server import deadline
from server.batching import stats as batch_stats
from server.batching.metrics import BatchTotals
from server.batching.queue import Policy, ThreadBatcher, Waiter, decide
from server.batching.stats import STATS
from server.entry.batching import batch
from server.errors import ConfigError, ScoringTimeout
from server.settings import Settings
from server.store.batcher import Job, run_jobs
from server.store.repository import parse_config
from server.store.store import ModelStore, open_store
from server.store.v2 import V2Handler
from server.store.v2batch import V2Batcher
from server.workers.protocol import Call, Reply, Target


# --- models ------------------------------------------------------------------------------------
def make_mixed(path: Path) -> Path:
    """x FP32 [N, K] -> y = 2x [N, K] and s = row sums [N, 1]: two dynamic dimensions."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("ReduceSum", ["x", "axes"], ["s"])],
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "k"]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 1])],
        [two, axes],
    )  # fmt: skip
    return save_model(graph, path)


def make_gather(path: Path) -> Path:
    """idx INT64 [N] -> rows of a [10, 3] table: an index past 9 passes every check and fails in onnxruntime."""
    table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [table],
    )
    return save_model(graph, path)


def make_fixed(path: Path) -> Path:
    """x FP32 [1, 4] -> y: a first dimension that is not a batch axis."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return save_model(graph, path)


def config(model: Path, **values: Any) -> None:
    model.with_name(model.stem + ".scorehost.json").write_bytes(orjson.dumps(values))


def settings(**overrides: Any) -> Settings:
    overrides.setdefault("ort_threads", 1)
    return Settings(**overrides)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching")
    config(make_mlp(root / "mlp.onnx"), max_batch_size=64)
    config(make_two_inputs(root / "two.onnx"), max_batch_size=64)
    config(make_mixed(root / "mixed.onnx"), max_batch_size=64)
    config(make_gather(root / "gather.onnx"), max_batch_size=64)
    config(make_fixed(root / "fixed.onnx"), max_batch_size=8)
    config(make_mlp(root / "slow.onnx"), max_batch_size=64, max_queue_delay_us=300_000)
    make_mlp(root / "plain.onnx")  # no config: the setting's default, off
    make_identity(root / "strings.onnx", "BYTES")
    config(root / "strings.onnx", max_batch_size=4)
    return root


@pytest.fixture(scope="module")
def store(model_dir: Path) -> Iterator[ModelStore]:
    s = open_store(settings(model_dir=str(model_dir)))
    yield s
    s.close()


class Counts:
    """STATS["model"] (and a model's /metrics counters) before and after."""

    def __init__(self, store: ModelStore | None = None, model: str | None = None) -> None:
        self._stats = STATS["model"]
        self._model = store.get(model) if store is not None and model else None
        self._before = self._now()

    def _now(self) -> tuple[int, int, int, int, int]:
        s = self._stats
        inferences = self._model.stats.inferences if self._model is not None and self._model.stats else 0
        return s.executions, s.size_sum, s.fallbacks, s.expired, inferences

    def delta(self) -> dict[str, int]:
        names = ("executions", "calls", "fallbacks", "expired", "inferences")
        return {n: b - a for n, a, b in zip(names, self._before, self._now(), strict=True)}


# --- the rule ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("waiting", "waited", "policy", "expected"),
    [
        (1, 0.0, Policy(8, 0.01), (1, 0.0)),  # alone: at once, whatever the delay
        (3, 0.0, Policy(8, 0.0), (3, 0.0)),  # no delay: what waits
        (3, 0.004, Policy(8, 0.01), (0, pytest.approx(0.006))),  # waits for more
        (3, 0.02, Policy(8, 0.01), (3, 0.0)),  # waited long enough
        (9, 0.0, Policy(8, 0.01), (8, 0.0)),  # full
        (5, 0.0, Policy(8, 0.01, (4,)), (4, 0.0)),  # a preferred size is there
        (3, 0.0, Policy(8, 0.01, (4,)), (0, pytest.approx(0.01))),
    ],
)
def test_decide(waiting: int, waited: float, policy: Policy, expected: tuple[int, Any]) -> None:
    assert decide(waiting, waited, policy) == expected


# --- configuration and metadata ------------------------------------------------------------------
def test_config_keys_and_bounds() -> None:
    cfg = parse_config({"max_batch_size": 32, "max_queue_delay_us": 500, "preferred_batch_sizes": [8, 16]})
    assert (cfg.max_batch_size, cfg.max_queue_delay_us, cfg.preferred_batch_sizes) == (32, 500, (8, 16))
    for bad, words in (
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us"),
        ({"max_batch_size": 8, "preferred_batch_sizes": [16]}, "must not exceed max_batch_size"),
        ({"max_batch_time_ms": 2}, "use max_queue_delay_us"),
    ):
        with pytest.raises(ConfigError, match=words):
            parse_config(bad)


def test_metadata_says_whether_and_why_not(store: ModelStore) -> None:
    on = store.metadata("mlp").batching
    assert on is not None and on.enabled and on.max_batch_size == 64
    fixed = store.metadata("fixed").batching
    assert fixed is not None and not fixed.enabled
    assert fixed.reason == "cannot batch: input 'x' has a fixed first dimension (1), not a batch axis"
    plain = store.metadata("plain").batching
    assert plain is not None and not plain.enabled and plain.reason == "off (max_batch_size is 1)"
    handler = V2Handler(store, settings())
    meta = orjson.loads(handler.handle("GET", "/v2/models/fixed", "", b"").body)
    assert meta["parameters"]["batching"] == {
        "enabled": False,
        "max_batch_size": 8,
        "max_queue_delay_us": 0,
        "preferred_batch_sizes": [],
        "reason": "cannot batch: input 'x' has a fixed first dimension (1), not a batch axis",
    }
    assert orjson.loads(handler.handle("GET", "/v2/models/mlp", "", b"").body)["parameters"]["batching"]["enabled"]


def test_the_global_setting_turns_batching_on_and_a_config_off_again(tmp_path: Path) -> None:
    make_mlp(tmp_path / "a.onnx")
    config(make_mlp(tmp_path / "b.onnx"), max_batch_size=1)
    s = open_store(settings(model_dir=str(tmp_path), max_batch_size=16, max_queue_delay_us=100))
    try:
        a, b = s.metadata("a").batching, s.metadata("b").batching
        assert a is not None and a.enabled and (a.max_batch_size, a.max_queue_delay_us) == (16, 100)
        assert b is not None and not b.enabled
    finally:
        s.close()


# --- run_jobs: slicing, grouping, isolation, deadlines ---------------------------------------------
def test_each_call_gets_its_rows_of_every_output_it_asked_for(store: ModelStore) -> None:
    model = store.get("two")
    now = time.monotonic()
    shapes_and_outputs = [(1, ["sum"]), (3, ["diff"]), (2, None), (1, ["diff", "sum"])]
    jobs = []
    for i, (rows, names) in enumerate(shapes_and_outputs):
        a = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + 100 * i
        jobs.append(Job({"a": a, "b": np.full((rows, 4), i, np.float32)}, names, now))
    counts = Counts()
    run_jobs(model, jobs, 64)
    assert counts.delta()["executions"] == 1 and counts.delta()["calls"] == 4
    for job, (rows, names) in zip(jobs, shapes_and_outputs, strict=True):
        assert job.error is None and job.result is not None
        assert list(job.result) == (names or ["sum", "diff"])
        a, b = job.feed["a"], job.feed["b"]
        for name, value in job.result.items():
            assert value.shape == (rows, 4) and value.flags.c_contiguous
            np.testing.assert_array_equal(value, a + b if name == "sum" else a - b)


def test_calls_are_grouped_by_the_dimensions_after_the_first(store: ModelStore) -> None:
    model = store.get("mixed")
    now = time.monotonic()
    widths = [3, 5, 3, 5, 3, 7]
    jobs = [Job({"x": np.full((1 + i % 2, k), i, np.float32)}, None, now) for i, k in enumerate(widths)]
    counts = Counts()
    run_jobs(model, jobs, 64)
    assert counts.delta()["executions"] == 3  # widths 3, 5 and 7
    for job in jobs:
        x = job.feed["x"]
        assert job.result is not None
        np.testing.assert_array_equal(job.result["y"], 2 * x)
        np.testing.assert_array_equal(job.result["s"], x.sum(axis=1, keepdims=True))


def test_batches_hold_at_most_max_rows_and_bigger_calls_run_alone(store: ModelStore) -> None:
    model = store.get("mlp")
    now = time.monotonic()
    jobs = [Job({"x": np.random.rand(rows, 16).astype(np.float32)}, None, now) for rows in (2, 2, 3, 9, 1)]
    counts = Counts()
    run_jobs(model, jobs, 4)
    assert counts.delta()["executions"] == 3  # [2, 2] and [3, 1] by rows, and 9 alone
    for job in jobs:
        assert job.result is not None
        np.testing.assert_allclose(job.result["y"], mlp_reference(job.feed["x"]), rtol=1e-4, atol=1e-4)


def test_a_poisoned_batch_is_rerun_one_call_at_a_time(store: ModelStore) -> None:
    model = store.get("gather")
    now = time.monotonic()
    indices = [[1], [2, 3], [42], [0]]  # 42 is past the table: onnxruntime refuses the whole batch
    jobs = [Job({"idx": np.array(i, np.int64)}, None, now) for i in indices]
    counts = Counts(store, "gather")
    run_jobs(model, jobs, 64)
    delta = counts.delta()
    assert delta["fallbacks"] == 1 and delta["inferences"] == 4
    assert jobs[2].error is not None and "out of data bounds" in str(jobs[2].error)
    for job in (jobs[0], jobs[1], jobs[3]):
        assert job.error is None and job.result is not None
        np.testing.assert_array_equal(job.result["y"], np.arange(30, dtype=np.float32).reshape(10, 3)[job.feed["idx"]])


def test_a_job_past_its_deadline_is_answered_504_and_not_run(store: ModelStore) -> None:
    model = store.get("mlp")
    now = time.monotonic()
    late = Job({"x": np.ones((1, 16), np.float32)}, None, now, now - 0.001)
    good = Job({"x": np.ones((1, 16), np.float32)}, None, now, now + 10)
    counts = Counts()
    run_jobs(model, [late, good], 64)
    assert isinstance(late.error, ScoringTimeout) and late.result is None
    assert good.result is not None
    assert counts.delta()["expired"] == 1 and counts.delta()["calls"] == 1


def test_strings_batch_too(store: ModelStore) -> None:
    model = store.get("strings")
    now = time.monotonic()
    jobs = [Job({"x": np.array([[f"{i}a", "b", "c"]], dtype=object)}, None, now) for i in range(3)]
    run_jobs(model, jobs, 4)
    assert [j.result["y"].tolist() for j in jobs if j.result] == [[[f"{i}a", "b", "c"]] for i in range(3)]


# --- Model.run from several threads ---------------------------------------------------------------
def test_model_run_from_many_threads_is_batched_and_correct(store: ModelStore) -> None:
    model = store.get("mlp")
    results: dict[int, Any] = {}
    start = threading.Barrier(24)

    def one(i: int) -> None:
        start.wait()
        results[i] = model.run({"x": np.full((1, 16), i / 10, np.float32)})["y"]

    counts = Counts()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counts.delta()["calls"] == 24 and counts.delta()["executions"] <= 24
    for i in range(24):
        np.testing.assert_allclose(results[i], mlp_reference(np.full((1, 16), i / 10)), rtol=1e-4, atol=1e-4)


def test_a_waiting_thread_gets_504_at_its_deadline_and_never_runs() -> None:
    ran: list[list[str]] = []

    def execute(waiters: list[Waiter[str]]) -> None:
        ran.append([w.item for w in waiters])
        if "slow" in ran[-1]:
            time.sleep(0.5)
        for w in waiters:
            w.result = w.item.upper()

    expired: list[int] = []
    batcher: ThreadBatcher[str] = ThreadBatcher(execute, Policy(8), expired.append)
    leader = threading.Thread(target=batcher.submit, args=("slow",))
    leader.start()
    time.sleep(0.1)  # the slow batch runs
    token = deadline.current.set(time.monotonic() + 0.1)
    started = time.monotonic()
    try:
        with pytest.raises(ScoringTimeout):
            batcher.submit("late")
    finally:
        deadline.current.reset(token)
    assert time.monotonic() - started < 0.35, "answered at its deadline, not when the batch ahead ended"
    leader.join(5)
    assert batcher.submit("next") == "NEXT"
    assert ran == [["slow"], ["next"]] and expired == [1]


# --- V2 calls batched in the worker ----------------------------------------------------------------
class Worker:
    """A V2Batcher on a real event loop, as a worker's protocol drives it."""

    def __init__(self, store: ModelStore, pool: ThreadPoolExecutor | None = None, slots: int = 1) -> None:
        self.loop = asyncio.new_event_loop()
        self.replies: dict[int, Reply] = {}
        self.answered_at: dict[int, float] = {}
        self.batcher = V2Batcher(V2Handler(store, settings()), self.loop, self._send, pool, slots)

    def _send(self, call_id: int, reply: Reply) -> None:
        self.replies[call_id] = reply
        self.answered_at[call_id] = time.monotonic()

    def serve(self, calls: list[Call], timeout_s: float = 20.0) -> dict[int, Reply]:
        async def go() -> None:
            for call in calls:  # all in one loop turn, as the frames of one read
                assert self.batcher.offer(call), call.path
            limit = time.monotonic() + timeout_s
            while len(self.replies) < len(calls):
                assert time.monotonic() < limit, f"{len(self.replies)}/{len(calls)} answered"
                await asyncio.sleep(0.002)

        self.loop.run_until_complete(go())
        return self.replies

    def close(self) -> None:
        self.loop.close()


@pytest.fixture
def worker(store: ModelStore) -> Iterator[Worker]:
    w = Worker(store)
    yield w
    w.close()


def v2(call_id: int, model: str, tensors: list[tuple[str, list[int], str, list[Any]]], *, timeout_s: float = 10.0,
       outputs: list[str] | None = None) -> Call:  # fmt: skip
    request: dict[str, Any] = {"inputs": [{"name": n, "shape": s, "datatype": d, "data": v} for n, s, d, v in tensors]}
    if outputs:
        request["outputs"] = [{"name": o} for o in outputs]
    return Call(call_id, Target.V2, "POST", f"rid-{call_id}", orjson.dumps(request), time.monotonic() + timeout_s,
                path=f"/v2/models/{model}/infer")  # fmt: skip


def body(reply: Reply) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(reply.body)
    return data


def x_row(i: int) -> list[float]:
    return [i / 10 + j / 100 for j in range(16)]


def test_v2_calls_of_one_read_run_as_one_batch_with_their_own_rows(worker: Worker) -> None:
    calls = [v2(i, "mlp", [("x", [1, 16], "FP32", x_row(i))]) for i in range(10)]
    calls.append(v2(10, "mlp", [("x", [2, 16], "FP32", x_row(10) + x_row(11))]))
    counts = Counts()
    replies = worker.serve(calls)
    assert counts.delta()["executions"] == 1 and counts.delta()["calls"] == 11
    for call in calls:
        reply = replies[call.call_id]
        assert reply.status == 200 and reply.started_at is not None and reply.exec_ms is not None
        out = body(reply)
        assert out["id"] == f"rid-{call.call_id}" and out["model_name"] == "mlp"
        rows = 2 if call.call_id == 10 else 1
        x = np.array(x_row(call.call_id) + (x_row(11) if rows == 2 else []), np.float32).reshape(rows, 16)
        assert out["outputs"][0]["shape"] == [rows, 2]
        np.testing.assert_allclose(np.array(out["outputs"][0]["data"]).reshape(rows, 2), mlp_reference(x),
                                   rtol=1e-4, atol=1e-4)  # fmt: skip


def test_v2_several_outputs_are_sliced_per_call(worker: Worker) -> None:
    def ab(i: int) -> list[tuple[str, list[int], str, list[Any]]]:
        return [("a", [1, 4], "FP32", [i, i, i, i]), ("b", [1, 4], "FP32", [1, 2, 3, 4])]

    calls = [v2(0, "two", ab(0), outputs=["diff"]), v2(1, "two", ab(1)), v2(2, "two", ab(2), outputs=["sum"])]
    replies = worker.serve(calls)
    got = {i: {o["name"]: o["data"] for o in body(replies[i])["outputs"]} for i in range(3)}
    assert got == {
        0: {"diff": [-1, -2, -3, -4]},
        1: {"sum": [2, 3, 4, 5], "diff": [0, -1, -2, -3]},
        2: {"sum": [3, 4, 5, 6]},
    }


def test_v2_a_bad_input_fails_alone_with_400_and_the_batch_runs_without_it(worker: Worker) -> None:
    calls = [
        v2(0, "mlp", [("x", [1, 16], "FP32", x_row(0))]),
        v2(1, "mlp", [("x", [1, 15], "FP32", x_row(1)[:15])]),  # wrong shape
        v2(2, "mlp", [("x", [1, 16], "INT64", list(range(16)))]),  # wrong datatype
        v2(3, "mlp", [("x", [1, 16], "FP32", x_row(3))]),
        Call(4, Target.V2, "POST", "rid-4", b"{not json", time.monotonic() + 10, path="/v2/models/mlp/infer"),
    ]
    counts = Counts()
    replies = worker.serve(calls)
    assert [replies[i].status for i in range(5)] == [200, 400, 400, 200, 400]
    assert "expects [-1, 16]" in body(replies[1])["error"] and "expects FP32" in body(replies[2])["error"]
    assert counts.delta()["executions"] == 1 and counts.delta()["calls"] == 2 and counts.delta()["fallbacks"] == 0


def test_v2_one_poisoned_input_cannot_fail_its_neighbours(worker: Worker, store: ModelStore) -> None:
    calls = [v2(i, "gather", [("idx", [1], "INT64", [v])]) for i, v in enumerate([1, 2, 99, 3])]
    counts = Counts(store, "gather")
    replies = worker.serve(calls)
    assert [replies[i].status for i in range(4)] == [200, 200, 400, 200]
    assert "out of data bounds" in body(replies[2])["error"]
    assert body(replies[3])["outputs"][0]["data"] == [9, 10, 11]
    delta = counts.delta()
    assert delta["fallbacks"] == 1 and delta["inferences"] == 4


def test_v2_a_deadline_that_would_pass_while_waiting_is_answered_504_at_once(worker: Worker, store: ModelStore) -> None:
    # "slow" waits up to 300 ms for more calls once two are waiting; the second call's deadline is
    # sooner: it is answered 504 at once and never runs, the others run after the delay.
    calls = [
        v2(0, "slow", [("x", [1, 16], "FP32", x_row(0))]),
        v2(1, "slow", [("x", [1, 16], "FP32", x_row(1))], timeout_s=0.1),
        v2(2, "slow", [("x", [1, 16], "FP32", x_row(2))]),
    ]
    counts = Counts(store, "slow")
    started = time.monotonic()
    replies = worker.serve(calls)
    assert [replies[i].status for i in range(3)] == [200, 504, 200]
    assert "deadline passed while the call waited" in body(replies[1])["error"]
    assert worker.answered_at[1] - started < 0.1 < worker.answered_at[0] - started
    delta = counts.delta()
    assert delta["expired"] == 1 and delta["inferences"] == 2 and delta["executions"] == 1


def test_v2_calls_past_their_deadline_or_queue_deadline_do_not_run(worker: Worker, store: ModelStore) -> None:
    late = v2(0, "mlp", [("x", [1, 16], "FP32", x_row(0))], timeout_s=-0.001)
    stale = v2(1, "mlp", [("x", [1, 16], "FP32", x_row(1))])
    stale.start_by = time.monotonic() - 0.001
    ok = v2(2, "mlp", [("x", [1, 16], "FP32", x_row(2))])
    counts = Counts(store, "mlp")
    replies = worker.serve([late, stale, ok])
    assert [replies[i].status for i in range(3)] == [504, 503, 200]
    assert counts.delta()["inferences"] == 1


def test_v2_a_model_that_cannot_batch_is_left_to_the_usual_path(worker: Worker) -> None:
    assert not worker.batcher.offer(v2(0, "fixed", [("x", [1, 4], "FP32", [1, 2, 3, 4])]))
    assert not worker.batcher.offer(v2(1, "plain", [("x", [1, 16], "FP32", x_row(1))]))
    metadata = Call(2, Target.V2, "GET", "r", b"", time.monotonic() + 5, path="/v2/models/mlp")
    assert not worker.batcher.offer(metadata)


def test_v2_batches_on_run_threads(store: ModelStore) -> None:
    with ThreadPoolExecutor(2) as pool:
        w = Worker(store, pool, slots=2)
        try:
            calls = [v2(i, "mlp", [("x", [1, 16], "FP32", x_row(i))]) for i in range(40)]
            replies = w.serve(calls)
        finally:
            w.close()
    for i in range(40):
        y = np.array(body(replies[i])["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(y, mlp_reference(np.array([x_row(i)]))[0], rtol=1e-4, atol=1e-4)


def test_v2_batching_across_many_models_with_the_lru_store(tmp_path: Path) -> None:
    for i in range(6):
        make_mlp(tmp_path / f"m{i}" / "1" / "model.onnx", seed=i)
    s = open_store(settings(model_dir=str(tmp_path), lazy_models=True, max_loaded_models=2, max_batch_size=16))
    w = Worker(s)
    try:
        for i in range(6):
            s.get(f"m{i}")  # metadata known from here on, through evictions
        counts = Counts()
        calls = [v2(n, f"m{n % 6}", [("x", [1, 16], "FP32", x_row(n))]) for n in range(36)]
        replies = w.serve(calls)
        assert counts.delta()["executions"] == 6 and counts.delta()["calls"] == 36  # one batch per model
        assert s.evictions >= 4
        for n in range(36):
            y = np.array(body(replies[n])["outputs"][0]["data"], np.float32)
            np.testing.assert_allclose(y, mlp_reference(np.array([x_row(n)]), seed=n % 6)[0], rtol=1e-4, atol=1e-4)
    finally:
        w.close()
        s.close()


# --- metrics -------------------------------------------------------------------------------------
def test_stats_travel_as_changes_and_add_up_over_workers() -> None:
    batch_stats.payload()  # what earlier tests recorded
    assert batch_stats.payload() is None  # nothing changed since
    STATS["script"].executed(3, [0.001, 0.002, 0.0])
    payload = batch_stats.payload()
    assert payload is not None and list(payload) == ["script"]
    totals = BatchTotals()
    one = {"size": [0, 0, 2] + [0] * 9, "size_sum": 6, "delay": [0] * 20, "delay_sum": 0.5, "fallbacks": 1,
           "expired": 2}  # fmt: skip
    totals.apply(0, {"model": one})
    totals.apply(1, {"model": one})
    totals.retire(1)
    totals.apply(2, {"model": one})
    samples = {
        (s.name, s.labels.get("source"), s.labels.get("le")): s.value for f in totals.collect() for s in f.samples
    }
    assert samples[("scorehost_batch_size_count", "model", None)] == 6
    assert samples[("scorehost_batch_size_sum", "model", None)] == 18
    assert samples[("scorehost_batch_size_bucket", "model", "4.0")] == 6
    assert samples[("scorehost_batch_fallbacks_total", "model", None)] == 3
    assert samples[("scorehost_batch_expired_total", "model", None)] == 6
    assert samples[("scorehost_batch_size_count", "script", None)] == 0


# --- @batch ----------------------------------------------------------------------------------------
def test_sync_batch_isolates_a_failing_input_and_checks_the_output_count() -> None:
    seen: list[list[Any]] = []

    @batch(max_batch_size=8)
    def double(items: list[Any]) -> list[Any]:
        seen.append(list(items))
        time.sleep(0.05)
        if "boom" in items:
            raise ValueError("boom")
        if "short" in items:
            return items[:-1]
        return [2 * x for x in items]

    results: dict[int, Any] = {}

    def call(i: int, value: Any) -> None:
        try:
            results[i] = double(value)
        except Exception as exc:
            results[i] = exc

    before = STATS["script"].fallbacks
    first = threading.Thread(target=call, args=(0, 0))
    first.start()
    time.sleep(0.02)  # the rest pile up behind the first batch
    values = [1, "boom", 3, 4]
    threads = [threading.Thread(target=call, args=(i + 1, v)) for i, v in enumerate(values)]
    for t in threads:
        t.start()
    for t in [first, *threads]:
        t.join(10)
    assert results[1] == 2 and results[3] == 6 and results[4] == 8
    assert isinstance(results[2], ValueError)
    assert max(len(s) for s in seen) == 4 and STATS["script"].fallbacks == before + 1
    with pytest.raises(TypeError, match="returned 0 outputs for 1 inputs"):
        double("short")


def test_async_batch_batches_awaiting_callers_and_expires_late_ones() -> None:
    sizes: list[int] = []

    @batch(max_batch_size=16, max_delay_ms=2)
    async def add_one(items: list[Any]) -> Any:
        sizes.append(len(items))
        await asyncio.sleep(0.3 if "slow" in items else 0.001)
        return np.asarray([0 if x == "slow" else x + 1 for x in items])  # an array works as a list

    async def with_deadline(x: Any, seconds: float) -> Any:
        deadline.current.set(time.monotonic() + seconds)
        return await add_one(x)

    async def main() -> tuple[list[Any], list[Any]]:
        first = await asyncio.gather(*(add_one(i) for i in range(40)))
        slow = asyncio.ensure_future(add_one("slow"))
        await asyncio.sleep(0.05)
        late = await asyncio.gather(with_deadline(1, 0.05), with_deadline(2, 5.0), return_exceptions=True)
        await slow
        return list(first), late

    expired = STATS["script"].expired
    first, late = asyncio.run(main())
    assert first == list(range(1, 41)) and sizes[:3] == [16, 16, 8]
    assert isinstance(late[0], ScoringTimeout) and late[1] == 3
    assert STATS["script"].expired == expired + 1


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_delay_ms": -1}, {"max_batch_size": 2.5}])
def test_batch_refuses_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        batch(**kwargs)


def test_bare_decorator_and_identity() -> None:
    @batch
    def f(items: list[int]) -> list[int]:
        """Doc."""
        return items

    assert f(3) == 3 and f.__name__ == "f" and f.__doc__ == "Doc."


# --- the load tests' view ------------------------------------------------------------------------
def test_load_reports_compute_the_mean_batch_size_and_the_targets() -> None:
    from loadtests import batching as bench
    from loadtests import server_metrics

    def scrape(calls: float, batches: float) -> dict[str, Any]:
        text = (
            "# TYPE scorehost_batch_size histogram\n"
            f'scorehost_batch_size_bucket{{le="+Inf",source="model"}} {batches}\n'
            f'scorehost_batch_size_sum{{source="model"}} {calls}\n'
            f'scorehost_batch_size_count{{source="model"}} {batches}\n'
        )
        return server_metrics.parse(text)

    during = server_metrics.during(scrape(10, 5), scrape(410, 25))
    assert during["batching"] == {"calls": 400, "batches": 20, "mean_batch_size": 20.0}
    assert "mean batch size 20.00 (400 calls in 20 executions)" in server_metrics.markdown(during, {})

    cells = [
        bench.Cell("off", 64, 1, rps=1000, p50_ms=60, p99_ms=90),
        bench.Cell("on", 64, 1, rps=3500, p50_ms=15, p99_ms=40, mean_batch=30.0),
        bench.Cell("off", 1, 1, rps=900, p50_ms=1.0, p99_ms=2),
        bench.Cell("on", 1, 1, rps=890, p50_ms=1.06, p99_ms=2, mean_batch=1.0),
        bench.Cell("on", 1, 2, failed="wrk exit 1"),
    ]
    rows = bench.summarize(cells)
    assert [(r.variant, r.conns, r.rounds) for r in rows] == [
        ("off", 64, 1),
        ("on", 64, 1),
        ("off", 1, 1),
        ("on", 1, 1),
    ]
    verdicts = {name: ok for name, ok, _ in bench.checks(rows)}
    assert list(verdicts.values()) == [True, True, False]  # 3.5x; p99 40 <= 90; p50 +6%
    table = bench.markdown(rows, bench.checks(rows), {"rounds": 1, "duration": 8.0, "setup": "test"})
    assert "| 64 | on | 3,500 | 15.00 | 40.00 | 30.0 |" in table and "FAIL: 1 connection" in table
