"""The demo REST service of ``make run``: a tiny notes and inventory API, no internet.

Run it with ``python -m devstack.demo_rest --port 9201``. Portico imports its OpenAPI
document (``GET /openapi.json``) into the REST-to-MCP product ``demo-rest-tools``, whose
tools the gateway serves at ``/mcp/demo-rest-tools`` by calling this service.

- ``GET /notes?tag=&limit=``, ``POST /notes``, ``GET /notes/{note_id}``,
  ``DELETE /notes/{note_id}``: notes kept in memory (a few to start with);
- ``GET /inventory?in_stock=``, ``GET /inventory/{sku}``,
  ``POST /inventory/{sku}/reservations``: a small shop's stock.

``--require-key KEY`` answers 401 unless ``X-API-Key: KEY`` is sent, the way a REST
service checks the credential the gateway adds (the app's own key never reaches it).
``GET /healthz`` and ``GET /openapi.json`` stay open.
"""

from __future__ import annotations

import hmac
import itertools
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from devstack.demo_mcp import demo_parser, run_demo
from devstack.fakes._asgi import Receive, Scope, Send, json_object, read_body, respond

_JSON = [(b"content-type", b"application/json")]
_NOTE = re.compile(r"^/notes/(\d+)$")
_ITEM = re.compile(r"^/inventory/([A-Za-z0-9-]+)$")
_RESERVE = re.compile(r"^/inventory/([A-Za-z0-9-]+)/reservations$")
MAX_BODY = 64 * 1024


