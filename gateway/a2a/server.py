"""A2A endpoints: ``/agents/<product>`` for each agent product.

- ``GET /agents/<p>/.well-known/agent-card.json``: the card (``gateway.a2a.card``), for
  anyone (clients read it before they authenticate), with an ETag.
- ``POST /agents/<p>``: JSON-RPC, both versions: v1.0 (``SendMessage``,
  ``SendStreamingMessage``, ``GetTask``, ``ListTasks``, ``CancelTask``,
  ``SubscribeToTask``) and v0.3 (``message/send``, ``message/stream``, ``tasks/get``,
  ``tasks/cancel``, ``tasks/resubscribe``). The method says which; an ``A2A-Version``
  header naming a version the gateway does not speak is refused (-32009).
- The v1.0 HTTP+JSON binding under the same URL: ``POST message:send``,
  ``POST message:stream``, ``GET tasks/<id>``, ``POST tasks/<id>:cancel``,
  ``GET|POST tasks/<id>:subscribe``, ``GET tasks``.

Every call but the card's is authenticated with the app's key (``Authorization:
Bearer`` or ``x-api-key``) and needs a subscription to the product; it then counts
against three limits, the subscription's own (an admin's, ``Subscription.
requests_per_minute``), its plan's, and the product's global one. The request is
checked before anything is sent: bad JSON, an unknown method, a message without parts
or with a part that is none of text, file or data, a task id this app was not given —
each gets its A2A error and reaches no agent.

A new message goes to a target chosen by weight (``gateway.routing.weighted_order``:
at random, or per consumer with ``affinity: consumer``), healthy targets first; a
message that continues a task or a context goes to the target that owns it (the ids
say which: ``gateway.a2a.ids``); ``x-portico-upstream: <version or upstream name>``
pins a call. When a target cannot be reached at all the next is tried; any other
failure is the call's. Failures count towards ejecting a target
(``gateway.routing.Router``), and so do the health probes each process sends
(``gateway.a2a.health``).

Errors are A2A errors in the caller's binding and version: JSON-RPC errors (HTTP 200)
with an ``ErrorInfo`` in ``data`` for v1.0, ``google.rpc.Status`` bodies with the
matching HTTP status for HTTP+JSON. The gateway's own decisions use codes of its own
and HTTP statuses: -32040 no or bad key (401), -32043 not subscribed (403), -32029 over
a limit (429, with ``retry-after``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson

from gateway.a2a import translate
from gateway.a2a.card import served_card
from gateway.a2a.ids import CONTEXT, PREFIX, TASK, AgentId, IdCodec
from gateway.a2a.index import CARD_PATH, ServedAgent, ServedTarget
from gateway.a2a.tasks import TaskBook
from gateway.a2a.upstream import AgentClient, AgentDown, AgentRpcError
from gateway.limits import Decision
from gateway.responses import ApiError, client_gone, send_body, send_chunk
from gateway.routing import Router, unit_hash, weighted_order
from gateway.schema import Consumer, Subscription
from gateway.types import CallRecord, Headers, Receive, Scope, Send

log = logging.getLogger("gateway.a2a")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TASK_NOT_FOUND = -32001
TASK_NOT_CANCELABLE = -32002
PUSH_NOT_SUPPORTED = -32003
UNSUPPORTED_OPERATION = -32004
INVALID_AGENT_RESPONSE = -32006
EXTENDED_CARD_NOT_CONFIGURED = -32007
VERSION_NOT_SUPPORTED = -32009
UNAUTHENTICATED = -32040
FORBIDDEN = -32043
RATE_LIMITED = -32029

# code -> (HTTP status, google.rpc status, ErrorInfo reason)
_CODES: dict[int, tuple[int, str, str]] = {
    TASK_NOT_FOUND: (404, "NOT_FOUND", "TASK_NOT_FOUND"),
    TASK_NOT_CANCELABLE: (400, "FAILED_PRECONDITION", "TASK_NOT_CANCELABLE"),
    PUSH_NOT_SUPPORTED: (400, "FAILED_PRECONDITION", "PUSH_NOTIFICATION_NOT_SUPPORTED"),
    UNSUPPORTED_OPERATION: (400, "FAILED_PRECONDITION", "UNSUPPORTED_OPERATION"),
    -32005: (400, "INVALID_ARGUMENT", "CONTENT_TYPE_NOT_SUPPORTED"),
    INVALID_AGENT_RESPONSE: (502, "INTERNAL", "INVALID_AGENT_RESPONSE"),
    EXTENDED_CARD_NOT_CONFIGURED: (
        400,
        "FAILED_PRECONDITION",
        "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
    ),
    -32008: (400, "FAILED_PRECONDITION", "EXTENSION_SUPPORT_REQUIRED"),
    VERSION_NOT_SUPPORTED: (400, "FAILED_PRECONDITION", "VERSION_NOT_SUPPORTED"),
    PARSE_ERROR: (400, "INVALID_ARGUMENT", "PARSE_ERROR"),
    INVALID_REQUEST: (400, "INVALID_ARGUMENT", "INVALID_REQUEST"),
    METHOD_NOT_FOUND: (404, "NOT_FOUND", "METHOD_NOT_FOUND"),
    INVALID_PARAMS: (400, "INVALID_ARGUMENT", "INVALID_PARAMS"),
    INTERNAL_ERROR: (500, "INTERNAL", "INTERNAL_ERROR"),
    UNAUTHENTICATED: (401, "UNAUTHENTICATED", "UNAUTHENTICATED"),
    FORBIDDEN: (403, "PERMISSION_DENIED", "NOT_SUBSCRIBED"),
    RATE_LIMITED: (429, "RESOURCE_EXHAUSTED", "RATE_LIMITED"),
}
_OWN_CODES = frozenset({UNAUTHENTICATED, FORBIDDEN, RATE_LIMITED})
# The codes v0.3 knows; others reach v0.3 callers as internal errors, as the SDK does.
_V03_CODES = frozenset({*range(-32007, -32000), PARSE_ERROR, *range(-32603, -32599)})
_V1_METHODS = frozenset(
    {
        "SendMessage",
        "SendStreamingMessage",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "SubscribeToTask",
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
        "GetExtendedAgentCard",
    }
)
_STREAMING = frozenset({"SendStreamingMessage", "SubscribeToTask"})
_TASK_METHODS = frozenset({"GetTask", "CancelTask", "SubscribeToTask"})
_VERSIONS = ("1.0", "0.3")
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]
_MAX_PAGE = 100
# A comment line on a stream that has been quiet this long.
KEEPALIVE_SECONDS = 15.0


class A2aError(Exception):
    def __init__(
        self,
        code: int,
        message: str,
        *,
        data: list[Any] | None = None,
        headers: Headers | None = None,
        status: int | None = None,
        http: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.headers = headers or []
        self.status = status or _CODES.get(code, (500, "", ""))[0]
        # An HTTP-level refusal (wrong method, body too large, not ready, the gateway's
        # own decisions): sent with its status in JSON-RPC too, where A2A's own errors
        # travel with 200.
        self.http = http or code in _OWN_CODES


class Call(CallRecord, Protocol):
    """What the gateway records of a call (``gateway.app.Call``)."""

    stream: bool
    pin: str | None
    outcome: Any  # ``outcome.target``: the target that served the call (usage, headers)


class Host(Protocol):
    """What the A2A endpoints need of the gateway process around them."""

    def authenticate(self, call: Any, key: bytes | None) -> tuple[Any, Consumer]: ...

    def current(self) -> Any: ...

    async def read_body(self, receive: Receive, declared: bytes | None) -> bytes: ...

    async def acquire(
        self, subscription: Subscription, estimate: Callable[[], int]
    ) -> Decision | None: ...

    async def acquire_rate(self, key: str, per_minute: int, what: str) -> Decision: ...

    async def settle(self, decision: Decision | None, tokens: int) -> None: ...

    def record_target(self, call: Any, label: str) -> None: ...


@dataclass(slots=True)
class _Caller:
    """How the app asked, which is how it is answered."""

    binding: str  # "jsonrpc" or "rest"
    version: str  # "1.0" or "0.3"
    rpc_id: Any = None

    def result(self, method: str, result: dict[str, Any]) -> bytes:
        if self.version == "0.3":
            result = (
                translate.task_to_v03(result)
                if method in ("GetTask", "CancelTask")
                else translate.event_to_v03(result)
            )
        if self.binding == "rest":
            return orjson.dumps(result)
        return orjson.dumps({"jsonrpc": "2.0", "id": self.rpc_id, "result": result})

    def error(self, err: A2aError) -> tuple[int, bytes]:
        _, grpc, reason = _CODES.get(err.code, (err.status, "INTERNAL", ""))
        info: dict[str, Any] = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason or "INTERNAL_ERROR",
            "domain": "portico" if err.code in _OWN_CODES else "a2a-protocol.org",
            "metadata": {},
        }
        if self.binding == "rest":
            details = err.data if err.data else [info]
            body = {
                "error": {
                    "code": err.status,
                    "status": grpc,
                    "message": err.message,
                    "details": details,
                }
            }
            return err.status, orjson.dumps(body)
        if self.version == "0.3":
            code = err.code if err.code in _V03_CODES or err.code in _OWN_CODES else INTERNAL_ERROR
            error: dict[str, Any] = {"code": code, "message": err.message, "data": None}
        else:
            error = {"code": err.code, "message": err.message, "data": err.data or [info]}
        http = err.status if err.http else 200
        return http, orjson.dumps({"jsonrpc": "2.0", "id": self.rpc_id, "error": error})

    def event(self, event: dict[str, Any]) -> bytes:
        if self.version == "0.3":
            event = translate.event_to_v03(event)
        if self.binding == "rest":
            return b"data: " + orjson.dumps(event) + b"\n\n"
        body = orjson.dumps({"jsonrpc": "2.0", "id": self.rpc_id, "result": event})
        return b"data: " + body + b"\n\n"

    def error_event(self, err: A2aError) -> bytes:
        return b"event: error\ndata: " + self.error(err)[1] + b"\n\n"

    @property
    def content_type(self) -> bytes:
        return b"application/a2a+json" if self.binding == "rest" else b"application/json"


@dataclass(slots=True)
class _Context:
    """One authenticated call's product and owner: what ids are wrapped for."""

    agent: ServedAgent
    consumer: int
    extensions: str | None


