"""Load profiles: their parameters and how many users run when.

This module is pure (no Locust, no I/O), so the locustfile, the runner and the tests
share one definition. Every parameter is a field of :class:`LoadConfig`; the
locustfile registers each as ``--lt-<name>`` (environment ``LOCUST_LT_<NAME>``) and
the runner as ``--<name>``. A parameter left unset takes its profile's default.

Profiles:

    steady       fixed users for the duration
    ramp         steps of users, each at a fixed per-user rate, to find the knee:
                 the highest rate whose p99 stays under --p99-target-ms
    spike        base load, then a burst far past capacity, then base load again:
                 expect fast 503s with Retry-After, no connection errors, recovery
    multi-model  V2 inference spread over N models, uniform then Zipf-skewed
    timeout      a share of slow requests against a short scoring timeout:
                 expect 504s on time while the fast ones keep their latency
    payloads     several body sizes (batch 1 to 64) in one run, each checked
    streaming    run() yields tokens (LLM-style); time to first chunk and the gaps
                 between chunks, each as its own request name in Locust's stats
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("steady", "ramp", "spike", "multi-model", "timeout", "payloads", "streaming")

# A shape never runs longer than this, even when asked for no time limit.
MAX_RUN_S = 24 * 3600.0

# The streaming profile's request names: Locust's stats and the summary give each its own
# percentiles. ttfc: request sent to first chunk read; chunk-gap: one chunk to the next;
# stream: request sent to the last byte read.
STREAM_TTFC = "ttfc"
STREAM_GAP = "chunk-gap"
STREAM_WHOLE = "stream"


def _opt(default: Any, help: str, *, per_profile: dict[str, Any] | None = None, **meta: Any) -> Any:
    return field(default=default, metadata={"help": help, "per_profile": per_profile or {}, **meta})


@dataclass(frozen=True)
class LoadConfig:
    """Every knob of every profile. Field names are the option names with ``_``."""

    profile: str = _opt("steady", "one of: " + ", ".join(PROFILES))
    # users and duration_s are Locust's own -u and -t in the locustfile.
    users: int = _opt(
        8,
        "concurrent users (steady, multi-model, timeout, payloads, streaming)",
        locust_common=True,
        per_profile={"timeout": 8},
    )
    duration_s: float = _opt(
        30.0, "run time in seconds (ramp and spike derive theirs from their steps)", locust_common=True
    )
    spawn_rate: float = _opt(0.0, "users started per second; 0: all of a stage's users within a second")

    # --- what to send ---------------------------------------------------------
    path: str = _opt("", "request path; default /score, or /v2/models/{model}/infer with --model")
    payload: str = _opt(
        "",
        "body files, comma-separated (a folder means every *.json in it); "
        "default: generated from --model metadata or --features",
    )
    model: str = _opt("", "V2 model whose input metadata (GET /v2/models/{name}) generates the bodies")
    batch: int = _opt(1, "batch size of generated bodies")
    batches: str = _opt("1,8,64", "batch sizes of generated bodies for the payloads profile")
    features: int = _opt(64, 'columns of generated Azure-style bodies {"data": [[...]]}')
    api_key: str = _opt("", "sent as Authorization: Bearer <key>", secret=True)
    header: str = _opt("", "extra headers, 'Name: value' pairs separated by ';'")
    timeout_s: float = _opt(10.0, "client timeout per request (connect and response)")
    think_ms: float = _opt(0.0, "pause after each request; 0 with user-rate 0 is a closed loop")
    user_rate: float = _opt(
        0.0,
        "requests per second per user (paced, no catch-up bursts); 0: unpaced",
        per_profile={"ramp": 20.0, "timeout": 25.0},
    )

    # --- ramp ---------------------------------------------------------------
    start_users: int = _opt(4, "ramp: users in the first step")
    step_users: int = _opt(4, "ramp: users added per step")
    max_users: int = _opt(64, "ramp: users in the last step")
    step_s: float = _opt(5.0, "ramp: seconds per step")
    p99_target_ms: float = _opt(50.0, "ramp: the knee is the highest rate whose p99 stays under this")
    stop_at_knee: bool = _opt(True, "ramp: stop once a step misses the target (--over-steps times in a row)")
    over_steps: int = _opt(2, "ramp: consecutive steps over target before stopping")

    # --- spike --------------------------------------------------------------
    base_users: int = _opt(4, "spike: users before and after the burst")
    spike_users: int = _opt(200, "spike: users during the burst")
    base_s: float = _opt(5.0, "spike: seconds of base load before the burst")
    spike_s: float = _opt(5.0, "spike: seconds of burst")
    recovery_s: float = _opt(10.0, "spike: seconds of base load after the burst")
    fast_503_ms: float = _opt(250.0, "spike: p99 latency a 503 must stay under")
    recovery_factor: float = _opt(3.0, "spike/timeout: allowed p99 growth over the baseline phase")
    recovery_slack_ms: float = _opt(25.0, "spike/timeout: allowed p99 growth in ms (the larger one counts)")

    # --- multi-model --------------------------------------------------------
    models: str = _opt("", "multi-model: model names, comma-separated, hottest first for Zipf")
    distribution: str = _opt("both", "multi-model: uniform, zipf, or both (half the time each)")
    zipf_s: float = _opt(1.2, "multi-model: Zipf exponent (weight of rank k is 1/k^s)")

    # --- timeout ------------------------------------------------------------
    slow_share: float = _opt(0.1, "timeout: share of slow requests after the baseline phase")
    slow_ms: float = _opt(600.0, "timeout: sleep_ms of a slow request (longer than the server timeout)")
    fast_ms: float = _opt(0.0, "timeout: sleep_ms of a fast request")
    timeout_ms: float = _opt(200.0, "timeout: the server's scoring timeout (SCORING_TIMEOUT_MS)")
    timeout_slack_ms: float = _opt(150.0, "timeout: a 504 may come this much after the timeout")
    baseline_share: float = _opt(0.3, "timeout: share of the run with fast requests only")

    # --- streaming ----------------------------------------------------------
    # Shaped like LLM token streaming: many small chunks, a few ms apart.
    tokens: int = _opt(32, "streaming: chunks per reply (the body's n)")
    token_delay_ms: float = _opt(5.0, "streaming: run() sleeps this long between chunks (the body's delay_ms)")
    token_bytes: int = _opt(16, "streaming: bytes per chunk (the body's size)")

    # --- output -------------------------------------------------------------
    out: str = _opt("", "write every request to OUT.npz and the run's metadata to OUT.meta.json")
    progress: bool = _opt(True, "print one progress line per second")

    @classmethod
    def build(cls, given: dict[str, Any]) -> LoadConfig:
        """Fill unset (None or missing) values with the profile's default, then the generic one."""
        profile = given.get("profile") or "steady"
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = given.get(f.name)
            if value is None:
                value = f.metadata["per_profile"].get(profile, f.default)
            values[f.name] = value
        values["profile"] = profile
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["api_key"]:
            out["api_key"] = "***"
        return out


