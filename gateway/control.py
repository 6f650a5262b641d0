"""Heartbeats to the control plane.

Immediately at start and then every ``PORTICO_GATEWAY_HEARTBEAT_SECONDS``, each process
sends ``POST {control plane}/api/v1/gateway/heartbeat`` with
``Authorization: Bearer <derived token>`` and a :class:`gateway.schema.Heartbeat` JSON
body. The control plane answers ``{"latest_revision": N | null}``; it pushes revisions
itself, so a gateway that is behind only notes it. Failures are logged and retried on
the next tick; they never touch request serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import httpx
import msgspec

from gateway import __version__
from gateway.schema import Heartbeat
from gateway.store import RevisionStore

log = logging.getLogger("gateway.control")

# Control-plane calls are small; a stuck control plane must not hold a heartbeat or a
# usage flush for long.
CONTROL_PLANE_TIMEOUT = httpx.Timeout(5.0, connect=2.0)

_encoder = msgspec.json.Encoder()


def control_plane_client() -> httpx.AsyncClient:
    """The one client a process uses for heartbeats and usage ingest."""
    return httpx.AsyncClient(
        timeout=CONTROL_PLANE_TIMEOUT,
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        follow_redirects=False,
        trust_env=False,
    )


class Heartbeater:
    """Tells the control plane this process exists and which revision it applied."""

    def __init__(
        self,
        *,
        client: httpx.AsyncClient,
        control_plane_url: str,
        token: str,
        store: RevisionStore,
        instance_id: str,
        admin_url: str,
        interval: float,
    ) -> None:
        self._client = client
        self._url = control_plane_url + "/api/v1/gateway/heartbeat"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self._store = store
        self._instance_id = instance_id
        self._admin_url = admin_url
        self._interval = interval
        self._started_at = time.time()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:
                log.exception("heartbeat failed unexpectedly; retrying next tick")
            await asyncio.sleep(self._interval)

    async def beat(self) -> None:
        """Send one heartbeat and note what the control plane says."""
        heartbeat = Heartbeat(
            instance_id=self._instance_id,
            admin_url=self._admin_url,
            applied_revision=self._store.number,
            version=__version__,
            pid=os.getpid(),
            started_at=self._started_at,
        )
        try:
            response = await self._client.post(
                self._url, content=_encoder.encode(heartbeat), headers=self._headers
            )
        except httpx.HTTPError as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code != 200:
            self._fail(f"HTTP {response.status_code}")
            return
        if self._failing:
            log.info("heartbeats to the control plane recovered")
            self._failing = False
        try:
            latest = response.json().get("latest_revision")
        except (ValueError, AttributeError):
            log.warning("heartbeat answer is not the expected JSON object")
            return
        applied = self._store.number
        if isinstance(latest, int) and (applied is None or latest > applied):
            log.debug("control plane has revision %d, applied is %s", latest, applied)

    def _fail(self, reason: str) -> None:
        # One warning per outage, then debug: the gateway serves on regardless.
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "heartbeat to the control plane failed (%s); will retry", reason)
        self._failing = True