class A2aService:
    def __init__(
        self,
        host: Host,
        client: AgentClient,
        router: Router,
        seal_key: bytes,
        book: TaskBook,
    ) -> None:
        self.host = host
        self.client = client
        self.router = router
        self.ids = IdCodec(seal_key)
        self.book = book

    # Entry ------------------------------------------------------------------------------

    async def serve(
        self, call: Call, scope: Scope, receive: Receive, send: Send, slug: str, rest: str
    ) -> None:
        """``rest`` is the path after ``/agents/<slug>`` (empty for the JSON-RPC URL)."""
        method = scope["method"]
        headers = _headers(scope)
        if rest == CARD_PATH and method in ("GET", "HEAD"):
            await self._card(call, headers, send, slug, scope)
            return
        caller = _Caller("jsonrpc" if rest in ("", "/") else "rest", "1.0")
        try:
            if caller.binding == "jsonrpc":
                if method != "POST":
                    raise A2aError(
                        METHOD_NOT_FOUND,
                        "POST JSON-RPC requests here; the agent card is at "
                        f"/agents/{slug}{CARD_PATH}.",
                        status=405,
                        http=True,
                        headers=[(b"allow", b"POST")],
                    )
                body = await self.host.read_body(receive, headers.get(b"content-length"))
                name, params = self._parse_rpc(caller, body, headers)
            else:
                name, params = await self._parse_rest(caller, method, rest, scope, receive, headers)
            call.model = name
            call.stream = name in _STREAMING
            context, subscription = self._authorize(call, headers, slug)
            async with self._limited(subscription, context.agent):
                await self._dispatch(call, caller, context, name, params, receive, send)
        except A2aError as err:
            call.status = err.status
            status, body = caller.error(err)
            await send_body(
                send, status, body, call.request_id.encode(), caller.content_type, err.headers
            )
        except ApiError as err:  # the host's: no configuration yet, body too large...
            code = UNAUTHENTICATED if err.status == 401 else INVALID_REQUEST
            mapped = A2aError(code, err.message, status=err.status, headers=err.headers, http=True)
            call.status = err.status
            status, body = caller.error(mapped)
            await send_body(
                send, err.status, body, call.request_id.encode(), caller.content_type, err.headers
            )

    async def _card(
        self, call: Call, headers: dict[bytes, bytes], send: Send, slug: str, scope: Scope
    ) -> None:
        call.route = "a2a.card"
        revision = self.host.current()
        agent = revision.agents.get(slug) if revision is not None else None
        if agent is None:
            call.status = 404
            _, body = _Caller("rest", "1.0").error(
                A2aError(METHOD_NOT_FOUND, f"There is no agent product {slug!r}.", status=404)
            )
            await send_body(send, 404, body, call.request_id.encode(), b"application/json")
            return
        call.product = agent.id
        body, etag = served_card(agent, _public_base(revision, headers, scope))
        extra: Headers = [
            (b"etag", etag),
            (b"cache-control", b"public, max-age=60"),
            (b"access-control-allow-origin", b"*"),
        ]
        if headers.get(b"if-none-match") == etag:
            call.status = 304
            await send({"type": "http.response.start", "status": 304, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return
        call.status = 200
        await send_body(send, 200, body, call.request_id.encode(), b"application/json", extra)

    # Parsing ----------------------------------------------------------------------------

    def _parse_rpc(
        self, caller: _Caller, body: bytes, headers: dict[bytes, bytes]
    ) -> tuple[str, dict[str, Any]]:
        message = _body_object(body, "A request is one JSON-RPC object (no batches).")
        rpc_id = message.get("id")
        if isinstance(rpc_id, str | int) and not isinstance(rpc_id, bool):
            caller.rpc_id = rpc_id
        method = message.get("method")
        if isinstance(method, str) and method in translate.FROM_V03_METHOD:
            caller.version = "0.3"
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str) or "id" not in message:
            raise A2aError(
                INVALID_REQUEST, "A request needs 'jsonrpc': '2.0', a 'method' and an 'id'."
            )
        if caller.rpc_id is None and rpc_id is not None:
            raise A2aError(INVALID_REQUEST, "The 'id' must be a string or a number.")
        _check_version(headers)
        params = message.get("params", {})
        if not isinstance(params, dict):
            raise A2aError(INVALID_PARAMS, "'params' must be an object.")
        if caller.version == "0.3":
            name = translate.FROM_V03_METHOD[method]
            try:
                params = translate.params_from_v03(name, params)
            except translate.Malformed as exc:
                raise A2aError(INVALID_PARAMS, f"Invalid params: {exc}.") from None
            return name, params
        if method not in _V1_METHODS:
            raise A2aError(METHOD_NOT_FOUND, f"There is no A2A method {method[:100]!r}.")
        return method, params

    async def _parse_rest(
        self,
        caller: _Caller,
        method: str,
        rest: str,
        scope: Scope,
        receive: Receive,
        headers: dict[bytes, bytes],
    ) -> tuple[str, dict[str, Any]]:
        _check_version(headers)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        path = rest.lstrip("/")

        async def body() -> dict[str, Any]:
            raw = await self.host.read_body(receive, headers.get(b"content-length"))
            if not raw.strip():
                return {}
            return _body_object(raw, "The request body must be a JSON object.")

        if method == "POST" and path == "message:send":
            return "SendMessage", await body()
        if method == "POST" and path == "message:stream":
            return "SendStreamingMessage", await body()
        if method == "GET" and path == "tasks":
            return "ListTasks", _typed_query(query)
        if path == "extendedAgentCard" and method == "GET":
            return "GetExtendedAgentCard", {}
        if path.startswith("tasks/"):
            task, _, action = path[len("tasks/") :].partition(":")
            if "/pushNotificationConfigs" in task:
                return "CreateTaskPushNotificationConfig", {}
            if "/" not in task and task:
                if not action and method == "GET":
                    return "GetTask", {"id": task, **_typed_query(query)}
                if action == "cancel" and method == "POST":
                    return "CancelTask", {**(await body()), "id": task}
                if action == "subscribe" and method in ("GET", "POST"):
                    return "SubscribeToTask", {"id": task}
        raise A2aError(METHOD_NOT_FOUND, f"There is no A2A operation {method} {rest[:200]!r}.")

    # Authorization and limits -----------------------------------------------------------

    def _authorize(
        self, call: Call, headers: dict[bytes, bytes], slug: str
    ) -> tuple[_Context, Subscription]:
        key = headers.get(b"x-api-key")
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            key = authorization[7:].strip()
        try:
            revision, consumer = self.host.authenticate(call, key)
        except ApiError as err:
            if err.status == 401:
                raise A2aError(
                    UNAUTHENTICATED,
                    err.message,
                    headers=[(b"www-authenticate", b'Bearer realm="portico"')],
                ) from None
            raise
        agent = revision.agents.get(slug)
        if agent is None:
            raise A2aError(METHOD_NOT_FOUND, f"There is no agent product {slug!r}.", status=404)
        call.product = agent.id
        subscription = consumer.subscriptions.get(slug)
        if subscription is None:
            raise A2aError(
                FORBIDDEN,
                f"This key's app is not subscribed to {slug!r}; subscribe it in the portal.",
            )
        extensions = headers.get(b"a2a-extensions") or headers.get(b"x-a2a-extensions")
        text = extensions.decode("latin-1") if extensions else None
        return _Context(agent, consumer.id, text), subscription

    @contextlib.asynccontextmanager
    async def _limited(self, subscription: Subscription, agent: ServedAgent) -> AsyncIterator[None]:
        """The three limits, the narrowest first so that an app refused by its own does
        not use up the product's allowance: the app's own and its plan's (the host's),
        then the product's global one."""
        try:
            decision = await self.host.acquire(subscription, lambda: 1)
            if agent.product.requests_per_minute is not None:
                try:
                    await self.host.acquire_rate(
                        f"product:{agent.id}",
                        agent.product.requests_per_minute,
                        "this agent's limit for all apps together",
                    )
                except ApiError:
                    await self.host.settle(decision, 0)
                    raise
        except ApiError as err:
            if err.status != 429:
                raise
            raise A2aError(RATE_LIMITED, err.message, headers=err.headers) from None
        try:
            yield
        finally:
            await self.host.settle(decision, 0)

    # Dispatch ---------------------------------------------------------------------------

    async def _dispatch(
        self,
        call: Call,
        caller: _Caller,
        context: _Context,
        name: str,
        params: dict[str, Any],
        receive: Receive,
        send: Send,
    ) -> None:
        if name in ("SendMessage", "SendStreamingMessage"):
            params, owner = self._inbound_message(context, params)
            targets = [owner] if owner is not None else self._plan(call, context)
            if name == "SendMessage":
                result = await self._send_message(call, context, targets, params)
                await self._answer(call, caller, name, result, send)
            else:
                events = self._stream_message(call, context, targets, params)
                await self._stream(call, caller, events, receive, send)
            return
        if name in _TASK_METHODS:
            ident, target = self._owned_task(context, params.get("id"))
            upstream_params = {**params, "id": ident.value}
            if name == "SubscribeToTask":
                events = self._subscribe(call, context, target, upstream_params)
                await self._stream(call, caller, events, receive, send)
            else:
                result = await self._task_call(call, context, target, name, upstream_params)
                await self._answer(call, caller, name, result, send)
            return
        if name == "ListTasks":
            if caller.version == "0.3":
                raise A2aError(METHOD_NOT_FOUND, "A2A v0.3 has no ListTasks.")
            result = await self._list_tasks(call, context, params)
            await self._answer(call, caller, name, result, send)
            return
        if name == "GetExtendedAgentCard":
            raise A2aError(
                EXTENDED_CARD_NOT_CONFIGURED, "This agent has no extended card at the gateway."
            )
        raise A2aError(
            PUSH_NOT_SUPPORTED,
            "The gateway does not relay push notifications; use streaming or GetTask.",
        )

    async def _answer(
        self, call: Call, caller: _Caller, name: str, result: dict[str, Any], send: Send
    ) -> None:
        call.status = 200
        body = caller.result(name, result)
        await send_body(
            send, 200, body, call.request_id.encode(), caller.content_type, _target(call)
        )

    def _plan(self, call: Call, context: _Context) -> list[ServedTarget]:
        agent = context.agent
        targets = list(agent.targets)
        if call.pin is not None:
            pin = call.pin
            targets = [t for t in targets if t.answers_to(pin)]
            if not targets:
                raise A2aError(
                    INVALID_PARAMS,
                    f"x-portico-upstream names no version of this agent: {pin[:100]!r}.",
                )
        if not targets:
            raise A2aError(
                INTERNAL_ERROR,
                "This agent product has no target to send to.",
                status=503,
                http=True,
            )
        healthy = [t for t in targets if not self.router.is_out(t.key)]
        out = [t for t in targets if self.router.is_out(t.key)]
        if agent.product.affinity == "consumer":
            consumer = context.consumer
            healthy = weighted_order(healthy, lambda t: unit_hash(consumer, t.key))
        else:
            healthy = weighted_order(healthy, lambda _: _rng.random())
        out.sort(key=lambda t: self.router.state_of(t.key).out_until)
        return healthy + out

    def _inbound_message(
        self, context: _Context, params: dict[str, Any]
    ) -> tuple[dict[str, Any], ServedTarget | None]:
        """The params as the agent will get them (the app's ids unwrapped), and the
        target that owns the task or context the message continues, if it does."""
        message = params.get("message")
        problem = _message_problem(message)
        if problem:
            raise A2aError(INVALID_PARAMS, f"Invalid message: {problem}.")
        assert isinstance(message, dict)
        configuration = params.get("configuration")
        if configuration is not None and not isinstance(configuration, dict):
            raise A2aError(INVALID_PARAMS, "'configuration' must be an object.")
        if isinstance(configuration, dict) and configuration.get("taskPushNotificationConfig"):
            raise A2aError(
                PUSH_NOT_SUPPORTED,
                "The gateway does not relay push notifications; use streaming or GetTask.",
            )
        message = dict(message)
        owner: ServedTarget | None = None
        if "taskId" in message:
            ident, owner = self._owned_task(context, message["taskId"])
            message["taskId"] = ident.value
        if "contextId" in message:
            value = message["contextId"]
            if not isinstance(value, str) or not value:
                raise A2aError(INVALID_PARAMS, "Invalid message: 'contextId' must be a string.")
            if value.startswith(PREFIX):
                found = self._unwrap(context, value, CONTEXT)
                target = context.agent.by_upstream.get(found.target) if found else None
                if found is None or target is None or owner not in (None, target):
                    raise A2aError(TASK_NOT_FOUND, "There is no such context for this app.")
                owner = target
                message["contextId"] = found.value
            else:
                message["contextId"] = self.ids.own_context(context.consumer, value)
        references = message.get("referenceTaskIds")
        if references is not None:
            if not isinstance(references, list):
                raise A2aError(
                    INVALID_PARAMS, "Invalid message: 'referenceTaskIds' must be a list."
                )
            message["referenceTaskIds"] = [
                self._owned_task(context, r)[0].value for r in references
            ]
        return {**params, "message": message}, owner

    def _unwrap(self, context: _Context, value: object, kind: str) -> AgentId | None:
        return self.ids.unwrap(value, kind, context.agent.id, context.consumer)

    def _owned_task(self, context: _Context, value: object) -> tuple[AgentId, ServedTarget]:
        if not isinstance(value, str) or not value:
            raise A2aError(INVALID_PARAMS, "A task 'id' must be a non-empty string.")
        ident = self._unwrap(context, value, TASK)
        target = context.agent.by_upstream.get(ident.target) if ident is not None else None
        if ident is None or target is None:
            raise A2aError(TASK_NOT_FOUND, "Task not found.")
        return ident, target

    # Sending ----------------------------------------------------------------------------

    async def _send_message(
        self,
        call: Call,
        context: _Context,
        targets: list[ServedTarget],
        params: dict[str, Any],
    ) -> dict[str, Any]:
        for index, target in enumerate(targets):
            self.host.record_target(call, target.label)
            try:
                if target.is_rest:
                    result = await self._rest_message(context, target, params)
                else:
                    result = await self.client.call(
                        target, "SendMessage", params, context.extensions
                    )
            except AgentDown as exc:
                self.router.target_down(target.key)
                if exc.unsent and index + 1 < len(targets):
                    continue
                raise A2aError(INTERNAL_ERROR, exc.message, status=502) from None
            except AgentRpcError as exc:
                self.router.target_up(target.key)
                raise A2aError(exc.code, exc.message, data=exc.data) from None
            self.router.target_up(target.key)
            return await self._outbound(context, target, result)
        raise A2aError(INTERNAL_ERROR, "No target of this agent could be reached.", status=502)

    async def _stream_message(
        self,
        call: Call,
        context: _Context,
        targets: list[ServedTarget],
        params: dict[str, Any],
    ) -> AsyncIterator[dict[str, Any]]:
        for index, target in enumerate(targets):
            self.host.record_target(call, target.label)
            started = False
            try:
                if target.is_rest:
                    yield await self._outbound(
                        context, target, await self._rest_message(context, target, params)
                    )
                    self.router.target_up(target.key)
                    return
                events = self.client.stream(
                    target, "SendStreamingMessage", params, context.extensions
                )
                async for event in events:
                    if not started:
                        started = True
                        self.router.target_up(target.key)
                    yield await self._outbound(context, target, event)
                return
            except AgentDown as exc:
                self.router.target_down(target.key)
                if exc.unsent and not started and index + 1 < len(targets):
                    continue
                raise A2aError(INTERNAL_ERROR, exc.message, status=502) from None
            except AgentRpcError as exc:
                raise A2aError(exc.code, exc.message, data=exc.data) from None
        raise A2aError(INTERNAL_ERROR, "No target of this agent could be reached.", status=502)

    async def _subscribe(
        self, call: Call, context: _Context, target: ServedTarget, params: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        self.host.record_target(call, target.label)
        if target.is_rest:
            raise A2aError(UNSUPPORTED_OPERATION, "This agent's tasks are complete when created.")
        try:
            async for event in self.client.stream(
                target, "SubscribeToTask", params, context.extensions
            ):
                yield await self._outbound(context, target, event)
        except AgentDown as exc:
            self.router.target_down(target.key)
            raise A2aError(INTERNAL_ERROR, exc.message, status=502) from None
        except AgentRpcError as exc:
            raise A2aError(exc.code, exc.message, data=exc.data) from None

    async def _task_call(
        self,
        call: Call,
        context: _Context,
        target: ServedTarget,
        name: str,
        params: dict[str, Any],
    ) -> dict[str, Any]:
        self.host.record_target(call, target.label)
        if target.is_rest:
            task = await self.book.stored(context.agent.id, target.upstream_id, params["id"])
            if task is None:
                raise A2aError(TASK_NOT_FOUND, "Task not found.")
            if name == "CancelTask":
                raise A2aError(TASK_NOT_CANCELABLE, "The task is complete; it cannot be canceled.")
            length = params.get("historyLength")
            if isinstance(length, int) and length >= 0 and isinstance(task.get("history"), list):
                task["history"] = task["history"][-length:] if length else []
            return self._wrap_task(context, target, task)
        try:
            result = await self.client.call(target, name, params, context.extensions)
        except AgentDown as exc:
            self.router.target_down(target.key)
            raise A2aError(INTERNAL_ERROR, exc.message, status=502) from None
        except AgentRpcError as exc:
            raise A2aError(exc.code, exc.message, data=exc.data) from None
        return self._wrap_task(context, target, result)

    async def _rest_message(
        self, context: _Context, target: ServedTarget, params: dict[str, Any]
    ) -> dict[str, Any]:
        """A REST agent's answer to a message, as a v1.0 ``SendMessageResponse``."""
        message = params["message"]
        if message.get("taskId"):
            raise A2aError(TASK_NOT_FOUND, "This agent's tasks are complete; start a new one.")
        context_id = message.get("contextId") or str(uuid.uuid4())
        parts = message["parts"]
        data = next((p["data"] for p in parts if "data" in p), None)
        values = {
            "text": "\n".join(p["text"] for p in parts if "text" in p),
            "data": data,
            "message_id": message["messageId"],
            "context_id": context_id,
            "task_id": "",
        }
        reply_parts = await self.client.call_rest(target, values)
        spec = target.spec.rest
        assert spec is not None
        reply = {
            "messageId": str(uuid.uuid4()),
            "contextId": context_id,
            "role": "ROLE_AGENT",
            "parts": reply_parts,
        }
        if spec.reply_as == "message":
            return {"message": reply}
        task_id = str(uuid.uuid4())
        task = {
            "id": task_id,
            "contextId": context_id,
            "status": {"state": "TASK_STATE_COMPLETED", "timestamp": _now()},
            "artifacts": [{"artifactId": "reply", "name": "reply", "parts": reply_parts}],
            "history": [
                {**message, "contextId": context_id, "taskId": task_id},
                {**reply, "taskId": task_id},
            ],
        }
        await self.book.store(context.agent.id, target.upstream_id, task)
        return {"task": task}

    # Ids on the way out -----------------------------------------------------------------

    async def _outbound(
        self, context: _Context, target: ServedTarget, event: dict[str, Any]
    ) -> dict[str, Any]:
        """An agent's result or stream event with its ids made the app's."""
        if isinstance(event.get("task"), dict):
            task = self._wrap_task(context, target, event["task"])
            await self.book.note(context.agent.id, context.consumer, task["id"])
            return {**event, "task": task}
        if isinstance(event.get("message"), dict):
            return {**event, "message": self._wrap_refs(context, target, event["message"])}
        for key in ("statusUpdate", "artifactUpdate"):
            update = event.get(key)
            if isinstance(update, dict):
                return {**event, key: self._wrap_refs(context, target, update)}
        raise A2aError(
            INVALID_AGENT_RESPONSE, "The agent's answer is not an A2A result.", status=502
        )

    def _wrap(self, context: _Context, target: ServedTarget, kind: str, value: str) -> str:
        if kind == CONTEXT:
            own = self.ids.own_context(context.consumer, "")
            if value.startswith(own):
                return value[len(own) :]  # the app's own context id, as it chose it
        return self.ids.wrap(
            AgentId(kind, context.agent.id, context.consumer, target.upstream_id, value)
        )

    def _wrap_refs(
        self, context: _Context, target: ServedTarget, obj: dict[str, Any]
    ) -> dict[str, Any]:
        """A message, task or update with the ids it refers to made the app's, the
        message of its status too."""
        out = dict(obj)
        status = out.get("status")
        if isinstance(status, dict) and isinstance(status.get("message"), dict):
            out["status"] = {
                **status,
                "message": self._wrap_refs(context, target, status["message"]),
            }
        if isinstance(out.get("taskId"), str):
            out["taskId"] = self._wrap(context, target, TASK, out["taskId"])
        if isinstance(out.get("contextId"), str):
            out["contextId"] = self._wrap(context, target, CONTEXT, out["contextId"])
        references = out.get("referenceTaskIds")
        if isinstance(references, list):
            out["referenceTaskIds"] = [
                self._wrap(context, target, TASK, r) for r in references if isinstance(r, str)
            ]
        return out

    def _wrap_task(
        self, context: _Context, target: ServedTarget, task: dict[str, Any]
    ) -> dict[str, Any]:
        if not isinstance(task.get("id"), str):
            raise A2aError(
                INVALID_AGENT_RESPONSE, "The agent sent a task without an id.", status=502
            )
        out = self._wrap_refs(context, target, task)
        out["id"] = self._wrap(context, target, TASK, task["id"])
        if isinstance(out.get("history"), list):
            out["history"] = [
                self._wrap_refs(context, target, m) for m in out["history"] if isinstance(m, dict)
            ]
        return out

    # ListTasks --------------------------------------------------------------------------

    async def _list_tasks(
        self, call: Call, context: _Context, params: dict[str, Any]
    ) -> dict[str, Any]:
        """The app's tasks on this product, newest first, from the gateway's own record
        of the ids it handed out (an agent would list every app's), each fetched from
        its agent."""
        size = params.get("pageSize", 50)
        if not isinstance(size, int) or not 1 <= size <= _MAX_PAGE:
            raise A2aError(INVALID_PARAMS, f"'pageSize' must be 1 to {_MAX_PAGE}.")
        token = params.get("pageToken") or "0"
        if not isinstance(token, str) or not token.isdigit():
            raise A2aError(INVALID_PARAMS, "'pageToken' is not one this gateway gave.")
        start = int(token)
        wanted_context = params.get("contextId")
        wanted_status = params.get("status")
        history = params.get("historyLength")
        ids, total = await self.book.page(context.agent.id, context.consumer, start, size)
        fetched = await asyncio.gather(
            *(self._fetch_listed(call, context, task_id, history) for task_id in ids)
        )
        tasks = []
        for task in fetched:
            if task is None:
                continue
            if wanted_context and task.get("contextId") != wanted_context:
                continue
            if wanted_status and (task.get("status") or {}).get("state") != wanted_status:
                continue
            if not params.get("includeArtifacts"):
                task.pop("artifacts", None)
            tasks.append(task)
        following = start + len(ids)
        return {
            "tasks": tasks,
            "nextPageToken": str(following) if following < total else "",
            "pageSize": size,
            "totalSize": total,
        }

    async def _fetch_listed(
        self, call: Call, context: _Context, task_id: str, history: Any
    ) -> dict[str, Any] | None:
        try:
            ident, target = self._owned_task(context, task_id)
            params: dict[str, Any] = {"id": ident.value}
            if isinstance(history, int):
                params["historyLength"] = history
            return await self._task_call(call, context, target, "GetTask", params)
        except A2aError:
            return None

    # Streaming out ----------------------------------------------------------------------

    async def _stream(
        self,
        call: Call,
        caller: _Caller,
        events: AsyncIterator[dict[str, Any]],
        receive: Receive,
        send: Send,
    ) -> None:
        """Relay ``events``: an error before the first is an ordinary error answer; after
        it, an ``error`` event. A client that leaves ends the upstream stream too."""
        iterator = aiter(events)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            raise A2aError(
                INVALID_AGENT_RESPONSE, "The agent's stream was empty.", status=502
            ) from None
        call.status = 200
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    *_SSE_HEADERS,
                    (b"x-request-id", call.request_id.encode()),
                    *_target(call),
                ],
            }
        )
        gone: asyncio.Future[Any] = asyncio.ensure_future(client_gone(receive))
        try:
            await send_chunk(send, caller.event(first))
            following: asyncio.Future[Any] | None = None
            while True:
                if following is None:
                    following = asyncio.ensure_future(anext(iterator))
                done, _ = await asyncio.wait(
                    {following, gone}, timeout=KEEPALIVE_SECONDS, return_when="FIRST_COMPLETED"
                )
                if not done:  # an agent thinking: keep proxies from closing the stream
                    await send_chunk(send, b": keepalive\n\n")
                    continue
                if following not in done:
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                        await following
                    call.status = 499
                    return
                finished, following = following, None
                try:
                    event = finished.result()
                except StopAsyncIteration:
                    break
                except A2aError as err:
                    await send_chunk(send, caller.error_event(err))
                    break
                await send_chunk(send, caller.event(event))
            await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()
            await _aclose(iterator)


