"""MCP endpoints: ``/mcp/<product>`` for one product, ``/mcp`` for all the key may use.

One POST endpoint serves both eras, told apart as the reference SDK does: an
``MCP-Protocol-Version`` header naming a version after the session era means the
stateless 2026-07-28 protocol (``server/discover``, ``_meta`` on every request, the
routing headers checked against the body); anything else is the session era
(``initialize``, then ``Mcp-Session-Id``; see ``gateway.mcp.sessions``).

Every request is authenticated with the app's key (``Authorization: Bearer``), and the
product must be among the app's subscriptions. Lists come from the revision (pinned at
approval); ``tools/call`` is checked against the subscription's allow-list and the
pinned input schema, then sent to the upstream with the upstream's own credentials.

Errors are JSON-RPC errors carrying the request's id, with the HTTP status the
specification gives each code (400 for malformed requests and parameters, 404 for an
unknown method) and the gateway's own codes for what it decides: ``-32001`` no or bad
key (401, with ``WWW-Authenticate``), ``-32003`` not subscribed (403), ``-32029`` over
the plan's rate (429, with ``retry-after``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson

from gateway import __version__, access_tokens
from gateway.access_tokens import looks_like_token
from gateway.limits import Decision
from gateway.mcp.index import SEPARATOR, McpIndex, ServedProduct, ServedTool, served_name
from gateway.mcp.rest import RestArgumentError
from gateway.mcp.search import Bm25, Ranker, tool_text
from gateway.mcp.sessions import SESSION_VERSIONS, SessionError, Sessions
from gateway.mcp.streams import SseHub, StreamGone
from gateway.mcp.upstream import (
    MODERN_VERSION,
    NAMED,
    McpUpstreams,
    Notify,
    UpstreamError,
    header_value,
)
from gateway.responses import ApiError, client_gone, send_chunk
from gateway.schema import Consumer, Subscription
from gateway.types import CallRecord, Headers, Receive, Scope, Send

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020
UNSUPPORTED_VERSION = -32022
UNAUTHORIZED = -32001
FORBIDDEN = -32003
RATE_LIMITED = -32029
# HTTP status of a JSON-RPC error in the stateless era (the reference SDK's map).
_MODERN_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    -32021: 400,
    UNSUPPORTED_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}
log = logging.getLogger("gateway.mcp")

OAUTH_SCOPE = "mcp"
# Sessions opened with an OAuth token are bound to its grant, kept apart from key ids.
_GRANT_PRINCIPAL = 1 << 62
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
KEEPALIVE_SECONDS = 15.0
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
# What of a client's ``_meta`` concerns the request itself and goes on upstream.
_FORWARDED_META = (
    "progressToken",
    "io.modelcontextprotocol/logLevel",
    "io.modelcontextprotocol/clientCapabilities",
)
_ASK_PREFIX = "portico-ask-"
_MAX_INPUT_ROUNDS = 8
_LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
# Fields of 2026-07-28 results that clients of the session era do not know.
_MODERN_ONLY = ("resultType", "ttlMs", "cacheScope")
SERVER_INFO = {"name": "portico", "title": "Portico MCP gateway", "version": __version__}
FIND_TOOLS = "find_tools"
FIND_TOOLS_LIMIT = 10
_FIND_TOOLS_DEFINITION: dict[str, Any] = {
    "name": FIND_TOOLS,
    "title": "Find tools",
    "description": (
        "Search every tool available to you for the ones relevant to a task. Describe the "
        "task in plain words; the answer lists the best matching tools with their input "
        "schemas, and any of them can then be called by name even if it is not listed."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What you want to do."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10},
        },
        "required": ["query"],
    },
    "outputSchema": {
        "type": "object",
        "properties": {"tools": {"type": "array", "items": {"type": "object"}}},
        "required": ["tools"],
    },
    "annotations": {"readOnlyHint": True, "openWorldHint": False},
}
_CACHEABLE = frozenset(
    {
        "server/discover",
        "tools/list",
        "prompts/list",
        "resources/list",
        "resources/templates/list",
        "resources/read",
    }
)


class RpcError(Exception):
    def __init__(
        self,
        code: int,
        message: str,
        *,
        data: Any = None,
        status: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.status = status
        self.headers = headers or []


Call = CallRecord


class Host(Protocol):
    """What the MCP endpoints need of the gateway process around them."""

    def authenticate(self, call: Any, key: bytes | None) -> tuple[Any, Consumer]: ...

    def current(self) -> Any: ...

    def applied(self) -> Any: ...

    async def read_body(self, receive: Receive, declared: bytes | None) -> bytes: ...

    async def acquire(
        self, subscription: Subscription, estimate: Callable[[], int]
    ) -> Decision | None: ...

    async def settle(self, decision: Decision | None, tokens: int) -> None: ...


@dataclass(slots=True)
class _Request:
    """One POST's parsed parts and what the headers said."""

    id: Any
    method: str
    params: dict[str, Any]
    modern: bool
    version: str
    headers: dict[bytes, bytes]
    principal: int
    session: str | None = None  # the session-era session (or legacy SSE stream)


