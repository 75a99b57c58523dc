"""The wait queue: FIFO hand-off, bounded length, bounded wait, no lost slots."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.errors import Overloaded
from server.workers.admission import WaitQueue


def test_hand_off_is_fifo() -> None:
    async def main() -> list[int]:
        q: WaitQueue[int] = WaitQueue(10, 1000)
        got: list[int] = []

        async def waiter(i: int) -> None:
            got.append((i, await q.wait(lambda s: None))[0])

        tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        for slot in range(3):
            assert q.hand_off(slot)
        await asyncio.gather(*tasks)
        assert not q.hand_off(99)
        return got

    assert asyncio.run(main()) == [0, 1, 2]


def test_full_queue_refuses_at_once() -> None:
    async def main() -> None:
        q: WaitQueue[int] = WaitQueue(1, 1000)
        first = asyncio.create_task(q.wait(lambda s: None))
        await asyncio.sleep(0)
        t = time.perf_counter()
        with pytest.raises(Overloaded, match="already waiting"):
            await q.wait(lambda s: None)
        assert time.perf_counter() - t < 0.01
        q.hand_off(1)
        assert await first == 1

    asyncio.run(main())


def test_wait_budget_expires_on_time() -> None:
    async def main() -> float:
        q: WaitQueue[int] = WaitQueue(5, 100)
        t = time.perf_counter()
        with pytest.raises(Overloaded, match="within 100 ms"):
            await q.wait(lambda s: None)
        assert q.refused_timeout == 1 and len(q) == 0
        return time.perf_counter() - t

    assert 0.1 <= asyncio.run(main()) < 0.15


def test_slot_handed_to_cancelled_waiter_is_given_back() -> None:
    async def main() -> list[int]:
        q: WaitQueue[int] = WaitQueue(5, 1000)
        returned: list[int] = []
        task = asyncio.create_task(q.wait(returned.append))
        await asyncio.sleep(0)
        q.hand_off(7)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return returned

    assert asyncio.run(main()) == [7]
