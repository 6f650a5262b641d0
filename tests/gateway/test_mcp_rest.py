"""REST-to-MCP: tools the gateway serves itself by calling a plain REST service, here a
small local one recording every request it gets."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import orjson
import pytest
from mcp import Client, MCPError

from catalog.openapi import load_document, tools_from_openapi
from gateway.schema import (
    Consumer,
    McpServer,
    McpTool,
    Plan,
    Product,
    RestArgument,
    RestCall,
    Revision,
    Subscription,
    Upstream,
)
from tests.gateway.conftest import ALICE, Gateway, World
from tests.gateway.mcp_support import run, serve_in_thread

pytestmark = pytest.mark.e2e

SERVICE_KEY = "rest-service-key-" + secrets.token_urlsafe(12)
REST_PRODUCT = 4


@dataclass
class Service:
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)


PETS = {
    "1": {"id": "1", "name": "Rex", "tag": "dog"},
    "2": {"id": "2", "name": "Tom", "tag": "cat"},
}


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    record = Service()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        raw_path = scope["raw_path"].decode()
        query = parse_qsl(scope["query_string"].decode())
        record.seen.append(
            {
                "method": scope["method"],
                "path": raw_path,
                "query": query,
                "headers": headers,
                "body": body,
            }
        )
        status, answer, kind = 200, b"", b"application/json"
        if raw_path == "/v1/pets" and scope["method"] == "GET":
            tags = [v for k, v in query if k == "tag"]
            items = [p for p in PETS.values() if not tags or p["tag"] in tags]
            answer = orjson.dumps({"data": {"items": items, "count": len(items)}})
        elif raw_path.startswith("/v1/pets/") and scope["method"] == "GET":
            pet = PETS.get(raw_path[len("/v1/pets/") :])
            status = 200 if pet else 404
            answer = orjson.dumps(pet or {"error": f"no pet at {raw_path}", "echo": headers})
        elif raw_path == "/v1/pets" and scope["method"] == "POST":
            status, answer = 201, orjson.dumps({"id": "3", **orjson.loads(body)})
        elif raw_path == "/v1/motd":
            answer, kind = b"have a nice day", b"text/plain"
        elif raw_path == "/v1/moved":
            status, answer = 302, b""
        else:
            status, answer = 404, b'{"error":"unknown"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", kind)]
                + ([(b"location", b"http://127.0.0.1:1/elsewhere")] if status == 302 else []),
            }
        )
        await send({"type": "http.response.body", "body": answer})

    with serve_in_thread(app) as origin:
        record.url = origin + "/v1"
        yield record


def _tool(name: str, properties: dict[str, Any], rest: RestCall, required: list[str]) -> McpTool:
    definition = {
        "name": name,
        "description": f"The {name} operation.",
        "inputSchema": {"type": "object", "properties": properties, "required": required},
    }
    return McpTool(name=name, definition=definition, rest=rest)


TOOLS = [
    _tool(
        "list_pets",
        {"tag": {"type": "array", "items": {"type": "string"}}},
        RestCall(
            method="GET",
            path="/pets",
            arguments=[RestArgument(name="tag", in_="query")],
            select="data.items",
        ),
        [],
    ),
    _tool(
        "count_pets",
        {},
        RestCall(method="GET", path="/pets", select="data"),
        [],
    ),
    _tool(
        "get_pet",
        {"pet_id": {"type": "string"}, "trace": {"type": "string"}},
        RestCall(
            method="GET",
            path="/pets/{petId}",
            arguments=[
                RestArgument(name="pet_id", in_="path", field="petId"),
                RestArgument(name="trace", in_="header", field="X-Trace"),
            ],
        ),
        ["pet_id"],
    ),
    _tool(
        "add_pet",
        {"name": {"type": "string"}, "tag": {"type": "string"}},
        RestCall(
            method="POST",
            path="/pets",
            arguments=[RestArgument(name="name", in_="body"), RestArgument(name="tag", in_="body")],
        ),
        ["name"],
    ),
    _tool("motd", {}, RestCall(method="GET", path="/motd"), []),
    _tool(
        "impostor",
        {"key": {"type": "string"}},
        RestCall(
            method="GET",
            path="/motd",
            arguments=[
                RestArgument(name="key", in_="header", field="x-api-key"),
                RestArgument(name="key", in_="query", field="api_key"),
            ],
        ),
        [],
    ),
    _tool("moved", {}, RestCall(method="GET", path="/moved"), []),
]


def rest_revision(world: World, service: Service, **options: str) -> Revision:
    doc = world.revision()
    alice = doc.consumers[str(ALICE)]
    return msgspec.structs.replace(
        doc,
        upstreams={
            **doc.upstreams,
            "pets-api": Upstream(
                vendor="rest",
                base_url=service.url,
                secret=world.keys.seal(SERVICE_KEY),
                options=options or {"auth": "header", "header": "X-Api-Key"},
            ),
        },
        products={
            **doc.products,
            "pets": Product(
                id=REST_PRODUCT,
                slug="pets",
                kind="mcp",
                mcp=McpServer(upstream="pets-api", tools=TOOLS, instructions="A pet shop."),
            ),
        },
        consumers={
            **doc.consumers,
            str(ALICE): Consumer(
                id=ALICE,
                subscriptions={
                    **alice.subscriptions,
                    "pets": Subscription(id=41, plan=Plan(id=1, name="Free")),
                },
            ),
        },
    )


def call(gw: Gateway, world: World, name: str, arguments: dict[str, Any]) -> Any:
    """The tool's result, or the ``MCPError`` the gateway answered with."""

    async def body(client: Client) -> Any:
        try:
            return await client.call_tool(name, arguments)
        except MCPError as error:
            return error

    return run(gw.url + "/mcp/pets", world.alice_key, body)