class McpService:
    def __init__(
        self,
        host: Host,
        sessions: Sessions,
        upstreams: McpUpstreams,
        *,
        token_key: bytes,
        hub: SseHub | None = None,
        allowed_origins: frozenset[str] = frozenset(),
        ranker: Ranker | None = None,
    ) -> None:
        self.host = host
        self.sessions = sessions
        self.upstreams = upstreams
        self.token_key = token_key
        self.hub = hub or SseHub(None)
        self.allowed_origins = allowed_origins
        self.ranker = ranker or Bm25()

    async def serve(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        slug: str | None,
    ) -> None:
        headers = _headers(scope)
        method = scope["method"]
        request_id: Any = None
        modern = _is_modern(headers.get(b"mcp-protocol-version"))
        accept = headers.get(b"accept", b"")
        relay: _Relay | None = None
        try:
            self._check_origin(headers.get(b"origin"))
            stream_id = _query(scope, "sse_session")
            if method == "POST":
                body = await self.host.read_body(receive, headers.get(b"content-length"))
                message = _parse(body)
                request_id = message.get("id")
                if stream_id is not None:
                    await self._post_to_stream(call, scope, send, slug, headers, message, stream_id)
                    return
                relay = _Relay(send, call.request_id)
                status, reply, extra = await self._post(
                    call,
                    scope,
                    slug,
                    headers,
                    message,
                    modern,
                    relay.notify if b"text/event-stream" in accept else None,
                )
                call.status = status
                await relay.finish(status, reply, extra)
            elif (
                method == "GET"
                and not modern
                and b"mcp-session-id" not in headers
                and b"text/event-stream" in accept
            ):
                await self._stream(call, scope, receive, send, slug, headers)
            elif method == "DELETE" and not modern:
                await self._delete(call, scope, send, slug, headers)
            else:
                allow = b"POST" if modern else b"GET, POST, DELETE"
                call.status = 405
                await _send(send, 405, None, call.request_id, [(b"allow", allow)])
        except RpcError as err:
            status, reply = _error_reply(err, request_id, modern)
            call.status = status
            if relay is not None and relay.started:
                await relay.finish(status, reply, [])
            else:
                await _send(send, status, reply, call.request_id, err.headers)

    def _check_origin(self, origin: bytes | None) -> None:
        """Browsers name the page's origin; a page from elsewhere may not call (the
        specification's defence against DNS rebinding). Clients that are not browsers
        send no ``Origin``."""
        if origin is None or origin.decode("latin-1") in self.allowed_origins:
            return
        text = origin.decode("latin-1")
        host = urlsplit(text).hostname or ""
        if host in _LOOPBACK_HOSTS or "*" in self.allowed_origins:
            return
        current = self.host.current()
        oauth = current.doc.oauth if current is not None else None
        if oauth is not None and text in (_origin(oauth.issuer), _origin(oauth.resource_base)):
            return
        raise RpcError(
            INVALID_REQUEST,
            f"Origin {text!r} may not call this MCP endpoint.",
            status=403,
        )

    async def _post(
        self,
        call: Call,
        scope: Scope,
        slug: str | None,
        headers: dict[bytes, bytes],
        message: dict[str, Any],
        modern: bool,
        notify: Notify | None = None,
        stream_version: str | None = None,
        stream_id: str | None = None,
    ) -> tuple[int, dict[str, Any] | None, Headers]:
        """The status, JSON-RPC reply (``None``: none) and headers for one message.
        ``stream_version`` and ``stream_id`` are set for a message of a legacy SSE
        stream."""
        name = message.get("method")
        if not isinstance(name, str):
            if "result" in message or "error" in message:  # a reply to a server request
                await self._answered(call, scope, headers, slug, message)
                return 202, None, []
            raise RpcError(INVALID_REQUEST, "Invalid Request: 'method' must be a string.")
        call.route = f"mcp.{name}"[:64]
        revision, subscriptions, principal = self._authorize(call, headers, slug)
        params = message.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "'params' must be an object.")
        notification = "id" not in message
        if not notification and not _valid_id(message["id"]):
            raise RpcError(INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer.")
        endpoint = slug or "*"
        extra: Headers = []
        if modern:
            version = _check_modern(headers, name, params)
        elif name == "initialize":
            version = _negotiate(params)
        elif notification:
            version = SESSION_VERSIONS[-1]
        elif stream_version is not None:
            version = stream_version
        else:
            version = await self._session(headers, endpoint, principal)
        if notification:
            return 202, None, []
        session = stream_id or _text(headers.get(b"mcp-session-id"))
        request = _Request(
            message["id"], name, params, modern, version, headers, principal, session
        )
        products = _visible(revision.mcp, subscriptions, slug)
        result = await self._dispatch(call, request, products, subscriptions, slug, scope, notify)
        if name == "initialize":
            if stream_id is None:
                stream_id = self.sessions.open(principal, endpoint, version)
                extra.append((b"mcp-session-id", stream_id.encode()))
            capabilities = params.get("capabilities")
            if isinstance(capabilities, dict) and capabilities:
                # Servers of the stateless era hear them with every call (_forward).
                await self.sessions.note(
                    stream_id, "capabilities", orjson.dumps(capabilities).decode()
                )
        if modern:
            result.setdefault("resultType", "complete")
            meta = result.get("_meta")
            result["_meta"] = {
                **(meta if isinstance(meta, dict) else {}),
                "io.modelcontextprotocol/serverInfo": SERVER_INFO,
            }
            if name in _CACHEABLE:
                result.setdefault("ttlMs", 0)
                result.setdefault("cacheScope", "private")
        else:
            _to_session_era(result)
        return 200, {"jsonrpc": "2.0", "id": request.id, "result": result}, extra

    async def _post_to_stream(
        self,
        call: Call,
        scope: Scope,
        send: Send,
        slug: str | None,
        headers: dict[bytes, bytes],
        message: dict[str, Any],
        stream_id: str,
    ) -> None:
        """A message for a legacy SSE stream: accepted at once (202), then answered on
        the stream. Accepting first matters: clients of this transport send their
        POSTs one at a time, so a call waiting for the client's answer to a request of
        the gateway's (``_ask_client``) would otherwise wait for ever."""
        _, _, principal = self._authorize(call, headers, slug)
        try:
            version = await self.sessions.check(stream_id, principal, slug or "*")
        except SessionError:
            raise RpcError(INVALID_REQUEST, "Session not found.", status=404) from None
        await _send(send, 202, None, call.request_id)
        reply: dict[str, Any] | None

        async def notify(notification: dict[str, Any]) -> None:
            with contextlib.suppress(StreamGone):
                await self.hub.deliver(stream_id, orjson.dumps(notification))

        try:
            call.status, reply, _ = await self._post(
                call,
                scope,
                slug,
                headers,
                message,
                False,
                notify,
                stream_version=version,
                stream_id=stream_id,
            )
        except RpcError as err:
            call.status, reply = _error_reply(err, message.get("id"), modern=False)
        if reply is not None:
            try:
                await self.hub.deliver(stream_id, orjson.dumps(reply))
            except StreamGone:
                call.status = 499  # the client left before its answer

    async def _stream(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        slug: str | None,
        headers: dict[bytes, bytes],
    ) -> None:
        """A legacy (2024-11-05) SSE stream: where to POST, then every reply."""
        call.route = "mcp.sse"
        _, _, principal = self._authorize(call, headers, slug)
        stream_id = self.sessions.open(principal, slug or "*", SESSION_VERSIONS[0])
        queue = await self.hub.open(stream_id)
        gone = asyncio.create_task(client_gone(receive))
        call.status = 200
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_SSE_HEADERS, (b"x-request-id", call.request_id.encode())],
                }
            )
            endpoint = f"/mcp{'/' + slug if slug else ''}?sse_session={stream_id}"
            await send_chunk(send, b"event: endpoint\r\ndata: " + endpoint.encode() + b"\r\n\r\n")
            while not gone.done():
                waiting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {waiting, gone}, timeout=KEEPALIVE_SECONDS, return_when="FIRST_COMPLETED"
                )
                if waiting not in done:
                    waiting.cancel()
                    if not gone.done():
                        await send_chunk(send, b": keepalive\r\n\r\n")
                    continue
                item = waiting.result()
                if item is None:
                    break
                await send_chunk(send, _sse_message(item))
            if not gone.done():
                await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()
            await self.hub.close(stream_id)
            await self.sessions.end(stream_id)

    def _authorize(
        self, call: Call, headers: dict[bytes, bytes], slug: str | None
    ) -> tuple[Any, dict[str, Subscription], int]:
        """The revision, the caller's subscriptions and the principal sessions are bound
        to (the key, or the OAuth grant)."""
        revision, consumer, principal = self._authenticate(call, headers, slug)
        products = revision.mcp.products
        if slug is not None:
            product = products.get(slug)
            if product is None:
                raise RpcError(
                    INVALID_REQUEST, f"There is no MCP product {slug!r} here.", status=404
                )
            call.product = product.id
            if slug not in consumer.subscriptions:
                raise RpcError(
                    FORBIDDEN,
                    f"Your key's app is not subscribed to the MCP product {slug!r}. "
                    "Subscribe to it in the developer portal.",
                    status=403,
                )
        return revision, consumer.subscriptions, principal

    def _authenticate(
        self, call: Call, headers: dict[bytes, bytes], slug: str | None
    ) -> tuple[Any, Consumer, int]:
        """The revision, the consumer of the request's key (bearer or ``x-api-key``) or
        OAuth access token, and the principal."""
        authorization = headers.get(b"authorization", b"")
        key = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else None
        try:
            if key and looks_like_token(key):
                return self._token_holder(call, key, slug)
            revision, consumer = self.host.authenticate(call, key or headers.get(b"x-api-key"))
            return revision, consumer, call.credential or 0
        except ApiError as err:
            if err.status == 401:
                raise RpcError(
                    UNAUTHORIZED,
                    err.message,
                    status=401,
                    headers=[(b"www-authenticate", self._challenge(slug))],
                ) from None
            raise RpcError(INTERNAL_ERROR, err.message, status=err.status) from None

    def _token_holder(
        self, call: Call, token: bytes, slug: str | None
    ) -> tuple[Any, Consumer, int]:
        """The revision, consumer and principal of an OAuth access token minted by the
        portal for this endpoint (``gateway.access_tokens``)."""
        revision = self.host.applied()
        oauth = revision.doc.oauth
        refused = ApiError(
            401, "Invalid access token: it is unknown, expired, revoked or for another endpoint."
        )
        if oauth is None:
            raise refused
        try:
            granted = access_tokens.verify(
                self.token_key,
                token.decode("ascii"),
                audience=_resource(oauth.resource_base, slug),
                now=time.time(),
            )
        except (access_tokens.TokenError, UnicodeDecodeError) as exc:
            log.info("refused an MCP access token: %s", exc)
            raise refused from None
        consumer = revision.doc.consumers.get(str(granted.consumer))
        if consumer is None or granted.grant in revision.mcp.revoked_grants:
            raise refused
        call.consumer = consumer.id
        return revision, consumer, _GRANT_PRINCIPAL | granted.grant

    def _challenge(self, slug: str | None) -> bytes:
        """``WWW-Authenticate`` for a 401: where the protected resource's metadata lives
        (RFC 9728), when the portal issues tokens for the MCP endpoints."""
        current = self.host.current()
        oauth = current.doc.oauth if current is not None else None
        if oauth is None:
            return b'Bearer error="invalid_token"'
        return (
            f'Bearer error="invalid_token", scope="{OAUTH_SCOPE}", '
            f'resource_metadata="{metadata_url(oauth.resource_base, slug)}"'
        ).encode()

    async def _session(self, headers: dict[bytes, bytes], endpoint: str, principal: int) -> str:
        session_id = headers.get(b"mcp-session-id")
        if session_id is None:
            raise RpcError(
                INVALID_REQUEST,
                "Bad Request: missing Mcp-Session-Id header (send initialize first).",
                status=400,
            )
        try:
            version = await self.sessions.check(session_id.decode("latin-1"), principal, endpoint)
        except SessionError:
            raise RpcError(INVALID_REQUEST, "Session not found.", status=404) from None
        asked = headers.get(b"mcp-protocol-version")
        if asked is not None and asked.decode("latin-1") != version:
            raise RpcError(
                INVALID_REQUEST,
                f"MCP-Protocol-Version {asked.decode('latin-1')!r} is not this session's "
                f"version ({version}).",
                status=400,
            )
        return version

    async def _delete(
        self, call: Call, scope: Scope, send: Send, slug: str | None, headers: dict[bytes, bytes]
    ) -> None:
        _, _, principal = self._authenticate(call, headers, slug)
        await self._session(headers, slug or "*", principal)
        await self.sessions.end(headers[b"mcp-session-id"].decode("latin-1"))
        call.status = 200
        await _send(send, 200, None, call.request_id)

    async def _dispatch(
        self,
        call: Call,
        request: _Request,
        products: list[ServedProduct],
        subscriptions: dict[str, Subscription],
        slug: str | None,
        scope: Scope,
        notify: Notify | None,
    ) -> dict[str, Any]:
        method, params = request.method, request.params
        aggregate = slug is None
        if method == "initialize" and not request.modern:
            return {
                "protocolVersion": request.version,
                "capabilities": _capabilities(products),
                "serverInfo": SERVER_INFO,
                "instructions": _instructions(products, aggregate),
            }
        if method == "server/discover" and request.modern:
            return {
                "supportedVersions": [MODERN_VERSION],
                "capabilities": _capabilities(products),
                "instructions": _instructions(products, aggregate),
            }
        if method == "ping" and not request.modern:
            return {}
        if method == "logging/setLevel" and not request.modern:
            level = params.get("level")
            if level not in _LOG_LEVELS:
                raise RpcError(INVALID_PARAMS, f"'level' must be one of {', '.join(_LOG_LEVELS)}.")
            if request.session is not None:
                # Remembered for the session: stateless upstreams hear it on each call.
                await self.sessions.note(request.session, "logLevel", level)
            return {}
        if method == "completion/complete":
            return await self._complete(call, request, products, subscriptions, aggregate)
        if method == "tools/list":
            listed = _listed_tools(products, subscriptions, aggregate)
            if aggregate:
                query = _query(scope, "q")
                if query and query.strip():
                    listed = self._ranked(listed, query, _limit(scope))
                listed.append(_FIND_TOOLS_DEFINITION)
            return {"tools": listed}
        if method == "prompts/list":
            return {
                "prompts": [
                    {**prompt, "name": served_name(product, name, aggregate)}
                    for product in products
                    for name, prompt in product.prompts.items()
                ]
            }
        if method == "resources/list":
            return {
                "resources": [
                    resource for product in products for resource in product.resources.values()
                ]
            }
        if method == "resources/templates/list":
            return {
                "resourceTemplates": [
                    template
                    for product in products
                    for template in product.server.resource_templates
                ]
            }
        if method == "tools/call":
            return await self._call_tool(call, request, products, subscriptions, aggregate, notify)
        if method == "prompts/get":
            prompt_name = params.get("name")
            if not isinstance(prompt_name, str):
                raise RpcError(INVALID_PARAMS, "prompts/get needs 'name' (a string).")
            product, upstream_name = _find_prompt(products, prompt_name, aggregate)
            call.model = prompt_name[:200]
            return await self._forward(
                call, request, product, subscriptions, {**params, "name": upstream_name}, notify
            )
        if method == "resources/read":
            uri = params.get("uri")
            if not isinstance(uri, str):
                raise RpcError(INVALID_PARAMS, "resources/read needs 'uri' (a string).")
            product = _find_resource(products, uri)
            call.model = uri[:200]
            return await self._forward(call, request, product, subscriptions, params, notify)
        raise RpcError(METHOD_NOT_FOUND, "Method not found", data=method)

    async def _call_tool(
        self,
        call: Call,
        request: _Request,
        products: list[ServedProduct],
        subscriptions: dict[str, Subscription],
        aggregate: bool,
        notify: Notify | None,
    ) -> dict[str, Any]:
        params = request.params
        name = params.get("name")
        if not isinstance(name, str):
            raise RpcError(INVALID_PARAMS, "tools/call needs 'name' (a string).")
        call.model = name[:200]
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "tools/call 'arguments' must be an object.")
        if aggregate and name == FIND_TOOLS:
            return self._find_tools(arguments, products, subscriptions)
        found = _find_tool(products, name, aggregate)
        if found is None or not _allowed(subscriptions, *found):
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        product, tool = found
        problem = tool.problems(arguments)
        if problem is not None:
            raise RpcError(INVALID_PARAMS, f"Invalid arguments for tool {name!r}: {problem}")
        if tool.tool.rest is None:
            forwarded = {**params, "name": tool.name, "arguments": arguments}
            headers = _param_headers(request, tool, arguments)
            return await self._forward(
                call, request, product, subscriptions, forwarded, notify, headers
            )
        async with self._limited(call, product, subscriptions):
            try:
                return await self.upstreams.call_rest(product, tool, arguments)
            except RestArgumentError as exc:
                raise RpcError(
                    INVALID_PARAMS, f"Invalid arguments for tool {name!r}: {exc}"
                ) from None

    @contextlib.asynccontextmanager
    async def _limited(
        self, call: Call, product: ServedProduct, subscriptions: dict[str, Subscription]
    ) -> AsyncIterator[None]:
        """One upstream call under the plan's limits, failures as JSON-RPC errors."""
        call.product = product.id
        decision = await self._acquire(subscriptions[product.slug])
        try:
            yield
        except UpstreamError as exc:
            raise RpcError(INTERNAL_ERROR, exc.message) from None
        finally:
            await self.host.settle(decision, 0)

    async def _forward(
        self,
        call: Call,
        request: _Request,
        product: ServedProduct,
        subscriptions: dict[str, Subscription],
        params: dict[str, Any],
        notify: Notify | None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """``request`` sent on to the product's server with ``params``; its result."""
        forwarded = {key: value for key, value in params.items() if key != "_meta"}
        meta = request.params.get("_meta")
        kept = (
            {key: meta[key] for key in _FORWARDED_META if key in meta}
            if isinstance(meta, dict)
            else {}
        )
        if request.session is not None:
            await self._session_meta(request.session, kept)
        if kept:
            forwarded["_meta"] = kept
        async with self._limited(call, product, subscriptions):
            answer = await self.upstreams.request(
                product, request.method, forwarded, notify, headers
            )
            rounds = 0
            # A stateless server asks for input in its result; a session-era client is
            # asked on its stream, and the call repeated with the answers.
            while not request.modern and notify is not None and _input_required(answer):
                rounds += 1
                if rounds > _MAX_INPUT_ROUNDS:
                    break
                asked = answer["result"]
                forwarded = {
                    **forwarded,
                    "inputResponses": await self._ask_client(
                        request, asked, notify, product.upstream.timeout_seconds
                    ),
                }
                if "requestState" in asked:
                    forwarded["requestState"] = asked["requestState"]
                answer = await self.upstreams.request(
                    product, request.method, forwarded, notify, headers
                )
        error = answer.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            raise RpcError(
                code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR,
                str(error.get("message", "The MCP server failed."))[:2000],
                data=error.get("data"),
            )
        result = answer.get("result")
        if not isinstance(result, dict):
            raise RpcError(INTERNAL_ERROR, "The MCP server sent an answer without a result.")
        # The upstream's own envelope is not the gateway's.
        result.pop("_meta", None)
        return result

    async def _session_meta(self, session: str, meta: dict[str, Any]) -> None:
        """What a session-era client said once (its log level, its capabilities), for
        the ``_meta`` of each call it makes."""
        if "io.modelcontextprotocol/logLevel" not in meta:
            level = await self.sessions.recall(session, "logLevel")
            if level is not None:
                meta["io.modelcontextprotocol/logLevel"] = level
        if "io.modelcontextprotocol/clientCapabilities" not in meta:
            capabilities = await self.sessions.recall(session, "capabilities")
            if capabilities is not None:
                meta["io.modelcontextprotocol/clientCapabilities"] = orjson.loads(capabilities)

    async def _ask_client(
        self, request: _Request, asked: dict[str, Any], notify: Notify, wait: float
    ) -> dict[str, Any]:
        """The answers of a session-era client to a server's input requests (each sent
        as a request on the client's stream; the answer comes back in a POST, to any
        gateway process: ``_answered``)."""
        wanted = asked.get("inputRequests")
        if not isinstance(wanted, dict) or not wanted:
            raise RpcError(INTERNAL_ERROR, "The MCP server asked for input without saying what.")
        answers: dict[str, Any] = {}
        for key, ask in wanted.items():
            if not isinstance(ask, dict) or not isinstance(ask.get("method"), str):
                raise RpcError(INTERNAL_ERROR, "The MCP server sent a malformed input request.")
            ask_id = _ASK_PREFIX + secrets.token_urlsafe(12)
            channel = _ask_channel(request.principal, ask_id)
            queue = await self.hub.open(channel)
            try:
                await notify(
                    {
                        "jsonrpc": "2.0",
                        "id": ask_id,
                        "method": ask["method"],
                        "params": ask.get("params") or {},
                    }
                )
                try:
                    raw = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    raise RpcError(
                        INTERNAL_ERROR, f"The client did not answer {ask['method']} in time."
                    ) from None
            finally:
                await self.hub.close(channel)
            reply = orjson.loads(raw) if raw else {}
            if not isinstance(reply, dict) or "result" not in reply:
                raise RpcError(INTERNAL_ERROR, f"The client declined {ask['method']}.")
            answers[key] = reply["result"]
        return answers

    async def _answered(
        self,
        call: Call,
        scope: Scope,
        headers: dict[bytes, bytes],
        slug: str | None,
        message: dict[str, Any],
    ) -> None:
        """A client's answer to a request the gateway sent it (``_ask_client``): to the
        call waiting for it, wherever that is, if the same caller sent both."""
        _, _, principal = self._authorize(call, headers, slug)
        ask_id = message.get("id")
        if isinstance(ask_id, str) and ask_id.startswith(_ASK_PREFIX):
            with contextlib.suppress(StreamGone):
                await self.hub.deliver(_ask_channel(principal, ask_id), orjson.dumps(message))

    async def _complete(
        self,
        call: Call,
        request: _Request,
        products: list[ServedProduct],
        subscriptions: dict[str, Subscription],
        aggregate: bool,
    ) -> dict[str, Any]:
        """``completion/complete`` for a prompt's or resource template's argument, by the
        server that has it; servers that complete nothing get an empty list."""
        ref = request.params.get("ref")
        if not isinstance(ref, dict) or ref.get("type") not in ("ref/prompt", "ref/resource"):
            raise RpcError(
                INVALID_PARAMS, "completion/complete needs 'ref' (a prompt or resource)."
            )
        params = dict(request.params)
        if ref["type"] == "ref/prompt":
            name = ref.get("name")
            if not isinstance(name, str):
                raise RpcError(INVALID_PARAMS, "A prompt 'ref' needs 'name' (a string).")
            product, upstream_name = _find_prompt(products, name, aggregate)
            params["ref"] = {**ref, "name": upstream_name}
        else:
            uri = ref.get("uri")
            if not isinstance(uri, str):
                raise RpcError(INVALID_PARAMS, "A resource 'ref' needs 'uri' (a string).")
            product = _find_template(products, uri)
        try:
            return await self._forward(call, request, product, subscriptions, params, None)
        except RpcError as err:
            if err.code != METHOD_NOT_FOUND:
                raise
            return {"completion": {"values": [], "hasMore": False}}

    async def _acquire(self, subscription: Subscription) -> Decision | None:
        try:
            return await self.host.acquire(subscription, lambda: 1)
        except ApiError as err:
            raise RpcError(RATE_LIMITED, err.message, status=429, headers=err.headers) from None

    def _ranked(self, listed: list[dict[str, Any]], query: str, limit: int) -> list[dict[str, Any]]:
        order = self.ranker.rank(query, [tool_text(tool) for tool in listed], limit)
        return [listed[index] for index in order]

    def _find_tools(
        self,
        arguments: dict[str, Any],
        products: list[ServedProduct],
        subscriptions: dict[str, Subscription],
    ) -> dict[str, Any]:
        problem = _find_tools_problem(arguments)
        if problem is not None:
            raise RpcError(INVALID_PARAMS, f"Invalid arguments for tool {FIND_TOOLS!r}: {problem}")
        listed = _listed_tools(products, subscriptions, aggregate=True)
        found = self._ranked(
            listed, arguments["query"], int(arguments.get("limit", FIND_TOOLS_LIMIT))
        )
        text = orjson.dumps(found).decode()
        return {
            "content": [{"type": "text", "text": text}],
            "structuredContent": {"tools": found},
            "isError": False,
        }


class _Relay:
    """The reply to one POST. Notifications the upstream sends about the request turn
    it into an event stream (the first one commits to it, as the specification lets a
    server choose per request); without any it stays one JSON body."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id
        self.started = False

    async def notify(self, message: dict[str, Any]) -> None:
        if not self.started:
            self.started = True
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [*_SSE_HEADERS, (b"x-request-id", self._request_id.encode())],
                }
            )
        await send_chunk(self._send, _message_event(message))

    async def finish(self, status: int, reply: dict[str, Any] | None, extra: Headers) -> None:
        if not self.started:
            await _send(self._send, status, reply, self._request_id, extra)
            return
        if reply is not None:
            await send_chunk(self._send, _message_event(reply))
        await self._send({"type": "http.response.body", "body": b""})


def _message_event(message: dict[str, Any]) -> bytes:
    return _sse_message(orjson.dumps(message))


def _sse_message(data: bytes) -> bytes:
    """An SSE ``message`` event carrying ``data`` (one line of JSON)."""
    return b"event: message\r\ndata: " + data + b"\r\n\r\n"


def _error_reply(err: RpcError, request_id: Any, modern: bool) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON-RPC error reply for ``err``."""
    status = err.status or (_MODERN_STATUS.get(err.code, 200) if modern else 200)
    if err.code in (PARSE_ERROR, INVALID_REQUEST) and err.status is None:
        status = 400
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.data is not None:
        error["data"] = err.data
    return status, {"jsonrpc": "2.0", "id": request_id, "error": error}


def _query(scope: Scope, name: str) -> str | None:
    raw = scope.get("query_string", b"")
    if not raw:
        return None
    values = parse_qs(raw.decode("latin-1")).get(name)
    return values[0] if values else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _resource(base: str, slug: str | None) -> str:
    """The resource identifier (RFC 8707) of an MCP endpoint: a token's audience."""
    return base.rstrip("/") + "/mcp" + (f"/{slug}" if slug else "")


def metadata_url(base: str, slug: str | None) -> str:
    """Where the endpoint's protected resource metadata lives (RFC 9728 §3.1: the
    well-known name goes between the host and the path)."""
    return (
        base.rstrip("/")
        + "/.well-known/oauth-protected-resource/mcp"
        + (f"/{slug}" if slug else "")
    )


def resource_metadata(base: str, issuer: str, slug: str | None) -> dict[str, Any]:
    """The protected resource metadata (RFC 9728) of ``/mcp/<slug>`` or ``/mcp``."""
    return {
        "resource": _resource(base, slug),
        "authorization_servers": [issuer],
        "scopes_supported": [OAUTH_SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": f"Portico MCP: {slug}" if slug else "Portico MCP: all your tools",
    }


def _input_required(answer: dict[str, Any]) -> bool:
    result = answer.get("result")
    return isinstance(result, dict) and result.get("resultType") == "input_required"


def _ask_channel(principal: int, ask_id: str) -> str:
    # Only the caller the request went to can answer it.
    return f"ask:{principal}:{ask_id}"


def _text(raw: bytes | None) -> str | None:
    return raw.decode("latin-1") if raw is not None else None


def _to_session_era(result: dict[str, Any]) -> None:
    """Make an upstream's 2026-07-28 result one a session-era client understands."""
    if result.get("resultType") == "input_required":
        # Its input requests would need server-to-client requests on the session,
        # which the gateway does not relay.
        raise RpcError(
            INTERNAL_ERROR,
            "The MCP server needs input from the client (elicitation, sampling or roots) "
            "to answer, which the gateway relays only to clients of protocol 2026-07-28.",
        )
    for field_name in _MODERN_ONLY:
        result.pop(field_name, None)
    result.pop("_meta", None)


def _param_headers(
    request: _Request, tool: ServedTool, arguments: dict[str, Any]
) -> dict[str, str] | None:
    """The ``Mcp-Param-*`` headers of a call to a tool whose pinned input schema marks
    arguments ``x-mcp-header`` (2026-07-28): the client's must match its arguments
    (else 400, -32020), and the upstream hears them from the arguments."""
    named = tool.header_arguments()
    if not named:
        return None
    headers: dict[str, str] = {}
    for argument, header in named.items():
        given = request.headers.get(b"mcp-param-" + header.lower().encode("latin-1"))
        present = argument in arguments and arguments[argument] is not None
        if request.modern and (given is not None or present):
            wanted = _header_scalar(arguments.get(argument)) if present else None
            if given is None or wanted is None or _header_text(given) != wanted:
                raise RpcError(
                    HEADER_MISMATCH,
                    f"Mcp-Param-{header} header does not match the request body's "
                    f"'{argument}' argument",
                )
        if present:
            value = _header_scalar(arguments[argument])
            if value is not None:
                headers[f"Mcp-Param-{header}"] = header_value(value)
    return headers


def _header_scalar(value: Any) -> str | None:
    """How an argument's value reads in a header: strings as they are, integers and
    booleans as JSON (other types are not carried in headers)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return None


def _find_tools_problem(arguments: dict[str, Any]) -> str | None:
    query = arguments.get("query")
    if not isinstance(query, str) or not query.strip():
        return "'query' must be a non-empty string"
    limit = arguments.get("limit", FIND_TOOLS_LIMIT)
    if type(limit) is not int or not 1 <= limit <= 50:
        return "'limit' must be an integer from 1 to 50"
    return None


def _headers(scope: Scope) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in found and name in (b"mcp-method", b"mcp-name", b"mcp-protocol-version"):
            found[name] = b"\0duplicate"  # a repeated routing header never matches
        else:
            found[name] = value
    return found


def _is_modern(version: bytes | None) -> bool:
    return version is not None and version.decode("latin-1") not in SESSION_VERSIONS


def _parse(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RpcError(PARSE_ERROR, "Parse error: the body is not valid JSON.") from None
    if isinstance(message, list):
        raise RpcError(
            INVALID_REQUEST, "Body must be a single JSON-RPC request or notification object."
        )
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message.")
    return message


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _check_modern(headers: dict[bytes, bytes], method: str, params: dict[str, Any]) -> str:
    """The stateless era's checks, in the reference SDK's order; the version."""
    meta = params.get("_meta")
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("io.modelcontextprotocol/protocolVersion"), str)
        or not isinstance(meta.get("io.modelcontextprotocol/clientCapabilities"), dict)
    ):
        raise RpcError(
            INVALID_PARAMS,
            "params._meta must be an object carrying the required "
            "'io.modelcontextprotocol/protocolVersion' and "
            "'io.modelcontextprotocol/clientCapabilities' envelope keys",
        )
    version = meta["io.modelcontextprotocol/protocolVersion"]
    if headers.get(b"mcp-protocol-version", b"").decode("latin-1") != version:
        raise RpcError(
            HEADER_MISMATCH,
            "mcp-protocol-version header does not match the request envelope's protocol version",
        )
    if headers.get(b"mcp-method", b"").decode("latin-1") != method:
        raise RpcError(
            HEADER_MISMATCH, "mcp-method header does not match the request body's method"
        )
    named = NAMED.get(method)
    if named is not None:
        given = headers.get(b"mcp-name")
        value = params.get(named)
        if given is None or _header_text(given) != value:
            raise RpcError(
                HEADER_MISMATCH,
                f"mcp-name header does not match the request body's '{named}' parameter",
            )
    if version != MODERN_VERSION:
        raise RpcError(
            UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            data={"supported": [MODERN_VERSION], "requested": version},
        )
    return version


def _header_text(raw: bytes) -> str | None:
    text = raw.decode("latin-1").strip()
    if text.startswith("=?base64?") and text.endswith("?="):
        try:
            return base64.b64decode(text[9:-2], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
    return text


def _negotiate(params: dict[str, Any]) -> str:
    asked = params.get("protocolVersion")
    if not isinstance(asked, str):
        raise RpcError(INVALID_PARAMS, "initialize needs 'protocolVersion' (a string).")
    return asked if asked in SESSION_VERSIONS else SESSION_VERSIONS[-1]


def _visible(
    index: McpIndex, subscriptions: dict[str, Subscription], slug: str | None
) -> list[ServedProduct]:
    products = index.products
    if slug is not None:
        return [products[slug]]
    return [product for name, product in sorted(products.items()) if name in subscriptions]


def _listed_tools(
    products: list[ServedProduct], subscriptions: dict[str, Subscription], aggregate: bool
) -> list[dict[str, Any]]:
    """The tools the subscriptions allow, as listed: pinned definitions, served names."""
    return [
        {**tool.definition, "name": served_name(product, tool.name, aggregate)}
        for product in products
        for tool in product.tools.values()
        if _allowed(subscriptions, product, tool)
    ]


def _allowed(
    subscriptions: dict[str, Subscription], product: ServedProduct, tool: ServedTool
) -> bool:
    subscription = subscriptions.get(product.slug)
    if subscription is None:
        return False
    return subscription.tools is None or tool.name in subscription.tools


def _named(
    products: list[ServedProduct], name: str, aggregate: bool
) -> tuple[list[ServedProduct], str]:
    """The products a served name may belong to, and the name there: on the aggregate
    endpoint ``<product>__<name>``, elsewhere the name as is."""
    if not aggregate:
        return products, name
    slug, sep, wanted = name.partition(SEPARATOR)
    return ([p for p in products if p.slug == slug] if sep else []), wanted


def _find_tool(
    products: list[ServedProduct], name: str, aggregate: bool
) -> tuple[ServedProduct, ServedTool] | None:
    candidates, wanted = _named(products, name, aggregate)
    for product in candidates:
        tool = product.tools.get(wanted)
        if tool is not None:
            return product, tool
    return None


def _find_prompt(
    products: list[ServedProduct], name: str, aggregate: bool
) -> tuple[ServedProduct, str]:
    candidates, wanted = _named(products, name, aggregate)
    for product in candidates:
        if wanted in product.prompts:
            return product, wanted
    raise RpcError(INVALID_PARAMS, f"Unknown prompt: {name}")


def _find_resource(products: list[ServedProduct], uri: str) -> ServedProduct:
    for product in products:
        if uri in product.resources:
            return product
    if len(products) == 1 and products[0].server.resource_templates:
        return products[0]  # read through a template: the server decides
    raise RpcError(INVALID_PARAMS, "Resource not found", data={"uri": uri})


def _find_template(products: list[ServedProduct], uri: str) -> ServedProduct:
    for product in products:
        if any(t.get("uriTemplate") == uri for t in product.server.resource_templates) or (
            uri in product.resources
        ):
            return product
    raise RpcError(INVALID_PARAMS, "Resource not found", data={"uri": uri})


def _capabilities(products: list[ServedProduct]) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"tools": {"listChanged": False}}
    if any(p.prompts for p in products):
        capabilities["prompts"] = {"listChanged": False}
    if any(p.resources or p.server.resource_templates for p in products):
        capabilities["resources"] = {"listChanged": False, "subscribe": False}
    if any(p.prompts or p.server.resource_templates for p in products):
        capabilities["completions"] = {}
    return capabilities


def _instructions(products: list[ServedProduct], aggregate: bool) -> str:
    if not aggregate:
        return products[0].server.instructions if products else ""
    return (
        "Tools of every MCP product your key's app is subscribed to, named "
        "<product>__<tool>. Call find_tools with a description of your task to find "
        "the relevant ones."
    )


def _limit(scope: Scope) -> int:
    raw = _query(scope, "limit")
    try:
        return max(1, min(int(raw), 100)) if raw else FIND_TOOLS_LIMIT
    except ValueError:
        return FIND_TOOLS_LIMIT


async def _send(
    send: Send,
    status: int,
    body: dict[str, Any] | None,
    request_id: str,
    extra: Headers | None = None,
) -> None:
    payload = b"" if body is None else orjson.dumps(body)
    headers: Headers = [(b"x-request-id", request_id.encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(payload)).encode()))
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
