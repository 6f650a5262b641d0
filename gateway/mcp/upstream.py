"""The gateway as an MCP client of the servers behind MCP products.

Each upstream is asked once which era it speaks: a ``server/discover`` at 2026-07-28
that answers with that version means stateless requests from then on; anything else
means the session era: ``initialize`` once per gateway process, the session id on every
request, and a new session when the server forgets the old one (404). Servers on the
deprecated HTTP+SSE transport (2024-11-05) get a short-lived connection per call.

The backend credential is the upstream's own (``gateway.backend_auth``); the app's key
never leaves the gateway. Failures become
:class:`UpstreamError` with fixed wording; what the server said in a JSON-RPC error is
relayed as that error.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson
import yarl

from gateway import __version__
from gateway.backend_auth import BackendAuth, BackendAuthError, auth_style
from gateway.mcp.index import ServedProduct, ServedTool
from gateway.mcp.rest import MAX_ANSWER_BYTES, build_request, tool_result
from gateway.wire import json_object, sse_events

log = logging.getLogger("gateway.mcp")

MODERN_VERSION = "2026-07-28"
SESSION_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "portico-gateway", "version": __version__}
# Methods whose target travels in the Mcp-Name header too.
NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_ACCEPT = "application/json, text/event-stream"
# Notifications about a request that are passed on to the client that made it.
_RELAYED = frozenset({"notifications/progress", "notifications/message"})
Notify = Callable[[dict[str, Any]], Awaitable[None]]
_MAX_SSE_EVENT = 8 << 20


class UpstreamError(Exception):
    """The upstream could not answer; ``message`` is safe to show to an app."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused


class _SessionLost(Exception):
    pass


