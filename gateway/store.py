"""The applied revision of this process, and its last-known-good copy on disk.

The ASGI app reads ``store.current`` once per request; the admin listener replaces it
with a single assignment. Requests in flight keep the revision object they started
with, so a swap never changes a decision half-way through a request.

On disk (``<state_dir>``):

``revision.json``
    The last full document applied (a snapshot), exactly as it was pushed.
``revision.log``
    The deltas applied since: a header line naming the snapshot's number, then one
    line per delta, ``<crc32> <base> <revision> <delta JSON>``. A revocation appends
    a line of a few hundred bytes instead of rewriting a document of a hundred MB.
    A line cut short by a crash (or failing its checksum) ends the log: it and
    anything after it are dropped on the next read. When the log outgrows an eighth
    of the snapshot, the admin listener writes a fresh snapshot (compaction).

Several gateway processes on one host share the state directory: every read or
write of the pair holds an exclusive ``flock`` on ``revision.lock``, and a process
never replaces what is on disk with something older.
"""

from __future__ import annotations

import asyncio
import enum
import fcntl
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from gateway.revision import (
    AppliedRevision,
    Buffer,
    Pacer,
    RevisionError,
    apply_delta,
    build_incrementally,
    decode_delta,
    encode,
    open_revision,
)
from gateway.schema import Delta
from gateway.secrets import GatewayKeys

log = logging.getLogger("gateway.store")

_P = ParamSpec("_P")
_R = TypeVar("_R")

REVISION_FILE = "revision.json"
LOG_FILE = "revision.log"
LOCK_FILE = "revision.lock"

_HEADER = b"portico-delta-log 1 snapshot "
# Compaction when the log is larger than this share of the snapshot (and this floor):
# each delta then costs at most ~8x its own size in snapshot writes, and a restart
# replays a bounded log.
_COMPACT_RATIO = 8
_COMPACT_FLOOR = 64 * 1024


class Appended(enum.Enum):
    """What :meth:`RevisionStore.append_delta` did."""

    APPENDED = "appended"
    # Another process sharing the directory had already written it (or newer).
    ALREADY_ON_DISK = "already on disk"
    # The disk does not end at the delta's base: write a full snapshot instead.
    NEEDS_SNAPSHOT = "needs snapshot"


@dataclass(frozen=True, slots=True)
class _Record:
    base: int
    revision: int
    payload: bytes


@dataclass(slots=True)
class _LogState:
    """What the log says, as of ``size`` bytes of inode ``inode``."""

    inode: int
    size: int
    snapshot: int
    head: int  # the revision the snapshot plus the log's deltas amount to

    @property
    def header(self) -> bytes:
        return _HEADER + b"%d\n" % self.snapshot


