"""The pod's front states in shared memory: what each HTTP front publishes and every probe reads.

With ``http_processes`` > 1 the kernel hands each new connection to any front (``SO_REUSEPORT``), so
a probe must answer for the whole pod, not for the front it happened to reach: a pod whose second
front is still starting sends that front its share of new connections, and they would get 503.
So readiness (and ``GET /``) is 200 only when every front is ready, and liveness fails as soon as
one front is in the terminal failed state, whichever front answers.

Each front owns one byte of a page that the parent (:mod:`server.http.fronts`) maps before it forks
the fronts; an anonymous shared mapping is inherited across ``fork``. One writer per byte, and a
byte is written whole: no lock, no torn value, nothing on the request path. A front publishes its
state every :data:`PUBLISH_EVERY_S` (and at once on SIGTERM); the parent resets the byte of a front
that died, so a dead front never counts as ready.
"""

from __future__ import annotations

import asyncio
import enum
import mmap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.workers.pool import WorkerPool

# Probes come seconds apart; a state up to this old costs nothing there, and polling costs 20
# wake-ups a second instead of a hook in the pool's life-cycle code.
PUBLISH_EVERY_S = 0.05


class FrontState(enum.IntEnum):
    STARTING = 0  # forked or restarting: its workers are not ready (the zeroed page says so)
    READY = 1
    DRAINING = 2
    FAILED = 3  # terminal: its workers cannot be started again (its own liveness fails)


class Board:
    """One state byte per front, shared by the parent and every front it forks."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._mem = mmap.mmap(-1, count)  # anonymous and MAP_SHARED: the forked fronts see the same page

    def set(self, index: int, state: FrontState) -> None:
        self._mem[index] = int(state)

    def get(self, index: int) -> FrontState:
        return FrontState(self._mem[index])

    def states(self) -> list[FrontState]:
        return [FrontState(b) for b in self._mem[: self.count]]


@dataclass(frozen=True)
class FrontRole:
    """What makes a server process one front of several: its place on the board, and the
    folder (mode 0700, made by the parent) where the fronts answer each other's metrics
    requests (:mod:`server.metrics_pod`)."""

    index: int
    board: Board
    metrics_dir: str | None = None

    @property
    def count(self) -> int:
        return self.board.count


def local_state(pool: WorkerPool) -> FrontState:
    """This front's own state, from its pool (the same rules its probes use alone)."""
    if pool.fatal is not None or not pool.live():
        return FrontState.FAILED
    if pool.draining:
        return FrontState.DRAINING
    return FrontState.READY if pool.ready() else FrontState.STARTING


class PodView:
    """The probes' source in a front: its pool's answers, and'ed with every other front's state.

    It offers what :class:`server.http.probes.Probes` asks a pool (``ready``, ``live``,
    ``status``), so the probes use it in the pool's place."""

    def __init__(self, role: FrontRole, pool: WorkerPool) -> None:
        self.role = role
        self.pool = pool
        self._timer: asyncio.TimerHandle | None = None

    # --- publishing ------------------------------------------------------------
    def publish(self) -> FrontState:
        state = local_state(self.pool)
        self.role.board.set(self.role.index, state)
        return state

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Publish now and every :data:`PUBLISH_EVERY_S` until :meth:`stop`."""

        def tick() -> None:
            self.publish()
            self._timer = loop.call_later(PUBLISH_EVERY_S, tick)

        tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- what the probes ask -----------------------------------------------------
    def _others(self, *states: FrontState) -> list[int]:
        """The other fronts in one of ``states`` (this front answers from its pool, which is fresher)."""
        me = self.role.index
        return [i for i, s in enumerate(self.role.board.states()) if i != me and s in states]

    def ready(self) -> bool:
        self.publish()
        return self.pool.ready() and not self._others(FrontState.STARTING, FrontState.DRAINING, FrontState.FAILED)

    def live(self) -> bool:
        return self.pool.live() and not self._others(FrontState.FAILED)

    def status(self) -> dict[str, Any]:
        status = self.pool.status()
        states = self.role.board.states()
        states[self.role.index] = self.publish()
        status["fronts"] = [s.name.lower() for s in states]
        waiting = self._others(FrontState.STARTING, FrontState.DRAINING, FrontState.FAILED)
        failed = self._others(FrontState.FAILED)
        if status["ready"] and waiting:
            status["ready"] = False
            status["message"] = f"HTTP front(s) {_listed(waiting)} of {self.role.count} not ready yet."
        if status["live"] and failed:
            status["live"] = False
            status["message"] = f"HTTP front(s) {_listed(failed)} of {self.role.count} cannot serve any more."
        return status


def _listed(indexes: list[int]) -> str:
    return ", ".join(str(i) for i in indexes)
