"""Reading upstreams' answers: JSON objects and server-sent events (MCP servers, A2A
agents, authorization servers)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson


def json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object; ``{}`` when it is not one (or not JSON at all)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(body)
        if isinstance(value, dict):
            return value
    return {}


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """``(event, data)`` pairs of an SSE response, as the events end; comments and
    ``id``/``retry`` fields are skipped, and ``event`` is ``message`` unless named."""
    event, data = "message", list[str]()
    async for raw in response.content:
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
