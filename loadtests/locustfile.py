"""scorehost load profiles for Locust: steady, ramp, spike, multi-model, timeout, payloads, streaming.

Point it at any deployment (your own included):

    locust -f loadtests/locustfile.py --headless --host http://127.0.0.1:5001 \\
        -u 32 -t 60s --lt-profile steady --lt-payload examples/sample-request.json \\
        --lt-api-key "$KEY"

Every profile parameter is ``--lt-<name>`` or the environment variable
``LOCUST_LT_<NAME>`` (listed in ``loadtests/profiles.py`` and by ``python -m loadtests.run --help``, there
without the ``lt-`` prefix).
The run's shape (users over time) is the profile's; ``-u`` and ``-t`` set the users
and run time of the profiles that use them. ``python -m loadtests.run`` wraps all of
this: it starts a local server, runs headless and writes the reports and plots.
"""

from __future__ import annotations

import bisect
import http.client
import itertools
import json
import logging
import random
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Locust imports this file by path; make the loadtests package importable from here.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

import gevent  # type: ignore[import-untyped]  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, LoadTestShape, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING  # noqa: E402

from loadtests import payloads as pl  # noqa: E402
from loadtests import profiles  # noqa: E402
from loadtests.recorder import FLAG_BAD_504, FLAG_INVALID_BODY, FLAG_NO_RETRY_AFTER, Recorder  # noqa: E402

log = logging.getLogger("loadtests")

# Progress lines start with this marker, so the runner can pick them out of Locust's output.
PROGRESS = "[progress]"


@dataclass
class Context:
    """What the users, the shape and the listeners share during one run."""

    cfg: profiles.LoadConfig | None = None
    plan: list[profiles.Stage] = field(default_factory=list)
    stage_idx: int = -1
    stage_label: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    path: str = "/score"
    bodies: list[pl.Payload] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # request names, one per body
    models: list[str] = field(default_factory=list)
    model_bodies: list[bytes] = field(default_factory=list)
    uniform_cum: list[float] = field(default_factory=list)
    zipf_cum: list[float] = field(default_factory=list)
    slow_body: bytes = b""
    fast_body: bytes = b""
    stream_body: bytes = b""
    over_steps: int = 0
    setup_error: str = ""
    saved: bool = False


CTX = Context()
REC = Recorder()


# --- options -------------------------------------------------------------------


def _add_options(parser: Any) -> None:
    # On the parser itself, not a group: only LocustArgumentParser knows is_secret.
    for spec in profiles.param_specs():
        if spec.locust_common:
            continue  # Locust's own -u / -t
        parser.add_argument(
            spec.locust_flag,
            dest=spec.locust_dest,
            type=profiles.arg_type(spec.kind),
            default=None,
            env_var=spec.env,
            help=spec.help_text(),
            is_secret=spec.secret,
        )


def config_from_options(options: Any) -> profiles.LoadConfig:
    given: dict[str, Any] = {}
    for spec in profiles.param_specs():
        if spec.locust_common:
            continue
        given[spec.name] = getattr(options, spec.locust_dest, None)
    given["users"] = getattr(options, "num_users", None)
    run_time = getattr(options, "run_time", None)
    given["duration_s"] = float(run_time) if run_time else None
    return profiles.LoadConfig.build(given)


# --- setup ---------------------------------------------------------------------


