"""The MCP tests' shared parts: an official-SDK ``MCPServer`` upstream recording what
reaches it, the revision that makes it a product, and clients for the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import msgspec
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.schema import (
    Consumer,
    McpServer,
    McpTool,
    OAuth,
    Plan,
    Product,
    Revision,
    Subscription,
    Upstream,
)
from tests.gateway.conftest import ALICE, Gateway, World

T = TypeVar("T")
BACKEND_TOKEN = "mcp-backend-" + secrets.token_urlsafe(16)
MCP_PRODUCT = 3


@dataclass
class Upstream_:
    server: MCPServer
    url: str
    seen: list[dict[str, str]] = field(default_factory=list)

    def calls(self, method: str) -> int:
        return sum(1 for headers in self.seen if headers.get("mcp-method") == method)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_server() -> MCPServer:
    server = MCPServer("demo-upstream", instructions="Arithmetic and echoes.")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Repeat the text back.")
    async def echo(text: str, ctx: Context) -> str:
        # Progress for callers that ask for it (the gateway relays it).
        await ctx.report_progress(1, 2, "listening")
        await ctx.report_progress(2, 2, "repeating")
        return text

    @server.tool(description="Send an email message to a recipient with a subject.")
    def send_email(to: str, subject: str) -> str:
        return f"sent to {to}"

    @server.prompt(description="Greet someone.")
    def greet(name: str) -> str:
        return f"Hello {name}"

    @server.resource("res://motd", mime_type="text/plain")
    def motd() -> str:
        return "message of the day"

    return server


def upstream_server() -> Iterator[Upstream_]:
    """The demo upstream, served on a free port until the generator is closed."""
    server = _demo_server()
    inner = server.streamable_http_app(host="0.0.0.0")  # noqa: S104 (no DNS-rebinding list)
    old_transport = server.sse_app(host="0.0.0.0")  # noqa: S104
    record = Upstream_(server, "")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """``/mcp``: both eras; ``/session-only/mcp``: a server of the session era
        (refuses stateless requests as a 2025-11-25 server does); ``/sse`` and
        ``/messages/``: the 2024-11-05 HTTP+SSE transport."""
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        record.seen.append(headers | {"path": scope["path"]})
        if scope["path"].startswith(("/sse", "/messages")):
            await old_transport(scope, receive, send)
            return
        if scope["path"] == "/session-only/mcp":
            if headers.get("mcp-protocol-version") == "2026-07-28":
                body = (
                    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,'
                    b'"message":"Bad Request: Missing session ID"}}'
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            scope = {**scope, "path": "/mcp", "raw_path": b"/mcp"}
        await inner(scope, receive, send)

    with serve_in_thread(app) as origin:
        record.url = origin + "/mcp"
        yield record


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn in a thread of this process, on a free port; its origin."""
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(5)


def run(url: str, key: str, body: Callable[[Client], Awaitable[T]], mode: str = "auto") -> T:
    async def main() -> T:
        # The SDK leaves a client it was given open: closing it is ours to do.
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=mode) as client:
                return await body(client)

    return asyncio.run(main())


def definitions(upstream: Upstream_) -> dict[str, dict[str, Any]]:
    """The upstream's tools as discovery stores them (what an admin approves)."""

    async def listed(client: Client) -> Any:
        return await client.list_tools()

    async def main() -> Any:
        async with Client(streamable_http_client(upstream.url)) as client:
            return await listed(client)

    result = asyncio.run(main())
    return {
        tool.name: tool.model_dump(mode="json", by_alias=True, exclude_none=True)
        for tool in result.tools
    }


def mcp_revision(
    world: World,
    upstream: Upstream_,
    *,
    pinned: dict[str, dict[str, Any]] | None = None,
    allowed: list[str] | None = None,
    url: str | None = None,
    transport: str = "streamable_http",
    oauth: OAuth | None = None,
) -> Revision:
    tools = pinned or definitions(upstream)
    doc = world.revision()
    server = McpServer(
        upstream="mcp-up",
        transport=transport,  # type: ignore[arg-type]
        tools=[McpTool(name=name, definition=d) for name, d in sorted(tools.items())],
        prompts=[
            {
                "name": "greet",
                "description": "Greet someone.",
                "arguments": [{"name": "name", "required": True}],
            }
        ],
        resources=[{"uri": "res://motd", "name": "motd", "mimeType": "text/plain"}],
        instructions="Arithmetic and echoes.",
    )
    plan = Plan(id=1, name="Free")
    alice = doc.consumers[str(ALICE)]
    return msgspec.structs.replace(
        doc,
        oauth=oauth,
        upstreams={
            **doc.upstreams,
            "mcp-up": Upstream(
                vendor="mcp", base_url=url or upstream.url, secret=world.keys.seal(BACKEND_TOKEN)
            ),
        },
        products={
            **doc.products,
            "tools": Product(id=MCP_PRODUCT, slug="tools", kind="mcp", mcp=server),
        },
        consumers={
            **doc.consumers,
            str(ALICE): Consumer(
                id=ALICE,
                subscriptions={
                    **alice.subscriptions,
                    "tools": Subscription(id=31, plan=plan, tools=allowed),
                },
            ),
        },
    )


PORTAL = "http://portal.example"


def serve_mcp(gw: Gateway, world: World, upstream: Upstream_) -> Gateway:
    """``gw`` with the demo MCP product, OAuth on."""
    oauth = OAuth(issuer=PORTAL, resource_base=gw.url)
    response = gw.push(mcp_revision(world, upstream, oauth=oauth))
    assert response.status_code == 200, response.text
    return gw


def post(gw: Gateway, path: str, body: bytes, key: str | None, **headers: str) -> httpx.Response:
    sent = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    return gw.http.post(gw.url + path, content=body, headers={**sent, **headers})


def initialize(gw: Gateway, key: str) -> str:
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
        b'"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
    )
    response = post(gw, "/mcp/tools", body, key)
    assert response.status_code == 200, response.text
    return response.headers["mcp-session-id"]