@dataclass(frozen=True)
class ParamSpec:
    """One LoadConfig field as a command-line option."""

    name: str  # field name, e.g. p99_target_ms
    kind: type
    default: Any
    help: str
    per_profile: dict[str, Any]
    secret: bool
    locust_common: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def locust_flag(self) -> str:
        return "--lt-" + self.name.replace("_", "-")

    @property
    def locust_dest(self) -> str:
        return "lt_" + self.name

    @property
    def env(self) -> str:
        return "LOCUST_LT_" + self.name.upper()

    def help_text(self) -> str:
        extra = "".join(f", {p}: {v}" for p, v in self.per_profile.items())
        return f"{self.help} (default {self.default}{extra})"


def param_specs() -> list[ParamSpec]:
    kinds = {"int": int, "float": float, "str": str, "bool": bool}
    specs = []
    for f in dataclasses.fields(LoadConfig):
        specs.append(
            ParamSpec(
                name=f.name,
                kind=kinds[str(f.type)],
                default=f.default,
                help=f.metadata["help"],
                per_profile=dict(f.metadata["per_profile"]),
                secret=bool(f.metadata.get("secret", False)),
                locust_common=bool(f.metadata.get("locust_common", False)),
            )
        )
    return specs


def to_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def arg_type(kind: type) -> Any:
    """The argparse ``type=`` for a field kind (bool accepts true/false/1/0/yes/no)."""
    return to_bool if kind is bool else kind


