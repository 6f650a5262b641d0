"""ASGI type aliases, in one place so every module spells them the same way, and what
the endpoints outside ``gateway.app`` record of a call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


class CallRecord(Protocol):
    """What the gateway records of a call for its usage event (``gateway.app.Call``)."""

    request_id: str
    route: str
    status: int
    consumer: int | None
    credential: int | None
    product: int | None
    model: str | None
