"""The try-it playground: chat with a subscribed model, list and call the tools of a
subscribed MCP server, or talk to a subscribed agent, through the real gateway.

The playground calls the gateway exactly as the developer's code would, with a key of
the developer's own app. Keys are stored only as hashes, so the playground cannot use
an existing one: it issues a short-lived key named "Playground" for the app (visible
and revocable on the app's page like any other), keeps its plaintext only in the
server-side cache until shortly before it expires, and never sends it to the browser.

MCP tools are called as a client of the stateless 2026-07-28 protocol would: one POST
per request, no session, with the routing headers the protocol asks for. A form is
generated from each tool's input schema (:class:`ToolForm`).

Agents are sent A2A 1.0 ``SendStreamingMessage`` over JSON-RPC, as the A2A SDK's client
sends it, and each event of the stream is passed on to the page as soon as it arrives
(:func:`agent_stream`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson
from django import forms
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.utils import timezone

from catalog.models import ModelRoute, Product
from catalog.selectors import mcp_listing_for
from consumers import services
from consumers.models import Consumer, Subscription
from consumers.selectors import consumer_get_for_user
from gateway.mcp.upstream import MODERN_VERSION, header_value
from gateway.providers._convert import SseEvents
from gateway.providers.base import UpstreamFailure
from portal.agents import A2A_VERSION, a2a_message_request

PLAYGROUND_KEY_NAME = "Playground"
_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=30.0, pool=5.0)
# How long a call waits for a key issued a moment ago to reach the gateway.
_KEY_WAIT_SECONDS = 15.0
KEY_NOT_YET = "The gateway has not received your key yet. Try again in a few seconds."


@dataclass(frozen=True)
class Target:
    """A model the user can try, through one of their apps."""

    app_id: int
    app_name: str
    model: str
    product_name: str


def _approved_subscriptions(*, kind: str) -> QuerySet[Subscription]:
    """Approved subscriptions of active apps to published products of ``kind``."""
    return Subscription.objects.filter(
        consumer__status=Consumer.Status.ACTIVE,
        status=Subscription.Status.APPROVED,
        product__status=Product.Status.PUBLISHED,
        product__kind=kind,
    ).select_related("consumer", "product")


def targets_for(*, user: User) -> list[Target]:
    """Every (app, model) pair the user's apps are approved for, on published products."""
    subscriptions = (
        _approved_subscriptions(kind=Product.Kind.MODEL)
        .filter(consumer__owner=user)
        .prefetch_related("product__model_routes")
        .order_by("consumer__name", "product__name")
    )
    return [
        Target(sub.consumer_id, sub.consumer.name, route.name, sub.product.name)
        for sub in subscriptions
        for route in sub.product.model_routes.all()
        # The playground chats; embeddings models have nothing to say.
        if route.kind == ModelRoute.Kind.CHAT
    ]


def _cache_key(consumer: Consumer) -> str:
    return f"portico:playground-key:{consumer.pk}"


def playground_key(*, consumer: Consumer) -> str:
    """A working key of ``consumer`` for the playground, issued when none is cached."""
    cached = cache.get(_cache_key(consumer))
    if cached is not None:
        return str(cached)
    lifetime = settings.PORTICO_PLAYGROUND_KEY_SECONDS
    issued = services.credential_create(
        consumer=consumer,
        name=PLAYGROUND_KEY_NAME,
        expires_at=timezone.now() + timedelta(seconds=lifetime),
    )
    # Forget it a minute before it expires, so a chat never starts on a dying key.
    cache.set(_cache_key(consumer), issued.key, timeout=lifetime - 60)
    return issued.key


def _gateway() -> httpx.AsyncClient:
    """A client of the gateway as the control plane reaches it, with the playground's
    timeouts (a tool or a model may take a while; connecting must not)."""
    base = str(settings.PORTICO_GATEWAY_INTERNAL_URL).rstrip("/")
    return httpx.AsyncClient(base_url=base, timeout=_TIMEOUT)


def _unreachable(exc: httpx.HTTPError) -> str:
    return f"Could not reach the gateway ({type(exc).__name__})."


