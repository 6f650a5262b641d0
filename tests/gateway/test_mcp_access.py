"""Who may reach the MCP endpoints, and how: OAuth access tokens from the portal and the
protected resource metadata that leads clients to it, browser origins, and the
deprecated HTTP+SSE transport for old clients (across gateway processes, too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import ElicitResult, InputRequiredResult

from devstack.procs import Stack
from gateway.access_tokens import mint
from gateway.schema import OAuth
from gateway.secrets import GatewayKeys
from tests.gateway.conftest import (
    ALICE,
    BOB,
    Gateway,
    World,
    chat_body,
    start_redis_gateways,
)
from tests.gateway.mcp_support import (
    BACKEND_TOKEN,
    PORTAL,
    Upstream_,
    mcp_revision,
    post,
    run,
    serve_in_thread,
)

pytestmark = pytest.mark.e2e

LISTING = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


def token(world: World, audience: str, **claims: Any) -> str:
    fields: dict[str, Any] = {
        "issuer": PORTAL,
        "consumer": ALICE,
        "grant": 7,
        "audience": audience,
        "client_id": "client-1",
        "now": int(time.time()),
    }
    fields.update(claims)
    key = fields.pop("key", world.keys.token_key)
    return mint(key, **fields)


def test_protected_resource_metadata_leads_clients_to_the_portal(served: Gateway) -> None:
    base = served.url + "/.well-known/oauth-protected-resource"
    product = served.http.get(base + "/mcp/tools")
    assert product.status_code == 200
    assert product.json() == {
        "resource": served.url + "/mcp/tools",
        "authorization_servers": [PORTAL],
        "scopes_supported": ["mcp"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Portico MCP: tools",
    }
    assert product.headers["access-control-allow-origin"] == "*"
    assert served.http.get(base).json()["resource"] == served.url + "/mcp"
    assert served.http.get(base + "/mcp").json()["resource"] == served.url + "/mcp"
    assert served.http.get(base + "/mcp/nothing-here").status_code == 404


def test_metadata_is_absent_when_the_portal_issues_no_tokens(
    gw: Gateway, world: World, upstream: Upstream_
) -> None:
    assert gw.push(mcp_revision(world, upstream)).status_code == 200
    assert gw.http.get(gw.url + "/.well-known/oauth-protected-resource/mcp/tools").status_code == (
        404
    )
    refused = post(gw, "/mcp/tools", LISTING, None)
    assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_an_access_token_for_the_product_works_like_a_key(
    served: Gateway, world: World, upstream: Upstream_
) -> None:
    access = token(world, served.url + "/mcp/tools")

    async def body(client: Client) -> Any:
        tools = await client.list_tools()
        added = await client.call_tool("add", {"a": 1, "b": 2})
        return [t.name for t in tools.tools], added

    before = len(upstream.seen)
    names, added = run(served.url + "/mcp/tools", access, body, "legacy")
    assert names == ["add", "echo", "send_email"]
    assert added.structured_content == {"result": 3}
    reached = upstream.seen[before:]
    assert reached
    assert all(h.get("authorization") == f"Bearer {BACKEND_TOKEN}" for h in reached)
    assert not any(access in str(h) for h in reached)
    # The aggregate endpoint is a resource of its own.
    aggregate = token(world, served.url + "/mcp")

    async def namespaced(client: Client) -> Any:
        return await client.call_tool("tools__add", {"a": 2, "b": 2})

    assert run(served.url + "/mcp", aggregate, namespaced).structured_content == {"result": 4}


def refused_tokens(world: World, base: str) -> Iterator[tuple[str, str]]:
    yield "another product", token(world, base + "/mcp/other")
    yield "the aggregate", token(world, base + "/mcp")
    yield "another gateway", token(world, "https://elsewhere.example/mcp/tools")
    yield "expired", token(world, base + "/mcp/tools", now=int(time.time()) - 3600)
    other = GatewayKeys.from_secret("another-install-" + "x" * 32).token_key
    yield "foreign key", token(world, base + "/mcp/tools", key=other)
    header, payload, _ = token(world, base + "/mcp/tools").split(".")
    yield "unsigned", f"{header}.{payload}."
    yield "revoked grant", token(world, base + "/mcp/tools", grant=99)
    yield "unknown app", token(world, base + "/mcp/tools", consumer=424242)


def test_tokens_for_elsewhere_expired_forged_or_revoked_are_refused(
    served: Gateway, world: World, upstream: Upstream_
) -> None:
    oauth = OAuth(issuer=PORTAL, resource_base=served.url, revoked_grants=[99])
    assert served.push(mcp_revision(world, upstream, oauth=oauth)).status_code == 200
    before = len(upstream.seen)
    for why, access in refused_tokens(world, served.url):
        refused = post(served, "/mcp/tools", LISTING, access)
        assert refused.status_code == 401, why
        assert refused.json()["error"]["code"] == -32001, why
        assert "resource_metadata=" in refused.headers["www-authenticate"], why
    assert len(upstream.seen) == before


def test_an_access_token_is_not_an_api_key(served: Gateway, world: World) -> None:
    access = token(world, served.url + "/mcp/tools")
    chat = served.chat(access, chat_body())
    assert chat.status_code == 401


def test_a_token_for_an_app_without_the_subscription_is_forbidden(
    served: Gateway, world: World
) -> None:
    access = token(world, served.url + "/mcp/tools", consumer=BOB)
    forbidden = post(served, "/mcp/tools", LISTING, access)
    assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (403, -32003)


def test_a_session_opened_with_a_token_is_not_the_keys(served: Gateway, world: World) -> None:
    access = token(world, served.url + "/mcp/tools")
    initialize = (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
        b'"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
    )
    session = post(served, "/mcp/tools", initialize, access).headers["mcp-session-id"]
    own = post(served, "/mcp/tools", LISTING, access, **{"Mcp-Session-Id": session})
    assert own.status_code == 200
    # The same app's API key is another principal: the session is not its.
    keyed = post(served, "/mcp/tools", LISTING, world.alice_key, **{"Mcp-Session-Id": session})
    assert keyed.status_code == 404


def test_pages_of_other_origins_are_refused(served: Gateway, world: World) -> None:
    evil = post(served, "/mcp/tools", LISTING, world.alice_key, Origin="http://evil.example")
    assert evil.status_code == 403
    assert evil.json()["error"]["code"] == -32600
    for allowed in ("http://localhost:5173", "http://127.0.0.1:6274", PORTAL, served.url):
        session = post(
            served,
            "/mcp/tools",
            b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
            b'"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}',
            world.alice_key,
            Origin=allowed,
        )
        assert session.status_code == 200, allowed


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_old_clients_reach_tools_over_http_sse(
    served: Gateway, world: World, upstream: Upstream_, mode: str
) -> None:
    async def main() -> Any:
        headers = {"Authorization": f"Bearer {world.alice_key}"}
        async with Client(sse_client(served.url + "/mcp/tools", headers=headers), mode=mode) as c:
            tools = await c.list_tools()
            added = await c.call_tool("add", {"a": 20, "b": 22})
            prompt = await c.get_prompt("greet", {"name": "Ada"})
            steps: list[float] = []

            async def progress(progress: float, total: float | None, message: str | None) -> None:
                steps.append(progress)

            await c.call_tool("echo", {"text": "hi"}, progress_callback=progress)
            return c.protocol_version, [t.name for t in tools.tools], added, prompt, steps

    version, names, added, prompt, steps = asyncio.run(main())
    assert steps == [1, 2]
    assert version == "2025-11-25"
    assert names == ["add", "echo", "send_email"]
    assert added.structured_content == {"result": 42}
    assert prompt.messages[0].content.text == "Hello Ada"


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    event, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield event, data
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


def test_sse_messages_may_arrive_at_another_gateway_process(
    stack: Stack,
    http: httpx.Client,
    world: World,
    redis_url: str,
    tmp_path: Path,
    upstream: Upstream_,
) -> None:
    holder, other = start_redis_gateways(stack, http, "gateway-sse", tmp_path, world, redis_url)
    for gateway in (holder, other):
        assert gateway.push(mcp_revision(world, upstream)).status_code == 200
    auth = {"Authorization": f"Bearer {world.alice_key}"}
    with http.stream(
        "GET", holder.url + "/mcp/tools", headers={**auth, "Accept": "text/event-stream"}
    ) as stream:
        assert stream.status_code == 200
        events = _events(stream.iter_lines())
        kind, endpoint = next(events)
        assert kind == "endpoint"
        assert endpoint.startswith("/mcp/tools?sse_session=ps1.")
        post_url = other.url + endpoint

        def post(message: dict[str, Any], key: str = world.alice_key) -> httpx.Response:
            return http.post(
                post_url,
                content=orjson.dumps(message),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )

        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2024-11-05",
                "capabilities": {},
                "clientInfo": {"name": "old", "version": "1"},
            },
        }
        assert post(initialize).status_code == 202
        assert orjson.loads(next(events)[1])["result"]["protocolVersion"] == "2024-11-05"
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 2, "b": 5}},
        }
        assert post(call).status_code == 202
        reply = orjson.loads(next(events)[1])
        assert reply["id"] == 2
        assert reply["result"]["structuredContent"] == {"result": 7}
        unknown = {**call, "id": 3, "method": "nope/nope"}
        assert post(unknown).status_code == 202
        assert orjson.loads(next(events)[1])["error"]["code"] == -32601
        # Another app cannot post into the stream.
        assert post(call, world.bob_key).status_code in (403, 404)
    # Once the client has gone, the stream's address is dead on every process.
    deadline = time.monotonic() + 5
    while post(call).status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert post(call).status_code == 404


def test_the_stream_is_refused_without_a_key(served: Gateway) -> None:
    refused = served.http.get(served.url + "/mcp/tools", headers={"Accept": "text/event-stream"})
    assert refused.status_code == 401
    assert served.http.get(served.url + "/mcp/tools").status_code == 405


def _asking_server() -> MCPServer:
    """A stateless-era server whose tool asks the client for input (an
    ``input_required`` result, repeated with the answers)."""
    server = MCPServer("asking-upstream")

    @server.tool(description="Greet the user by the name they give.")
    async def greet_me(ctx: Context) -> str | InputRequiredResult:
        answers = ctx.input_responses or {}
        if "name" not in answers:
            schema = {"type": "object", "properties": {"name": {"type": "string"}}}
            return InputRequiredResult.model_validate(
                {
                    "inputRequests": {
                        "name": {
                            "method": "elicitation/create",
                            "params": {"message": "Your name?", "requestedSchema": schema},
                        }
                    },
                    "requestState": "round-1",
                }
            )
        answer = answers["name"].model_dump(mode="json", exclude_none=True)
        return f"Hello, {answer['content']['name']} ({ctx.request_state})"

    return server


@pytest.fixture(scope="module")
def asking() -> Iterator[Upstream_]:
    server = _asking_server()
    with serve_in_thread(server.streamable_http_app(host="0.0.0.0")) as origin:  # noqa: S104
        yield Upstream_(server, origin + "/mcp")


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
def test_session_era_clients_are_asked_for_what_a_stateless_server_needs(
    gw: Gateway, world: World, asking: Upstream_, transport: str
) -> None:
    assert gw.push(mcp_revision(world, asking)).status_code == 200
    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada"})

    async def main() -> Any:
        headers = {"Authorization": f"Bearer {world.alice_key}"}
        url = gw.url + "/mcp/tools"
        if transport == "sse":
            connection: Any = sse_client(url, headers=headers)
            async with Client(connection, mode="legacy", elicitation_callback=elicit) as client:
                return await client.call_tool("greet_me", {})
        async with create_mcp_http_client(headers=headers) as http:
            connection = streamable_http_client(url, http_client=http)
            async with Client(connection, mode="legacy", elicitation_callback=elicit) as client:
                return await client.call_tool("greet_me", {})

    result = asyncio.run(main())
    assert result.is_error is False
    assert result.content[0].text == "Hello, Ada (round-1)"
    assert asked == ["Your name?"]