# --- stages ------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    label: str
    users: int
    seconds: float
    spawn_rate: float


def _rate(cfg: LoadConfig, users: int) -> float:
    # All of a stage's users within about a second unless a rate was asked for.
    return cfg.spawn_rate if cfg.spawn_rate > 0 else float(max(users, 1))


def ramp_user_counts(cfg: LoadConfig) -> list[int]:
    start = max(cfg.start_users, 1)
    step = max(cfg.step_users, 1)
    top = max(cfg.max_users, start)
    count = (top - start) // step + 1
    return [start + i * step for i in range(count)]


def stages(cfg: LoadConfig) -> list[Stage]:
    """The run as a list of stages; a LoadTestShape walks it."""
    duration = cfg.duration_s if cfg.duration_s > 0 else MAX_RUN_S
    users = max(cfg.users, 1)
    p = cfg.profile
    if p == "ramp":
        return [
            Stage(f"step {i + 1}: {u} users", u, cfg.step_s, _rate(cfg, cfg.step_users))
            for i, u in enumerate(ramp_user_counts(cfg))
        ]
    if p == "spike":
        base = max(cfg.base_users, 1)
        spike = max(cfg.spike_users, base)
        return [
            Stage("base", base, cfg.base_s, _rate(cfg, base)),
            Stage("spike", spike, cfg.spike_s, _rate(cfg, spike)),
            Stage("recovery", base, cfg.recovery_s, _rate(cfg, spike)),
        ]
    if p == "timeout":
        first = duration * min(max(cfg.baseline_share, 0.0), 0.9)
        return [
            Stage("baseline", users, first, _rate(cfg, users)),
            Stage("mixed", users, duration - first, _rate(cfg, users)),
        ]
    if p == "multi-model" and cfg.distribution == "both":
        half = duration / 2
        return [
            Stage("uniform", users, half, _rate(cfg, users)),
            Stage("zipf", users, half, _rate(cfg, users)),
        ]
    if p == "multi-model":
        return [Stage(cfg.distribution, users, duration, _rate(cfg, users))]
    return [Stage(p, users, duration, _rate(cfg, users))]


def total_seconds(cfg: LoadConfig) -> float:
    return sum(s.seconds for s in stages(cfg))


def stage_at(plan: list[Stage], elapsed: float) -> tuple[int, Stage] | None:
    """The stage running ``elapsed`` seconds into the run, or None when the run is over."""
    end = 0.0
    for i, stage in enumerate(plan):
        end += stage.seconds
        if elapsed < end:
            return i, stage
    return None


def stage_bounds(plan: list[Stage]) -> list[tuple[float, float]]:
    out = []
    start = 0.0
    for s in plan:
        out.append((start, start + s.seconds))
        start += s.seconds
    return out


# --- model choice ---------------------------------------------------------------


def zipf_weights(n: int, s: float) -> list[float]:
    """Normalised Zipf weights: rank k (1-based) gets 1/k^s."""
    if n <= 0:
        return []
    raw = [1.0 / math.pow(k, s) for k in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def cumulative(weights: list[float]) -> list[float]:
    out = []
    acc = 0.0
    for w in weights:
        acc += w
        out.append(acc)
    if out:
        out[-1] = 1.0  # guard against rounding: the last bucket always catches
    return out


def parse_headers(text: str, api_key: str = "") -> dict[str, str]:
    """``'A: 1; B: 2'`` plus an API key as a bearer token."""
    headers: dict[str, str] = {}
    for part in text.split(";"):
        if ":" in part:
            name, value = part.split(":", 1)
            if name.strip():
                headers[name.strip()] = value.strip()
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]
