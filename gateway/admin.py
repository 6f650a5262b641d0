"""The admin listener: where the control plane pushes revisions to one process.

Each gateway process runs its own listener (``aiohttp.web`` on
``PORTICO_GATEWAY_ADMIN_HOST``/``PORT``; port 0 picks a free one) and advertises its URL
in heartbeats. Every request needs ``Authorization: Bearer <derived token>``.

``PUT /revision``
    Body: a full :class:`gateway.schema.Revision`. Older than the applied one →
    409 ``{"error": "stale", "applied": N}``; the same number → 200 (nothing to do);
    newer and valid → swapped in, written to ``<state_dir>/revision.json`` (with an
    empty delta log after it), 200 ``{"applied": N}``. Invalid → 400
    ``{"error": "<reason>", "applied": N | null}`` and the previous revision keeps
    serving. A large document is decoded and indexed in small steps between which
    the event loop serves requests (``gateway.revision``), so a million-key push does
    not pause traffic.
``POST /revision/delta``
    Body: a :class:`gateway.schema.Delta`. No revision applied, or ``base`` is not the
    applied revision → 409 ``{"error": "base_mismatch", "applied": N | null}`` (send
    the full revision instead); ``revision`` already applied → 200; otherwise applied,
    appended to the delta log ``<state_dir>/revision.log``, 200 ``{"applied": N}``.
    Invalid → 400 as above. Once the log outgrows an eighth of the snapshot, a fresh
    snapshot replaces both, in the background.
``GET /status``
    ``{"instance_id": ..., "applied": N | null, "pid": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from aiohttp import web

from gateway.revision import (
    AppliedRevision,
    Buffer,
    Pacer,
    RevisionError,
    apply_delta,
    build_incrementally,
    decode_delta,
    discard,
    encode_incrementally,
    open_revision,
)
from gateway.secrets import GatewayKeys
from gateway.store import Appended, RevisionStore

log = logging.getLogger("gateway.admin")

# A revision with a million keys is over a hundred MB of JSON; smaller ones would not
# reach the gateway at all.
MAX_REVISION_BYTES = 1 << 30
# Bodies above this are read by ``_read_body``.
_LARGE_BODY_BYTES = 1 << 20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class AdminListener:
    """Runs the admin HTTP server of one process."""

    def __init__(
        self, *, store: RevisionStore, keys: GatewayKeys, instance_id: str, host: str, port: int
    ) -> None:
        self._store = store
        self._keys = keys
        self._instance_id = instance_id
        self._host = host
        self._port = port
        # Serialises applies so that a slow, older push cannot land after a newer one.
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        # Background work: freeing replaced revisions, compacting the delta log.
        self._tasks: set[asyncio.Task[None]] = set()
        self.bound_port: int | None = None

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        app = web.Application(client_max_size=MAX_REVISION_BYTES, middlewares=[self._auth])
        app.router.add_put("/revision", self._put_revision)
        app.router.add_post("/revision/delta", self._post_delta)
        app.router.add_get("/status", self._status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        await site.start()
        address = self._runner.addresses[0]
        self.bound_port = int(address[1])
        log.info("admin listener on %s port %d", self._host, self.bound_port)
        return self.bound_port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        # Safe to cut short: a snapshot is replaced by a rename, never half-written.
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Checked before the body is read, so strangers cannot make us buffer a gigabyte.
        if not self._keys.check_bearer(request.headers.get("Authorization")):
            return _json(401, {"error": "unauthorized"})
        return await handler(request)

    async def _status(self, request: web.Request) -> web.Response:
        return _json(
            200,
            {"instance_id": self._instance_id, "applied": self._store.number, "pid": os.getpid()},
        )

    async def _put_revision(self, request: web.Request) -> web.Response:
        raw = await _read_body(request)
        async with self._lock:
            started = time.perf_counter()
            applied = self._store.number
            try:
                incoming = open_revision(raw)
                if applied is not None and incoming.number < applied:
                    return _json(409, {"error": "stale", "applied": applied})
                if incoming.number == applied:
                    return _json(200, {"applied": applied})
                revision = await build_incrementally(incoming, self._keys, Pacer())
            except RevisionError as exc:
                log.warning("rejected revision push: %s", exc)
                return _json(400, {"error": str(exc), "applied": applied})
            del incoming
            self._swap(revision, "revision", started)
            try:
                await self._store.save_snapshot(raw, revision.number)
            except OSError as exc:
                # The revision serves from memory; only a restart before the next push
                # would fall back to the older state on disk.
                log.error("applied revision %d but could not persist it: %s", revision.number, exc)
            return _json(200, {"applied": revision.number})

    async def _post_delta(self, request: web.Request) -> web.Response:
        raw = await request.read()
        async with self._lock:
            started = time.perf_counter()
            current = self._store.current
            applied = None if current is None else current.number
            try:
                delta = decode_delta(raw)
                if current is not None and delta.revision == applied:
                    return _json(200, {"applied": applied})
                if current is None or delta.base != applied:
                    return _json(409, {"error": "base_mismatch", "applied": applied})
                revision = apply_delta(current, delta)
            except RevisionError as exc:
                log.warning("rejected delta push: %s", exc)
                return _json(400, {"error": str(exc), "applied": applied})
            self._swap(revision, "delta", started)
            try:
                outcome = await self._store.append_delta(delta)
                if outcome is Appended.NEEDS_SNAPSHOT:
                    await self._write_snapshot(revision)
            except OSError as exc:
                log.error("applied delta %d but could not persist it: %s", revision.number, exc)
            else:
                if self._store.needs_compaction():
                    self._spawn(self._compact())
            return _json(200, {"applied": revision.number})

    def _swap(self, revision: AppliedRevision, kind: str, started: float) -> None:
        previous = self._store.current
        self._store.current = revision
        log.info(
            "applied %s %d (was %s; %d credentials) in %.3f s",
            kind,
            revision.number,
            None if previous is None else previous.number,
            len(revision.credentials),
            time.perf_counter() - started,
        )
        if previous is not None and previous.credentials is not revision.credentials:
            # Freed in steps: dropping a million entries at once would stall requests.
            self._spawn(discard(previous, Pacer()))

    async def _write_snapshot(
        self, revision: AppliedRevision, *, replace_same: bool = False
    ) -> None:
        """Write ``revision`` as a full snapshot (the caller holds ``_lock``)."""
        pieces = await encode_incrementally(revision, Pacer())
        await self._store.save_snapshot(pieces, revision.number, replace_same=replace_same)

    async def _compact(self) -> None:
        async with self._lock:
            current = self._store.current
            if current is None or not self._store.needs_compaction():
                return
            started = time.perf_counter()
            try:
                await self._write_snapshot(current, replace_same=True)
            except OSError as exc:
                log.error("could not compact the delta log: %s", exc)
                return
            log.info(
                "wrote revision %d as a fresh snapshot in %.2f s (delta log compacted)",
                current.number,
                time.perf_counter() - started,
            )

    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _read_body(request: web.Request) -> Buffer:
    """The request body; a large one grown in place rather than joined at the end.

    ``request.read()`` ends by copying a hundred MB into a new ``bytes`` at once, and
    ``bytearray(n)`` zero-fills; growing a ``bytearray`` costs neither (glibc moves a
    large block with ``mremap``, without copying).
    """
    length = request.content_length
    if length is None or length < _LARGE_BODY_BYTES:
        return await request.read()  # bounded by client_max_size
    if length > MAX_REVISION_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_REVISION_BYTES, actual_size=length)
    buffer = bytearray()
    async for chunk in request.content.iter_any():
        buffer += chunk
        if len(buffer) > length:
            raise web.HTTPBadRequest(text="body longer than its Content-Length")
    if len(buffer) != length:
        raise web.HTTPBadRequest(text="body shorter than its Content-Length")
    return buffer
