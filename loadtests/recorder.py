"""Every request of a run, kept compactly in memory and saved as ``.npz`` + ``.meta.json``.

Locust's own CSV percentiles are rounded and its time series is a rolling window; the
summary, the checks and the plots need exact per-request data instead. A request costs
a few appends here (about 1 µs), small next to Locust's own cost per request.
"""

from __future__ import annotations

import json
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FLAG_NO_RETRY_AFTER = 1  # a 503 without a Retry-After header
FLAG_INVALID_BODY = 2  # a 2xx answer whose body failed the profile's check
FLAG_BAD_504 = 4  # a 504 whose body does not mention the timeout

# Fixed cap so a forgotten run cannot eat the machine's memory (~13 bytes per request).
MAX_RECORDS = 50_000_000


@dataclass(frozen=True)
class Window:
    count: int
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]


class Recorder:
    def __init__(self) -> None:
        self.t0: float | None = None  # epoch seconds of the run's start
        self.start = array("d")  # seconds since t0 at which the request was sent
        self.latency = array("f")  # ms
        self.status = array("H")  # HTTP status; 0: no HTTP answer (connection error, client timeout)
        self.name = array("H")  # index into self.names
        self.tag = array("h")  # profile-specific (multi-model: model index); -1: none
        self.flags = array("B")
        self.names: list[str] = []
        self._name_idx: dict[str, int] = {}
        self.exceptions: Counter[str] = Counter()
        self.phases: list[dict[str, Any]] = []
        self.users: list[tuple[float, int]] = []
        self.notes: list[str] = []
        self.dropped = 0

    def begin(self, t0: float | None = None) -> None:
        if self.t0 is None:
            self.t0 = time.time() if t0 is None else t0

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else time.time() - self.t0

    def name_index(self, name: str) -> int:
        idx = self._name_idx.get(name)
        if idx is None:
            idx = self._name_idx[name] = len(self.names)
            self.names.append(name)
        return idx

    def add(self, start_epoch: float, latency_ms: float, status: int, name: str, tag: int = -1, flags: int = 0) -> None:
        if len(self.latency) >= MAX_RECORDS:
            self.dropped += 1
            return
        self.begin(start_epoch)
        assert self.t0 is not None
        self.start.append(start_epoch - self.t0)
        self.latency.append(latency_ms)
        self.status.append(status)
        self.name.append(self.name_index(name))
        self.tag.append(tag)
        self.flags.append(flags)

    def phase(self, label: str, users: int) -> None:
        self.phases.append({"t": round(self.elapsed(), 3), "label": label, "users": users})

    def __len__(self) -> int:
        return len(self.latency)

    def window(self, first: int, last: int | None = None) -> Window:
        """Stats of records [first, last): for progress lines and the ramp's knee test."""
        end = len(self.latency) if last is None else last
        if end <= first:
            return Window(0, float("nan"), float("nan"), {})
        lat = np.frombuffer(self.latency, dtype=np.float32)[first:end]
        st = np.frombuffer(self.status, dtype=np.uint16)[first:end]
        codes, counts = np.unique(st, return_counts=True)
        p50, p99 = np.percentile(lat, [50, 99], method="higher")
        return Window(
            int(end - first),
            float(p50),
            float(p99),
            {int(c): int(n) for c, n in zip(codes, counts, strict=True)},
        )

    def started_between(self, t_from: float, t_to: float) -> tuple[np.ndarray, np.ndarray]:
        """Latencies and statuses of requests sent in [t_from, t_to) seconds into the run."""
        start = np.frombuffer(self.start, dtype=np.float64)
        mask = (start >= t_from) & (start < t_to)
        lat = np.frombuffer(self.latency, dtype=np.float32)[mask]
        st = np.frombuffer(self.status, dtype=np.uint16)[mask]
        return lat, st

    def save(self, prefix: str | Path, meta: dict[str, Any]) -> None:
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            Path(f"{prefix}.npz"),
            start=np.frombuffer(self.start, dtype=np.float64),
            latency_ms=np.frombuffer(self.latency, dtype=np.float32),
            status=np.frombuffer(self.status, dtype=np.uint16),
            name=np.frombuffer(self.name, dtype=np.uint16),
            tag=np.frombuffer(self.tag, dtype=np.int16),
            flags=np.frombuffer(self.flags, dtype=np.uint8),
        )
        full = {
            **meta,
            "t0": self.t0,
            "names": self.names,
            "exceptions": dict(self.exceptions),
            "phases": self.phases,
            "users": self.users,
            "notes": self.notes,
            "dropped": self.dropped,
            "requests": len(self),
        }
        Path(f"{prefix}.meta.json").write_text(json.dumps(full, indent=1))
