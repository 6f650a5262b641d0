"""Usage reporting: recorded on the hot path, delivered in batches off it.

Recording is a deque append. A background task flushes every
``PORTICO_GATEWAY_USAGE_FLUSH_SECONDS`` (or as soon as 500 events are waiting) to one
sink:

- with ``REDIS_URL``: ``XADD portico:usage * batch <UsageBatch JSON>``, one entry per
  batch;
- otherwise: ``POST {control plane}/api/v1/gateway/usage`` with the gateway bearer
  token and a ``UsageBatch`` JSON body; any 2xx is success.

A batch that cannot be delivered is appended, as one JSON line, to
``<state_dir>/spool/<instance_id>.jsonl``. Spooled files (of any process, including
ones that died) are delivered before they are removed; a file is removed only once all
its lines went out. Ingest is idempotent by event id, so delivering a line twice is
harmless, while dropping one is not: every path here prefers a duplicate to a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Protocol

import httpx
import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.schema import UsageBatch, UsageEvent

log = logging.getLogger("gateway.usage")

STREAM_KEY = "portico:usage"
BATCH_SIZE = 500
# Other processes' leftovers (a crashed worker's spool) are looked for this often.
_RESCAN_SECONDS = 60.0

_encoder = msgspec.json.Encoder()


class DeliveryError(Exception):
    """A batch did not reach its sink; the message is safe to log."""


class UsageSink(Protocol):
    """Where batches go. ``deliver`` raises :class:`DeliveryError` when it fails."""

    name: str

    async def deliver(self, payload: bytes) -> None: ...


class HttpSink:
    """The control plane's ingest endpoint."""

    name = "control plane"

    def __init__(self, client: httpx.AsyncClient, control_plane_url: str, token: str) -> None:
        self._client = client
        self._url = control_plane_url + "/api/v1/gateway/usage"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def deliver(self, payload: bytes) -> None:
        try:
            response = await self._client.post(self._url, content=payload, headers=self._headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"ingest answered HTTP {response.status_code}")


class RedisSink:
    """The ``portico:usage`` stream, read by the control plane's ingest worker."""

    name = "Redis"

    def __init__(self, url: str) -> None:
        # One quick retry covers a pooled connection Redis closed; more would only delay
        # spooling while Redis is down.
        self.redis = Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 1)
        )

    async def deliver(self, payload: bytes) -> None:
        try:
            await self.redis.xadd(STREAM_KEY, {"batch": payload})
        except (RedisError, OSError, TimeoutError) as exc:
            # The exception text never includes the URL, so no password can leak here.
            raise DeliveryError(type(exc).__name__) from None

    async def close(self) -> None:
        await self.redis.aclose()