def _event(name: str, payload: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def _wait_until_known(client: httpx.AsyncClient, key: str) -> bool:
    # A key issued a moment ago reaches the gateway with the next revision.
    deadline = time.monotonic() + _KEY_WAIT_SECONDS
    while time.monotonic() < deadline:
        response = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        if response.status_code == 200:
            return True
        await asyncio.sleep(0.25)
    return False


async def _guarded(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``events``, ended by an ``error`` event when the gateway cannot be reached."""
    try:
        async for event in events:
            yield event
    except httpx.HTTPError as exc:
        # The page must say what happened rather than wait forever on a dead stream.
        yield _event("error", {"message": _unreachable(exc)})


def chat_stream(*, key: str, model: str, message: str) -> AsyncIterator[bytes]:
    """Relay a streamed chat completion as ``delta`` events, then ``done`` or ``error``."""
    return _guarded(_chat_events(key=key, model=model, message=message))


async def _chat_events(*, key: str, model: str, message: str) -> AsyncIterator[bytes]:
    async with _gateway() as client:
        if not await _wait_until_known(client, key):
            yield _event("error", {"message": KEY_NOT_YET})
            return
        body = {
            "model": model,
            "messages": [{"role": "user", "content": message}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {key}"}
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                detail = (await response.aread())[:2000]
                try:
                    text = orjson.loads(detail)["error"]["message"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    text = f"The gateway answered {response.status_code}."
                yield _event("error", {"message": text, "status": response.status_code})
                return
            usage: object = None
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = orjson.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield _event("delta", {"text": text})
            yield _event("done", {"usage": usage})


# MCP servers: which the user can try, and their tools ---------------------------------------


@dataclass(frozen=True)
class AppProduct:
    """A product the user can try through one of their apps: an approved subscription
    of an active app to a published product (an agent, in the Agents tab)."""

    consumer: Consumer
    product: Product

    @property
    def value(self) -> str:
        """How forms and links name the target: ``<app id>:<product slug>``."""
        return f"{self.consumer.pk}:{self.product.slug}"


@dataclass(frozen=True)
class McpTarget(AppProduct):
    """An MCP server the user can try through one of their apps."""

    # The subscription's allow-list (None: every tool the product serves).
    allowed_tools: tuple[str, ...] | None

    def allows(self, name: str) -> bool:
        # The gateway's rule (gateway.mcp.server): None allows all, a list only its names.
        return self.allowed_tools is None or name in self.allowed_tools


# Ids are ASCII digits ("²".isdigit() is True, int() rejects it); slugs are SlugField's.
_TARGET = re.compile(r"([0-9]{1,18}):([-a-zA-Z0-9_]{1,100})")
SLUG = re.compile(r"[-a-zA-Z0-9_]{1,100}")


def _mcp_target(subscription: Subscription) -> McpTarget:
    allowed = subscription.allowed_tools
    return McpTarget(
        subscription.consumer,
        subscription.product,
        None if allowed is None else tuple(str(name) for name in allowed),
    )


def _subscriptions_of(*, user: User, kind: str) -> QuerySet[Subscription]:
    """The user's own apps' approved subscriptions to products of ``kind``."""
    return (
        _approved_subscriptions(kind=kind)
        .filter(consumer__owner=user)
        .order_by("product__name", "consumer__name", "pk")
    )


def _subscription_named(
    *, user: User | AnonymousUser, value: str, kind: str
) -> Subscription | None:
    """The approved subscription to a published product of ``kind`` that ``value``
    (``<app id>:<product slug>``) names, or None.

    The app goes through the access helper of apps: anyone else's is a 404.
    """
    match = _TARGET.fullmatch(value)
    if match is None:
        return None
    consumer = consumer_get_for_user(user=user, pk=int(match[1]))
    return (
        _approved_subscriptions(kind=kind).filter(consumer=consumer, product__slug=match[2]).first()
    )


def mcp_targets_for(*, user: User) -> list[McpTarget]:
    """Every (app, MCP server) pair the user's own apps are approved for."""
    return [_mcp_target(sub) for sub in _subscriptions_of(user=user, kind=Product.Kind.MCP)]


def mcp_target_get(*, user: User | AnonymousUser, value: str) -> McpTarget | None:
    """The (app, MCP server) pair ``value`` names (see :func:`_subscription_named`)."""
    subscription = _subscription_named(user=user, value=value, kind=Product.Kind.MCP)
    return None if subscription is None else _mcp_target(subscription)


def agent_targets_for(*, user: User) -> list[AppProduct]:
    """Every (app, agent) pair the user's own apps are approved for."""
    subscriptions = _subscriptions_of(user=user, kind=Product.Kind.AGENT)
    return [AppProduct(sub.consumer, sub.product) for sub in subscriptions]


def agent_target_get(*, user: User | AnonymousUser, value: str) -> AppProduct | None:
    """The (app, agent) pair ``value`` names (see :func:`_subscription_named`)."""
    subscription = _subscription_named(user=user, value=value, kind=Product.Kind.AGENT)
    return None if subscription is None else AppProduct(subscription.consumer, subscription.product)


@dataclass(frozen=True)
class PlaygroundTool:
    """A tool the playground offers: its served (pinned) definition."""

    name: str
    title: str
    description: str
    input_schema: str  # pretty JSON, as the product page shows it
    schema: dict[str, Any]


def mcp_tools_for(*, target: McpTarget) -> list[PlaygroundTool]:
    """The tools of ``target``: what the product page lists (the served, pinned
    definitions) less what the subscription's allow-list leaves out, which is what the
    gateway lists to the app's key."""
    listing = mcp_listing_for(product=target.product)
    if listing is None:
        return []
    tools = []
    for tool in listing.tools:
        if target.allows(tool.name):
            tools.append(
                PlaygroundTool(
                    name=tool.name,
                    title=tool.title,
                    description=tool.description,
                    input_schema=tool.input_schema,
                    schema=tool.schema if isinstance(tool.schema, dict) else {},
                )
            )
    return tools


# A form from a tool's input schema ----------------------------------------------------------

# Beyond this many properties the form offers the raw JSON arguments only.
MAX_FIELDS = 40
# The simple JSON types, and the Python values of each (JSON true is no integer).
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}
_NOT_SENT = "(not sent)"


def _simple(prop: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What kind of input a property gets: ``string``, ``integer``, ``number``,
    ``boolean`` or ``enum`` with the schema that says so, else ``json`` (objects, arrays,
    unions: a JSON text area).

    A type that also allows null (``["integer", "null"]``, or the ``anyOf`` of one type
    and null that pydantic writes for ``int | None``) counts as that type: leaving its
    field empty sends nothing.
    """
    options = prop.get("anyOf")
    if isinstance(options, list):
        rest = [option for option in options if option != {"type": "null"}]
        if len(options) == 2 and len(rest) == 1 and isinstance(rest[0], dict):
            outer = {k: v for k, v in prop.items() if k != "anyOf"}
            kind, inner = _simple(rest[0])
            if kind != "json":
                return kind, {**outer, **inner}
        return "json", prop
    enum = prop.get("enum")
    if isinstance(enum, list) and enum:
        if all(v is None or isinstance(v, str | int | float | bool) for v in enum):
            return "enum", prop
        return "json", prop
    declared: object = prop.get("type")
    if isinstance(declared, list):
        rest = [name for name in declared if name != "null"]
        declared = rest[0] if len(rest) == 1 else None
    if isinstance(declared, str) and declared in _PYTHON_TYPES:
        return declared, prop
    return "json", prop


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


class JsonArgumentField(forms.JSONField):
    """A JSON text area that starts empty (Django's shows ``null``): empty sends nothing."""

    def prepare_value(self, value: Any) -> Any:
        return "" if value is None else super().prepare_value(value)


def _initial(kind: str, default: object) -> Any:
    """The schema's default as a field's initial value, if it is a value of ``kind``."""
    types = _PYTHON_TYPES[kind]
    if isinstance(default, bool) and bool not in types:
        return None
    return default if isinstance(default, types) else None


def _field_for(prop: dict[str, Any], *, required: bool) -> tuple[str, forms.Field]:
    kind, prop = _simple(prop)
    description = prop.get("description")
    help_text = description if isinstance(description, str) else ""
    default = prop.get("default")
    common: dict[str, Any] = {"required": required, "help_text": help_text}
    if kind == "string":
        return kind, forms.CharField(strip=False, initial=_initial(kind, default), **common)
    if kind == "integer":
        return kind, forms.IntegerField(initial=_initial(kind, default), **common)
    if kind == "number":
        return kind, forms.FloatField(initial=_initial(kind, default), **common)
    if kind == "boolean":
        if required:
            # A check box always says true or false.
            return kind, forms.BooleanField(
                required=False, initial=_initial(kind, default), help_text=help_text
            )
        select = forms.NullBooleanSelect()
        select.choices = [("unknown", _NOT_SENT), ("true", "true"), ("false", "false")]
        return kind, forms.NullBooleanField(
            widget=select, initial=_initial(kind, default), help_text=help_text
        )
    if kind == "enum":
        values = prop["enum"]
        choices = [(_json_text(v), v if isinstance(v, str) else _json_text(v)) for v in values]
        if not required:
            choices.insert(0, ("", _NOT_SENT))
        initial = _json_text(default) if default in values else None
        return kind, forms.TypedChoiceField(
            choices=choices, coerce=json.loads, empty_value=None, initial=initial, **common
        )
    shape = prop.get("type")
    placeholder = {"object": "{}", "array": "[]"}.get(shape if isinstance(shape, str) else "")
    widget = forms.Textarea(attrs={"rows": 3, "placeholder": placeholder or "JSON"})
    return kind, JsonArgumentField(widget=widget, initial=default, **common)


@dataclass(frozen=True)
class ArgumentRow:
    """One generated field, for the template: the property it fills and how."""

    field: forms.BoundField
    name: str
    kind: str
    required: bool


class ToolForm(forms.Form):
    """The arguments of one tool, generated from its input schema.

    Each property described simply (string, integer, number, boolean, enumeration) gets
    an input of its kind, any other (objects, arrays, unions) a JSON text area; fields
    left empty send nothing. ``raw``, a JSON object, is sent instead of all of them when
    filled in: for whatever the fields cannot say. The gateway checks the arguments
    against the schema either way, so this form only has to make a call easy to write.
    """

    raw = JsonArgumentField(
        required=False,
        label="Raw JSON arguments",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": '{"name": "value"}'}),
        help_text="When filled in, this JSON object is sent as the arguments and the fields "
        "above are ignored.",
    )

    def __init__(self, data: Mapping[str, Any] | None = None, *, schema: Mapping[str, Any]) -> None:
        super().__init__(data)
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = required if isinstance(required, list) else []
        needed = {name for name in required if isinstance(name, str)}
        self.too_many = len(properties) > MAX_FIELDS
        # Keyed by position: a property's name may be anything, even "raw" or "tool".
        self.arguments_fields: list[tuple[str, str, str]] = []
        generated: dict[str, forms.Field] = {}
        if not self.too_many:
            for index, (name, prop) in enumerate(properties.items()):
                kind, field = _field_for(
                    prop if isinstance(prop, dict) else {}, required=name in needed
                )
                generated[f"arg{index}"] = field
                self.arguments_fields.append((f"arg{index}", name, kind))
        self.fields = {**generated, "raw": self.fields["raw"]}
        self.uses_raw = data is not None and bool(str(data.get("raw") or "").strip())
        if self.uses_raw:
            for key, _, _ in self.arguments_fields:
                self.fields[key].required = False
        self._needed = needed

    def rows(self) -> list[ArgumentRow]:
        return [
            ArgumentRow(self[key], name, kind, name in self._needed)
            for key, name, kind in self.arguments_fields
        ]

    def clean_raw(self) -> Any:
        raw = self.cleaned_data.get("raw")
        if raw is not None and not isinstance(raw, dict):
            raise ValidationError(
                'The raw arguments must be a JSON object, like {"city": "Lisbon"}.'
            )
        return raw

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.uses_raw:
            # What the fields hold is not sent, so it need not be valid either.
            for key, _, _ in self.arguments_fields:
                self.errors.pop(key, None)
        return cleaned

    def arguments(self) -> dict[str, Any]:
        """The call's arguments (once the form is valid)."""
        raw = self.cleaned_data.get("raw")
        if raw is not None:
            return dict(raw)
        arguments: dict[str, Any] = {}
        for key, name, kind in self.arguments_fields:
            value = self.cleaned_data.get(key)
            if value is None or (kind == "string" and value == ""):
                continue
            arguments[name] = value
        return arguments


# Calling the gateway -----------------------------------------------------------------------

MCP_CLIENT_INFO = {"name": "portico-playground", "version": "1"}
# The playground shows replies up to this size: a page of megabytes helps nobody.
MAX_REPLY_BYTES = 4 << 20
_REQUEST_ID = 1
# What the page shows instead of the key in the request it sent.
KEY_PLACEHOLDER = "Bearer <the app's Playground key>"


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class Block:
    """One content block of a tool's result, as the page shows it: ``text``, ``json``
    (pretty-printed), ``image`` (``src`` is a data URI of an image/* type) or ``note``
    (what the playground does not show, and why)."""

    kind: str
    text: str = ""
    src: str = ""
    label: str = ""


_IMAGE_TYPE = re.compile(r"image/[a-zA-Z0-9.+-]{1,100}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def content_blocks(content: object) -> list[Block]:
    """The blocks of a ``tools/call`` result's ``content``."""
    return [_block(item) for item in content] if isinstance(content, list) else []


def _text_block(text: str, label: str = "text") -> Block:
    if text.lstrip()[:1] in ("{", "["):
        try:
            return Block("json", _pretty(json.loads(text)), label=label)
        except ValueError:
            pass
    return Block("text", text, label=label)


def _block(item: object) -> Block:
    if not isinstance(item, dict):
        return Block("note", f"A content block that is not an object: {_pretty(item)}")
    kind, mime = item.get("type"), item.get("mimeType")
    if kind == "text" and isinstance(item.get("text"), str):
        return _text_block(item["text"])
    if kind == "image":
        data = item.get("data")
        if (
            isinstance(mime, str)
            and _IMAGE_TYPE.fullmatch(mime)
            and isinstance(data, str)
            and _BASE64.fullmatch(data)
        ):
            return Block("image", src=f"data:{mime};base64,{data}", label=mime)
        return Block(
            "note",
            f"An image block of type {mime!r}: the playground shows images of an image/* "
            "type, in base64, only.",
        )
    if kind == "resource" and isinstance(item.get("resource"), dict):
        resource = item["resource"]
        if isinstance(resource.get("text"), str):
            return _text_block(resource["text"], label=f"resource {resource.get('uri', '')}")
    shown = _pretty({k: v for k, v in item.items() if k not in ("data", "blob")})
    return Block("note", f"A {kind!r} block, which the playground does not show in full:\n{shown}")


@dataclass
class McpReply:
    """One MCP request to the gateway and what came back, ready to show."""

    method: str
    sent_headers: dict[str, str]  # the key replaced by KEY_PLACEHOLDER
    sent_body: str  # pretty JSON
    status: int | None = None
    request_id: str = ""
    latency_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # the JSON-RPC error object, as the gateway sent it
    problem: str = ""  # why there is no JSON-RPC reply at all
    blocks: list[Block] = field(default_factory=list)

    @property
    def is_error(self) -> bool:
        return bool(self.result and self.result.get("isError"))

    @property
    def structured(self) -> str | None:
        if self.result is None or "structuredContent" not in self.result:
            return None
        return _pretty(self.result["structuredContent"])

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        """What ``tools/list`` answered."""
        listed = self.result.get("tools") if self.result else None
        if not isinstance(listed, list):
            return None
        return [tool for tool in listed if isinstance(tool, dict)]

    @property
    def error_data(self) -> str | None:
        if self.error is None or "data" not in self.error:
            return None
        return _pretty(self.error["data"])


def mcp_message(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A request of the stateless 2026-07-28 protocol: the envelope ``_meta`` on each."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": MCP_CLIENT_INFO,
    }
    return {
        "jsonrpc": "2.0",
        "id": _REQUEST_ID,
        "method": method,
        "params": {**params, "_meta": meta},
    }


def mcp_headers(method: str, params: dict[str, Any]) -> dict[str, str]:
    """The routing headers the protocol asks for (``Mcp-Name`` for a tool call)."""
    headers = {
        "MCP-Protocol-Version": MODERN_VERSION,
        "Mcp-Method": method,
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    if method == "tools/call":
        headers["Mcp-Name"] = header_value(str(params["name"]))
    return headers


class _TooLarge(Exception):
    pass


async def mcp_request(*, key: str, slug: str, method: str, params: dict[str, Any]) -> McpReply:
    """Send one MCP request to ``/mcp/<slug>`` as a client of the stateless protocol
    would (one POST, no session), and read the reply to it.

    A reply in server-sent events is read until the message answering the request,
    past any notifications. What goes wrong on the way is in ``problem``, worded for the
    page; the gateway's own JSON-RPC errors are in ``error``.
    """
    message = mcp_message(method, params)
    headers = mcp_headers(method, params)
    reply = McpReply(
        method=method,
        sent_headers={"Authorization": KEY_PLACEHOLDER, **headers},
        sent_body=_pretty(message),
    )
    try:
        async with _gateway() as client:
            if not await _wait_until_known(client, key):
                reply.problem = KEY_NOT_YET
                return reply
            started = time.monotonic()
            async with client.stream(
                "POST",
                f"/mcp/{slug}",
                content=orjson.dumps(message),
                headers={**headers, "Authorization": f"Bearer {key}"},
            ) as response:
                reply.status = response.status_code
                reply.request_id = response.headers.get("x-request-id", "")
                answer = await _read_answer(response)
            reply.latency_ms = round((time.monotonic() - started) * 1000)
    except httpx.HTTPError as exc:
        reply.problem = _unreachable(exc)
        return reply
    except _TooLarge:
        reply.problem = (
            f"The reply is larger than {MAX_REPLY_BYTES >> 20} MB, more than the playground "
            "shows. Call the tool from your own code to see it."
        )
        return reply
    if answer is None:
        reply.problem = f"The gateway answered HTTP {reply.status} without a JSON-RPC reply."
        return reply
    result, error = answer.get("result"), answer.get("error")
    reply.result = result if isinstance(result, dict) else None
    reply.error = error if isinstance(error, dict) else None
    if reply.result is not None:
        reply.blocks = content_blocks(reply.result.get("content"))
    return reply


def _answer_of(data: bytes, *, sse: bool) -> dict[str, Any] | None:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or not ("result" in message or "error" in message):
        return None
    # In a stream, only the message answering our request (not a notification, nor a
    # request of the server's); a JSON body is the answer, even an error without an id.
    if sse and message.get("id") != _REQUEST_ID:
        return None
    return message


async def _read_answer(response: httpx.Response) -> dict[str, Any] | None:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = SseEvents(limit=MAX_REPLY_BYTES)
        try:
            async for piece in response.aiter_bytes():
                for data in events.feed(piece):
                    if (answer := _answer_of(data, sse=True)) is not None:
                        return answer
        except UpstreamFailure:  # one event longer than the limit
            raise _TooLarge from None
        for data in events.close():
            if (answer := _answer_of(data, sse=True)) is not None:
                return answer
        return None
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > MAX_REPLY_BYTES:
            raise _TooLarge
    return _answer_of(bytes(body), sse=False)


# Agents: one A2A message, its events streamed to the page ------------------------------------

A2A_HEADERS = {
    "A2A-Version": A2A_VERSION,
    "Accept": "text/event-stream",
    "Content-Type": "application/json",
}
# A context id the gateway handed out: opaque, printable, never long.
CONTEXT_ID = re.compile(r"[\x21-\x7e]{1,1000}")
_TASK_STATE_PREFIX = "TASK_STATE_"


def agent_stream(*, key: str, slug: str, text: str, context_id: str = "") -> AsyncIterator[bytes]:
    """Send ``text`` to the agent product ``slug`` through the gateway and relay the
    reply to the page as server-sent events, each as soon as it arrives:

    - ``task`` ``{taskId, contextId, state}``: the task the agent made;
    - ``status`` ``{state, text, contextId}``: a status update (``text`` its message's);
    - ``artifact`` ``{artifactId, name, text, append}``: an artifact or a chunk of one;
    - ``message`` ``{text, contextId}``: the agent's answer as a message;
    - ``error`` ``{message}``, then the stream ends; else ``done`` ``{contextId}``.

    States are lower case without their prefix (``working``, ``completed``). Every text
    is the agent's, untrusted: the page inserts it as text, never as markup.
    """
    return _guarded(_agent_events(key=key, slug=slug, text=text, context_id=context_id))


async def _agent_events(*, key: str, slug: str, text: str, context_id: str) -> AsyncIterator[bytes]:
    async with _gateway() as client:
        if not await _wait_until_known(client, key):
            yield _event("error", {"message": KEY_NOT_YET})
            return
        relay = _AgentRelay(context_id=context_id)
        request = a2a_message_request(
            "SendStreamingMessage", text, message_id=str(uuid.uuid4()), context_id=context_id
        )
        body = orjson.dumps(request)
        headers = {**A2A_HEADERS, "Authorization": f"Bearer {key}"}
        async with client.stream(
            "POST", f"/agents/{slug}", content=body, headers=headers
        ) as response:
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                events = SseEvents(limit=MAX_REPLY_BYTES)
                try:
                    async for piece in response.aiter_bytes():
                        for data in events.feed(piece):
                            for event in relay.reply(data):
                                yield event
                    for data in events.close():
                        for event in relay.reply(data):
                            yield event
                except UpstreamFailure:  # one event longer than the limit
                    yield relay.fail(f"An event is larger than {MAX_REPLY_BYTES >> 20} MB.")
            else:
                # A JSON body: an error before the stream began, or a whole reply.
                answer = (await response.aread())[:MAX_REPLY_BYTES]
                for event in relay.reply(answer, status=response.status_code):
                    yield event
        if not relay.failed:
            yield _event("done", {"contextId": relay.context_id})


class _AgentRelay:
    """Turns the gateway's JSON-RPC replies (each a StreamResponse) into page events,
    keeping the conversation's context id."""

    def __init__(self, *, context_id: str) -> None:
        self.context_id = context_id
        self.failed = False

    def fail(self, message: str) -> bytes:
        self.failed = True
        return _event("error", {"message": message})

    def reply(self, data: bytes, *, status: int = 200) -> list[bytes]:
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            return [self.fail(f"The gateway answered HTTP {status} without a JSON-RPC reply.")]
        error = answer.get("error")
        if isinstance(error, dict):  # a JSON-RPC error, or the gateway's own (no code)
            return [self.fail(_rpc_error_text(error))]
        result = answer.get("result")
        if not isinstance(result, dict):
            return [self.fail(f"The gateway answered HTTP {status} without a JSON-RPC reply.")]
        return self.result(result)

    def _context(self, value: dict[str, Any]) -> str:
        context_id = value.get("contextId")
        if isinstance(context_id, str) and CONTEXT_ID.fullmatch(context_id):
            self.context_id = context_id
        return self.context_id

    def result(self, result: dict[str, Any]) -> list[bytes]:
        """The page's events for one StreamResponse (``task``, ``message``,
        ``statusUpdate`` or ``artifactUpdate``)."""
        if isinstance(task := result.get("task"), dict):
            status = _dict(task.get("status"))
            events = [
                _event(
                    "task",
                    {
                        "taskId": str(task.get("id", "")),
                        "contextId": self._context(task),
                        "state": _state(status.get("state")),
                    },
                )
            ]
            if (text := _parts_text(_dict(status.get("message")).get("parts"))) is not None:
                events.append(
                    _event("status", {"state": _state(status.get("state")), "text": text})
                )
            # A whole task (an agent that does not stream): its artifacts at once.
            for artifact in task.get("artifacts") or []:
                events.append(_artifact_event(_dict(artifact), append=False))
            return events
        if isinstance(message := result.get("message"), dict):
            text = _parts_text(message.get("parts")) or ""
            return [_event("message", {"text": text, "contextId": self._context(message)})]
        if isinstance(update := result.get("statusUpdate"), dict):
            status = _dict(update.get("status"))
            return [
                _event(
                    "status",
                    {
                        "state": _state(status.get("state")),
                        "text": _parts_text(_dict(status.get("message")).get("parts")) or "",
                        "contextId": self._context(update),
                    },
                )
            ]
        if isinstance(update := result.get("artifactUpdate"), dict):
            self._context(update)
            return [
                _artifact_event(_dict(update.get("artifact")), append=update.get("append") is True)
            ]
        return []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _state(value: object) -> str:
    state = value if isinstance(value, str) else "unknown"
    return state.removeprefix(_TASK_STATE_PREFIX).lower()


def _parts_text(parts: object) -> str | None:
    """The text of a message's or an artifact's parts (data as JSON, files by name);
    ``None`` when there are no parts."""
    if not isinstance(parts, list) or not parts:
        return None
    texts = []
    for part in parts:
        part = _dict(part)
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif "data" in part:
            texts.append(_pretty(part["data"]))
        elif "url" in part or "raw" in part:
            texts.append(f"[file {part.get('filename') or part.get('url') or ''}]".strip())
    return "".join(texts)


def _artifact_event(artifact: dict[str, Any], *, append: bool) -> bytes:
    return _event(
        "artifact",
        {
            "artifactId": str(artifact.get("artifactId", "")),
            "name": str(artifact.get("name") or ""),
            "text": _parts_text(artifact.get("parts")) or "",
            "append": append,
        },
    )


def _rpc_error_text(error: dict[str, Any]) -> str:
    message = error.get("message")
    code = error.get("code")
    text = message if isinstance(message, str) and message else "The agent call failed."
    return f"{text} (JSON-RPC error {code})" if isinstance(code, int) else text
