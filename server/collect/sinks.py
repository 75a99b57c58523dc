"""Files: JSON-lines segments, rotated by time and size, finished (gzip or Parquet) on rotation.

Layout (docs/collect.md)::

    <collect_dir>/<folder>/<yyyy>/<MM>/<dd>[/<HH>[/<mm>]]/<start>-<host>-<pid>.jsonl      being written
                                                                               .jsonl.gz   finished (jsonl)
                                                                               .parquet    finished (parquet)

``folder`` is ``request``, ``response``, a Collector's name, or ``mdc/<model>/<designation>``.
The folders below it follow ``collect_rolling_rate``. Every segment is opened with ``O_EXCL``
(mode 0600, folders 0700), written with whole-batch ``os.write`` calls (a crash loses no
written line) and held with ``flock`` while open. A finished file appears by ``rename``, so a
reader never sees half of one; its temporary name (``*.gz-partial``, ``*.parquet-partial``)
matches neither ``*.jsonl*`` nor ``*.parquet``.

At start-up :meth:`Finisher.recover` finishes the segments a previous process of this host left
open (a crash, or a shutdown that ran out of time): unlocked ones only, with a cut-off last line
removed, so every file is complete and parseable.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("scorehost.collect")

STEP_S = {"minute": 60, "hour": 3600, "day": 86400}
_DEPTH = {"minute": 5, "hour": 4, "day": 3}  # yyyy/MM/dd/HH/mm, how many of them name the folder
ACTIVE, GZ, PARQUET = ".jsonl", ".jsonl.gz", ".parquet"
# Segments open at once (one per folder): past it the oldest is rotated.
MAX_OPEN = 256
# A segment's file is looked up at most this often (a removed or replaced file starts a new one).
CHECK_EVERY_S = 0.5
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC


def makedirs(path: str) -> None:
    """Create the missing folders of ``path``, each with mode 0700 (os.makedirs gives the
    intermediate ones the default mode)."""
    missing: list[str] = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", folder) from None


@dataclass(slots=True)
class Segment:
    folder: str
    bucket: int  # the start of its period, in epoch seconds
    path: str
    fd: int
    ino: int
    size: int = 0
    checked: float = 0.0  # when _still_there last said yes (monotonic)


class Segments:
    """The open segment of each folder. Used by the writer thread only."""

    def __init__(self, root: str, rolling: str, max_bytes: int, finish: Callable[[str], None]) -> None:
        self.root = root
        self.step = STEP_S[rolling]
        self.depth = _DEPTH[rolling]
        self.max_bytes = max_bytes
        self.finish = finish
        self.open: dict[str, Segment] = {}
        self.tag = ""  # -<host>-<pid>, set by the writer
        self._made: set[str] = set()

    def bucket(self, at: float) -> int:
        return int(at // self.step) * self.step

    def write(self, folder: str, bucket: int, data: bytes) -> None:
        """Append whole lines to the folder's segment, rotating first when its period ended, it is
        full, or it was removed or replaced under us. Raises OSError; the file is left as it was."""
        seg = self.open.get(folder)
        if seg is not None:
            bucket = max(bucket, seg.bucket)  # a late record joins the current period's file
            if bucket > seg.bucket or (seg.size and seg.size + len(data) > self.max_bytes):
                self.rotate(seg)
                seg = None
            elif seg.checked + CHECK_EVERY_S < time.monotonic() and not _still_there(seg):
                logger.warning("Model data file %s was removed or replaced; starting a new one", seg.path)
                self._close(seg)
                seg = None
        if seg is None:
            seg = self._open(folder, bucket)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(seg.fd, view[done:])
        except OSError:
            try:  # a partial batch (disk full): cut it off, the file stays whole lines
                os.ftruncate(seg.fd, seg.size)
            except OSError:
                pass
            self.rotate(seg)
            raise
        seg.size += done

    def _open(self, folder: str, bucket: int) -> Segment:
        if len(self.open) >= MAX_OPEN:  # a script with very many collection names: close the oldest
            self.rotate(next(iter(self.open.values())))
        parts = time.strftime("%Y/%m/%d/%H/%M", time.gmtime(bucket)).split("/")[: self.depth]
        directory = os.path.join(self.root, folder, *parts)
        if directory not in self._made:
            makedirs(directory)
            self._made.add(directory)
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1000):03d}Z"
        for attempt in range(100):
            path = os.path.join(directory, f"{stamp}{self.tag}{'-' + str(attempt) if attempt else ''}{ACTIVE}")
            try:
                fd = os.open(path, _OPEN_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:  # the folder was removed under us: make it again, once
                if directory not in self._made:
                    raise
                self._made.discard(directory)
                makedirs(directory)
                self._made.add(directory)
        else:  # pragma: no cover - a hundred files created in the same millisecond
            raise FileExistsError(errno.EEXIST, "File exists", path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            ino = os.fstat(fd).st_ino
        except OSError:
            os.close(fd)
            raise
        seg = self.open[folder] = Segment(folder, bucket, path, fd, ino, checked=time.monotonic())
        return seg

    def rotate(self, seg: Segment) -> None:
        """Close a segment and have it finished (an empty one is removed)."""
        self._close(seg)
        if seg.size:
            self.finish(seg.path)
        else:
            try:
                os.unlink(seg.path)
            except OSError:
                pass

    def _close(self, seg: Segment) -> None:
        if self.open.get(seg.folder) is seg:
            del self.open[seg.folder]
        try:
            os.fsync(seg.fd)
        except OSError:
            pass
        os.close(seg.fd)  # releases the flock

    def tick(self, now: float) -> None:
        """Rotate the segments whose period is over, even if nothing new arrived for them."""
        current = self.bucket(now)
        for seg in [s for s in self.open.values() if s.bucket < current]:
            self.rotate(seg)

    def close_all(self) -> None:
        for seg in list(self.open.values()):
            self.rotate(seg)


def _still_there(seg: Segment) -> bool:
    try:
        there = os.stat(seg.path).st_ino == seg.ino
    except OSError:
        return False
    seg.checked = time.monotonic()
    return there


class Finisher:
    """A thread that compresses (or converts to Parquet) segments the writer has closed."""

    def __init__(self, root: str, parquet: bool, tag: str) -> None:
        self.root = root
        self.parquet = parquet
        self.tag = tag
        self.jobs: queue.Queue[str | None] = queue.Queue()
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="collect-finish", daemon=True)

    def start(self, recover: bool = True) -> None:
        if recover:
            self.jobs.put("")  # "": look for what a previous process left
        self._thread.start()

    def submit(self, path: str) -> None:
        self.jobs.put(path)

    def stop(self, deadline: float) -> bool:
        """Finish what was submitted until ``deadline`` (monotonic); True when all was done.
        Unfinished segments stay complete ``.jsonl`` files, finished by the next start."""
        self.jobs.put(None)
        if self._thread.ident is None:  # never started (start-up failed early): finish now
            self._thread.start()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (path := self.jobs.get()) is not None:
            try:
                if path:
                    self.finish(path)
                else:
                    self.recover()
            except Exception as exc:  # never let a bad file stop the thread
                if not self.failed:
                    logger.error("Could not finish model data file %s: %s (it stays as JSON lines)", path, exc)
                self.failed = True

    def finish(self, path: str) -> str:
        """``x.jsonl`` -> ``x.jsonl.gz`` or ``x.parquet``; returns the finished file's path."""
        base = path[: -len(ACTIVE)]
        if self.parquet:
            from server.collect import parquet

            final, partial = base + PARQUET, base + ".parquet-partial"
            convert: Callable[[str, str], None] = parquet.convert
        else:
            final, partial, convert = base + GZ, base + ".gz-partial", _gzip
        try:
            convert(path, partial)
        except BaseException:  # a full disk: the segment stays, complete, as JSON lines
            _unlink(partial)
            raise
        os.replace(partial, final)
        os.unlink(path)
        return final

    def recover(self) -> None:
        """Finish this host's segments that no live process holds (flock)."""
        if not os.path.isdir(self.root):
            return
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                if name.endswith(("-partial",)) and self.tag in name:
                    _unlink(path)  # an interrupted finish: the .jsonl is still there
                elif name.endswith(ACTIVE) and self.tag in name and _unlocked(path):
                    base = path[: -len(ACTIVE)]
                    if os.path.exists(base + GZ) or os.path.exists(base + PARQUET):
                        _unlink(path)  # finished, but not removed before the process stopped
                    elif _cut_partial_line(path):
                        self.finish(path)
                    else:
                        _unlink(path)


def _gzip(path: str, partial: str) -> None:
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as raw:
        with open(path, "rb") as src, gzip.GzipFile(os.path.basename(path), "wb", 6, raw) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())


def _unlocked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _cut_partial_line(path: str) -> int:
    """Remove a last line without its newline (a write cut short); returns the size left."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        pos = size
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos - step + nl + 1
                if keep != size:
                    f.truncate(keep)
                return keep
            pos -= step
        f.truncate(0)
        return 0


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