class RevisionStore:
    """Holds the applied revision; persists and reloads the last-known-good state."""

    __slots__ = ("_cache", "_lock_path", "_snapshot_bytes", "current", "log_path", "path")

    def __init__(self, state_dir: Path) -> None:
        self.current: AppliedRevision | None = None
        self.path = state_dir / REVISION_FILE
        self.log_path = state_dir / LOG_FILE
        self._lock_path = state_dir / LOCK_FILE
        self._cache: _LogState | None = None
        self._snapshot_bytes = 0

    @property
    def number(self) -> int | None:
        current = self.current
        return None if current is None else current.number

    # Loading ---------------------------------------------------------------------------

    async def load(self, keys: GatewayKeys) -> None:
        """Apply the snapshot saved on disk and the deltas logged after it, if valid.

        A missing or invalid snapshot leaves the store empty: the gateway then answers
        503 until the control plane pushes a revision, rather than guessing. Deltas
        that do not follow on (or a torn last line) are dropped from the log.
        """
        started = time.perf_counter()
        try:
            raw, log_data = await asyncio.to_thread(self._locked, self._read_both)
        except OSError as exc:
            log.error("cannot read %s (%s); waiting for a push", self.path, exc.strerror)
            return
        if raw is None:
            log.info("no last-known-good revision at %s; waiting for a push", self.path)
            return
        pacer = Pacer()
        try:
            applied = await build_incrementally(open_revision(raw), keys, pacer)
        except RevisionError as exc:
            log.error("ignoring last-known-good revision in %s: %s", self.path, exc)
            return
        del raw
        replayed = 0
        records, good_end, snapshot = _parse_log(log_data or b"")
        if snapshot == applied.number:
            for record in records:
                if record.revision <= applied.number:
                    continue
                if record.base != applied.number:
                    log.warning(
                        "delta log skips from %d to %d; ignoring the rest",
                        applied.number,
                        record.base,
                    )
                    break
                try:
                    applied = apply_delta(applied, decode_delta(record.payload))
                except RevisionError as exc:
                    log.warning("ignoring logged delta %d and after: %s", record.revision, exc)
                    break
                replayed += 1
                await pacer()
            if log_data is not None and good_end < len(log_data):
                log.warning(
                    "dropping %d bytes of a torn or corrupt tail of %s",
                    len(log_data) - good_end,
                    self.log_path,
                )
                await asyncio.to_thread(self._locked, self._truncate_log, good_end)
        else:
            # No log, or one left over from an older snapshot (a crash between writing
            # the snapshot and resetting the log): the snapshot stands alone.
            await asyncio.to_thread(self._locked, self._reset_log, applied.number)
        self.current = applied
        log.info(
            "serving last-known-good revision %d from %s (%d credentials, %d deltas "
            "replayed, loaded in %.2f s)",
            applied.number,
            self.path,
            len(applied.credentials),
            replayed,
            time.perf_counter() - started,
        )

    def _read_both(self) -> tuple[bytes | None, bytes | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None, None
        self._snapshot_bytes = len(raw)
        try:
            log_data = self.log_path.read_bytes()
        except FileNotFoundError:
            log_data = None
        return raw, log_data

    # Writing ---------------------------------------------------------------------------

    async def save_snapshot(
        self, data: Buffer | Iterable[Buffer], number: int, *, replace_same: bool = False
    ) -> bool:
        """Write a full document as the snapshot and start an empty log after it.

        Skipped (returns False) when the disk already holds a newer revision, or this
        one unless ``replace_same`` (compaction rewrites the same revision without a
        log). ``data`` may be the document in pieces, written one after another.
        """
        return await asyncio.to_thread(self._locked, self._save, data, number, replace_same)

    def _save(self, data: Buffer | Iterable[Buffer], number: int, replace_same: bool) -> bool:
        state = self._state()
        if state is not None and (
            state.head > number or (state.head == number and not replace_same)
        ):
            return False
        pieces = [data] if isinstance(data, bytes | bytearray) else list(data)
        self._snapshot_bytes = write_atomically(self.path, pieces)
        self._reset_log(number)
        return True

    async def append_delta(self, delta: Delta) -> Appended:
        """Append an applied delta to the log, if the disk is at its base."""
        record = _record(delta)
        return await asyncio.to_thread(self._locked, self._append, delta, record)

    def _append(self, delta: Delta, record: bytes) -> Appended:
        state = self._state()
        if state is None:
            return Appended.NEEDS_SNAPSHOT
        if state.head >= delta.revision:
            return Appended.ALREADY_ON_DISK
        if state.head != delta.base:
            return Appended.NEEDS_SNAPSHOT
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND)
        try:
            # One write: appends from several processes never interleave within it.
            os.write(fd, record)
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        state.size, state.head = size, delta.revision
        return Appended.APPENDED

    def needs_compaction(self) -> bool:
        """True when the log has grown enough that a fresh snapshot should replace it."""
        state = self._cache
        if state is None:
            return False
        limit = max(_COMPACT_FLOOR, self._snapshot_bytes // _COMPACT_RATIO)
        return state.size > limit

    # Under the lock ----------------------------------------------------------------------

    def _locked(self, func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """Run ``func`` (blocking file work, so in a thread) under the directory's lock."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return func(*args, **kwargs)
        finally:
            os.close(fd)  # releases the lock

    def _state(self) -> _LogState | None:
        """The log's header and head, reading only what was appended since last time.

        Drops a torn or corrupt tail. None when there is no usable log.
        """
        try:
            fd = os.open(self.log_path, os.O_RDONLY)
        except FileNotFoundError:
            self._cache = None
            return None
        try:
            stat = os.fstat(fd)
            cached = self._cache
            if cached is not None and (
                cached.inode != stat.st_ino
                # An inode number can be reused by a later log; its header tells them apart.
                or os.pread(fd, len(cached.header), 0) != cached.header
            ):
                cached = None
            if cached is not None and cached.size == stat.st_size:
                return cached
            if cached is not None and cached.size < stat.st_size:
                new = os.pread(fd, stat.st_size - cached.size, cached.size)
                records, good_end, _ = _parse_records(new, 0)
                head = records[-1].revision if records else cached.head
                good_end += cached.size
                snapshot = cached.snapshot
            else:
                data = os.pread(fd, stat.st_size, 0)
                records, good_end, header = _parse_log(data)
                if header is None:
                    self._cache = None
                    return None
                snapshot = header
                head = records[-1].revision if records else header
        finally:
            os.close(fd)
        if good_end < stat.st_size:
            log.warning("dropping a torn or corrupt tail of %s", self.log_path)
            self._truncate_log(good_end)
        self._cache = _LogState(stat.st_ino, good_end, snapshot, head)
        return self._cache

    def _truncate_log(self, size: int) -> None:
        fd = os.open(self.log_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._cache is not None:
            self._cache.size = size

    def _reset_log(self, snapshot: int) -> None:
        header = _HEADER + b"%d\n" % snapshot
        write_atomically(self.log_path, [header])
        self._cache = _LogState(os.stat(self.log_path).st_ino, len(header), snapshot, snapshot)


def _record(delta: Delta) -> bytes:
    # Re-encoded rather than stored as received: compact JSON has no raw newline.
    body = b"%d %d %s" % (delta.base, delta.revision, encode(delta))
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _parse_log(data: bytes) -> tuple[list[_Record], int, int | None]:
    """Records of a whole log, the offset where its good part ends, its snapshot."""
    newline = data.find(b"\n")
    if not data.startswith(_HEADER) or newline < 0:
        return [], 0, None
    try:
        snapshot = int(data[len(_HEADER) : newline])
    except ValueError:
        return [], 0, None
    records, good_end, _ = _parse_records(data, newline + 1)
    return records, good_end, snapshot


def _parse_records(data: bytes, offset: int) -> tuple[list[_Record], int, None]:
    records: list[_Record] = []
    while offset < len(data):
        newline = data.find(b"\n", offset)
        if newline < 0:
            break  # torn: the crash came before the line was complete
        line = data[offset:newline]
        try:
            crc, body = line.split(b" ", 1)
            if int(crc, 16) != zlib.crc32(body):
                break
            base, revision, payload = body.split(b" ", 2)
            records.append(_Record(int(base), int(revision), payload))
        except ValueError:
            break
        offset = newline + 1
    return records, offset, None


def write_atomically(path: Path, pieces: Iterable[Buffer]) -> int:
    """Replace ``path`` with the concatenated ``pieces``; readers see old or new, whole.

    The temporary name carries the pid because several gateway processes on one host
    share a state directory. Returns the number of bytes written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    size = 0
    with open(tmp, "wb") as handle:
        for piece in pieces:
            size += handle.write(piece)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    # Make the rename itself durable, so a crash cannot bring the old file back.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size