def test_rest_tools_are_listed_and_called_with_the_services_credential(
    gw: Gateway, world: World, service: Service
) -> None:
    assert gw.push(rest_revision(world, service)).status_code == 200

    async def listing(client: Client) -> Any:
        return [t.name for t in (await client.list_tools()).tools]

    assert run(gw.url + "/mcp/pets", world.alice_key, listing) == [t.name for t in TOOLS]
    before = len(service.seen)
    listed = call(gw, world, "list_pets", {"tag": ["dog", "cat"]})
    assert listed.is_error is False
    assert orjson.loads(listed.content[0].text) == list(PETS.values())
    counted = call(gw, world, "count_pets", {})
    assert counted.structured_content == {"items": list(PETS.values()), "count": 2}
    pet = call(gw, world, "get_pet", {"pet_id": "2", "trace": "t-1"})
    assert pet.structured_content == PETS["2"]
    added = call(gw, world, "add_pet", {"name": "Kit", "tag": "cat"})
    assert added.structured_content == {"id": "3", "name": "Kit", "tag": "cat"}
    motd = call(gw, world, "motd", {})
    assert motd.content[0].text == "have a nice day"
    assert motd.structured_content is None

    seen = service.seen[before:]
    assert [(r["method"], r["path"]) for r in seen] == [
        ("GET", "/v1/pets"),
        ("GET", "/v1/pets"),
        ("GET", "/v1/pets/2"),
        ("POST", "/v1/pets"),
        ("GET", "/v1/motd"),
    ]
    assert seen[0]["query"] == [("tag", "dog"), ("tag", "cat")]
    assert seen[2]["headers"]["x-trace"] == "t-1"
    assert orjson.loads(seen[3]["body"]) == {"name": "Kit", "tag": "cat"}
    assert seen[3]["headers"]["content-type"] == "application/json"
    # The service's own key on every request; the app's key on none.
    assert all(r["headers"].get("x-api-key") == SERVICE_KEY for r in seen)
    assert not any(world.alice_key in str(r) for r in seen)


def test_service_failures_are_tool_errors_and_never_echo_the_credential(
    gw: Gateway, world: World, service: Service
) -> None:
    assert gw.push(rest_revision(world, service)).status_code == 200
    missing = call(gw, world, "get_pet", {"pet_id": "9"})
    assert missing.is_error is True
    text = missing.content[0].text
    assert text.startswith("The REST service answered HTTP 404.")
    # The service echoed its request headers; the gateway's credential is cut out.
    assert "[redacted]" in text
    assert SERVICE_KEY not in text
    moved = call(gw, world, "moved", {})
    assert moved.is_error is True
    assert moved.content[0].text.startswith("The REST service answered HTTP 302.")


def test_path_arguments_cannot_leave_their_segment(
    gw: Gateway, world: World, service: Service
) -> None:
    assert gw.push(rest_revision(world, service)).status_code == 200
    before = len(service.seen)
    for sneaky in ("../motd", "..", "1?admin=true", "1/../../x"):
        result = call(gw, world, "get_pet", {"pet_id": sneaky})
        assert result.is_error is True
    paths = [r["path"] for r in service.seen[before:]]
    assert paths == [
        "/v1/pets/..%2Fmotd",
        "/v1/pets/%2E%2E",
        "/v1/pets/1%3Fadmin%3Dtrue",
        "/v1/pets/1%2F..%2F..%2Fx",
    ]


