"""The OpenAPI converter (catalog.openapi): realistic 3.0 and 3.1 documents become MCP
tool definitions and the REST calls the gateway makes, what cannot be imported is left
out with a reason, and hostile documents (huge, self-referring, exploding, aliased,
pointing elsewhere) are refused within bounded work.

Pure functions on documents: no database, no network.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import msgspec
import pytest

from catalog.openapi import (
    MAX_DOCUMENT_BYTES,
    MAX_OPERATIONS,
    CredentialPlace,
    ImportedTool,
    OpenApiError,
    load_document,
    rest_call_from_json,
    rest_call_to_json,
    rest_tool_problems,
    tools_from_openapi,
)
from gateway.schema import RestArgument, RestCall

PETSTORE_30 = """\
openapi: 3.0.3
info:
  title: Petstore
  version: 2024-05-01
  description: Pets, and their owners.
servers:
  - url: https://{region}.petstore.example/v1
    variables:
      region: {default: eu, enum: [eu, us]}
paths:
  /pets:
    parameters:
      - $ref: '#/components/parameters/TraceId'
    get:
      operationId: listPets
      summary: List pets
      description: Newest first.
      parameters:
        - $ref: '#/components/parameters/Limit'
        - name: status
          in: query
          required: true
          schema: {type: string, enum: [available, sold]}
        - name: Authorization
          in: header
          schema: {type: string}
        - name: session
          in: cookie
          schema: {type: string}
      responses: {'200': {description: ok}}
    post:
      operationId: createPet
      summary: Add a pet
      requestBody:
        $ref: '#/components/requestBodies/NewPet'
      responses: {'201': {description: created}}
  /pets/{petId}:
    parameters:
      - name: petId
        in: path
        required: true
        description: The pet's id.
        schema: {type: integer, format: int64}
    get:
      operationId: get pet!
      responses: {'200': {description: ok}}
    put:
      operationId: listPets
      summary: Replace the pet's tags
      requestBody:
        required: true
        content:
          application/json; charset=utf-8:
            schema:
              type: array
              items: {$ref: '#/components/schemas/Tag'}
      responses: {'200': {description: ok}}
    patch:
      operationId: updatePet
      parameters:
        - name: name
          in: query
          schema: {type: string}
      requestBody:
        content:
          application/merge-patch+json:
            schema:
              type: object
              properties:
                name: {type: string}
                id: {type: integer, readOnly: true}
      responses: {'200': {description: ok}}
    delete:
      responses: {'204': {description: gone}}
  /pets/{petId}/photo:
    post:
      operationId: uploadPhoto
      parameters:
        - {name: petId, in: path, required: true, schema: {type: integer}}
      requestBody:
        content:
          image/png: {schema: {type: string, format: binary}}
      responses: {'200': {description: ok}}
  /pets/{petId}/owner:
    head:
      operationId: ownerExists
      responses: {'200': {description: ok}}
components:
  parameters:
    Limit:
      name: limit
      in: query
      description: How many at most.
      schema: {type: integer, minimum: 1, exclusiveMinimum: true, nullable: true}
    TraceId:
      name: X-Trace-Id
      in: header
      schema: {type: string}
  requestBodies:
    NewPet:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/NewPet'}
  schemas:
    Tag:
      type: object
      properties:
        label: {type: string}
    Pet:
      type: object
      properties:
        id: {type: integer}
        name: {type: string}
        parent: {$ref: '#/components/schemas/Pet'}
    NewPet:
      allOf:
        - type: object
          required: [name, status]
          properties:
            name: {type: string, example: Rex}
            status: {type: string, nullable: true}
            id: {type: integer, readOnly: true}
        - type: object
          properties:
            limit: {type: integer}
            friend: {$ref: '#/components/schemas/Pet'}
