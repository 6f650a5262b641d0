"""OpenAI's Realtime API over WebSocket (``/v1/realtime``), relayed to an OpenAI-wire upstream.

A Realtime session is one WebSocket carrying JSON events both ways (client:
``session.update``, ``input_audio_buffer.append``, ``conversation.item.create``,
``response.create``...; server: ``session.created``, ``response.output_text.delta``,
``response.done``, ``error``...). The gateway does not speak the protocol: it
authenticates the handshake, opens its own socket to the upstream with its own
credential, and pumps frames both ways unchanged, reading only what it needs:

- usage: every ``response.done`` carries ``response.usage`` (``input_tokens``,
  ``output_tokens``), summed into the call's token counts;
- the model: ``session.created``/``session.updated`` name the upstream model, renamed
  to the public one; a client's ``session.update`` may name only the public model (it is
  renamed on the way up), since switching models mid-session would leave the route the
  key's subscription allows. Anything else there is refused with an ``error`` event.

Keys arrive as ``Authorization: Bearer``, ``api-key``, ``x-api-key`` or, from browsers,
which cannot set headers on a WebSocket, as the subprotocol
``openai-insecure-api-key.<key>`` next to ``realtime``. The key never goes upstream and
is never echoed: the accepted subprotocol is ``realtime`` (or the beta's
``openai-beta.realtime-v1``) when offered. A client on the beta protocol (that
subprotocol or ``OpenAI-Beta: realtime=v1``) gets ``OpenAI-Beta: realtime=v1`` upstream.

Failures before the session starts are answered as HTTP errors with an OpenAI error body
(ASGI's ``websocket.http.response`` extension; without it, a close with 1008 or 1011).
After it starts, a close on either side closes the other with the same code where the
protocol allows sending it; an upstream that vanishes closes the client with 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson

from gateway.providers.base import (
    FailureKind,
    UpstreamFailure,
    classify_status,
    retry_after_seconds,
)
from gateway.proxy import failure_error
from gateway.responses import JSON, ApiError, error_body
from gateway.types import Headers, Message, Receive, Scope, Send

log = logging.getLogger("gateway.realtime")

KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"
# Subprotocols the gateway may accept, in order of preference; never the key entry.
_ACCEPTABLE = ("realtime", BETA_PROTOCOL)
# As large as uvicorn's default ws_max_size: OpenAI takes audio appends up to 15 MiB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Pings towards the upstream, so that a dead connection is noticed during silences.
_HEARTBEAT_SECONDS = 30.0
_CLOSE_SECONDS = 5.0
_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
# Close codes a peer may send (RFC 6455 and IANA's registry; 1005, 1006 and 1015 are
# only ever reported locally).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
# Server events worth parsing, found by a substring test that costs nothing on audio.
_RESPONSE_DONE = '"response.done"'
_SESSION_EVENTS = ('"session.created"', '"session.updated"')
_SESSION_UPDATE = '"session.update"'


class TokenCounts(Protocol):
    """Where the session's usage is summed (``gateway.proxy.Tokens`` is one)."""

    prompt: int | None
    completion: int | None


# The handshake ------------------------------------------------------------------------


def client_key(scope: Scope) -> bytes | None:
    """The app's key: a bearer token, ``api-key``/``x-api-key``, or the browser's
    ``openai-insecure-api-key.<key>`` subprotocol entry, in that order."""
    bearer: bytes | None = None
    alternative: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                bearer = value[7:].strip()
        elif name == b"api-key" or name == b"x-api-key":
            alternative = value.strip()
    if bearer or alternative:
        return bearer or alternative
    for protocol in scope.get("subprotocols") or ():
        if protocol.startswith(KEY_PROTOCOL) and len(protocol) > len(KEY_PROTOCOL):
            return protocol[len(KEY_PROTOCOL) :].encode("latin-1")
    return None


def requested_model(scope: Scope) -> str | None:
    """The ``model`` of the query string (``/v1/realtime?model=...``), if any."""
    query = scope.get("query_string", b"").decode("latin-1")
    values = parse_qs(query).get("model")
    return values[0] if values else None


