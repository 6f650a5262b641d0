"""The gateway's connections to upstreams, held to the egress policy at connect time.

Upstream URLs come from revisions, which admins write, and the control plane checks
them against the egress policy (``gateway.egress``) when they are saved. A name can be
re-pointed after that, so every connection the gateway opens is checked again, on the
addresses the name resolves to at that moment: only allowed addresses are dialled, and
a host with none is refused as unreachable. The check happens once per new connection
(kept-alive connections are reused), so requests do not pay for it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp

from gateway.egress import EgressPolicy

log = logging.getLogger("gateway.egress")
_WARN_EVERY_SECONDS = 60.0


class EgressConnector(aiohttp.TCPConnector):
    """An aiohttp connector that dials only addresses ``policy`` allows."""

    def __init__(self, policy: EgressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policy = policy
        self._warned: dict[str, float] = {}

    # aiohttp's resolution step (literal addresses too) before it connects; the
    # version is pinned, and tests/gateway/test_egress.py holds it to this.
    async def _resolve_host(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        resolved = await super()._resolve_host(host, port, *args, **kwargs)
        allowed = [entry for entry in resolved if self._policy.allows(host, entry["host"])]
        if not allowed:
            now = time.monotonic()
            if now - self._warned.get(host, -_WARN_EVERY_SECONDS) >= _WARN_EVERY_SECONDS:
                # Once a minute per host: an operator must learn why, not drown in it.
                self._warned[host] = now
                log.warning(
                    "the egress policy refuses %s (it resolves to %s); allow it with "
                    "PORTICO_EGRESS_ALLOW if it is meant to be reached",
                    host,
                    ", ".join(str(entry["host"]) for entry in resolved),
                )
            raise OSError(
                f"the egress policy refuses {host}: it is not a public address "
                "(allow it with PORTICO_EGRESS_ALLOW)"
            )
        return allowed