"""


def by_name(result: Any) -> dict[str, ImportedTool]:
    return {tool.name: tool for tool in result.tools}


def arguments(tool: ImportedTool) -> dict[str, tuple[str, str]]:
    return {arg.name: (arg.in_, arg.field) for arg in tool.rest.arguments}


@pytest.fixture
def petstore() -> Any:
    return tools_from_openapi(load_document(PETSTORE_30))


def test_every_importable_operation_of_a_30_document_is_a_tool(petstore):
    assert list(by_name(petstore)) == [
        "listPets",
        "createPet",
        "get_pet",
        "listPets_2",
        "updatePet",
        "delete_pets_petId",
    ]
    assert petstore.server_url == "https://eu.petstore.example/v1"
    assert (petstore.title, petstore.version) == ("Petstore", "2024-05-01")  # a YAML date
    for tool in petstore.tools:
        assert tool.definition["name"] == tool.name
        assert rest_tool_problems(tool.definition, tool.rest) == []
        jsonschema.Draft202012Validator.check_schema(tool.definition["inputSchema"])
        # What is stored decodes as the gateway decodes it.
        assert rest_call_from_json(json.loads(json.dumps(rest_call_to_json(tool.rest)))) == (
            tool.rest
        )


def test_parameters_become_arguments_with_their_schema_and_place(petstore):
    tool = by_name(petstore)["listPets"]
    assert tool.operation == "GET /pets"
    assert tool.rest == RestCall(
        method="GET",
        path="/pets",
        arguments=[
            RestArgument(name="X-Trace-Id", in_="header"),  # from the path item
            RestArgument(name="limit", in_="query"),
            RestArgument(name="status", in_="query"),
        ],
    )
    schema = tool.definition["inputSchema"]
    assert schema["required"] == ["status"]
    # OpenAPI 3.0's dialect becomes JSON Schema 2020-12: nullable, boolean exclusive bounds.
    assert schema["properties"]["limit"] == {
        "type": ["integer", "null"],
        "exclusiveMinimum": 1,
        "description": "How many at most.",
    }
    assert schema["properties"]["status"] == {"type": "string", "enum": ["available", "sold"]}
    assert tool.definition["title"] == "List pets"
    assert tool.definition["description"] == "List pets\n\nNewest first."
    assert tool.definition["annotations"] == {"readOnlyHint": True}
    # Authorization is ignored (OpenAPI says so); the optional cookie is left out, saying so.
    assert "GET /pets: left out the cookie parameter 'session'." in petstore.warnings


def test_an_object_body_spreads_into_body_arguments_and_clashes_are_prefixed(petstore):
    create = by_name(petstore)["createPet"]
    assert arguments(create) == {
        "X-Trace-Id": ("header", ""),
        "name": ("body", ""),
        "status": ("body", ""),
        "limit": ("body", ""),  # no clash: createPet has no limit parameter
        "friend": ("body", ""),
    }
    properties = create.definition["inputSchema"]["properties"]
    assert "id" not in properties  # readOnly: the service's to set
    assert properties["name"] == {"type": "string", "examples": ["Rex"]}
    assert properties["status"]["type"] == ["string", "null"]
    assert create.definition["inputSchema"]["required"] == ["name", "status"]
    # A schema that contains itself accepts anything where it recurs.
    assert properties["friend"]["properties"]["parent"] == {}
    assert any("Pet contains itself" in warning for warning in petstore.warnings)

    update = by_name(petstore)["updatePet"]
    assert arguments(update) == {
        "petId": ("path", ""),
        "name": ("query", ""),
        "body_name": ("body", "name"),  # the query parameter had the name
    }
    assert update.definition["annotations"] == {"readOnlyHint": False}


def test_a_body_that_is_not_an_object_is_the_whole_body(petstore):
    tags = by_name(petstore)["listPets_2"]
    assert arguments(tags) == {"petId": ("path", ""), "body": ("whole_body", "")}
    body = tags.definition["inputSchema"]["properties"]["body"]
    assert body == {
        "type": "array",
        "items": {"type": "object", "properties": {"label": {"type": "string"}}},
    }
    assert tags.definition["inputSchema"]["required"] == ["petId", "body"]
    assert tags.definition["annotations"] == {"readOnlyHint": False, "idempotentHint": True}


def test_names_are_sanitised_made_unique_and_otherwise_made_from_the_path(petstore):
    tools = by_name(petstore)
    assert tools["get_pet"].rest.path == "/pets/{petId}"  # operationId "get pet!"
    assert "PUT /pets/{petId}: named listPets_2 (listPets was taken)" in petstore.warnings
    delete = tools["delete_pets_petId"]  # no operationId
    assert delete.definition["annotations"] == {
        "readOnlyHint": False,
        "destructiveHint": True,
        "idempotentHint": True,
    }
    assert delete.definition["description"] == "DELETE /pets/{petId}"


def test_operations_that_cannot_work_are_left_out_with_the_reason(petstore):
    left_out = [warning for warning in petstore.warnings if "left out:" in warning]
    assert left_out == [
        "POST /pets/{petId}/photo: left out: its request body is image/png, not JSON; tools "
        "send JSON bodies.",
        "HEAD /pets/{petId}/owner: left out: REST tools call GET, POST, PUT, PATCH, DELETE, "
        "not HEAD.",
    ]


PETSTORE_31 = {
    "openapi": "3.1.0",
    "info": {"title": "Pets 3.1", "version": "3"},
    "servers": [{"url": "/api"}],
    "paths": {
        "/owners/{owner.id}/pets": {
            "post": {
                "operationId": "a" * 80,
                "parameters": [
                    {
                        "name": "owner.id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {"name": "filter[kind]", "in": "query", "schema": {"type": ["string", "null"]}},
                    {
                        "name": "X-Api-Key",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "Cookie",
                        "in": "header",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "content": {
                        "application/vnd.pets+json": {
                            "schema": {
                                "$ref": "#/components/schemas/Pet",
                                "description": "The pet to add.",
                            }
                        }
                    }
                },
            }
        },
        "/pets/search": {
            "get": {
                "operationId": "a" * 80,
                "parameters": [
                    {
                        "name": "q",
                        "in": "query",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Query"}}
                        },
                    },
                    {
                        "name": "tags",
                        "in": "query",
                        "style": "pipeDelimited",
                        "schema": {"type": "array"},
                    },
                ],
            }
        },
        "/remote": {
            "get": {
                "operationId": "remote",
                "parameters": [{"$ref": "https://example.com/common.yaml#/Limit"}],
            }
        },
        "/loop": {
            "get": {"operationId": "loop", "parameters": [{"$ref": "#/components/parameters/A"}]}
        },
        "/holes/{id}": {"get": {"operationId": "holes"}},
    },
    "webhooks": {"newPet": {"post": {"operationId": "webhook"}}},
    "components": {
        "parameters": {
            "A": {"$ref": "#/components/parameters/B"},
            "B": {"$ref": "#/components/parameters/A"},
        },
        "schemas": {
            "Pet": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"const": "dog"},
                    "tags": {
                        "type": "array",
                        "prefixItems": [{"$ref": "#/components/schemas/Tag"}],
                    },
                },
                "x-internal": True,
            },
            "Tag": {"type": "string", "examples": ["good boy"]},
            "Query": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    },
}


def test_a_31_document_with_its_json_schema_dialect():
    result = tools_from_openapi(PETSTORE_31)
    tools = by_name(result)
    assert list(tools) == ["a" * 64, "a" * 62 + "_2"]
    add = tools["a" * 64]
    assert add.rest.method == "POST"
    assert add.rest.path == "/owners/{owner.id}/pets"
    assert arguments(add) == {
        "owner.id": ("path", ""),
        "filter_kind": ("query", "filter[kind]"),  # a name models take; the real one kept
        "X-Api-Key": ("header", ""),
        "name": ("body", ""),  # the $ref's siblings (a description) do not hide its object
        "kind": ("body", ""),
        "tags": ("body", ""),
    }
    properties = add.definition["inputSchema"]["properties"]
    assert properties["filter_kind"] == {"type": ["string", "null"]}
    assert properties["kind"] == {"const": "dog"}
    assert properties["tags"]["prefixItems"] == [{"type": "string", "examples": ["good boy"]}]
    # The request body is optional, so none of its fields is required.
    assert add.definition["inputSchema"]["required"] == ["owner.id", "X-Api-Key"]
    search = tools["a" * 62 + "_2"]
    assert search.definition["inputSchema"]["properties"]["q"] == {
        "type": "object",
        "properties": {"text": {"type": "string"}},
    }
    assert result.server_url == "/api"  # relative: the importer resolves it against its URL
    assert any("'tags' is sent as repeated" in warning for warning in result.warnings)
    assert any("left out the header parameter 'Cookie'" in warning for warning in result.warnings)
    reasons = "\n".join(result.warnings)
    assert "GET /remote: left out: it refers to 'https://example.com/common.yaml#/Limit'" in reasons
    assert (
        "GET /loop: left out: the reference #/components/parameters/A refers to itself." in reasons
    )
    assert "GET /holes/{id}: left out: its path's {id} has no path parameter." in reasons
    assert "webhook" not in reasons  # webhooks are the API calling out: not tools


def test_imports_are_deterministic():
    first = tools_from_openapi(load_document(PETSTORE_30))
    again = tools_from_openapi(load_document(PETSTORE_30))
    assert [(t.definition, rest_call_to_json(t.rest)) for t in first.tools] == [
        (t.definition, rest_call_to_json(t.rest)) for t in again.tools
    ]


# Documents that are not, or are too much -------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"swagger": "2.0", "paths": {}}, "This is a Swagger 2.0 document"),
        ({"info": {}}, "it has no 'openapi' version"),
        ({"openapi": "4.0.0", "paths": {}}, "OpenAPI 4.0.0 is not supported"),
        ({"openapi": "3.0.0", "paths": []}, "'paths' is not an object"),
    ],
)
def test_what_is_not_an_openapi_3_document_is_refused(document, message):
    with pytest.raises(OpenApiError, match=message):
        tools_from_openapi(document)


def test_a_document_over_the_size_limit_is_refused_before_parsing():
    huge = b'{"openapi": "3.0.0", "x": "' + b"a" * MAX_DOCUMENT_BYTES + b'"}'
    with pytest.raises(OpenApiError, match="Portico imports documents of up to 5 MiB"):
        load_document(huge)


def test_more_operations_than_the_limit_are_refused():
    paths = {f"/r{i}": {"get": {"operationId": f"r{i}"}} for i in range(MAX_OPERATIONS + 1)}
    with pytest.raises(OpenApiError, match="has 501 operations; Portico imports at most 500"):
        tools_from_openapi({"openapi": "3.0.0", "paths": paths})
    del paths["/r0"]
    assert len(tools_from_openapi({"openapi": "3.0.0", "paths": paths}).tools) == MAX_OPERATIONS


def test_yaml_aliases_are_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
    with pytest.raises(OpenApiError, match="aliases"):
        load_document(bomb)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("openapi: [3.0\n  bad: indent", "neither JSON nor valid YAML"),
        ("- just\n- a list", "not an OpenAPI object"),
        ("[" * 200 + "]" * 200, "nests deeper than 100 levels"),
    ],
)
def test_unparseable_documents_say_why(text, message):
    with pytest.raises(OpenApiError, match=message):
        load_document(text)


def test_references_that_expand_exponentially_are_cut_off_quickly():
    # Each schema holds the next twice: 2**24 nodes once expanded.
    schemas: dict[str, Any] = {"S0": {"type": "string"}}
    for level in range(1, 25):
        child = {"$ref": f"#/components/schemas/S{level - 1}"}
        schemas[f"S{level}"] = {"type": "object", "properties": {"a": child, "b": child}}
    document = {
        "openapi": "3.1.0",
        "paths": {
            "/bomb": {
                "post": {
                    "operationId": "bomb",
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/S24"}}
                        }
                    },
                }
            },
            "/fine": {"get": {"operationId": "fine"}},
        },
        "components": {"schemas": schemas},
    }
    started = time.monotonic()
    result = tools_from_openapi(document)
    assert time.monotonic() - started < 5
    assert [tool.name for tool in result.tools] == ["fine"]
    assert result.warnings == [
        "POST /bomb: left out: its schemas are too large once references are expanded."
    ]


def test_long_reference_chains_are_cut_off():
    parameters = {f"P{i}": {"$ref": f"#/components/parameters/P{i + 1}"} for i in range(40)}
    parameters["P40"] = {"name": "x", "in": "query"}
    document = {
        "openapi": "3.0.0",
        "paths": {"/x": {"get": {"parameters": [{"$ref": "#/components/parameters/P0"}]}}},
        "components": {"parameters": parameters},
    }
    result = tools_from_openapi(document)
    assert result.tools == []
    assert result.warnings == ["GET /x: left out: references follow one another more than 32 deep."]


# Checking a tool ---------------------------------------------------------------------------------


def definition(*names: str) -> dict[str, Any]:
    return {
        "name": "t",
        "description": "d",
        "inputSchema": {
            "type": "object",
            "properties": {name: {"type": "string"} for name in names},
        },
    }


def test_a_consistent_tool_has_no_problems():
    call = RestCall(
        method="POST",
        path="/users/{user}/notes",
        arguments=[
            RestArgument(name="user_id", in_="path", field="user"),
            RestArgument(name="text", in_="body"),
            RestArgument(name="X-Request-Id", in_="header"),
        ],
        select="data.items",
    )
    assert rest_tool_problems(definition("user_id", "text", "X-Request-Id"), call) == []


@pytest.mark.parametrize(
    ("call", "names", "problem"),
    [
        (
            RestCall(method="GET", path="/pets/{id}"),
            (),
            "The path's {id} has no argument: add one going to the path as id.",
        ),
        (
            RestCall(method="GET", path="/pets", arguments=[RestArgument(name="id", in_="path")]),
            ("id",),
            "The path argument id has no {id} in the path.",
        ),
        (
            RestCall(
                method="GET",
                path="/pets",
                arguments=[RestArgument(name="q"), RestArgument(name="q", in_="header")],
            ),
            ("q",),
            "The argument q is listed twice.",
        ),
        (
            RestCall(
                method="GET", path="/pets", arguments=[RestArgument(name="b", in_="whole_body")]
            ),
            ("b",),
            "A GET request takes no body; b cannot go there.",
        ),
        (
            RestCall(
                method="POST",
                path="/pets",
                arguments=[
                    RestArgument(name="b", in_="whole_body"),
                    RestArgument(name="c", in_="body"),
                ],
            ),
            ("b", "c"),
            "b is the whole body, so no other argument can be a field of the body.",
        ),
        (
            RestCall(
                method="GET",
                path="/pets",
                arguments=[RestArgument(name="a", in_="header", field="Authorization")],
            ),
            ("a",),
            "Authorization cannot be a header a tool argument sets.",
        ),
        (RestCall(method="GET", path="/pets?x=1"), (), "no ?query or #fragment"),
        (RestCall(method="GET", path="pets"), (), "The path starts with /"),
        (RestCall(method="GET", path="/a/../admin"), (), "The path may not have . or .. segments."),
        (RestCall(method="GET", path="/a/{b"), (), "The path has an unmatched { or }."),
        (
            RestCall(method="GET", path="/pets", arguments=[RestArgument(name="q")]),
            (),
            "The argument q is not a property",
        ),
        (RestCall(method="GET", path="/pets"), ("q",), "The input property q goes nowhere"),
        (RestCall(method="GET", path="/pets", select="data..items"), (), "The select path is"),
    ],
)
def test_tool_problems_are_named(call, names, problem):
    assert any(problem in found for found in rest_tool_problems(definition(*names), call))


def test_where_the_upstreams_credential_goes_no_argument_may():
    header = CredentialPlace.of({"auth": "header", "header": "X-API-Key"}, has_secret=True)
    query = CredentialPlace.of({"auth": "query"}, has_secret=True)
    assert query == CredentialPlace(params=frozenset({"api_key"}))
    assert CredentialPlace.of({}, has_secret=True) == CredentialPlace()  # bearer: Authorization
    call = RestCall(
        method="GET",
        path="/",
        arguments=[
            RestArgument(name="key", in_="header", field="x-api-key"),
            RestArgument(name="api_key", in_="query"),
        ],
    )
    assert rest_tool_problems(definition("key", "api_key"), call) == []
    assert rest_tool_problems(definition("key", "api_key"), call, credential=header) == [
        "x-api-key cannot be a header a tool argument sets."
    ]
    assert rest_tool_problems(definition("key", "api_key"), call, credential=query) == [
        "api_key is the query parameter the upstream's credential goes in; a tool argument "
        "cannot set it."
    ]
    # An import leaves such parameters out: the gateway fills them.
    document = {
        "openapi": "3.0.0",
        "paths": {
            "/items": {
                "get": {
                    "operationId": "items",
                    "parameters": [
                        {"name": "X-API-Key", "in": "header", "required": True},
                        {"name": "api_key", "in": "query", "required": True},
                        {"name": "q", "in": "query"},
                    ],
                }
            }
        },
    }
    by_header = tools_from_openapi(document, credential=header)
    assert [arg.name for arg in by_header.tools[0].rest.arguments] == ["api_key", "q"]
    assert by_header.warnings == [
        "GET /items: left out the header parameter 'X-API-Key': the gateway sends the "
        "upstream's credential there."
    ]
    by_query = tools_from_openapi(document, credential=query)
    assert [arg.name for arg in by_query.tools[0].rest.arguments] == ["X-API-Key", "q"]


def test_a_stored_call_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="Not a REST call"):
        rest_call_from_json({"method": "TRACE", "path": "/"})
    with pytest.raises(ValueError, match="Not a REST call"):
        rest_call_from_json({"method": "GET", "path": "/", "extra": 1})
    assert rest_call_from_json(msgspec.to_builtins(RestCall(method="GET", path="/"))).path == "/"
