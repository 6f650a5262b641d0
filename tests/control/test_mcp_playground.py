"""The playground's MCP tab: which apps and servers a developer may try, the tools and
forms it offers, and real calls through a real gateway process to a real MCP server
(the official SDK's ``MCPServer`` under uvicorn, behind a backend credential)."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image

from catalog import services as catalog_services
from catalog.models import McpServer, McpTool, Plan, Product, Upstream
from consumers import services as consumer_services
from consumers.models import Consumer, Credential
from devstack.portico import Ports, start_gateway
from devstack.procs import Stack, free_port
from gatewaysync import delivery
from gatewaysync import services as sync_services
from gatewaysync.models import GatewayInstance, Revision
from portal import playground
from portal.playground import (
    PLAYGROUND_KEY_NAME,
    ToolForm,
    content_blocks,
    mcp_headers,
    mcp_message,
    mcp_targets_for,
    mcp_tools_for,
    playground_key,
)
from tests.conftest import Catalog
from tests.control.test_mcp_catalog import LocalServer

URL = "portal:playground_mcp"
BACKEND_SECRET = "mcp-playground-backend-" + "b" * 20
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)

ADD = {
    "name": "add",
    "title": "Adder",
    "description": "Add two integers.",
    "inputSchema": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 1}},
        "required": ["a"],
    },
}
ECHO = {
    "name": "echo",
    "description": "Repeat the text back.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
}
# Every kind of input a schema can ask for, as pydantic and hand-written schemas say it.
EVERYTHING: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "A city name, e.g. Lisbon"},
        "count": {"type": "integer", "default": 3},
        "ratio": {"type": "number"},
        "loud": {"type": "boolean"},
        "maybe": {"anyOf": [{"type": "boolean"}, {"type": "null"}], "default": None},
        "unit": {"enum": ["metric", "imperial"], "type": "string"},
        "level": {"enum": [1, 2, 3]},
        "limit": {"type": ["integer", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "options": {"type": "object", "additionalProperties": {"type": "integer"}},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    },
    "required": ["city", "loud", "unit"],
}


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def mcp_catalog(
    catalog: Catalog,
    *,
    slug: str = "tools",
    url: str = "http://127.0.0.1:9/mcp",
    definitions: list[dict[str, Any]] | None = None,
) -> tuple[Product, Plan]:
    """A published MCP product whose tools are approved (pinned) as ``definitions``."""
    upstream = catalog_services.upstream_create(
        name=f"mcp-{slug}", vendor=Upstream.Vendor.MCP, base_url=url, timeout_seconds=10
    )
    product = catalog_services.product_create(name=slug.title(), slug=slug, kind="mcp")
    plan = catalog_services.plan_create(product=product, name="Free", requests_per_minute=600)
    catalog_services.product_publish(product=product, portals=[catalog.portal])
    server = McpServer.objects.create(product=product, upstream=upstream)
    for definition in definitions if definitions is not None else [ADD, ECHO]:
        McpTool.objects.create(
            server=server,
            name=str(definition["name"]),
            status=McpTool.Status.APPROVED,
            pinned_definition=definition,
            discovered_definition=definition,
        )
    return product, plan


def subscribe(app: Consumer, product: Product, plan: Plan, *, approve: bool = True) -> None:
    sub = consumer_services.subscription_create(consumer=app, product=product, plan=plan)
    if approve:
        consumer_services.subscription_approve(subscription=sub)


@pytest.fixture
def tools(catalog: Catalog) -> tuple[Product, Plan]:
    return mcp_catalog(catalog)


@pytest.fixture
def app(owner, tools) -> Consumer:
    app = consumer_services.consumer_create(owner=owner, name="alice-tools")
    subscribe(app, *tools)
    return app


def target(app: Consumer, slug: str = "tools") -> str:
    return f"{app.pk}:{slug}"


def no_playground_key() -> bool:
    return not Credential.objects.filter(name=PLAYGROUND_KEY_NAME).exists()


# Who may try what -------------------------------------------------------------------------


PERSONAS = ["anonymous", "owner", "outsider", "staff"]
LOGIN = "login"


# (method, data, expected for anonymous, owner, outsider, staff). Admins reach any app,
# as on its page; anyone else's app is a 404 and issues no key.
MATRIX = [
    ("get", {}, (LOGIN, 200, 200, 200)),
    ("get", {"target": "{target}"}, (LOGIN, 200, 404, 200)),
    ("get", {"target": "{target}", "tool": "add"}, (LOGIN, 200, 404, 200)),
    ("post", {"target": "{target}", "method": "tools/list"}, (LOGIN, 200, 404, 200)),
    (
        "post",
        {"target": "{target}", "method": "tools/call", "tool": "add", "arg0": "1"},
        (LOGIN, 200, 404, 200),
    ),
]


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize(("method", "data", "expected"), MATRIX)
def test_access_matrix(request, client, app, settings, persona, method, data, expected):
    settings.PORTICO_GATEWAY_INTERNAL_URL = f"http://127.0.0.1:{free_port()}"  # down
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    form = {k: v.format(target=target(app)) for k, v in data.items()}
    response = getattr(client, method)(reverse(URL), form)
    want = expected[PERSONAS.index(persona)]
    if want == LOGIN:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))
    else:
        assert response.status_code == want, response.content.decode()[-2000:]
    if method == "post" and want == 200:
        assert "Could not reach the gateway" in response.content.decode()
    else:
        assert no_playground_key()


def test_page_offers_only_your_apps_approved_for_published_mcp_servers(
    client, owner, outsider, catalog, tools, app
):
    pending = consumer_services.consumer_create(owner=owner, name="pending-app")
    subscribe(pending, *tools, approve=False)
    theirs = consumer_services.consumer_create(owner=outsider, name="mallory-tools")
    subscribe(theirs, *tools)
    draft = catalog_services.product_create(name="Draft", slug="draft", kind="mcp")
    subscribe(app, draft, catalog_services.plan_create(product=draft, name="Free"))
    subscribe(app, catalog.product, catalog.plan)  # a model product: the chat tab's

    assert [(t.consumer.name, t.product.slug) for t in mcp_targets_for(user=owner)] == [
        ("alice-tools", "tools")
    ]
    client.force_login(owner)
    page = client.get(reverse(URL)).content.decode()
    assert f'value="{target(app)}"' in page
    assert "<code>add</code>" in page
    assert "<code>echo</code>" in page
    for hidden in ("pending-app", "mallory-tools", "Draft", "chat-model"):
        assert hidden not in page


def test_a_server_the_app_is_not_approved_for_is_refused_without_a_key(
    client, owner, tools, catalog
):
    waiting = consumer_services.consumer_create(owner=owner, name="waiting")
    subscribe(waiting, *tools, approve=False)
    client.force_login(owner)
    page = client.get(reverse(URL), {"target": target(waiting)})
    assert page.status_code == 200
    assert "no approved subscription" in page.content.decode()
    for data in (
        {"target": target(waiting), "method": "tools/list"},
        {"target": target(waiting, "chat"), "method": "tools/list"},  # a model product
        {"target": "not-a-target", "method": "tools/list"},
    ):
        response = client.post(reverse(URL), data)
        assert response.status_code == 400, data
        assert "Choose one of your apps" in response.content.decode()
    assert no_playground_key()


def test_the_product_page_link_preselects_that_server(client, owner, catalog, tools, app):
    other, other_plan = mcp_catalog(catalog, slug="other", definitions=[ECHO])
    second = consumer_services.consumer_create(owner=owner, name="second")
    subscribe(second, other, other_plan)
    product_page = client.get(reverse("portal:product", args=["other"])).content.decode()
    link = f"{reverse(URL)}?product=other"
    assert f'href="{link}"' in product_page
    assert "Try in the playground" in product_page
    # A model product has no such link.
    assert reverse(URL) not in client.get(reverse("portal:product", args=["chat"])).content.decode()

    client.force_login(owner)
    page = client.get(link).content.decode()
    assert f'<option value="{target(second, "other")}" selected>' in page
    assert "Tools of Other" in page
    missing = client.get(reverse(URL), {"product": "nothing-here"}).content.decode()
    assert "None of your apps is subscribed to this MCP server yet" in missing
    assert reverse("portal:product", args=["nothing-here"]) in missing
    odd = client.get(reverse(URL), {"product": "<b>not a slug</b>"})
    assert odd.status_code == 200
    assert "<b>not a slug</b>" not in odd.content.decode()


def test_without_mcp_subscriptions_the_page_says_where_to_find_servers(client, owner, db):
    client.force_login(owner)
    page = client.get(reverse(URL)).content.decode()
    assert "None of your apps is subscribed to an MCP server yet" in page
    assert reverse("portal:catalog_kind", args=["mcp"]) in page


# The allow-list ---------------------------------------------------------------------------


def test_the_tool_list_honours_the_subscriptions_allow_list(client, owner, app):
    sub = app.subscriptions.get()
    consumer_services.subscription_set_allowed_tools(subscription=sub, tools=["add"])
    [only] = mcp_targets_for(user=owner)
    assert [tool.name for tool in mcp_tools_for(target=only)] == ["add"]
    client.force_login(owner)
    page = client.get(reverse(URL), {"target": target(app)}).content.decode()
    assert "<code>add</code>" in page
    assert "<code>echo</code>" not in page
    assert "allows 1 tool only" in page
    # A tool left out can be neither opened nor called from the playground.
    opened = client.get(reverse(URL), {"target": target(app), "tool": "echo"}).content.decode()
    assert "No tool named <code>echo</code>" in opened
    called = client.post(
        reverse(URL), {"target": target(app), "tool": "echo", "method": "tools/call"}
    )
    assert called.status_code == 400
    assert "Choose one of the tools listed" in called.content.decode()
    consumer_services.subscription_set_allowed_tools(subscription=sub, tools=[])
    assert mcp_tools_for(target=mcp_targets_for(user=owner)[0]) == []
    assert no_playground_key()


def test_tools_held_or_not_yet_approved_are_what_the_gateway_serves(owner, app, tools):
    product, _ = tools
    McpTool.objects.create(
        server=product.mcp_server, name="fresh", discovered_definition={"name": "fresh"}
    )
    McpTool.objects.filter(name="echo").update(
        status=McpTool.Status.CHANGED, discovered_definition={"name": "echo", "description": "x"}
    )
    [only] = mcp_targets_for(user=owner)
    listed = {tool.name: tool for tool in mcp_tools_for(target=only)}
    assert set(listed) == {"add", "echo"}
    assert listed["echo"].description == "Repeat the text back."  # the pinned one
    assert listed["add"].title == "Adder"


# Forms from input schemas -----------------------------------------------------------------


def form_data(**values: str) -> QueryDict:
    data = QueryDict(mutable=True)
    data.update(values)
    return data


def test_simple_properties_get_inputs_and_complex_ones_json_areas():
    form = ToolForm(schema=EVERYTHING)
    kinds = {row.name: (row.kind, row.required) for row in form.rows()}
    assert kinds == {
        "city": ("string", True),
        "count": ("integer", False),
        "ratio": ("number", False),
        "loud": ("boolean", True),
        "maybe": ("boolean", False),
        "unit": ("enum", True),
        "level": ("enum", False),
        "limit": ("integer", False),
        "tags": ("json", False),
        "options": ("json", False),
        "either": ("json", False),
    }
    html = {row.name: str(row.field) for row in form.rows()}
    assert 'type="text"' in html["city"]
    assert 'type="number"' in html["count"]
    assert 'value="3"' in html["count"]  # the schema's default
    assert 'type="number"' in html["ratio"]
    assert 'type="checkbox"' in html["loud"]
    assert "<select" in html["maybe"]
    assert "(not sent)" in html["maybe"]
    assert '<option value="&quot;metric&quot;"' in html["unit"]
    assert "(not sent)" not in html["unit"]  # required
    assert "(not sent)" in html["level"]
    for name in ("tags", "options", "either"):
        assert "<textarea" in html[name], name
    assert 'placeholder="[]"' in html["tags"]
    assert 'placeholder="{}"' in html["options"]
    assert "<textarea" in str(form["raw"])
    assert "null</textarea>" not in str(form["raw"]) + html["tags"]  # empty until filled in
    with_default = ToolForm(schema={"properties": {"o": {"type": "object", "default": {"k": 1}}}})
    assert "{&quot;k&quot;: 1}</textarea>" in str(with_default.rows()[0].field)
    assert form.rows()[0].field.help_text == "A city name, e.g. Lisbon"


def test_a_filled_in_form_becomes_typed_arguments_leaving_out_empty_fields():
    form = ToolForm(
        form_data(
            arg0="Lisbon",  # city
            arg1="",  # count: empty, not sent
            arg2="2.5",
            arg3="on",
            arg4="false",
            arg5='"imperial"',
            arg6="2",
            arg7="",
            arg8='["a", "b"]',
            arg9='{"x": 1}',
            arg10="7",
            raw="",
        ),
        schema=EVERYTHING,
    )
    assert form.is_valid(), form.errors
    assert form.arguments() == {
        "city": "Lisbon",
        "ratio": 2.5,
        "loud": True,
        "maybe": False,
        "unit": "imperial",
        "level": 2,
        "tags": ["a", "b"],
        "options": {"x": 1},
        "either": 7,
    }
    unchecked = ToolForm(form_data(arg0="x", arg5='"metric"'), schema=EVERYTHING)
    assert unchecked.is_valid(), unchecked.errors
    assert unchecked.arguments() == {"city": "x", "loud": False, "unit": "metric"}


def test_bad_fields_are_errors_unless_raw_json_arguments_are_given():
    bad = ToolForm(form_data(arg1="three", arg5='"kelvin"', arg8="[not json"), schema=EVERYTHING)
    assert not bad.is_valid()
    assert {"arg0", "arg1", "arg5", "arg8"} <= set(bad.errors)
    raw = ToolForm(form_data(arg1="three", raw='{"city": 7, "anything": [1]}'), schema=EVERYTHING)
    assert raw.is_valid(), raw.errors
    assert raw.arguments() == {"city": 7, "anything": [1]}  # the gateway checks the schema
    for text in ("[1, 2]", '"text"', "{oops"):
        not_an_object = ToolForm(form_data(raw=text), schema=EVERYTHING)
        assert not not_an_object.is_valid()
        assert "raw" in not_an_object.errors


def test_odd_schemas_still_give_a_usable_form():
    assert [r.name for r in ToolForm(schema={}).rows()] == []
    assert ToolForm(form_data(), schema={"type": "object"}).is_valid()
    named_like_fields = {"properties": {"raw": {"type": "string"}, "tool": {"type": "integer"}}}
    form = ToolForm(form_data(arg0="r", arg1="5", raw=""), schema=named_like_fields)
    assert form.is_valid(), form.errors
    assert form.arguments() == {"raw": "r", "tool": 5}
    many = {"properties": {f"p{i}": {"type": "string"} for i in range(100)}}
    big = ToolForm(schema=many)
    assert big.too_many
    assert big.rows() == []


def test_the_tool_page_shows_the_generated_form(client, owner, catalog):
    product, plan = mcp_catalog(
        catalog, definitions=[{"name": "plan_trip", "inputSchema": EVERYTHING}]
    )
    app = consumer_services.consumer_create(owner=owner, name="trips")
    subscribe(app, product, plan)
    client.force_login(owner)
    page = client.get(reverse(URL), {"target": target(app), "tool": "plan_trip"}).content.decode()
    assert 'name="tool" value="plan_trip"' in page
    assert 'name="method" value="tools/call"' in page
    assert 'name="arg0"' in page
    assert 'name="raw"' in page
    assert "csrfmiddlewaretoken" in page
    assert 'hx-post="/playground/mcp/"' in page
    fragment = client.get(
        reverse(URL), {"target": target(app), "tool": "plan_trip"}, headers={"HX-Request": "true"}
    )
    assert "<html" not in fragment.content.decode()
    assert 'name="arg10"' in fragment.content.decode()
    assert "HX-Request" in fragment["Vary"]


def test_bad_arguments_are_refused_before_any_key_is_issued(client, owner, app):
    client.force_login(owner)
    data = {"target": target(app), "tool": "add", "method": "tools/call", "arg0": "two"}
    page = client.post(reverse(URL), data)
    assert page.status_code == 400
    assert "<html" in page.content.decode()
    assert "Enter a whole number." in page.content.decode()
    fragment = client.post(reverse(URL), data, headers={"HX-Request": "true"})
    assert fragment.status_code == 400
    text = fragment.content.decode()
    assert "<html" not in text
    assert "<code>a</code>: Enter a whole number." in text
    assert no_playground_key()


# What a reply looks like -------------------------------------------------------------------


def test_content_blocks_show_text_json_and_only_image_types_as_images():
    png = base64.b64encode(PNG).decode()
    blocks = content_blocks(
        [
            {"type": "text", "text": "plain words"},
            {"type": "text", "text": '{"b": 1, "a": [1, 2]}'},
            {"type": "image", "data": png, "mimeType": "image/png"},
            {"type": "image", "data": png, "mimeType": "text/html"},
            {"type": "image", "data": "not base64!", "mimeType": "image/png"},
            {"type": "audio", "data": png, "mimeType": "audio/wav"},
            {"type": "resource", "resource": {"uri": "res://x", "text": "[1]"}},
            {"type": "resource_link", "uri": "https://example.com/doc", "name": "doc"},
            "not an object",
        ]
    )
    assert [b.kind for b in blocks] == [
        "text",
        "json",
        "image",
        "note",
        "note",
        "note",
        "json",
        "note",
        "note",
    ]
    assert blocks[1].text == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}'
    assert blocks[2].src == f"data:image/png;base64,{png}"
    assert "text/html" in blocks[3].text
    assert png not in blocks[5].text  # the audio's data is left out of the note
    assert "https://example.com/doc" in blocks[7].text
    assert content_blocks(None) == []


def test_requests_speak_the_stateless_protocol_with_routing_headers():
    message = mcp_message("tools/call", {"name": "add", "arguments": {"a": 1}})
    assert message == {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "add",
            "arguments": {"a": 1},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {
                    "name": "portico-playground",
                    "version": "1",
                },
            },
        },
    }
    assert mcp_headers("tools/call", {"name": "add"}) == {
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "add",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    wrapped = base64.b64encode("grüße".encode()).decode()
    assert mcp_headers("tools/call", {"name": "grüße"})["Mcp-Name"] == f"=?base64?{wrapped}?="
    assert "Mcp-Name" not in mcp_headers("tools/list", {})


def read_answer(chunks: list[bytes], content_type: str) -> dict[str, Any] | None:
    async def body() -> Any:
        for chunk in chunks:
            yield chunk

    response = httpx.Response(200, headers={"content-type": content_type}, content=body())
    return asyncio.run(playground._read_answer(response))


def test_a_streamed_reply_is_read_past_notifications_to_the_answer():
    answer = read_answer(
        [
            b": keep-alive\r\n\r\n",
            b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/progress",'
            b'"params":{"progress":1}}\r\n\r\n',
            b'data: {"jsonrpc":"2.0","id":7,"method":"roots/list"}\n\n',  # the server asks
            b'data: {"jsonrpc":"2.0","id":1,"res',
            b'ult":{"content":[{"type":"text","text":"done"}]}}\n\n',
            b'data: {"jsonrpc":"2.0","id":1,"result":{"content":[]}}\n\n',  # never read
        ],
        "text/event-stream; charset=utf-8",
    )
    assert answer == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"content": [{"type": "text", "text": "done"}]},
    }
    # A stream that ends without its last blank line still has its answer read.
    ended = read_answer(
        [b'data: {"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}'], "text/event-stream"
    )
    assert ended is not None
    assert ended["error"]["code"] == -1
    assert (
        read_answer(
            [b'data: {"jsonrpc":"2.0","method":"notifications/x"}\n\n'], "text/event-stream"
        )
        is None
    )
    # A JSON body is the answer, even an error the gateway could not tie to an id.
    parse_error = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}'
    assert read_answer([parse_error], "application/json") is not None
    assert read_answer([b"<html>Bad gateway</html>"], "text/html") is None


def test_replies_beyond_the_limit_are_not_read_to_the_end(monkeypatch):
    monkeypatch.setattr(playground, "MAX_REPLY_BYTES", 100)
    big = b'{"jsonrpc":"2.0","id":1,"result":{"text":"' + b"x" * 200 + b'"}}'
    with pytest.raises(playground._TooLarge):
        read_answer([big[:50], big[50:]], "application/json")
    with pytest.raises(playground._TooLarge):
        read_answer([b"data: " + big[:50], big[50:]], "text/event-stream")


def test_the_page_takes_as_many_queries_for_many_apps_and_tools(client, owner, catalog, app):
    client.force_login(owner)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            page = client.get(reverse(URL), {"target": target(app), "tool": "add"})
            assert 'name="arg0"' in page.content.decode()
        return len(captured)

    few = queries()
    for n in range(4):
        definitions = [{**ADD, "name": f"tool{n}_{i}"} for i in range(5)]
        product, plan = mcp_catalog(catalog, slug=f"more{n}", definitions=definitions)
        for m in range(2):
            more = consumer_services.consumer_create(owner=owner, name=f"app{n}_{m}")
            subscribe(more, product, plan)
    assert queries() == few


def test_an_unreachable_gateway_is_said_on_the_page(client, owner, app, settings):
    settings.PORTICO_GATEWAY_INTERNAL_URL = f"http://127.0.0.1:{free_port()}"
    client.force_login(owner)
    response = client.post(
        reverse(URL),
        {"target": target(app), "tool": "add", "method": "tools/call", "arg0": "1"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    text = response.content.decode()
    assert "Could not reach the gateway (ConnectError)." in text
    assert response["Cache-Control"] == "no-store"
    # The key the playground issued is the app's, and never reaches the page.
    credential = Credential.objects.get(name=PLAYGROUND_KEY_NAME)
    assert credential.consumer == app
    assert playground_key(consumer=app) not in text
    assert "Bearer &lt;the app&#x27;s Playground key&gt;" in text


# Real calls through a real gateway ------------------------------------------------------------


def upstream_server() -> MCPServer:
    server = MCPServer("playground-upstream", instructions="Tools for the playground tests.")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int = 1) -> int:
        return a + b

    @server.tool(description="A one-pixel picture.")
    def pixel() -> Image:
        return Image(data=PNG, format="png")

    @server.tool(description="Always fails.")
    def fail(reason: str = "on purpose") -> str:
        raise ToolError(f"It failed {reason}.")

    def greet(name: str) -> str:
        return f"Grüß dich, {name}!"

    server.add_tool(greet, name="grüße", description="Greet someone, in German.")
    return server


@pytest.fixture
def mcp_upstream() -> Iterator[LocalServer]:
    local = LocalServer(
        upstream_server().streamable_http_app(),
        require={"Authorization": f"Bearer {BACKEND_SECRET}"},
    )
    with local.running():
        yield local


@pytest.fixture
def gateway(tmp_path, settings) -> Iterator[str]:
    """A real gateway process; the playground reaches it at the internal URL."""
    ports = Ports(portal=free_port(), gateway=free_port(), mock_llm=free_port())
    admin_port = free_port()
    stack = Stack(log_dir=tmp_path / "log")
    start_gateway(
        stack,
        ports,
        {
            "PORTICO_GATEWAY_SECRET": django_settings.PORTICO_GATEWAY_SECRET,
            "PORTICO_GATEWAY_ADMIN_PORT": str(admin_port),
            "PORTICO_GATEWAY_STATE_DIR": str(tmp_path / "state"),
            "REDIS_URL": "",
        },
    )
    settings.PORTICO_GATEWAY_INTERNAL_URL = ports.gateway_url
    try:
        yield f"http://127.0.0.1:{admin_port}"
    finally:
        stack.stop_all()


def deliver(admin_url: str) -> None:
    """Publish what the database says now and have the gateway apply it."""
    sync_services.revision_publish(keep=5, full=True)
    revision = Revision.objects.order_by("-number").first()
    assert revision is not None
    instance, _ = GatewayInstance.objects.get_or_create(
        instance_id="gw-playground",
        defaults={"admin_url": admin_url, "last_seen_at": timezone.now()},
    )
    delivery.deliver_to_all([instance], revision)
    instance.refresh_from_db()
    assert instance.applied_revision == revision.number, instance.last_delivery_error


@pytest.fixture
def served(catalog, owner, mcp_upstream, gateway) -> tuple[Consumer, str]:
    """The owner's app subscribed to the upstream's tools (discovered and approved), with
    its playground key issued and everything applied by the gateway."""
    upstream = catalog_services.upstream_create(
        name="mcp-live",
        vendor=Upstream.Vendor.MCP,
        base_url=mcp_upstream.url(),
        secret=BACKEND_SECRET,
        options={"auth": "bearer"},
        timeout_seconds=10,
    )
    product = catalog_services.product_create(name="Live tools", slug="live", kind="mcp")
    plan = catalog_services.plan_create(product=product, name="Free", requests_per_minute=600)
    catalog_services.product_publish(product=product, portals=[catalog.portal])
    server = catalog_services.mcp_server_create(product=product, upstream=upstream)
    server = catalog_services.mcp_server_discover(server=server)
    assert server.last_error == ""
    catalog_services.mcp_server_approve(server=server)
    app = consumer_services.consumer_create(owner=owner, name="live-app")
    subscribe(app, product, plan)
    playground_key(consumer=app)  # issued before the revision, so the gateway knows it
    deliver(gateway)
    return app, gateway


def call(client, app: Consumer, tool: str, htmx: bool = True, **fields: str) -> str:
    data = {"target": target(app, "live"), "tool": tool, "method": "tools/call", **fields}
    headers = {"HX-Request": "true"} if htmx else {}
    response = client.post(reverse(URL), data, headers=headers)
    assert response.status_code == 200, response.content.decode()
    return response.content.decode()


@pytest.mark.e2e
def test_tools_are_called_through_the_real_gateway(client, owner, served, mcp_upstream):
    app, _ = served
    client.force_login(owner)
    page = client.get(reverse(URL), {"target": target(app, "live")}).content.decode()
    for name in ("add", "pixel", "fail", "grüße"):
        assert f"<code>{name}</code>" in page

    added = call(client, app, "add", arg0="2", arg1="40")
    assert '<span class="badge approved">ok</span>' in added
    assert "HTTP 200" in added
    assert re.search(r'<span id="mcp-latency">\d+ ms</span>', added)
    assert re.search(r'x-request-id <code id="mcp-request-id">[^<]+</code>', added)
    assert "<pre><code>42</code></pre>" in added
    assert "&quot;result&quot;: 42" in added  # structuredContent
    # The backend credential reached the server; the app's key did not.
    key = playground_key(consumer=app)
    reached = mcp_upstream.mcp_requests()
    assert reached
    assert all(headers["authorization"] == f"Bearer {BACKEND_SECRET}" for headers in reached)
    assert not any(key in str(headers) for headers in reached)

    picture = call(client, app, "pixel")
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in picture

    failed = call(client, app, "fail")
    assert "isError: true" in failed
    assert "It failed on purpose." in failed

    # A name outside printable ASCII travels base64-wrapped in Mcp-Name; the gateway
    # refuses a request whose header and body disagree, so this answer proves both.
    greeted = call(client, app, "grüße", arg0="Ada")
    assert "Grüß dich, Ada!" in greeted

    # Arguments the pinned schema refuses get the gateway's JSON-RPC error.
    refused = call(client, app, "add", raw='{"a": "two"}')
    assert '<span class="badge rejected">JSON-RPC error</span>' in refused
    assert "HTTP 400" in refused
    assert "JSON-RPC error <code>-32602</code>" in refused

    # Without JavaScript the whole page comes back, result included.
    whole = call(client, app, "add", htmx=False, arg0="1")
    assert "<html" in whole
    assert "<pre><code>2</code></pre>" in whole
    assert 'name="arg0" value="1"' in whole  # the form keeps what was sent


@pytest.mark.e2e
def test_the_live_list_shows_what_the_gateway_serves_to_the_key(client, owner, served):
    app, admin_url = served
    consumer_services.subscription_set_allowed_tools(
        subscription=app.subscriptions.get(), tools=["add", "grüße"]
    )
    deliver(admin_url)
    client.force_login(owner)
    response = client.post(
        reverse(URL),
        {"target": target(app, "live"), "method": "tools/list"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    text = response.content.decode()
    assert "Tools the gateway lists to this app's key" in text
    assert "2 tools." in text
    listed = re.findall(r'<th scope="row"><code>([^<]+)</code>', text)
    assert listed == ["add", "grüße"]
    assert "Mcp-Method: tools/list" in text
    assert "Mcp-Name" not in text