def test_bad_arguments_reach_no_service(gw: Gateway, world: World, service: Service) -> None:
    assert gw.push(rest_revision(world, service)).status_code == 200
    before = len(service.seen)
    for arguments in ({}, {"pet_id": 7}, {"pet_id": ""}, {"pet_id": "1", "trace": "a\r\nX: y"}):
        refused = call(gw, world, "get_pet", arguments)
        assert isinstance(refused, MCPError)
        assert refused.code == -32602
    assert len(service.seen) == before


def test_a_key_may_travel_in_the_query(gw: Gateway, world: World, service: Service) -> None:
    doc = rest_revision(world, service, auth="query", param="api_key")
    assert gw.push(doc).status_code == 200
    before = len(service.seen)
    assert call(gw, world, "get_pet", {"pet_id": "1"}).structured_content == PETS["1"]
    assert service.seen[before]["query"] == [("api_key", SERVICE_KEY)]
    assert "x-api-key" not in service.seen[before]["headers"]


def test_the_aggregate_endpoint_serves_rest_tools_too(
    gw: Gateway, world: World, service: Service
) -> None:
    assert gw.push(rest_revision(world, service)).status_code == 200

    async def body(client: Client) -> Any:
        return await client.call_tool("pets__get_pet", {"pet_id": "1"})

    assert run(gw.url + "/mcp", world.alice_key, body).structured_content == PETS["1"]


@pytest.mark.parametrize("options", [{}, {"auth": "query", "param": "api_key"}])
def test_no_argument_can_stand_in_for_the_services_credential(
    gw: Gateway, world: World, service: Service, options: dict[str, str]
) -> None:
    assert gw.push(rest_revision(world, service, **options)).status_code == 200
    before = len(service.seen)
    assert call(gw, world, "impostor", {"key": "stolen"}).is_error is False
    seen = service.seen[before]
    if options:
        assert [v for k, v in seen["query"] if k == "api_key"] == [SERVICE_KEY]
    else:
        assert seen["headers"]["x-api-key"] == SERVICE_KEY
        assert ("api_key", "stolen") in seen["query"]


PETSTORE = """
openapi: 3.1.0
info: {title: Pets, version: "1.0"}
servers: [{url: "http://pets.example/v1"}]
paths:
  /pets:
    get:
      operationId: listPets
      summary: List the pets, by tag.
      parameters:
        - {name: tag, in: query, schema: {type: array, items: {type: string}}}
      responses: {"200": {description: ok}}
    post:
      operationId: addPet
      summary: Add a pet.
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/NewPet"}
      responses: {"201": {description: created}}
  /pets/{petId}:
    get:
      operationId: getPet
      summary: One pet.
      parameters:
        - {name: petId, in: path, required: true, schema: {type: string}}
        - {$ref: "#/components/parameters/Trace"}
      responses: {"200": {description: ok}}
components:
  parameters:
    Trace: {name: X-Trace, in: header, schema: {type: string}}
  schemas:
    NewPet:
      type: object
      required: [name]
      properties:
        name: {type: string, description: The pet's name.}
        tag: {type: string}
"""


def test_a_product_imported_from_an_openapi_document_calls_the_service(
    gw: Gateway, world: World, service: Service
) -> None:
    imported = tools_from_openapi(load_document(PETSTORE))
    assert imported.server_url == "http://pets.example/v1"
    tools = [McpTool(name=t.name, definition=t.definition, rest=t.rest) for t in imported.tools]
    doc = rest_revision(world, service)
    pets = doc.products["pets"]
    assert pets.mcp is not None
    product = msgspec.structs.replace(pets, mcp=msgspec.structs.replace(pets.mcp, tools=tools))
    served = msgspec.structs.replace(doc, products={**doc.products, "pets": product})
    assert gw.push(served).status_code == 200

    async def body(client: Client) -> Any:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        added = await client.call_tool("addPet", {"name": "Kit", "tag": "cat"})
        pets = await client.call_tool("listPets", {"tag": ["dog"]})
        pet = await client.call_tool("getPet", {"petId": "2", "X-Trace": "t-9"})
        return listed, added, pets, pet

    before = len(service.seen)
    listed, added, pets, pet = run(gw.url + "/mcp/pets", world.alice_key, body)
    assert sorted(listed) == ["addPet", "getPet", "listPets"]
    assert listed["addPet"].input_schema["required"] == ["name"]
    assert added.structured_content == {"id": "3", "name": "Kit", "tag": "cat"}
    assert orjson.loads(pets.content[0].text) == {"data": {"items": [PETS["1"]], "count": 1}}
    assert pet.structured_content == PETS["2"]
    seen = service.seen[before:]
    assert [(r["method"], r["path"]) for r in seen] == [
        ("POST", "/v1/pets"),
        ("GET", "/v1/pets"),
        ("GET", "/v1/pets/2"),
    ]
    assert seen[2]["headers"]["x-trace"] == "t-9"