@dataclass(slots=True)
class _Server:
    era: str | None = None  # "modern" or "session"
    session_id: str | None = None
    version: str = SESSION_VERSION
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class McpUpstreams:
    """Every MCP upstream this process talks to, and what it learnt about each."""

    def __init__(self, http: aiohttp.ClientSession, auth: BackendAuth) -> None:
        self._http = http
        self._auth = auth
        self._servers: dict[tuple[str, str, str | None], _Server] = {}
        self._ids = itertools.count(1)

    async def request(
        self,
        product: ServedProduct,
        method: str,
        params: dict[str, Any],
        notify: Notify | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one JSON-RPC request; the upstream's response object (``result`` or
        ``error``). Notifications the server sends about the request before answering
        (progress, log messages) go to ``notify``; ``headers`` (``Mcp-Param-*``) go with
        a stateless request. Raises :class:`UpstreamError` when there is no answer."""
        server = self._server(product)
        if product.server.transport == "sse":
            return await self._over_sse(product, server, method, params, notify)
        if server.era is None:
            async with server.lock:
                if server.era is None:
                    await self._discover(product, server)
        if server.era == "modern":
            response = await self._post(
                product, server, method, params, modern=True, notify=notify, extra=headers
            )
            error = response.get("error")
            if isinstance(error, dict) and error.get("code") == -32022:
                server.era = None  # the server changed versions: ask again next time
            return response
        for attempt in range(2):
            if server.session_id is None:
                async with server.lock:
                    if server.session_id is None:
                        await self._initialize(product, server)
            try:
                return await self._post(
                    product, server, method, params, modern=False, notify=notify
                )
            except _SessionLost:
                server.session_id = None
                if attempt:
                    break
        raise UpstreamError("The MCP server behind this product keeps losing its session.")

    def _server(self, product: ServedProduct) -> _Server:
        key = (product.upstream_id, product.upstream.base_url, product.secret)
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = _Server()
        return server

    async def _discover(self, product: ServedProduct, server: _Server) -> None:
        try:
            answer = await self._post(product, server, "server/discover", {}, modern=True)
        except UpstreamError as exc:
            if exc.refused:
                raise
            answer = {}
        result = answer.get("result")
        versions = result.get("supportedVersions") if isinstance(result, dict) else None
        server.era = (
            "modern" if isinstance(versions, list) and MODERN_VERSION in versions else "session"
        )

    async def _initialize(self, product: ServedProduct, server: _Server) -> None:
        server.version = SESSION_VERSION
        params = {
            "protocolVersion": SESSION_VERSION,
            "capabilities": {},
            "clientInfo": CLIENT_INFO,
        }
        answer = await self._post(product, server, "initialize", params, modern=False)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise UpstreamError("The MCP server behind this product refused to start a session.")
        version = result.get("protocolVersion")
        if isinstance(version, str):
            server.version = version
        await self._post(product, server, "notifications/initialized", None, modern=False)

    async def _headers(self, product: ServedProduct, server: _Server) -> dict[str, str]:
        return {
            "Accept": _ACCEPT,
            "Content-Type": "application/json",
            **await self._credential(product),
        }

    async def _credential(self, product: ServedProduct) -> dict[str, str]:
        """The header carrying the upstream's own credential (none for ``query``)."""
        try:
            return await self._auth.headers(product.upstream_id, product.upstream, product.secret)
        except BackendAuthError as exc:
            if exc.refused:
                raise UpstreamError(
                    "The authorization server of this product's MCP server refused the "
                    "gateway's credentials; please tell the portal's administrators.",
                    refused=True,
                ) from None
            raise UpstreamError(
                "The gateway could not reach the authorization server of this product's MCP server."
            ) from None

    async def call_rest(
        self, product: ServedProduct, tool: ServedTool, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        """A REST-to-MCP tool call: the service's answer as a ``CallToolResult``.
        Raises :class:`RestArgumentError` for arguments that make no request and
        :class:`UpstreamError` when the service cannot be reached."""
        call = tool.tool.rest
        assert call is not None  # the index serves REST products' tools only with one
        request = build_request(call, product.upstream.base_url, arguments)
        # The upstream's credential last, so that no argument can stand in for it.
        credential = await self._credential(product)
        taken = {name.lower() for name in credential}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in taken}
        headers.update(credential)
        options = product.upstream.options
        if product.secret is not None and auth_style(options, product.secret) == "query":
            param = options.get("param") or "api_key"
            request.query = [(k, v) for k, v in request.query if k != param]
            request.query.append((param, product.secret))
        try:
            async with self._http.request(
                request.method,
                yarl.URL(request.url, encoded=True),
                params=request.query or None,
                data=request.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=product.upstream.timeout_seconds),
            ) as response:
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(body) > MAX_ANSWER_BYTES:
                    raise UpstreamError(
                        "The REST service's answer is larger than the gateway relays "
                        f"({MAX_ANSWER_BYTES >> 20} MiB)."
                    )
                return tool_result(
                    response.status,
                    response.headers.get("Content-Type", ""),
                    body,
                    call.select,
                    product.secret,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(
                "The REST service behind this tool did not answer in time."
                if isinstance(exc, TimeoutError)
                else "The gateway could not reach the REST service behind this tool."
            ) from None

    async def _post(
        self,
        product: ServedProduct,
        server: _Server,
        method: str,
        params: dict[str, Any] | None,
        *,
        modern: bool,
        notify: Notify | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        request_id = None
        if not method.startswith("notifications/"):
            request_id = message["id"] = next(self._ids)
        headers = await self._headers(product, server)
        if modern:
            params = dict(params or {})
            meta = dict(params.get("_meta") or {})
            meta["io.modelcontextprotocol/protocolVersion"] = MODERN_VERSION
            # The client's own capabilities when it sent them: the server may ask it
            # for input (``input_required``) only within them.
            meta.setdefault("io.modelcontextprotocol/clientCapabilities", {})
            meta["io.modelcontextprotocol/clientInfo"] = CLIENT_INFO
            params["_meta"] = meta
            headers.update(extra or {})
            headers["MCP-Protocol-Version"] = MODERN_VERSION
            headers["Mcp-Method"] = method
            named = NAMED.get(method)
            if named is not None and isinstance(params.get(named), str):
                headers["Mcp-Name"] = header_value(params[named])
        else:
            if method != "initialize":
                headers["MCP-Protocol-Version"] = server.version
            if server.session_id is not None:
                headers["Mcp-Session-Id"] = server.session_id
        if params is not None:
            message["params"] = params
        timeout = aiohttp.ClientTimeout(total=product.upstream.timeout_seconds)
        try:
            async with self._http.post(
                product.upstream.base_url,
                data=orjson.dumps(message),
                headers=headers,
                timeout=timeout,
            ) as response:
                if method == "initialize":
                    server.session_id = response.headers.get("Mcp-Session-Id")
                if request_id is None:
                    return {}
                return await _answer(
                    response, request_id, lost=server.session_id is not None, notify=notify
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            raise UpstreamError(
                "The MCP server behind this product did not answer in time."
                if timed_out
                else "The gateway could not reach the MCP server behind this product."
            ) from None

    async def _over_sse(
        self,
        product: ServedProduct,
        server: _Server,
        method: str,
        params: dict[str, Any],
        notify: Notify | None,
    ) -> dict[str, Any]:
        """One call over the 2024-11-05 HTTP+SSE transport, on a connection of its own."""
        headers = await self._headers(product, server)
        headers["Accept"] = "text/event-stream"
        timeout = aiohttp.ClientTimeout(total=product.upstream.timeout_seconds)
        try:
            async with self._http.get(
                product.upstream.base_url, headers=headers, timeout=timeout
            ) as stream:
                if stream.status != 200:
                    raise _http_failure(stream.status)
                events = sse_events(stream)
                endpoint = await _next_event(events, "endpoint")
                post_url = urljoin(product.upstream.base_url, endpoint)
                if urlsplit(post_url)[:2] != urlsplit(product.upstream.base_url)[:2]:
                    raise UpstreamError("The MCP server named an endpoint on another origin.")
                post_headers = {**headers, "Accept": "*/*", "Content-Type": "application/json"}
                init_id, call_id = next(self._ids), next(self._ids)
                steps: list[dict[str, Any]] = [
                    {
                        "jsonrpc": "2.0",
                        "id": init_id,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2024-11-05",
                            "capabilities": {},
                            "clientInfo": CLIENT_INFO,
                        },
                    },
                    {"jsonrpc": "2.0", "method": "notifications/initialized"},
                    {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params},
                ]
                for step in steps:
                    async with self._http.post(
                        post_url, data=orjson.dumps(step), headers=post_headers, timeout=timeout
                    ) as posted:
                        if posted.status >= 300:
                            raise _http_failure(posted.status)
                    if step.get("id") is not None:
                        answer = await _next_response(
                            events, step["id"], notify if step["id"] == call_id else None
                        )
                        if step["id"] == call_id:
                            return answer
        except (aiohttp.ClientError, TimeoutError):
            raise UpstreamError(
                "The gateway could not reach the MCP server behind this product."
            ) from None
        raise UpstreamError("The MCP server behind this product did not answer.")


def header_value(value: str) -> str:
    """A value for ``Mcp-Name``: as is when plain printable ASCII, else base64-wrapped."""
    if (
        value.isascii()
        and value.isprintable()
        and value == value.strip()
        and not (value.startswith("=?base64?") and value.endswith("?="))
    ):
        return value
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


def _http_failure(status: int) -> UpstreamError:
    if status in (401, 403):
        return UpstreamError(
            "The MCP server behind this product refused the gateway's credentials; "
            "please tell the portal's administrators.",
            refused=True,
        )
    return UpstreamError(f"The MCP server behind this product failed (HTTP {status}).")


async def _answer(
    response: aiohttp.ClientResponse, request_id: int, *, lost: bool, notify: Notify | None
) -> dict[str, Any]:
    status = response.status
    kind = response.headers.get("Content-Type", "")
    if status == 404 and lost:
        raise _SessionLost
    if kind.startswith("text/event-stream") and status == 200:
        return await _next_response(sse_events(response), request_id, notify)
    body = await response.content.read(_MAX_SSE_EVENT)
    message = json_object(body)
    if message.get("id") == request_id and ("result" in message or "error" in message):
        return message
    if isinstance(message.get("error"), dict) and status < 500 and status not in (401, 403):
        return message  # an error the server could not tie to the request (id null)
    raise (
        _http_failure(status)
        if status >= 300
        else UpstreamError(
            "The MCP server behind this product sent an answer the gateway cannot read."
        )
    )


async def _next_event(events: Any, wanted: str) -> str:
    async for event, data in events:
        if event == wanted:
            return str(data)
    raise UpstreamError("The MCP server behind this product closed its stream.")


async def _next_response(
    events: Any, request_id: int, notify: Notify | None = None
) -> dict[str, Any]:
    async for event, data in events:
        if event != "message":
            continue
        message = json_object(data.encode())
        if message.get("id") == request_id and ("result" in message or "error" in message):
            return message
        if notify is not None and "id" not in message and message.get("method") in _RELAYED:
            await notify(message)
    raise UpstreamError("The MCP server behind this product closed its stream before answering.")