def _prepare(environment: Environment) -> None:
    """Turn the options into bodies, names and model weights, once, before users start."""
    cfg = config_from_options(environment.parsed_options)
    CTX.cfg = cfg
    CTX.plan = profiles.stages(cfg)
    CTX.headers = {"Content-Type": "application/json", **profiles.parse_headers(cfg.header, cfg.api_key)}
    host = environment.host or ""

    if cfg.profile == "multi-model":
        models = [m.strip() for m in cfg.models.split(",") if m.strip()] or ([cfg.model] if cfg.model else [])
        if not models:
            raise ValueError("multi-model needs --lt-models a,b,c (hottest first)")
        CTX.models = models
        for i, m in enumerate(models):
            meta = pl.fetch_metadata(host, m, CTX.headers, cfg.timeout_s)
            CTX.model_bodies.append(pl.v2_body(meta["inputs"], cfg.batch, seed=i))
        CTX.uniform_cum = profiles.cumulative([1.0 / len(models)] * len(models))
        CTX.zipf_cum = profiles.cumulative(profiles.zipf_weights(len(models), cfg.zipf_s))
        return

    if cfg.profile == "timeout":
        CTX.path = cfg.path or "/score"
        CTX.slow_body = json.dumps({"sleep_ms": cfg.slow_ms}).encode()
        CTX.fast_body = json.dumps({"sleep_ms": cfg.fast_ms}).encode()
        return

    if cfg.profile == "streaming":
        if cfg.tokens < 1 or cfg.token_bytes < 1:
            raise ValueError("streaming needs --lt-tokens and --lt-token-bytes of at least 1")
        CTX.path = cfg.path or "/score"
        # The body loadtests/scripts/streamer.py reads.
        CTX.stream_body = json.dumps(
            {"n": cfg.tokens, "delay_ms": cfg.token_delay_ms, "size": cfg.token_bytes}
        ).encode()
        _warm_up_stream(host, cfg.timeout_s)
        return

    if cfg.model:
        CTX.path = cfg.path or f"/v2/models/{cfg.model}/infer"
        meta = pl.fetch_metadata(host, cfg.model, CTX.headers, cfg.timeout_s)
        batches = profiles.parse_ints(cfg.batches) if cfg.profile == "payloads" else [cfg.batch]
        bodies = [pl.Payload(f"b{b}", pl.v2_body(meta["inputs"], b, seed=b), b) for b in batches]
    else:
        CTX.path = cfg.path or "/score"
        if cfg.payload:
            bodies = pl.load_files(cfg.payload)
        elif cfg.profile == "payloads":
            bodies = pl.generated_score_payloads(profiles.parse_ints(cfg.batches), cfg.features)
        else:
            bodies = pl.generated_score_payloads([cfg.batch], cfg.features)
    CTX.bodies = bodies
    if len(bodies) == 1:
        CTX.names = [f"POST {CTX.path}"]
    else:
        CTX.names = [f"POST {CTX.path} [{b.label}, {b.size_text}]" for b in bodies]


def _warm_up_stream(host: str, timeout_s: float) -> None:
    """One stream read to its end and not recorded, before the users start.

    A run has few streams per user (about six a second at the defaults), so the p99 of
    time to first chunk would otherwise be the server's very first streamed call, which
    is slow (121 ms against a p50 of 3 ms in one 1-user run here).
    """
    url = urllib.parse.urlsplit(host)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = cls(url.hostname or "127.0.0.1", url.port, timeout=timeout_s)
    try:
        conn.request("POST", CTX.path, body=CTX.stream_body, headers=CTX.headers)
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        # The run itself records what goes wrong; a warm-up only saves it a cold start.
        log.warning("streaming warm-up failed: %s", exc)
    finally:
        conn.close()


def _on_test_start(environment: Environment, **_: Any) -> None:
    if CTX.cfg is not None:
        return  # test_start fires again on a re-spawn; set up once
    try:
        _prepare(environment)
    except Exception as exc:
        CTX.setup_error = f"{type(exc).__name__}: {exc}"
        log.error("load test setup failed: %s", CTX.setup_error)
        if environment.runner is not None:
            environment.runner.quit()
        return
    REC.begin()
    assert CTX.cfg is not None
    if CTX.plan:
        # The shape already started the first stage (its tick spawned us); record it.
        CTX.stage_idx = 0
        CTX.stage_label = CTX.plan[0].label
        REC.phase(CTX.plan[0].label, CTX.plan[0].users)
    if CTX.cfg.progress or CTX.cfg.out:
        gevent.spawn(_progress_loop, environment)


# --- shape ---------------------------------------------------------------------