def openapi_document(server_url: str) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document, naming ``server_url`` as its server."""
    note_id = {
        "name": "note_id",
        "in": "path",
        "required": True,
        "description": "The note's number.",
        "schema": {"type": "integer", "minimum": 1},
    }
    sku = {
        "name": "sku",
        "in": "path",
        "required": True,
        "description": "The item's stock-keeping unit, e.g. MUG-01.",
        "schema": {"type": "string"},
    }
    errors = {"404": {"$ref": "#/components/responses/NotFound"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Portico demo notes and inventory",
            "version": "1.0",
            "description": "Made-up data that lives in memory until the service stops.",
        },
        "servers": [{"url": server_url}],
        "paths": {
            "/notes": {
                "get": {
                    "operationId": "list_notes",
                    "summary": "List notes",
                    "description": "The newest notes first, optionally those with a tag.",
                    "parameters": [
                        {
                            "name": "tag",
                            "in": "query",
                            "description": "Only notes with this tag.",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "description": "At most this many notes.",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 50},
                        },
                    ],
                    "responses": {"200": {"description": "The notes."}},
                },
                "post": {
                    "operationId": "create_note",
                    "summary": "Write a note",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/NewNote"}}
                        },
                    },
                    "responses": {"201": {"description": "The note, with its number."}},
                },
            },
            "/notes/{note_id}": {
                "parameters": [note_id],
                "get": {
                    "operationId": "get_note",
                    "summary": "Read a note",
                    "responses": {"200": {"description": "The note."}, **errors},
                },
                "delete": {
                    "operationId": "delete_note",
                    "summary": "Delete a note",
                    "responses": {"204": {"description": "Deleted."}, **errors},
                },
            },
            "/inventory": {
                "get": {
                    "operationId": "list_inventory",
                    "summary": "List the items in stock",
                    "parameters": [
                        {
                            "name": "in_stock",
                            "in": "query",
                            "description": "true: only items with stock left.",
                            "schema": {"type": "boolean"},
                        }
                    ],
                    "responses": {"200": {"description": "The items."}},
                }
            },
            "/inventory/{sku}": {
                "get": {
                    "operationId": "get_item",
                    "summary": "Look up an item",
                    "description": "Its name, price and how many are left.",
                    "parameters": [sku],
                    "responses": {"200": {"description": "The item."}, **errors},
                }
            },
            "/inventory/{sku}/reservations": {
                "post": {
                    "operationId": "reserve_item",
                    "summary": "Reserve items",
                    "description": "Set some of an item's stock aside for an order.",
                    "parameters": [sku],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ReservationRequest"}
                            }
                        },
                    },
                    "responses": {"201": {"description": "The reservation."}, **errors},
                }
            },
        },
        "components": {
            "schemas": {
                "NewNote": {
                    "type": "object",
                    "required": ["title"],
                    "properties": {
                        "title": {"type": "string", "maxLength": 200},
                        "text": {"type": "string", "maxLength": 5000},
                        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                    },
                },
                "ReservationRequest": {
                    "type": "object",
                    "required": ["quantity"],
                    "properties": {
                        "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
                        "note": {"type": "string", "description": "Who it is for."},
                    },
                },
            },
            "responses": {"NotFound": {"description": "No such note or item."}},
        },
    }


@dataclass
class Store:
    """The service's data, in memory: a few notes and a small shop."""

    notes: dict[int, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def seeded(cls) -> Store:
        store = cls()
        for title, text, tags in (
            ("Welcome", "Notes live in memory until the demo service stops.", ["demo"]),
            ("Shopping", "Coffee beans, oat milk, a new mug.", ["home"]),
            ("Portico", "REST-to-MCP: these notes are tools now.", ["demo", "mcp"]),
        ):
            store.add_note(title=title, text=text, tags=tags)
        for sku, name, price, stock in (
            ("MUG-01", "Portico mug", 12.5, 40),
            ("TEE-02", "Gateway T-shirt", 22.0, 0),
            ("STK-03", "Sticker pack", 4.0, 250),
        ):
            store.items[sku] = {"sku": sku, "name": name, "price_eur": price, "stock": stock}
        return store

    def add_note(self, *, title: str, text: str, tags: list[str]) -> dict[str, Any]:
        number = next(self.numbers)
        note = {"id": number, "title": title, "text": text, "tags": tags}
        self.notes[number] = note
        return note


class DemoRest:
    """The ASGI app (see the module docstring)."""

    def __init__(self, *, require_key: str | None = None) -> None:
        self.store = Store.seeded()
        self.expected = require_key.encode() if require_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/healthz":
            await _reply(send, 200, {"status": "ok"})
            return
        if path == "/openapi.json" and method == "GET":
            host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode("latin-1")
            await _reply(send, 200, openapi_document(f"http://{host}"))
            return
        if self.expected is not None:
            sent = dict(scope["headers"]).get(b"x-api-key", b"")
            if not hmac.compare_digest(sent, self.expected):
                await _reply(send, 401, {"error": "A valid X-API-Key header is required."})
                return
        body = await read_body(receive)
        if len(body) > MAX_BODY:
            await _reply(send, 413, {"error": "The body is too large."})
            return
        query = {
            key: values[-1] for key, values in parse_qs(scope["query_string"].decode()).items()
        }
        status, answer = self.route(method, path, query, body)
        await _reply(send, status, answer)

    def route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        if path == "/notes" and method == "GET":
            return self.list_notes(query)
        if path == "/notes" and method == "POST":
            return self.create_note(body)
        if found := _NOTE.match(path):
            note = self.store.notes.get(int(found.group(1)))
            if note is None:
                return 404, {"error": f"There is no note {found.group(1)}."}
            if method == "GET":
                return 200, note
            if method == "DELETE":
                del self.store.notes[note["id"]]
                return 204, None
        if path == "/inventory" and method == "GET":
            items = list(self.store.items.values())
            if query.get("in_stock") == "true":
                items = [item for item in items if item["stock"] > 0]
            return 200, {"items": items}
        if (found := _ITEM.match(path)) and method == "GET":
            item = self.store.items.get(found.group(1).upper())
            if item is None:
                return 404, {"error": f"There is no item {found.group(1)}."}
            return 200, item
        if (found := _RESERVE.match(path)) and method == "POST":
            return self.reserve(found.group(1).upper(), body)
        return 404, {"error": f"Nothing answers {method} {path} here."}

    def list_notes(self, query: dict[str, str]) -> tuple[int, Any]:
        notes = sorted(self.store.notes.values(), key=lambda note: -note["id"])
        if tag := query.get("tag"):
            notes = [note for note in notes if tag in note["tags"]]
        try:
            limit = max(1, min(50, int(query.get("limit", "50"))))
        except ValueError:
            return 400, {"error": "limit is a whole number from 1 to 50."}
        return 200, {"notes": notes[:limit], "total": len(notes)}

    def create_note(self, body: bytes) -> tuple[int, Any]:
        data = json_object(body)
        title = data.get("title") if data else None
        if not isinstance(title, str) or not title.strip() or len(title) > 200:
            return 400, {"error": "A note needs a title of 1 to 200 characters."}
        text = data.get("text", "") if data else ""
        tags = data.get("tags", []) if data else []
        if not isinstance(text, str) or not isinstance(tags, list):
            return 400, {"error": "text is text, and tags a list of text."}
        clean_tags = [str(tag)[:40] for tag in tags[:10]]
        return 201, self.store.add_note(title=title.strip(), text=text[:5000], tags=clean_tags)

    def reserve(self, sku: str, body: bytes) -> tuple[int, Any]:
        item = self.store.items.get(sku)
        if item is None:
            return 404, {"error": f"There is no item {sku}."}
        data = json_object(body) or {}
        quantity = data.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= 100:
            return 400, {"error": "quantity is a whole number from 1 to 100."}
        if quantity > item["stock"]:
            return 409, {"error": f"Only {item['stock']} of {sku} are left."}
        item["stock"] -= quantity
        return 201, {
            "sku": sku,
            "quantity": quantity,
            "left": item["stock"],
            "note": data.get("note", ""),
        }


async def _reply(send: Send, status: int, body: object) -> None:
    if status == 204:  # no body, and so no Content-Length either
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await respond(send, status, orjson.dumps(body), _JSON)


def main(argv: list[str] | None = None) -> None:
    parser = demo_parser("The demo REST service of make run", port=9201, key_header="X-API-Key")
    args = parser.parse_args(argv)
    run_demo(DemoRest(require_key=args.require_key), args)


if __name__ == "__main__":
    main()
