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

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from gateway import __version__
from gateway.limits import Decision
from gateway.mcp.index import SEPARATOR, McpIndex, ServedProduct, ServedTool, served_name
from gateway.mcp.search import Bm25, Ranker, tool_text
from gateway.mcp.sessions import SESSION_VERSIONS, SessionError, Sessions
from gateway.mcp.upstream import MODERN_VERSION, NAMED, McpUpstreams, UpstreamError
from gateway.responses import ApiError
from gateway.schema import Consumer, Subscription
from gateway.types import Headers, Receive, Scope, Send

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
_CALLS = frozenset({"tools/call", "prompts/get", "resources/read"})
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


class Call(Protocol):
    """What the gateway records of a call (``gateway.app.Call``)."""

    request_id: str
    route: str
    status: int
    consumer: int | None
    credential: int | None
    product: int | None
    model: str | None


class Host(Protocol):
    """What the MCP endpoints need of the gateway process around them."""

    def authenticate(self, call: Any, key: bytes | None) -> tuple[Any, Consumer]: ...

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


class McpService:
    def __init__(
        self, host: Host, sessions: Sessions, upstreams: McpUpstreams, ranker: Ranker | None = None
    ) -> None:
        self.host = host
        self.sessions = sessions
        self.upstreams = upstreams
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
        try:
            if method == "POST":
                body = await self.host.read_body(receive, headers.get(b"content-length"))
                message = _parse(body)
                request_id = message.get("id")
                await self._post(call, scope, send, slug, headers, message, modern)
            elif method == "DELETE" and not modern:
                await self._delete(call, scope, send, slug, headers)
            else:
                allow = b"POST" if modern else b"POST, DELETE"
                call.status = 405
                await _send(send, 405, None, call.request_id, [(b"allow", allow)])
        except RpcError as err:
            status = err.status or (_MODERN_STATUS.get(err.code, 200) if modern else 200)
            if err.code in (PARSE_ERROR, INVALID_REQUEST) and err.status is None:
                status = 400
            call.status = status
            error: dict[str, Any] = {"code": err.code, "message": err.message}
            if err.data is not None:
                error["data"] = err.data
            reply = {"jsonrpc": "2.0", "id": request_id, "error": error}
            await _send(send, status, reply, call.request_id, err.headers)

    async def _post(
        self,
        call: Call,
        scope: Scope,
        send: Send,
        slug: str | None,
        headers: dict[bytes, bytes],
        message: dict[str, Any],
        modern: bool,
    ) -> None:
        name = message.get("method")
        if not isinstance(name, str):
            if "result" in message or "error" in message:  # a reply to a server request
                call.status = 202
                await _send(send, 202, None, call.request_id)
                return
            raise RpcError(INVALID_REQUEST, "Invalid Request: 'method' must be a string.")
        call.route = f"mcp.{name}"[:64]
        revision, subscriptions = self._authorize(call, scope, headers, slug)
        params = message.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, "'params' must be an object.")
        notification = "id" not in message
        if not notification and not _valid_id(message["id"]):
            raise RpcError(INVALID_REQUEST, "Invalid Request: 'id' must be a string or an integer.")
        endpoint = slug or "*"
        session_header: dict[bytes, bytes] = {}
        if modern:
            version = _check_modern(headers, name, params)
        elif name == "initialize":
            version = _negotiate(params)
        elif notification:
            version = SESSION_VERSIONS[-1]
        else:
            version = await self._session(call, headers, endpoint)
        if notification:
            call.status = 202
            await _send(send, 202, None, call.request_id)
            return
        request = _Request(message["id"], name, params, modern, version)
        products = _visible(revision.mcp, subscriptions, slug)
        result = await self._dispatch(call, request, products, subscriptions, slug, scope)
        if name == "initialize":
            session_id = self.sessions.open(call.credential or 0, endpoint, version)
            session_header = {b"mcp-session-id": session_id.encode()}
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
        call.status = 200
        body = {"jsonrpc": "2.0", "id": request.id, "result": result}
        await _send(send, 200, body, call.request_id, list(session_header.items()))

    def _authorize(
        self,
        call: Call,
        scope: Scope,
        headers: dict[bytes, bytes],
        slug: str | None,
    ) -> tuple[Any, dict[str, Subscription]]:
        revision, consumer = self._authenticate(call, scope, headers, slug)
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
        return revision, consumer.subscriptions

    def _authenticate(
        self, call: Call, scope: Scope, headers: dict[bytes, bytes], slug: str | None
    ) -> tuple[Any, Consumer]:
        """The revision and the consumer of the request's key (bearer or ``x-api-key``)."""
        authorization = headers.get(b"authorization", b"")
        key = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else None
        try:
            return self.host.authenticate(call, key or headers.get(b"x-api-key"))
        except ApiError as err:
            if err.status == 401:
                raise RpcError(
                    UNAUTHORIZED,
                    err.message,
                    status=401,
                    headers=[(b"www-authenticate", _challenge(scope, slug))],
                ) from None
            raise RpcError(INTERNAL_ERROR, err.message, status=err.status) from None

    async def _session(self, call: Call, headers: dict[bytes, bytes], endpoint: str) -> str:
        session_id = headers.get(b"mcp-session-id")
        if session_id is None:
            raise RpcError(
                INVALID_REQUEST,
                "Bad Request: missing Mcp-Session-Id header (send initialize first).",
                status=400,
            )
        try:
            version = await self.sessions.check(
                session_id.decode("latin-1"), call.credential or 0, endpoint
            )
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
        self._authenticate(call, scope, headers, slug)
        endpoint = slug or "*"
        await self._session(call, headers, endpoint)
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
        if method in ("ping", "logging/setLevel") and not request.modern:
            return {}
        if method == "tools/list":
            listed = _listed_tools(products, subscriptions, aggregate)
            if aggregate:
                query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("q")
                if query and query[0].strip():
                    listed = self._ranked(listed, query[0], _limit(scope))
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
            return await self._call_tool(call, request, products, subscriptions, aggregate)
        if method == "prompts/get":
            prompt_name = params.get("name")
            if not isinstance(prompt_name, str):
                raise RpcError(INVALID_PARAMS, "prompts/get needs 'name' (a string).")
            product, upstream_name = _find_prompt(products, prompt_name, aggregate)
            call.model = prompt_name[:200]
            return await self._forward(
                call, product, subscriptions, method, {**_plain(params), "name": upstream_name}
            )
        if method == "resources/read":
            uri = params.get("uri")
            if not isinstance(uri, str):
                raise RpcError(INVALID_PARAMS, "resources/read needs 'uri' (a string).")
            product = _find_resource(products, uri)
            call.model = uri[:200]
            return await self._forward(call, product, subscriptions, method, _plain(params))
        raise RpcError(METHOD_NOT_FOUND, "Method not found", data=method)

    async def _call_tool(
        self,
        call: Call,
        request: _Request,
        products: list[ServedProduct],
        subscriptions: dict[str, Subscription],
        aggregate: bool,
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
        forwarded = {**_plain(params), "name": tool.name, "arguments": arguments}
        return await self._forward(call, product, subscriptions, "tools/call", forwarded)

    async def _forward(
        self,
        call: Call,
        product: ServedProduct,
        subscriptions: dict[str, Subscription],
        method: str,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        call.product = product.id
        decision = await self._acquire(subscriptions[product.slug])
        try:
            answer = await self.upstreams.request(product, method, params)
        except UpstreamError as exc:
            raise RpcError(INTERNAL_ERROR, exc.message) from None
        finally:
            await self.host.settle(decision, 0)
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


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """The params to forward: the client's envelope (``_meta``) stays here."""
    return {key: value for key, value in params.items() if key != "_meta"}


def _capabilities(products: list[ServedProduct]) -> dict[str, Any]:
    capabilities: dict[str, Any] = {"tools": {"listChanged": False}}
    if any(p.prompts for p in products):
        capabilities["prompts"] = {"listChanged": False}
    if any(p.resources or p.server.resource_templates for p in products):
        capabilities["resources"] = {"listChanged": False, "subscribe": False}
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
    raw = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("limit")
    try:
        return max(1, min(int(raw[0]), 100)) if raw else FIND_TOOLS_LIMIT
    except ValueError:
        return FIND_TOOLS_LIMIT


def _challenge(scope: Scope, slug: str | None) -> bytes:
    """``WWW-Authenticate`` for a 401: where the protected resource's metadata lives
    (RFC 9728), relative to the host the client used."""
    host = "localhost"
    for name, value in scope["headers"]:
        if name == b"host":
            host = value.decode("latin-1")
    scheme = scope.get("scheme", "http")
    path = "/mcp" + (f"/{slug}" if slug else "")
    return (
        f'Bearer error="invalid_token", resource_metadata="{scheme}://{host}'
        f'/.well-known/oauth-protected-resource{path}"'
    ).encode()


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
