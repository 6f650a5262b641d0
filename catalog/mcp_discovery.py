"""Discovering what an upstream MCP server offers, with the official SDK's client.

:func:`discover` connects as the gateway would (the same transport and backend
credential), lists the tools, prompts, resources and resource templates (following
cursors), and returns them as the MCP JSON objects the server sent. It touches no
database: ``catalog.services.mcp_server_discover`` decides what to keep.

On Streamable HTTP the client runs in ``auto`` mode: it asks for the 2026-07-28
revision (``server/discover``) and falls back to the 2025-11-25 handshake, so servers
of either era work. The deprecated HTTP+SSE transport predates the 2026 revision, so
it goes straight to the handshake.

Errors come out as :class:`DiscoveryError`, whose message is written for the admin
(what went wrong, what to check) and never holds the credential.

Before connecting, the endpoint (and an OAuth token URL) pass the egress policy
(``gateway.egress``): an admin-set URL must not lead into Portico's own network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import orjson
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import METHOD_NOT_FOUND, Implementation

from catalog.upstream_auth import (
    UpstreamAuthError,
    check_egress,
    upstream_auth_headers,
)
from catalog.upstream_auth import network_reason as _network_reason
from catalog.upstream_auth import origin as _origin
from catalog.upstream_auth import redact as _redact
from gateway.egress import EgressError, EgressPolicy
from gateway.schema import MCP_AUTH_STYLES

logger = logging.getLogger(__name__)

# What one discovery keeps at most. A server is trusted with none of this: a list that
# never ends, or a description of megabytes, would otherwise travel in every revision.
MAX_PAGES = 50
MAX_ITEMS = 1000  # tools, prompts, resources, templates: each
MAX_OBJECT_BYTES = 64 * 1024  # one tool, prompt or resource as JSON
MAX_INSTRUCTIONS = 10_000  # characters
MAX_NAME = 200  # the gateway's limit on a tool name (gateway.schema.Name)

CLIENT_INFO = Implementation(name="portico-discovery", version="1.0")


class DiscoveryError(Exception):
    """Discovery failed; ``str(exc)`` is safe to show an admin and to store."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach an MCP server: an upstream of vendor ``mcp``, opened.

    ``options`` are the upstream's auth options (``auth``: bearer, header or oauth2;
    see ``catalog.models.VENDOR_OPTIONS``) and ``secret`` its decrypted credential.
    ``egress`` is the policy its URLs must pass (default: public addresses only).
    """

    url: str
    transport: str = "streamable_http"
    options: dict[str, str] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)
    egress: EgressPolicy = field(default_factory=EgressPolicy)


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a server offers, as MCP JSON objects; ``problems`` are what was left out."""

    protocol_version: str
    server_name: str
    server_version: str
    instructions: str
    tools: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    resources: list[dict[str, Any]]
    resource_templates: list[dict[str, Any]]
    problems: list[str]


def discover(endpoint: Endpoint, *, timeout: float) -> Discovery:
    """List everything ``endpoint`` offers, within ``timeout`` seconds in all.

    Synchronous (for Celery tasks and management commands): runs its own event loop.
    """
    return asyncio.run(discover_async(endpoint, seconds=timeout))


async def discover_async(endpoint: Endpoint, *, seconds: float) -> Discovery:
    """:func:`discover` for callers that have an event loop; ``seconds`` bounds it all."""
    statuses: list[int] = []
    secrets = [endpoint.secret] if endpoint.secret else []
    try:
        with anyio.fail_after(seconds):
            await _check_egress(endpoint, endpoint.url)
            headers = await _auth_headers(endpoint, seconds=seconds, secrets=secrets)
            return await _list_everything(endpoint, headers, seconds=seconds, statuses=statuses)
    except DiscoveryError as exc:
        raise DiscoveryError(_redact(str(exc), secrets)) from None
    except Exception as exc:  # every failure becomes a sentence for the admin
        message = _redact(_explain(exc, endpoint, statuses, seconds), secrets)
        # The sentence, not the exception's text: that may quote the URL and its query.
        logger.warning("MCP discovery of %s failed: %s", _origin(endpoint.url), message)
        raise DiscoveryError(message) from None