def upstream_url(http_url: str, model: str) -> str:
    """The WebSocket URL of an upstream's realtime endpoint: ``OpenAIWire.url(endpoint,
    "realtime")`` with ``ws(s)`` for ``http(s)`` and the upstream model added."""
    parts = urlsplit(http_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("model", model)])
    return urlunsplit((scheme, parts.netloc, parts.path, query, ""))


async def refuse(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    request_id: str,
    *,
    code: str | None = None,
    error_type: str | None = None,
    headers: Headers | None = None,
) -> None:
    """Refuse the handshake: an HTTP error with an OpenAI error body and ``x-request-id``
    where the server supports ``websocket.http.response``, else a close (1008 for the
    client's errors, 1011 for the gateway's) whose reason is the message.

    ``scope`` is needed to see the server's extensions; it must be called before the
    socket is accepted.
    """
    if "websocket.http.response" in (scope.get("extensions") or {}):
        err = ApiError(status, message, code=code, type=error_type or _error_type(status))
        body = error_body(err, request_id)
        start: Headers = [
            (b"content-type", JSON),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            *(headers or ()),
        ]
        await send({"type": "websocket.http.response.start", "status": status, "headers": start})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send(
        {
            "type": "websocket.close",
            "code": 1011 if status >= 500 else 1008,
            "reason": _reason(f"{message} (request id {request_id})"),
        }
    )


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    return "upstream_error" if status >= 500 else "invalid_request_error"


def _reason(text: str) -> str:
    return text.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")


# The upstream --------------------------------------------------------------------------


async def open_upstream(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    seconds: float,
) -> aiohttp.ClientWebSocketResponse:
    """Open the upstream socket within ``seconds``; raises :class:`UpstreamFailure`
    classified like an HTTP answer, so a caller may walk a plan as ``gateway.proxy`` does.

    ``headers`` are the gateway's (``OpenAIWire.headers``): nothing of the client's.
    """
    try:
        async with asyncio.timeout(seconds):
            return await session.ws_connect(
                url,
                headers={k: v for k, v in headers.items() if k.lower() != "content-type"},
                heartbeat=_HEARTBEAT_SECONDS,
                max_msg_size=MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_SECONDS),
            )
    except aiohttp.WSServerHandshakeError as exc:
        answered = {name.lower(): value for name, value in (exc.headers or {}).items()}
        raise UpstreamFailure(
            classify_status(exc.status) if exc.status != 101 else FailureKind.SERVER,
            f"The upstream refused the realtime session (HTTP {exc.status}).",
            status=exc.status,
            retry_after=retry_after_seconds(answered),
        ) from None
    except TimeoutError:
        raise UpstreamFailure(FailureKind.TIMEOUT, "no answer in time") from None
    except aiohttp.ClientError:
        raise UpstreamFailure(FailureKind.UNREACHABLE, "could not connect") from None


def refusal(failure: UpstreamFailure) -> ApiError:
    """The error a client gets when the upstream session could not be opened."""
    return failure_error(failure, failure.retry_after)


def upstream_headers(scope: Scope, headers: dict[str, str]) -> dict[str, str]:
    """The gateway's headers plus ``OpenAI-Beta: realtime=v1`` for a beta-protocol client."""
    beta = BETA_PROTOCOL in (scope.get("subprotocols") or ()) or any(
        name == b"openai-beta" and b"realtime=v1" in value for name, value in scope["headers"]
    )
    return {**headers, "OpenAI-Beta": "realtime=v1"} if beta else dict(headers)


# The session ---------------------------------------------------------------------------


