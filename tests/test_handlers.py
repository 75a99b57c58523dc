"""Request ids made by the handlers when a client sends none."""

from __future__ import annotations

import os
import uuid

from server.http.handlers import RequestIds


def test_request_ids_are_distinct_version_4_uuids() -> None:
    ids = RequestIds()
    made = [ids.new() for _ in range(3 * 256 + 7)]  # across several draws of random bytes
    assert len(set(made)) == len(made)
    for rid in made:
        parsed = uuid.UUID(rid)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == rid


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    ids = RequestIds()
    ids.new()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, ids.new().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != ids.new()
