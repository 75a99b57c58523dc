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

Deadlines are decided by the parent (:mod:`server.deadline`) and travel with each call:
the parent answers the client at the deadline; here a call whose deadline (or queue
deadline) passed before it started is skipped. Streamed replies: :mod:`.streaming`.
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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from server import deadline, log
from server import settings as settings_module
from server import tracing as tracing_module
from server.entry.results import Stream
from server.entry.script import EntryScript, model_dir_tree
from server.errors import EntryScriptError, LoggingFileError, NotFound, Overloaded, ScoreHostError, ScoringTimeout
from server.gctune import tune_gc
from server.orphans import die_with_parent
from server.settings import Settings
from server.store.stats import start_reporting
from server.workers import protocol
from server.workers.protocol import Call, Kind, Ready, Reply, Target
from server.workers.streaming import Outlet, StreamPump
from server.workers.writer import CoalescingTransport

logger = logging.getLogger("scorehost.worker")

EXIT_INIT_FAILED = 3


class Host:
    """What a worker serves: the entry script, the model store, or both."""

    def __init__(
        self, settings: Settings, channel: _Channel, tracing: tracing_module.WorkerTracing | None = None
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.tracing = tracing  # None: tracing off
        self.script: EntryScript | None = None
        self.v2: Any = None
        self.ready = Ready(os.getpid())
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
            self.ready.script = info
        else:
            from server.store import store as models
            from server.store import v2

            store = models.open_store(s, progress=self._progress)
            self.v2 = v2.V2Handler(store, s)
            ready, state = store.readiness()
            self.ready.models = state
            if not ready:
                raise ScoreHostError(f"Too few models loaded to be ready: {state}")

    def _progress(self, state: dict[str, Any]) -> None:
        self.channel.send(protocol.encode_message(Kind.STATE, {"models": state}))

    def handle_sync(self, call: Call) -> Reply | Stream:
        started = time.monotonic()
        if self.tracing is not None and call.traceparent:
            return _started(self.tracing.run(call, self._handle_sync), started)
        return _started(self._handle_sync(call), started)

    async def handle_async(self, call: Call) -> Reply | Stream:
        started = time.monotonic()
        if self.tracing is not None and call.traceparent:
            return _started(await self.tracing.run_async(call, self._handle_async), started)
        return _started(await self._handle_async(call), started)

    def _handle_sync(self, call: Call) -> Reply | Stream:
        token = log.request_id_var.set(call.request_id)
        deadline_token = deadline.current.set(call.deadline)
        try:
            if call.target is Target.SCORE:
                if self.script is None:
                    return Reply.from_error(NotFound("No entry script is loaded; models are served under /v2."))
                return self.script.call_sync(call)
            return self._v2(call)
        finally:
            deadline.current.reset(deadline_token)
            log.request_id_var.reset(token)

    async def _handle_async(self, call: Call) -> Reply | Stream:
        log.request_id_var.set(call.request_id)  # this task's own context
        deadline.current.set(call.deadline)
        assert self.script is not None
        return await self.script.call_async(call)

    def _v2(self, call: Call) -> Reply:
        handler = self.v2
        if handler is None:
            from server.store import store as models
            from server.store import v2

            store = models.current_store()
            if store is None:
                return Reply.from_error(NotFound("No models are served over /v2 by this entry script."), v2=True)
            handler = self.v2 = v2.V2Handler(store, self.settings)
        try:
            reply: Reply = handler.handle(
                call.method,
                call.path or "/v2",
                call.query,
                call.body,
                headers=dict(call.headers),
                request_id=call.request_id,
            )
        except Exception as exc:
            logger.exception("V2 handler failed")
            return Reply.from_error(exc, v2=True)
        return reply


def _started(result: Reply | Stream, started: float) -> Reply | Stream:
    """Stamp when the call began (the end of its queue wait, for /metrics and the queue span)."""
    (result if isinstance(result, Reply) else result.head).started_at = started
    return result


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
        settings = host.settings
        self.window = settings.stream_buffer_bytes
        self.idle_s = settings.stream_idle_timeout_ms / 1000.0
        self.outlets: dict[int, Outlet] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        # One slot runs run() inline on this loop; while a stream from it is pumped on
        # a thread, later calls wait here, in order, so one slot means one call.
        self.inline_stream = False
        self.backlog: deque[Call] = deque()
        self._stream_thread: ThreadPoolExecutor | None = None
        self.batcher: Any = None  # V2 calls of batching models, batched per model (server.store.v2batch)
        if host.v2 is not None:
            from server.store.v2batch import V2Batcher

            self.batcher = V2Batcher(host.v2, self.loop, self._send, self.pool, slots)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # NOTE: uvloop's transports do not subclass asyncio.Transport. Replies made in
        # one loop iteration leave in one write.
        self.transport = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)

    def data_received(self, data: bytes) -> None:
        for frame in self.frames.feed(data):
            kind = frame[0]
            if kind == Kind.CALL:
                self._start(protocol.decode_call(frame))
            elif kind == Kind.CREDIT:
                call_id, consumed = protocol.decode_credit(frame)
                outlet = self.outlets.get(call_id)
                if outlet is not None:
                    outlet.credit(consumed)
            elif kind == Kind.CANCEL:
                self._cancel(protocol.decode_id(frame))
            elif kind == Kind.STOP:
                logger.info("Stopping: %d call(s) in flight", self.pending)
                self.stopping = True
                self._maybe_done()
        if self.batcher is not None:
            self.batcher.run_due()  # every V2 call of this read has joined its queue by now
        if self.transport is not None:
            # The replies of the calls run inline above leave together, now, rather than
            # after another turn of the loop.
            self.transport.flush_now()

    def _cancel(self, call_id: int) -> None:
        outlet = self.outlets.get(call_id)
        if outlet is not None:
            outlet.cancel()
        task = self.tasks.get(call_id)
        if task is not None:
            task.cancel()

    def _start(self, call: Call) -> None:
        self.pending += 1
        if self.inline_stream:
            self.backlog.append(call)
            return
        refusal = self._refusal(call)
        if refusal is not None:
            self._send(call.call_id, refusal)
        elif call.target is Target.SCORE and self.host.async_score:
            self._track(call.call_id, self.loop.create_task(self._run_async(call)))
        elif call.target is Target.V2 and self.batcher is not None and self.batcher.offer(call):
            return  # answered by the batcher
        elif self.pool is None:
            self._deliver(call.call_id, self.host.handle_sync(call), inline=True)
        else:
            future = self.pool.submit(self._run_sync, call)
            future.add_done_callback(functools.partial(self._finished_threadsafe, call.call_id))

    @staticmethod
    def _refusal(call: Call) -> Reply | None:
        """Calls that must not start: answered already by the HTTP process (504 or 503)."""
        now = time.monotonic()
        if now > call.deadline:
            return Reply.from_error(ScoringTimeout(0, "Scoring timeout before run() started"))
        if now > call.start_by:
            return Reply.from_error(Overloaded("Queue wait ran out before run() started"))
        return None

    def _track(self, call_id: int, task: asyncio.Task[None]) -> None:
        self.tasks[call_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(call_id, None))

    async def _run_async(self, call: Call) -> None:
        try:
            result = await self.host.handle_async(call)
        except BaseException as exc:  # a bug of ours, or a cancel: never leave the caller waiting
            if not isinstance(exc, asyncio.CancelledError):
                logger.exception("Call %d failed inside the worker", call.call_id)
            result = Reply.from_error(exc)
        if isinstance(result, Stream) and result.is_async:
            await self._pump_async(call.call_id, result)
        else:
            self._deliver(call.call_id, result, inline=False)

    def _run_sync(self, call: Call) -> None:
        """On a run thread: run() and, for a sync stream, the whole pump."""
        if (refusal := self._refusal(call)) is not None:  # it may have waited behind others here
            self._send_threadsafe(call.call_id, refusal)
            return
        result = self.host.handle_sync(call)
        if isinstance(result, Stream) and not result.is_async:
            self._pump_sync(call.call_id, result, self._write_threadsafe)
            self.loop.call_soon_threadsafe(self._call_done)
        elif isinstance(result, Stream):
            self.loop.call_soon_threadsafe(functools.partial(self._deliver, call.call_id, result, inline=False))
        else:
            self._send_threadsafe(call.call_id, result)

    def _deliver(self, call_id: int, result: Reply | Stream, *, inline: bool) -> None:
        """On the loop: send a reply, or start pumping a stream."""
        if isinstance(result, Reply):
            self._send(call_id, result)
        elif result.is_async:
            self._track(call_id, self.loop.create_task(self._pump_async(call_id, result)))
        else:
            if inline:
                self.inline_stream = True
            if self._stream_thread is None:
                self._stream_thread = ThreadPoolExecutor(1, thread_name_prefix="stream")
            future = self._stream_thread.submit(self._pump_sync, call_id, result, self._write_threadsafe)
            future.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self._stream_done, inline))

    def _pump_sync(self, call_id: int, stream: Stream, send: Any) -> None:
        outlet = self.outlets[call_id] = Outlet(self.window, self.loop)
        try:
            StreamPump(call_id, stream, outlet, self.idle_s, send).run_sync()
        finally:
            self.outlets.pop(call_id, None)

    async def _pump_async(self, call_id: int, stream: Stream) -> None:
        outlet = self.outlets[call_id] = Outlet(self.window, self.loop)
        try:
            await StreamPump(call_id, stream, outlet, self.idle_s, self._write).run_async()
        except asyncio.CancelledError:
            if self.transport is not None:
                self.transport.write(protocol.encode_end(call_id, failed=True))
        finally:
            self.outlets.pop(call_id, None)
            self._call_done()

    def _stream_done(self, inline: bool) -> None:
        self._call_done()
        if inline:
            self.inline_stream = False
            while self.backlog and not self.inline_stream:
                self.pending -= 1  # _start counts it again
                self._start(self.backlog.popleft())

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _write_threadsafe(self, data: bytes) -> None:
        self.loop.call_soon_threadsafe(self._write, data)

    def _send_threadsafe(self, call_id: int, reply: Reply) -> None:
        self.loop.call_soon_threadsafe(self._send, call_id, reply)

    def _finished_threadsafe(self, call_id: int, future: Future[None]) -> None:
        if future.cancelled() or future.exception() is None:
            return
        logger.error("Call %d failed inside the worker", call_id, exc_info=future.exception())
        self._send_threadsafe(call_id, Reply.from_error(cast(BaseException, future.exception())))

    def _send(self, call_id: int, reply: Reply) -> None:
        self._write(protocol.encode_reply(call_id, reply))
        self._call_done()

    def _call_done(self) -> None:
        self.pending -= 1
        self._maybe_done()

    def _maybe_done(self) -> None:
        # Closing the transport (in _serve) flushes the last replies first.
        if self.stopping and self.pending == 0 and not self.done.done():
            self.done.set_result(0)

    def connection_lost(self, exc: Exception | None) -> None:
        for outlet in self.outlets.values():
            outlet.cancel()
        if not self.done.done():
            self.done.set_result(0)