async def relay(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    upstream_model: str,
    public_model: str,
    tokens: TokenCounts,
    request_id: str,
    response_headers: Headers | None = None,
    connect_seconds: float = 30.0,
) -> int:
    """Run one Realtime session: open the upstream, accept the client, pump both ways.

    Returns the status to record: 101 for a session that ran (and ended however the
    peers chose), 502 when the upstream vanished or closed with 1011 mid-session, 499
    when the client left during the handshake, 500 for a gateway bug (logged), or the
    refusal's status (502, 504, 429) when the upstream could not be opened, in which case
    the client's handshake was refused with an OpenAI error by :func:`refuse`.
    """
    try:
        upstream = await open_upstream(
            session, url, upstream_headers(scope, headers), connect_seconds
        )
    except UpstreamFailure as failure:
        log.warning("realtime upstream not opened (%s): %s", failure.kind, failure.message)
        err = refusal(failure)
        await refuse(
            scope,
            send,
            err.status,
            err.message,
            request_id,
            code=err.code,
            error_type=err.type,
            headers=err.headers,
        )
        return err.status
    return await bridge(
        scope,
        receive,
        send,
        upstream,
        upstream_model=upstream_model,
        public_model=public_model,
        tokens=tokens,
        request_id=request_id,
        response_headers=response_headers,
    )


class _End:
    """How one direction of the pump ended."""

    __slots__ = ("code", "reason", "side")

    def __init__(self, side: str, code: int | None = None, reason: str = "") -> None:
        self.side = side  # "client", "upstream" (closed cleanly) or "lost" (upstream broke)
        self.code = code
        self.reason = reason


async def bridge(
    scope: Scope,
    receive: Receive,
    send: Send,
    upstream: aiohttp.ClientWebSocketResponse,
    *,
    upstream_model: str,
    public_model: str,
    tokens: TokenCounts,
    request_id: str,
    response_headers: Headers | None = None,
) -> int:
    """Accept the client and pump frames between it and an open ``upstream`` until one
    side goes; both pumps are cancelled and the upstream closed whatever happens."""
    lock = asyncio.Lock()

    async def to_client(message: Message) -> None:
        # Both pumps write to the client (the upstream's events, the gateway's refusals).
        async with lock:
            await send(message)

    pumps: list[asyncio.Task[_End]] = []
    status = 101
    upstream_code, upstream_reason = 1000, b""
    try:
        accept: Message = {
            "type": "websocket.accept",
            "headers": [(b"x-request-id", request_id.encode()), *(response_headers or ())],
        }
        chosen = next((p for p in _ACCEPTABLE if p in (scope.get("subprotocols") or ())), None)
        if chosen is not None:
            accept["subprotocol"] = chosen
        try:
            await send(accept)
        except OSError:  # the client left during the handshake
            return 499
        guard = _SessionGuard(upstream_model, public_model)
        pumps = [
            asyncio.create_task(_from_client(receive, upstream, guard, to_client)),
            asyncio.create_task(_from_upstream(upstream, guard, tokens, to_client)),
        ]
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        end = done.pop().result()
        if end.side == "client":
            upstream_code = _sendable(end.code, 1000 if end.code == 1005 else 1001)
            upstream_reason = end.reason.encode()[:_MAX_REASON_BYTES]
        else:
            if end.side == "lost" or end.code == 1011:
                status = 502
            code = _sendable(end.code, 1000 if end.code == 1005 else 1011)
            reason = end.reason or ("upstream connection lost" if end.side == "lost" else "")
            with contextlib.suppress(OSError, RuntimeError):  # the client went meanwhile
                await to_client({"type": "websocket.close", "code": code, "reason": reason})
    except Exception:
        log.exception("realtime session %s failed", request_id)
        status = 500
        with contextlib.suppress(OSError, RuntimeError):
            await send({"type": "websocket.close", "code": 1011, "reason": "gateway error"})
    finally:
        for pump in pumps:
            pump.cancel()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)
        if not upstream.closed:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await upstream.close(code=upstream_code, message=upstream_reason)
    return status


def _sendable(code: int | None, otherwise: int) -> int:
    if code is not None and (code in _SENDABLE or 3000 <= code <= 4999):
        return code
    return otherwise


