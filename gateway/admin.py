"""The admin listener: where the control plane pushes revisions to one process.

Each gateway process runs its own listener (``aiohttp.web`` on
``PORTICO_GATEWAY_ADMIN_HOST``/``PORT``; port 0 picks a free one) and advertises its URL
in heartbeats. Every request needs ``Authorization: Bearer <derived token>``.

``PUT /revision``
    Body: a full :class:`gateway.schema.Revision`. Older than the applied one →
    409 ``{"error": "stale", "applied": N}``; the same number → 200 (nothing to do);
    newer and valid → swapped in, written to ``<state_dir>/revision.json``, 200
    ``{"applied": N}``. Invalid → 400 ``{"error": "<reason>", "applied": N | null}``
    and the previous revision keeps serving.
``POST /revision/delta``
    Body: a :class:`gateway.schema.Delta`. No revision applied, or ``base`` is not the
    applied revision → 409 ``{"error": "base_mismatch", "applied": N | null}`` (send
    the full revision instead); ``revision`` already applied → 200; otherwise applied,
    persisted as a full document, 200 ``{"applied": N}``. Invalid → 400 as above.
``GET /status``
    ``{"instance_id": ..., "applied": N | null, "pid": ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import orjson
from aiohttp import web

from gateway.revision import (
    AppliedRevision,
    RevisionError,
    apply_delta,
    build,
    decode_delta,
    decode_revision,
    encode,
)
from gateway.secrets import GatewayKeys
from gateway.store import RevisionStore

log = logging.getLogger("gateway.admin")

# A revision with a million keys is a few hundred MB of JSON; smaller ones would not
# reach the gateway at all.
MAX_REVISION_BYTES = 1 << 30
# Decoding beyond this size would hold the event loop long enough to delay requests.
_OFF_LOOP_BYTES = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_P = ParamSpec("_P")
_R = TypeVar("_R")


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
        raw = await request.read()
        async with self._lock:
            applied = self._store.number
            try:
                doc = await _off_loop_if_large(len(raw), decode_revision, raw)
                if applied is not None and doc.revision < applied:
                    return _json(409, {"error": "stale", "applied": applied})
                if doc.revision == applied:
                    return _json(200, {"applied": applied})
                revision = await _off_loop_if_large(len(raw), build, doc, self._keys)
            except RevisionError as exc:
                log.warning("rejected revision push: %s", exc)
                return _json(400, {"error": str(exc), "applied": applied})
            await self._swap(revision, raw, "revision")
            return _json(200, {"applied": revision.number})

    async def _post_delta(self, request: web.Request) -> web.Response:
        raw = await request.read()
        async with self._lock:
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
            # Requests switch over before the (possibly large) document is re-encoded.
            await self._swap(revision, None, "delta")
            return _json(200, {"applied": revision.number})

    async def _swap(self, revision: AppliedRevision, raw: bytes | None, kind: str) -> None:
        previous = self._store.number
        self._store.current = revision
        log.info("applied %s %d (was %s)", kind, revision.number, previous)
        try:
            if raw is None:
                raw = await asyncio.to_thread(encode, revision.doc)
            await self._store.persist(raw)
        except OSError as exc:
            # The revision serves from memory; only a restart before the next push
            # would fall back to the older file.
            log.error("applied revision %d but could not persist it: %s", revision.number, exc)


async def _off_loop_if_large(
    size: int, func: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
) -> _R:
    if size > _OFF_LOOP_BYTES:
        return await asyncio.to_thread(func, *args, **kwargs)
    return func(*args, **kwargs)