# Helpers --------------------------------------------------------------------------------

_rng = random.Random()  # noqa: S311 (load balancing, not secrets)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _target(call: Call) -> Headers:
    """``x-portico-target``: which version of the agent answered."""
    label = call.outcome.target
    return [(b"x-portico-target", label.encode())] if label else []


def _check_version(headers: dict[bytes, bytes]) -> None:
    """Refuse an ``A2A-Version`` the gateway does not speak (a missing one is fine:
    the method says which version it is)."""
    raw = headers.get(b"a2a-version")
    if raw is None or not raw.strip():
        return
    version = raw.decode("latin-1").strip()
    major_minor = ".".join(version.split(".")[:2])
    if major_minor not in _VERSIONS:
        raise A2aError(
            VERSION_NOT_SUPPORTED,
            f"A2A version {version[:20]!r} is not supported; the gateway speaks 1.0 and 0.3.",
        )


def _body_object(raw: bytes, not_object: str) -> dict[str, Any]:
    """A request body's JSON object; -32700 for bad JSON, -32600 for another value."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise A2aError(PARSE_ERROR, "The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise A2aError(INVALID_REQUEST, not_object)
    return value


def _typed_query(query: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in query.items():
        if key in ("pageSize", "historyLength"):
            if not value.isdigit():
                raise A2aError(INVALID_PARAMS, f"'{key}' must be a whole number.")
            out[key] = int(value)
        elif key == "includeArtifacts":
            out[key] = value.lower() == "true"
        else:
            out[key] = value
    return out


def _message_problem(message: Any) -> str | None:
    """What is wrong with a v1.0 message an app sent (None: nothing)."""
    if not isinstance(message, dict):
        return "'message' must be an object"
    if not isinstance(message.get("messageId"), str) or not message["messageId"]:
        return "'messageId' must be a non-empty string"
    if message.get("role") not in ("ROLE_USER", "user"):
        return "an app's message has the role ROLE_USER"
    parts = message.get("parts")
    if not isinstance(parts, list) or not parts:
        return "'parts' must be a non-empty list"
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            return f"part {index} is not an object"
        kinds = [k for k in ("text", "raw", "url", "data") if k in part]
        if len(kinds) != 1:
            return f"part {index} must have exactly one of text, raw, url or data"
        kind = kinds[0]
        if kind in ("text", "raw", "url") and not isinstance(part[kind], str):
            return f"part {index}'s {kind} must be a string"
        for field in ("mediaType", "filename"):
            if field in part and not isinstance(part[field], str):
                return f"part {index}'s {field} must be a string"
        if "metadata" in part and not isinstance(part["metadata"], dict):
            return f"part {index}'s metadata must be an object"
    return None


def _public_base(revision: Any, headers: dict[bytes, bytes], scope: Scope) -> str:
    """Where clients reach this gateway: the public URL the revision gives (the OAuth
    resource base), else the request's own host."""
    oauth = revision.doc.oauth
    if oauth is not None:
        return str(oauth.resource_base).rstrip("/")
    host = headers.get(b"host", b"").decode("latin-1") or "localhost"
    scheme = scope.get("scheme", "http")
    return f"{scheme}://{host}"


def _now() -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        + f".{int(time.time() * 1000) % 1000:03d}Z"
    )


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