async def _from_client(
    receive: Receive,
    upstream: aiohttp.ClientWebSocketResponse,
    guard: _SessionGuard,
    to_client: Callable[[Message], Awaitable[None]],
) -> _End:
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.disconnect":
            return _End("client", message.get("code"), message.get("reason") or "")
        if kind != "websocket.receive":
            continue  # websocket.connect, when the caller did not take it
        try:
            text = message.get("text")
            if text is not None:
                if _SESSION_UPDATE in text:
                    text, refused = guard.client_event(text)
                    if refused is not None:
                        await to_client({"type": "websocket.send", "text": refused})
                        continue
                await upstream.send_str(text)
            elif message.get("bytes") is not None:
                await upstream.send_bytes(message["bytes"])
        except (aiohttp.ClientError, ConnectionError):
            return _End("lost")


async def _from_upstream(
    upstream: aiohttp.ClientWebSocketResponse,
    guard: _SessionGuard,
    tokens: TokenCounts,
    to_client: Callable[[Message], Awaitable[None]],
) -> _End:
    while True:
        received = await upstream.receive()
        kind = received.type
        if kind is aiohttp.WSMsgType.TEXT:
            text: str = received.data
            if _RESPONSE_DONE in text:
                _add_usage(tokens, _loads(text))
            elif guard.renames and any(name in text for name in _SESSION_EVENTS):
                text = guard.server_event(text)
            outgoing: Message = {"type": "websocket.send", "text": text}
        elif kind is aiohttp.WSMsgType.BINARY:
            outgoing = {"type": "websocket.send", "bytes": received.data}
        elif kind is aiohttp.WSMsgType.CLOSE:
            return _End("upstream", received.data, received.extra or "")
        elif kind in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
            continue
        else:  # CLOSING, CLOSED, ERROR: the connection broke without a close frame
            return _End("lost")
        try:
            await to_client(outgoing)
        except OSError:  # uvicorn's ClientDisconnected: the client's pump reports how
            return _End("client", 1001)


class _SessionGuard:
    """Keeps the session on the routed model: renames it both ways, refuses others."""

    __slots__ = ("public", "renames", "upstream")

    def __init__(self, upstream_model: str, public_model: str) -> None:
        self.upstream = upstream_model
        self.public = public_model
        self.renames = upstream_model != public_model

    def client_event(self, text: str) -> tuple[str, str | None]:
        """A client's event as it goes upstream, or the ``error`` event refusing it."""
        event = _loads(text)
        session = event.get("session") if event is not None else None
        if event is None or event.get("type") != "session.update" or not isinstance(session, dict):
            return text, None
        model = session.get("model")
        if model is None or model == self.upstream == self.public:
            return text, None
        if model == self.public:
            event["session"] = {**session, "model": self.upstream}
            return orjson.dumps(event).decode(), None
        refusal_event = {
            "type": "error",
            "event_id": "event_portico_model",
            "error": {
                "type": "invalid_request_error",
                "code": "model_not_supported",
                "message": f"This session serves the model {self.public!r}; it cannot switch "
                "to another one. Open a new session with ?model= set to the model you want.",
                "param": "session.model",
                "event_id": event.get("event_id"),
            },
        }
        return text, orjson.dumps(refusal_event).decode()

    def server_event(self, text: str) -> str:
        event = _loads(text)
        session = event.get("session") if event is not None else None
        if isinstance(session, dict) and session.get("model") == self.upstream:
            assert event is not None
            event["session"] = {**session, "model": self.public}
            return orjson.dumps(event).decode()
        return text


def _add_usage(tokens: TokenCounts, event: dict[str, Any] | None) -> None:
    """Add a ``response.done`` event's usage to ``tokens`` (anything else is ignored)."""
    if event is None or event.get("type") != "response.done":
        return
    response = event.get("response")
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
    if type(prompt) is int and prompt >= 0:
        tokens.prompt = (tokens.prompt or 0) + prompt
    if type(completion) is int and completion >= 0:
        tokens.completion = (tokens.completion or 0) + completion


def _loads(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