class UsageReporter:
    """Buffers usage events and delivers them in batches, spooling what fails."""

    def __init__(
        self, *, sink: UsageSink, state_dir: Path, instance_id: str, flush_seconds: float
    ) -> None:
        self._sink = sink
        self._spool_dir = state_dir / "spool"
        self._spool_file = self._spool_dir / f"{instance_id}.jsonl"
        self._flush_seconds = flush_seconds
        self._queue: deque[UsageEvent] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # True at start so that whatever an earlier run left behind is delivered first.
        self._spool_pending = True
        self._last_scan = 0.0
        self._failing = False

    def record(self, event: UsageEvent) -> None:
        """Queue one event (hot path: no I/O, no awaits)."""
        queue = self._queue
        queue.append(event)
        if len(queue) == BATCH_SIZE:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-reporter")

    async def stop(self) -> None:
        """Stop the loop after its current flush, then send or spool what is left."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush(drain_spool=False)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                # A bug here must not end reporting for the life of the process.
                log.exception("usage flush failed unexpectedly; retrying next tick")

    async def flush(self, *, drain_spool: bool = True) -> None:
        """Deliver buffered events; spool the batches that cannot be delivered."""
        async with self._lock:
            delivered_all = True
            queue = self._queue
            while queue:
                events = [queue.popleft() for _ in range(min(len(queue), BATCH_SIZE))]
                payload = _encoder.encode(UsageBatch(events=events))
                if delivered_all:
                    try:
                        await self._sink.deliver(payload)
                        self._note_success()
                        continue
                    except DeliveryError as exc:
                        self._note_failure(exc)
                        delivered_all = False
                # Once the sink failed in this flush, spool the rest without waiting on it again.
                if not await self._spool(payload):
                    queue.extendleft(reversed(events))
                    break
            if drain_spool and delivered_all:
                now = time.monotonic()
                if self._spool_pending or now - self._last_scan > _RESCAN_SECONDS:
                    self._last_scan = now
                    self._spool_pending = not await self._drain_spool()

    def _note_success(self) -> None:
        if self._failing:
            log.info("usage delivery to %s recovered", self._sink.name)
            self._failing = False

    def _note_failure(self, exc: DeliveryError) -> None:
        # Warn once per outage; the spool keeps the events, so repeating it helps nobody.
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "usage delivery to %s failed (%s); spooling to disk", self._sink.name, exc)
        self._failing = True

    async def _spool(self, payload: bytes) -> bool:
        try:
            await asyncio.to_thread(append_line, self._spool_file, payload)
        except OSError as exc:
            log.error(
                "cannot spool usage to %s (%s); keeping the events in memory",
                self._spool_file,
                exc.strerror,
            )
            return False
        self._spool_pending = True
        return True

    async def _drain_spool(self) -> bool:
        """Deliver spooled batches; True when every spool file was delivered and removed."""
        try:
            paths = await asyncio.to_thread(lambda: sorted(self._spool_dir.glob("*.jsonl")))
        except OSError:
            return True
        finished = True
        for path in paths:
            claim = await asyncio.to_thread(claim_spool_file, path)
            if claim is None:
                # Locked by a process appending to or draining it; look again next flush.
                finished = False
                continue
            fd, lines = claim
            sent = 0
            try:
                for line in lines:
                    await self._sink.deliver(line)
                    sent += 1
            except DeliveryError as exc:
                self._note_failure(exc)
            finally:
                await asyncio.to_thread(release_spool_file, path, fd, lines[sent:])
            if sent < len(lines):
                return False
            log.info("delivered %d spooled usage batches from %s", sent, path.name)
        return finished


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` and a newline to ``path`` under an exclusive ``flock``.

    A drainer may remove or replace the file while this waits for the lock; writing to
    the old inode would then lose the line, so the path is re-opened until the locked
    file is the one the path names.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = line + b"\n"
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _is_current(path, fd):
                continue
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            return
        finally:
            os.close(fd)


def claim_spool_file(path: Path) -> tuple[int, list[bytes]] | None:
    """Lock a spool file for draining and read its valid lines.

    Returns ``None`` when the file is gone or locked by someone else. Lines that are
    not JSON (a write cut short by a crash) are moved aside to
    ``<name>.corrupt`` for an operator rather than retried forever. The caller must
    pass the descriptor to :func:`release_spool_file`.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        if not _is_current(path, fd):
            os.close(fd)
            return None
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read()
    except OSError:
        os.close(fd)
        raise
    lines: list[bytes] = []
    corrupt: list[bytes] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            # Syntax only: ingest validates the events, and a stricter check here would
            # set aside lines written by a newer gateway after a downgrade.
            msgspec.json.decode(line)
        except msgspec.DecodeError:
            corrupt.append(line)
            continue
        lines.append(line)
    if corrupt:
        log.error("moving %d unreadable lines of %s aside", len(corrupt), path.name)
        with open(path.with_suffix(".corrupt"), "ab") as aside:
            aside.write(b"\n".join(corrupt) + b"\n")
    return fd, lines


def release_spool_file(path: Path, fd: int, remaining: list[bytes]) -> None:
    """Remove a drained spool file, or keep only its undelivered lines; then unlock."""
    try:
        if remaining:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                handle.write(b"\n".join(remaining) + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        else:
            os.unlink(path)
    finally:
        # Unlocking only now means an appender waiting on the old inode notices it was
        # replaced or removed (see append_line) and writes to the current file instead.
        os.close(fd)


def _is_current(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
