"""A worker process: loads the entry script (or the model store) and runs calls.

Started by the HTTP process (see :mod:`server.workers.pool`) as
``python -m server.workers.main --fd N --index I --slots S`` with the settings in the
environment. It talks to its parent only over the inherited Unix socket:

1. load the script and run ``init()`` (or open the model store), sending STATE
   frames while models load, then READY (or FAILED and exit code 3);
2. serve CALL frames: a synchronous ``run()`` inline when the worker has one
   slot, on a thread pool of ``slots`` threads otherwise; ``async def run()`` as
   tasks on this process's event loop;
3. on STOP, finish what is in flight and exit 0; when the parent goes away
   (end of stream), exit.

Timeouts are not enforced here: the parent answers the client at the deadline
and keeps the slot busy until this process really finishes the call.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from server import log
from server.entry.script import EntryScript, EntryScriptError, model_dir_tree
from server.errors import ScoreHostError
from server.gctune import tune_gc
from server.settings import Settings
from server.workers import protocol
from server.workers.protocol import Call, Reply
from server.workers.writer import CoalescingTransport

logger = logging.getLogger("scorehost.worker")

SETTINGS_ENV = "SCOREHOST_WORKER_SETTINGS"
EXIT_INIT_FAILED = 3


class Host:
    """What a worker serves: the entry script, the model store, or both."""

    def __init__(self, settings: Settings, channel: _Channel) -> None:
        self.settings = settings
        self.channel = channel
        self.script: EntryScript | None = None
        self.v2: Any = None
        self.info: dict[str, Any] = {}
        self.async_score = False

    def load(self) -> None:
        s = self.settings
        cwd = os.getcwd()
        entry = s.resolved_entry_script(cwd)
        if entry:
            self.script = EntryScript(entry, s.resolved_app_root(cwd), s.source_directory)
            info = self.script.load()
            self.script.call_init()
            self.async_score = info.is_async
            self.info["script"] = info.to_dict()
        else:
            from server.store import store as models
            from server.store import v2

            store = models.open_store(s, progress=self._progress)
            self.v2 = v2.V2Handler(store, s)
            ready, state = store.readiness()
            self.info["models"] = state
            if not ready:
                raise ScoreHostError(f"Too few models loaded to be ready: {state}")

    def _progress(self, state: dict[str, Any]) -> None:
        self.channel.send(protocol.encode_message(protocol.STATE, {"models": state}))

    def handle_sync(self, call: Call) -> Reply:
        token = log.request_id_var.set(call.request_id)
        try:
            if call.target == protocol.TARGET_SCORE:
                if self.script is None:
                    return Reply.error(404, "No entry script is loaded; models are served under /v2.")
                return self.script.call_sync(call)
            return self._v2(call)
        finally:
            log.request_id_var.reset(token)

    async def handle_async(self, call: Call) -> Reply:
        log.request_id_var.set(call.request_id)  # this task's own context
        assert self.script is not None
        return await self.script.call_async(call)

    def _v2(self, call: Call) -> Reply:
        handler = self.v2
        if handler is None:
            from server.store import store as models

            store = getattr(models, "current_store", lambda: None)()
            if store is None:
                return Reply(404, b'{"error":"No models are served over /v2 by this entry script."}')
            from server.store import v2

            handler = self.v2 = v2.V2Handler(store, self.settings)
        meta = call.meta or {}
        headers = {k: v for k, v in meta.get("h", [])}
        try:
            reply: Reply = handler.handle(
                call.method,
                meta.get("p", "/v2"),
                meta.get("q", ""),
                call.body,
                headers=headers,
                request_id=call.request_id,
            )
        except Exception:
            logger.exception("V2 handler failed")
            return Reply(500, b'{"error":"Internal error while serving the model."}')
        return reply


class _Channel:
    """Blocking sends to the parent, used before the event loop starts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the parent is gone; the serve loop will notice and exit