async def _serve(sock: socket.socket, host: Host, slots: int) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    sock.setblocking(False)
    _, proto = await loop.create_unix_connection(lambda: WorkerProtocol(host, slots, done), sock=sock)
    if host.settings.metrics:
        start_reporting(loop, proto._write, host.settings.metrics_per_model)
    if host.settings.collect_model_data:
        attach_collect_hook(loop, proto)
    try:
        return await done
    finally:
        if proto.transport is not None:
            proto.transport.close()
        for executor in (proto.pool, proto._stream_thread):
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)


def install_collect_hook(settings: Settings) -> None:
    """Model data collection: the thread-safe outbox through which the script's collectors
    (:mod:`server.entry.monitoring`) send COLLECT frames; it holds records made in ``init()`` until
    :func:`attach_collect_hook`. Nothing is imported when collection is off."""
    if settings.collect_model_data:
        from server.collect import outbox

        outbox.install(outbox.Outbox())


def attach_collect_hook(loop: asyncio.AbstractEventLoop, proto: WorkerProtocol) -> None:
    from server.collect import outbox

    box = outbox.current()
    if box is not None:
        box.attach(loop, proto._write, lambda: proto.transport.get_write_buffer_size() if proto.transport else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scorehost-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--parent", type=int, default=0)
    args = parser.parse_args(argv)

    # The end-of-stream on the socket remains the portable fallback (it needs a free loop).
    die_with_parent(args.parent, "workers rely on end of stream to exit")
    settings = Settings.model_validate_json(os.environ.pop(protocol.SETTINGS_ENV))
    settings_module.install(settings)  # get_store() and friends see the HTTP process's settings
    sock = socket.socket(fileno=args.fd)
    channel = _Channel(sock)
    # hold=False: user code runs here, and its last lines before a crash must reach the stream.
    try:
        log.configure_from(settings, stream=sys.stdout, hold=False)  # the user's logging.json too, as the reference
    except LoggingFileError as exc:
        log.configure(settings.log_level, settings.log_format, stream=sys.stdout, hold=False)
        logger.error("Worker %d failed to start: %s", args.index, exc)
        channel.send(protocol.encode_message(Kind.FAILED, {"message": str(exc)}))
        return EXIT_INIT_FAILED
    # The parent coordinates shutdown: a Ctrl-C or SIGTERM sent to the whole process
    # group must not kill calls that the parent is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout = log.PrintToLog()

    # Before the script loads: its own trace.get_tracer() must find our provider.
    telemetry = tracing_module.setup(settings, os.environ, role="worker", worker=args.index, install_global=True)
    host = Host(settings, channel, tracing_module.WorkerTracing(telemetry) if telemetry is not None else None)
    install_collect_hook(settings)
    try:
        return _load_and_serve(host, channel, sock, args)
    finally:
        if telemetry is not None:
            telemetry.shutdown()  # export what is buffered


def _load_and_serve(host: Host, channel: _Channel, sock: socket.socket, args: argparse.Namespace) -> int:
    settings = host.settings
    try:
        host.load()
    except (EntryScriptError, ScoreHostError) as exc:
        cause = exc.__cause__
        detail = "".join(traceback.format_exception(cause)) if cause else ""
        logger.error("Worker %d failed to start: %s\n%s", args.index, exc.message, detail)
        logger.error("Model directory tree:\n%s", model_dir_tree(settings.model_dir))
        channel.send(protocol.encode_message(Kind.FAILED, {"message": exc.message}))
        logging.shutdown()
        return EXIT_INIT_FAILED
    except BaseException as exc:
        logger.exception("Worker %d failed to start", args.index)
        channel.send(protocol.encode_message(Kind.FAILED, {"message": f"{type(exc).__name__}: {exc}"}))
        logging.shutdown()
        return EXIT_INIT_FAILED
    channel.send(protocol.encode_ready(host.ready))
    tune_gc()  # the script and its models are loaded: freeze them out of the collector's way

    try:
        import uvloop

        return uvloop.run(_serve(sock, host, args.slots))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(_serve(sock, host, args.slots))


if __name__ == "__main__":
    sys.exit(main())
