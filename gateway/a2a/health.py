"""Active health checks of agent targets, by each gateway process for itself.

Every second the prober looks at the applied revision's agent products and probes each
target whose ``health_check_seconds`` have passed since its last probe: an A2A agent's
card URL must answer 2xx, a REST agent's base URL anything below 500 (it may well not
serve GET there). The outcome goes into the process's
:class:`~gateway.routing.Router`, the same record failed calls go to: failures in a row
eject the target, and the first success brings it back. Probes run concurrently, at
most one per target at a time, so a hanging agent delays no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp

from gateway.a2a.index import ServedTarget
from gateway.backend_auth import BackendAuth, BackendAuthError
from gateway.routing import Router

log = logging.getLogger("gateway.a2a")

TICK_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 5.0


class _Host(Protocol):
    def current(self) -> Any: ...


class HealthProber:
    def __init__(
        self,
        host: _Host,
        http: aiohttp.ClientSession,
        auth: BackendAuth,
        router: Router,
        tick: float = TICK_SECONDS,
    ) -> None:
        self._host = host
        self._http = http
        self._auth = auth
        self._router = router
        self._tick = tick
        self._last: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="agent-health")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            try:
                self._round()
            except Exception:  # a bad revision must not stop the checks for good
                log.exception("agent health checks failed")
            await asyncio.sleep(self._tick)

    def _round(self) -> None:
        revision = self._host.current()
        if revision is None:
            return
        now = time.monotonic()
        for agent in revision.agents.values():
            interval = agent.product.health_check_seconds
            if interval <= 0:
                continue
            for target in agent.targets:
                if target.key in self._running or now - self._last.get(target.key, 0.0) < interval:
                    continue
                self._last[target.key] = now
                task = asyncio.create_task(self._probe(target))
                self._running[target.key] = task
                task.add_done_callback(self._finished(target.key))

    def _finished(self, key: str) -> Callable[[asyncio.Task[None]], None]:
        def finished(_: asyncio.Task[None]) -> None:
            self._running.pop(key, None)

        return finished

    async def _probe(self, target: ServedTarget) -> None:
        try:
            headers = await self._auth.headers(target.upstream_id, target.upstream, target.secret)
            timeout = min(PROBE_TIMEOUT_SECONDS, target.upstream.timeout_seconds)
            async with self._http.get(
                target.probe_url,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError, BackendAuthError, OSError):
            up = False
        else:
            up = status < 500 if target.is_rest else 200 <= status < 300
        if up:
            self._router.target_up(target.key)
        else:
            self._router.target_down(target.key)