class WorkerProtocol(asyncio.Protocol):
    def __init__(self, host: Host, slots: int, done: asyncio.Future[int]) -> None:
        self.host = host
        self.loop = asyncio.get_running_loop()
        self.done = done
        self.frames = protocol.FrameBuffer()
        self.pending = 0
        self.stopping = False
        self.transport: CoalescingTransport | None = None
        self.pool = ThreadPoolExecutor(slots, thread_name_prefix="run") if slots > 1 else None
        self.timeout_s = host.settings.scoring_timeout_ms / 1000.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NOTE: uvloop's transports do not subclass asyncio.Transport. Replies made in
        # one loop iteration leave in one write.
        self.transport = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)

    def data_received(self, data: bytes) -> None:
        received = time.monotonic()
        for frame in self.frames.feed(data):
            kind = frame[0]
            if kind == protocol.CALL:
                self._start(protocol.decode_call(frame), received)
            elif kind == protocol.STOP:
                logger.info("Stopping: %d call(s) in flight", self.pending)
                self.stopping = True
                self._maybe_done()

    def _start(self, call: Call, received: float) -> None:
        self.pending += 1
        host = self.host
        if call.target == protocol.TARGET_SCORE and host.async_score:
            task = self.loop.create_task(host.handle_async(call))
            task.add_done_callback(functools.partial(self._finished, call.call_id))
        elif self.pool is None:
            self._send(call.call_id, self._run_sync(call, received))
        else:
            future = self.pool.submit(self._run_sync, call, received)
            future.add_done_callback(functools.partial(self._finished_threadsafe, call.call_id))

    def _run_sync(self, call: Call, received: float) -> Reply:
        # NOTE: calls can wait here behind others (pipelining, or a stuck call);
        # one whose deadline passed was already answered 504 by the parent, so it
        # is not started at all.
        if time.monotonic() - received > self.timeout_s:
            return Reply.error(504, "Scoring timeout before run() started", run_failed=True)
        return self.host.handle_sync(call)

    def _finished_threadsafe(self, call_id: int, future: Future[Reply]) -> None:
        self.loop.call_soon_threadsafe(self._finished, call_id, future)

    def _finished(self, call_id: int, future: asyncio.Future[Reply] | Future[Reply]) -> None:
        try:
            reply = future.result()
        except BaseException:  # a bug of ours: never leave the caller waiting
            logger.exception("Call %d failed inside the worker", call_id)
            reply = Reply.error(500, "Internal error in the worker.")
        self._send(call_id, reply)

    def _send(self, call_id: int, reply: Reply) -> None:
        if self.transport is not None:
            self.transport.write(protocol.encode_reply(call_id, reply))
        self.pending -= 1
        self._maybe_done()

    def _maybe_done(self) -> None:
        # Closing the transport (in _serve) flushes the last replies first.
        if self.stopping and self.pending == 0 and not self.done.done():
            self.done.set_result(0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(0)


async def _serve(sock: socket.socket, host: Host, slots: int) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    sock.setblocking(False)
    _, proto = await loop.create_unix_connection(lambda: WorkerProtocol(host, slots, done), sock=sock)
    try:
        return await done
    finally:
        if proto.transport is not None:
            proto.transport.close()
        if proto.pool is not None:
            proto.pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scorehost-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--slots", type=int, default=1)
    args = parser.parse_args(argv)

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    log.configure(settings.log_level, settings.log_format, stream=sys.stdout)
    # The parent coordinates shutdown: a Ctrl-C or SIGTERM sent to the whole process
    # group must not kill calls that the parent is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout = log.PrintToLog()

    sock = socket.socket(fileno=args.fd)
    channel = _Channel(sock)
    host = Host(settings, channel)
    try:
        host.load()
    except (EntryScriptError, ScoreHostError) as exc:
        cause = exc.__cause__
        detail = "".join(traceback.format_exception(cause)) if cause else ""
        logger.error("Worker %d failed to start: %s\n%s", args.index, exc.message, detail)
        logger.error("Model directory tree:\n%s", model_dir_tree(settings.model_dir))
        channel.send(protocol.encode_message(protocol.FAILED, {"message": exc.message}))
        logging.shutdown()
        return EXIT_INIT_FAILED
    except BaseException as exc:
        logger.exception("Worker %d failed to start", args.index)
        channel.send(protocol.encode_message(protocol.FAILED, {"message": f"{type(exc).__name__}: {exc}"}))
        logging.shutdown()
        return EXIT_INIT_FAILED
    channel.send(protocol.encode_message(protocol.READY, {"pid": os.getpid(), **host.info}))
    tune_gc()  # the script and its models are loaded: freeze them out of the collector's way

    try:
        import uvloop

        return uvloop.run(_serve(sock, host, args.slots))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_serve(sock, host, args.slots))


if __name__ == "__main__":
    sys.exit(main())
