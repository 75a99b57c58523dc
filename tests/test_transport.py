"""The coalescing transport: one write per loop iteration, nothing lost on close."""

from __future__ import annotations

import asyncio

from server.workers.writer import CoalescingTransport


class Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.extra = {"peername": ("127.0.0.1", 1)}

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> object:
        return self.extra.get(name)


def test_writes_in_one_iteration_leave_in_one_write() -> None:
    async def main() -> list[bytes]:
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"body"))
        assert raw.writes == [] and t.get_write_buffer_size() == 23
        await asyncio.sleep(0)
        t.write(b"next")
        await asyncio.sleep(0)
        return raw.writes

    assert asyncio.run(main()) == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next"]


def test_close_flushes_first_and_other_calls_pass_through() -> None:
    async def main() -> Recorder:
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)
        t.writelines([b"a", b"b"])
        t.close()
        t.write(b"late")  # after close: dropped, as the real transport would
        await asyncio.sleep(0)
        return raw

    raw = asyncio.run(main())
    assert raw.writes == [b"ab"] and raw.closed