class ProfileShape(LoadTestShape):
    """Walks the profile's stages; for ramp, stops once the knee is passed."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        if CTX.setup_error:
            return None
        if CTX.cfg is None:
            # Before test_start: start with the first stage, _prepare runs on the first spawn.
            if self.runner is None or self.runner.environment.parsed_options is None:
                return None
            plan = profiles.stages(config_from_options(self.runner.environment.parsed_options))
            return (plan[0].users, plan[0].spawn_rate) if plan else None
        elapsed = REC.elapsed()
        hit = profiles.stage_at(CTX.plan, elapsed)
        if hit is None:
            return None
        idx, stage = hit
        if idx != CTX.stage_idx:
            if CTX.cfg.profile == "ramp" and CTX.stage_idx >= 0 and _passed_knee(CTX.stage_idx):
                REC.notes.append(f"stopped after step {CTX.stage_idx + 1}: past the knee")
                return None
            CTX.stage_idx = idx
            CTX.stage_label = stage.label
            REC.phase(stage.label, stage.users)
        return stage.users, stage.spawn_rate


def _passed_knee(step_idx: int) -> bool:
    """True once ``over_steps`` steps in a row missed the p99 target (or had errors)."""
    assert CTX.cfg is not None
    cfg = CTX.cfg
    start, end = profiles.stage_bounds(CTX.plan)[step_idx]
    settle = min(1.0, (end - start) / 4)  # users of a new step are still starting
    lat, status = REC.started_between(start + settle, end)
    if len(lat) == 0:
        over = True
    else:
        p99 = float(np.percentile(lat, 99, method="higher"))
        errors = int(((status < 200) | (status >= 400)).sum())
        over = p99 > cfg.p99_target_ms or errors > 0.01 * len(lat)
    CTX.over_steps = CTX.over_steps + 1 if over else 0
    return cfg.stop_at_knee and CTX.over_steps >= max(cfg.over_steps, 1)


# --- users -----------------------------------------------------------------------


def _post(client: Any, path: str, body: bytes, **kwargs: Any) -> Any:
    """POST raw bytes. Locust types ``data`` as str, but geventhttpclient sends bytes
    as they are, which saves encoding a 40 KB body on every request."""
    return client.post(path, data=body, **kwargs)


class ScoreUser(FastHttpUser):
    """One client; what it sends depends on the profile."""

    def __init__(self, environment: Environment) -> None:
        cfg = CTX.cfg
        if cfg is not None:
            # Read by FastHttpUser.__init__ when it builds the session.
            self.network_timeout = cfg.timeout_s
            self.connection_timeout = cfg.timeout_s
            self.default_headers = dict(CTX.headers)
        super().__init__(environment)
        self._next_at = 0.0
        self._rng = random.Random()
        self._stream_conn: http.client.HTTPConnection | None = None

    def wait_time(self) -> float:
        cfg = CTX.cfg
        if cfg is None:
            return 0.0
        if cfg.user_rate <= 0:
            return cfg.think_ms / 1000.0
        # Pacing: one request every 1/rate s. A user that fell behind restarts its clock
        # instead of bursting to catch up, so the offered rate never exceeds the target.
        period = 1.0 / cfg.user_rate
        now = time.monotonic()
        self._next_at = max(self._next_at + period, now)
        return self._next_at - now

    @task
    def one(self) -> None:
        cfg = CTX.cfg
        if cfg is None or CTX.setup_error:
            self.stop()
            return
        if cfg.profile == "multi-model":
            self._multi_model()
        elif cfg.profile == "timeout":
            self._timeout()
        elif cfg.profile == "payloads":
            self._payloads()
        elif cfg.profile == "streaming":
            self._streaming()
        else:
            i = self._rng.randrange(len(CTX.bodies)) if len(CTX.bodies) > 1 else 0
            _post(self.client, CTX.path, CTX.bodies[i].body, name=CTX.names[i])

    def _payloads(self) -> None:
        i = self._rng.randrange(len(CTX.bodies))
        body = CTX.bodies[i]
        with _post(self.client, CTX.path, body.body, name=CTX.names[i], catch_response=True) as resp:
            if 200 <= resp.status_code < 300 and body.batch is not None:
                got = pl.response_batch(resp.content or b"")
                if got is not None and got != body.batch:
                    resp.failure(f"answer has {got} rows for a batch of {body.batch}")

    def _multi_model(self) -> None:
        cum = CTX.zipf_cum if CTX.stage_label == "zipf" else CTX.uniform_cum
        i = bisect.bisect_left(cum, self._rng.random())
        i = min(i, len(CTX.models) - 1)
        _post(
            self.client,
            f"/v2/models/{CTX.models[i]}/infer",
            CTX.model_bodies[i],
            name="POST /v2/models/[name]/infer",
            context={"tag": i},
        )

    def _timeout(self) -> None:
        assert CTX.cfg is not None
        slow = CTX.stage_label != "baseline" and self._rng.random() < CTX.cfg.slow_share
        if slow:
            _post(self.client, CTX.path, CTX.slow_body, name=f"POST {CTX.path} [slow]")
        else:
            _post(self.client, CTX.path, CTX.fast_body, name=f"POST {CTX.path} [fast]")

    # --- streaming ---------------------------------------------------------------------
    #
    # FastHttpUser's client hands over a reply only once it is whole, so the streaming
    # user reads with http.client instead: Locust has gevent-patched the socket module,
    # so resp.read1() waits cooperatively, and each read returns what has arrived.

    def _connection(self) -> http.client.HTTPConnection:
        """This user's keep-alive connection to the host, opened on first use."""
        if self._stream_conn is None:
            assert CTX.cfg is not None
            url = urllib.parse.urlsplit(self.host or "")
            cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            self._stream_conn = cls(url.hostname or "127.0.0.1", url.port, timeout=CTX.cfg.timeout_s)
        return self._stream_conn

    def _drop_connection(self) -> None:
        if self._stream_conn is not None:
            self._stream_conn.close()
            self._stream_conn = None

    def on_stop(self) -> None:
        self._drop_connection()

    def _streaming(self) -> None:
        """One streamed reply: a ttfc event, a chunk-gap event per later chunk, a stream event."""
        assert CTX.cfg is not None
        n, size = CTX.cfg.tokens, CTX.cfg.token_bytes
        expected = n * size
        started_epoch = time.time()
        t0 = time.perf_counter()
        # perf_counter() at which each chunk's last byte was read. Chunks are counted by
        # bytes, not by reads: a read may carry several chunks (the client then saw them
        # arrive together, gap 0) or, rarely, part of one.
        arrivals: list[float] = []
        status = 0
        got = 0
        content = b""
        error: BaseException | None = None
        headers: dict[str, str] = {}
        try:
            resp = self._send_stream_request()
            status = resp.status
            if not 200 <= status < 300:
                content = resp.read()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                error = RuntimeError(f"HTTP {status}")
            else:
                # Bounded: every pass reads at least one byte or ends the loop, the socket
                # timeout bounds each wait, and a reply longer than asked for stops it.
                while data := resp.read1(65536):
                    now = time.perf_counter()
                    got += len(data)
                    if got > expected:
                        break
                    done = got // size
                    arrivals.extend([now] * (done - len(arrivals)))
                if got != expected:
                    error = ValueError(f"stream of {got}+ bytes, expected {n} chunks x {size} B = {expected}")
                    self._drop_connection()  # the rest of an over-long reply is still unread
            if resp.will_close:
                self._drop_connection()
        except (OSError, http.client.HTTPException) as exc:
            error = exc
            self._drop_connection()
        end = time.perf_counter()
        self._fire_stream(started_epoch, t0, end, arrivals, _Answer(status, content, headers), got, error)

    def _send_stream_request(self) -> http.client.HTTPResponse:
        """POST the stream's body and read the reply's head.

        A kept-alive connection the server closed while idle (its keep-alive timeout)
        fails on first use; that one case is retried once on a new connection, so it is
        not counted as a connection error.
        """
        reused = self._stream_conn is not None
        try:
            conn = self._connection()
            conn.request("POST", CTX.path, body=CTX.stream_body, headers=CTX.headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            self._drop_connection()
            conn = self._connection()
            conn.request("POST", CTX.path, body=CTX.stream_body, headers=CTX.headers)
            return conn.getresponse()

    def _fire_stream(
        self,
        started_epoch: float,
        t0: float,
        end: float,
        arrivals: list[float],
        answer: _Answer,
        got: int,
        error: BaseException | None,
    ) -> None:
        assert CTX.cfg is not None
        size = CTX.cfg.token_bytes

        def fire(kind: str, name: str, ms: float, length: int, exc: BaseException | None, start: float) -> None:
            self.environment.events.request.fire(
                request_type=kind, name=name, response_time=ms, response_length=length, response=answer,
                context={}, exception=exc, start_time=start,
            )  # fmt: skip

        if arrivals:
            fire("STREAM", profiles.STREAM_TTFC, (arrivals[0] - t0) * 1000.0, size, None, started_epoch)
        for before, after in itertools.pairwise(arrivals):
            fire("STREAM", profiles.STREAM_GAP, (after - before) * 1000.0, size, None, started_epoch + (before - t0))
        fire("POST", profiles.STREAM_WHOLE, (end - t0) * 1000.0, got, error, started_epoch)


@dataclass(frozen=True)
class _Answer:
    """What _on_request reads of a response, for requests made outside Locust's clients."""

    status_code: int
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


# --- recording ---------------------------------------------------------------------


def _on_request(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    response: Any = None,
    context: dict[str, Any] | None = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_: Any,
) -> None:
    status = int(getattr(response, "status_code", 0) or 0)
    flags = 0
    if status == 0 and exception is not None:
        REC.exceptions[type(exception).__name__] += 1
    elif status == 503:
        headers = getattr(response, "headers", None)
        if not headers or not headers.get("retry-after"):
            flags |= FLAG_NO_RETRY_AFTER
    elif status == 504:
        content = getattr(response, "content", None) or b""
        if b"timeout" not in content.lower():
            flags |= FLAG_BAD_504
    elif exception is not None and 200 <= status < 300:
        flags |= FLAG_INVALID_BODY
    tag = int(context.get("tag", -1)) if context else -1
    REC.add(
        start_time if start_time is not None else time.time() - response_time / 1000.0,
        float(response_time),
        status,
        name,
        tag,
        flags,
    )


def _progress_loop(environment: Environment) -> None:
    """One line per second, and a sample of the user count for the plots."""
    assert CTX.cfg is not None
    cfg = CTX.cfg
    total = profiles.total_seconds(cfg)
    seen = 0
    # Bounded by the longest run a shape allows, one iteration per second.
    for _ in range(int(profiles.MAX_RUN_S) + 10):
        gevent.sleep(1.0)
        runner = environment.runner
        if runner is None or runner.state in (STATE_STOPPED, STATE_STOPPING, STATE_CLEANUP):
            return
        now = len(REC)
        w = REC.window(seen, now)
        seen = now
        users = int(runner.user_count)
        REC.users.append((round(REC.elapsed(), 3), users))
        if not cfg.progress:
            continue
        errors = " ".join(f"{code}:{n}" for code, n in sorted(w.statuses.items()) if not 200 <= code < 300)
        print(
            f"{PROGRESS} {REC.elapsed():5.0f}s/{total:.0f}s {CTX.stage_label:<18} users={users:<4d} "
            f"rps={w.count:<6d} p50={w.p50_ms:7.2f}ms p99={w.p99_ms:7.2f}ms errors={errors or '0'}",
            flush=True,
        )


def _save(environment: Environment) -> None:
    if CTX.saved or CTX.cfg is None or not CTX.cfg.out:
        return
    CTX.saved = True
    cfg = CTX.cfg
    meta = {
        "profile": cfg.profile,
        "config": cfg.as_dict(),
        "host": environment.host,
        "plan": [{"label": s.label, "users": s.users, "seconds": s.seconds} for s in CTX.plan],
        "models": CTX.models,
        "bodies": [
            {"name": n, "label": b.label, "bytes": len(b.body), "batch": b.batch}
            for n, b in zip(CTX.names, CTX.bodies, strict=True)
        ],
        "setup_error": CTX.setup_error,
        "t_end": REC.elapsed(),
    }
    REC.save(cfg.out, meta)


def _on_test_stop(environment: Environment, **_: Any) -> None:
    _save(environment)


def _on_quitting(environment: Environment, **_: Any) -> None:
    if CTX.cfg is None:
        # Setup never ran (e.g. no users spawned); still leave a record of why.
        try:
            CTX.cfg = config_from_options(environment.parsed_options)
        except ValueError as exc:
            CTX.setup_error = str(exc)
            return
    _save(environment)


# Registered by call, not as decorators: Locust's EventHook.add_listener is untyped.
def _listen(hook: Any, handler: Callable[..., None]) -> None:
    hook.add_listener(handler)


_listen(events.init_command_line_parser, _add_options)
_listen(events.test_start, _on_test_start)
_listen(events.request, _on_request)
_listen(events.test_stop, _on_test_stop)
_listen(events.quitting, _on_quitting)