async def _check_egress(endpoint: Endpoint, url: str) -> None:
    try:
        await check_egress(endpoint.egress, url)
    except UpstreamAuthError as exc:
        raise DiscoveryError(str(exc)) from None


async def _auth_headers(
    endpoint: Endpoint, *, seconds: float, secrets: list[str]
) -> dict[str, str]:
    """The headers carrying the backend credential, as the gateway will send them."""
    try:
        return await upstream_auth_headers(
            endpoint, styles=MCP_AUTH_STYLES, seconds=seconds, secrets=secrets
        )
    except UpstreamAuthError as exc:
        raise DiscoveryError(str(exc)) from None


# Listing ---------------------------------------------------------------------------------


def _egress_hook(endpoint: Endpoint) -> Callable[[httpx2.Request], Awaitable[None]]:
    """Every request the SDK's client sends (a redirect it follows included) passes the
    egress policy first."""

    async def check(request: httpx2.Request) -> None:
        await endpoint.egress.check_url_async(str(request.url))

    return check


def _status_hook(statuses: list[int]) -> Callable[[httpx2.Response], Awaitable[None]]:
    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    return record


async def _list_everything(
    endpoint: Endpoint, headers: dict[str, str], *, seconds: float, statuses: list[int]
) -> Discovery:
    hook, egress = _status_hook(statuses), _egress_hook(endpoint)
    http_timeout = httpx2.Timeout(seconds)

    def client_factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
    ) -> httpx2.AsyncClient:
        client = create_mcp_http_client(headers=headers, timeout=timeout or http_timeout, auth=auth)
        # The SDK turns an HTTP error into a generic MCP error; the status says more.
        client.event_hooks = {"request": [egress], "response": [hook]}
        return client

    if endpoint.transport == "sse":
        transport = sse_client(
            endpoint.url,
            headers=headers,
            timeout=seconds,
            sse_read_timeout=seconds,
            httpx_client_factory=client_factory,
        )
        async with Client(
            transport, mode="legacy", read_timeout_seconds=seconds, client_info=CLIENT_INFO
        ) as client:
            return await _collect(client)
    http = client_factory(headers=headers)
    async with (
        http,
        Client(
            streamable_http_client(endpoint.url, http_client=http),
            mode="auto",
            read_timeout_seconds=seconds,
            client_info=CLIENT_INFO,
        ) as client,
    ):
        return await _collect(client)


async def _collect(client: Client) -> Discovery:
    problems: list[str] = []
    capabilities = client.server_capabilities
    tools = await _pages(client.list_tools, "tools", "tools", problems)
    prompts = await _optional(
        client.list_prompts, "prompts", "prompts", capabilities.prompts is not None, problems
    )
    has_resources = capabilities.resources is not None
    resources = await _optional(
        client.list_resources, "resources", "resources", has_resources, problems
    )
    templates = await _optional(
        client.list_resource_templates,
        "resource_templates",
        "resource templates",
        has_resources,
        problems,
    )
    info = client.server_info
    instructions = client.instructions or ""
    if len(instructions) > MAX_INSTRUCTIONS:
        problems.append(f"The server's instructions were cut to {MAX_INSTRUCTIONS} characters.")
        instructions = instructions[:MAX_INSTRUCTIONS]
    return Discovery(
        protocol_version=client.protocol_version,
        server_name=(info.name if info else "")[:200],
        server_version=(info.version if info else "")[:100],
        instructions=instructions,
        tools=_usable_tools(tools, problems),
        prompts=prompts,
        resources=resources,
        resource_templates=templates,
        problems=problems,
    )


async def _optional(
    fetch: Callable[..., Awaitable[Any]],
    attribute: str,
    label: str,
    declared: bool,
    problems: list[str],
) -> list[dict[str, Any]]:
    """A list the server may not offer: "method not found" (or any refusal from a server
    that did not declare the capability) means it has none."""
    try:
        return await _pages(fetch, attribute, label, problems)
    except MCPError as exc:
        if exc.code == METHOD_NOT_FOUND or not declared:
            return []
        raise


async def _pages(
    fetch: Callable[..., Awaitable[Any]], attribute: str, label: str, problems: list[str]
) -> list[dict[str, Any]]:
    """Every item of a paginated list, as JSON objects, within the limits."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await fetch(cursor=cursor, cache_mode="bypass")
        for item in getattr(page, attribute):
            dumped = item.model_dump(mode="json", by_alias=True, exclude_none=True)
            if len(orjson.dumps(dumped)) > MAX_OBJECT_BYTES:
                name = str(dumped.get("name") or dumped.get("uri") or "?")[:80]
                problems.append(f"Left out {label[:-1]} {name!r}: over {MAX_OBJECT_BYTES} bytes.")
                continue
            if len(items) >= MAX_ITEMS:
                problems.append(f"Kept the first {MAX_ITEMS} {label} only.")
                return items
            items.append(dumped)
        cursor = page.next_cursor
        if not cursor:
            return items
    problems.append(f"Stopped listing {label} after {MAX_PAGES} pages.")
    return items


def _usable_tools(tools: Sequence[dict[str, Any]], problems: list[str]) -> list[dict[str, Any]]:
    """Tools whose names the gateway can serve, each name once."""
    kept: dict[str, dict[str, Any]] = {}
    for tool in tools:
        name = tool.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
            problems.append(f"Left out a tool whose name is not 1 to {MAX_NAME} characters.")
        elif name in kept:
            problems.append(f"The server lists the tool {name!r} twice; kept the first.")
        else:
            kept[name] = tool
    return list(kept.values())


# Errors ----------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups; the SDK wraps them in several."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


_STATUS_ADVICE = {
    401: "The server refused the credential (HTTP 401 Unauthorized). Check the upstream's "
    "secret and auth options.",
    403: "The server refused access (HTTP 403 Forbidden). Check that the upstream's credential "
    "may use this server.",
    404: "Nothing answers MCP at this URL (HTTP 404 Not Found). Check the upstream's base URL: "
    "the MCP endpoint (often ending in /mcp), or the /sse URL for the HTTP+SSE transport.",
    405: "This URL does not take MCP requests (HTTP 405). For a legacy /sse URL choose the "
    "HTTP+SSE transport; otherwise check the upstream's base URL.",
    421: "The server refused its Host header (HTTP 421): it only answers under another name.",
}


def _explain(exc: BaseException, endpoint: Endpoint, statuses: list[int], seconds: float) -> str:
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, EgressError):  # a redirect to somewhere the policy refuses
            return f"Not connected: {leaf}"
    if any(isinstance(leaf, TimeoutError | httpx2.TimeoutException) for leaf in leaves):
        if any(isinstance(leaf, httpx2.ConnectTimeout) for leaf in leaves):
            return f"Could not connect to {_origin(endpoint.url)}: the connection timed out."
        unit = "second" if seconds == 1 else "seconds"
        return f"The server did not answer within {seconds:g} {unit}."
    for leaf in leaves:
        if isinstance(leaf, httpx2.ConnectError | httpx2.NetworkError):
            return f"Could not connect to {_origin(endpoint.url)}: {_network_reason(leaf)}."
    # The last answer decides: an error status then (a 4xx to the 2026 probe that the
    # handshake got past is not the problem).
    status = statuses[-1] if statuses and statuses[-1] >= 400 else None
    if status is None:
        for leaf in leaves:
            if isinstance(leaf, httpx2.HTTPStatusError):
                status = leaf.response.status_code
    if status is not None:
        if status == 401 and not endpoint.options.get("auth"):
            return (
                "The server asks for a credential (HTTP 401 Unauthorized): set the upstream's "
                "secret and its auth option."
            )
        if status in _STATUS_ADVICE:
            return _STATUS_ADVICE[status]
        if status >= 500:
            return f"The server failed (HTTP {status}). Try again later or check the server."
        return f"The server answered HTTP {status} to an MCP request."
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            return f"The server answered with an MCP error {leaf.code}: {leaf.message[:200]}"
    for leaf in leaves:
        if isinstance(leaf, httpx2.HTTPError):
            return f"HTTP error talking to the server ({type(leaf).__name__})."
    kinds = ", ".join(sorted({type(leaf).__name__ for leaf in leaves}))
    return f"Discovery failed ({kinds}). Check that the URL is an MCP endpoint."
