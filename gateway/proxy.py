"""Calling OpenAI-compatible upstreams and relaying their answers.

The client's headers never travel upstream: the gateway sends only a content type and,
when the upstream has one, its own ``Authorization: Bearer <upstream secret>``.
Upstream failures become gateway errors whose messages are fixed strings, because an
upstream's error text may quote the credential it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from gateway.responses import ApiError, error_body
from gateway.revision import ModelTarget
from gateway.types import Headers, Receive, Send

# Relayed from upstream 4xx answers so that clients can back off as the vendor asks.
_RELAYED_ERROR_HEADERS = ("Retry-After",)
_UPSTREAM_AUTH_STATUSES = (401, 403, 407)
# An upstream that never ends an SSE event must not make us buffer without bound.
_MAX_PENDING_SSE = 1 << 20
_NULL_USAGE = (b'"usage":null', b'"usage": null')
# Outside JSON strings only: inside one, the quotes would be escaped.
_COMPACT_NULL_USAGE = b',"usage":null'
_SSE_HEADERS_BASE: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class Tokens:
    """Token counts read from an upstream answer (``None`` when it did not say)."""

    __slots__ = ("completion", "prompt")

    def __init__(self) -> None:
        self.prompt: int | None = None
        self.completion: int | None = None

    def read(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.prompt = _count(usage.get("prompt_tokens"))
            self.completion = _count(usage.get("completion_tokens"))


def _count(value: object) -> int | None:
    # Usage events are validated on ingest; one negative or non-integer count from a
    # misbehaving upstream would otherwise make a whole batch unreadable.
    if type(value) is int and value >= 0:
        return value
    return None


class PreparedCall:
    """What every call to one model's upstream shares, built once per model index."""

    __slots__ = ("headers", "stream_timeout", "timeout", "url")

    def __init__(self, target: ModelTarget, path: str) -> None:
        self.url = URL(target.upstream.base_url.rstrip("/") + path)
        # The complete header set: nothing of the client's is ever added to it.
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
        if target.upstream_secret:
            headers["Authorization"] = "Bearer " + target.upstream_secret
        self.headers = headers
        seconds = target.upstream.timeout_seconds
        self.timeout = aiohttp.ClientTimeout(total=seconds)
        # A stream may run for long; what must not stall is each wait for the next chunk.
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=seconds, sock_read=seconds
        )


class PreparedCalls:
    """Per-model :class:`PreparedCall` cache, dropped whenever the model index changes.

    Keyed on the identity of ``AppliedRevision.models``, which credential-only deltas
    carry over, so a key revocation does not invalidate it.
    """

    __slots__ = ("_calls", "_models")

    def __init__(self) -> None:
        self._models: dict[str, ModelTarget] | None = None
        self._calls: dict[str, PreparedCall] = {}

    def chat(self, models: dict[str, ModelTarget], target: ModelTarget) -> PreparedCall:
        if models is not self._models:
            self._models = models
            self._calls = {}
        call = self._calls.get(target.name)
        if call is None:
            call = self._calls[target.name] = PreparedCall(target, "/chat/completions")
        return call


async def chat_completions(
    session: aiohttp.ClientSession,
    target: ModelTarget,
    prepared: PreparedCall,
    body: bytes,
    *,
    stream: bool,
    strip_usage: bool,
    tokens: Tokens,
    request_id: bytes,
    send: Send,
    receive: Receive,
) -> int:
    """Forward a chat completion and relay the answer; returns the status to record.

    Raises :class:`ApiError` for failures that happen before a response has started. A
    stream that breaks later has already sent 200; it ends with an error event and
    returns 502 or 504, so usage shows what happened.
    """
    try:
        response = await session.post(
            prepared.url,
            data=body,
            headers=prepared.headers,
            timeout=prepared.stream_timeout if stream else prepared.timeout,
            allow_redirects=False,
        )
    except TimeoutError:
        raise _upstream_timeout() from None
    except aiohttp.ClientError:
        raise _upstream_unreachable() from None
    try:
        if not stream or response.status != 200:
            try:
                payload = await response.read()
            except TimeoutError:
                raise _upstream_timeout() from None
            except aiohttp.ClientError:
                raise _upstream_unreachable() from None
            return await _relay_whole(target, response, payload, tokens, request_id, send)
        return await _relay_stream(response, strip_usage, tokens, request_id, send, receive)
    finally:
        response.release()


async def _relay_whole(
    target: ModelTarget,
    response: aiohttp.ClientResponse,
    payload: bytes,
    tokens: Tokens,
    request_id: bytes,
    send: Send,
) -> int:
    status = response.status
    if 200 <= status < 300:
        try:
            answer = orjson.loads(payload)
        except orjson.JSONDecodeError:
            answer = None
        if isinstance(answer, dict):
            tokens.read(answer.get("usage"))
    elif status in _UPSTREAM_AUTH_STATUSES:
        raise ApiError(
            502,
            f"The upstream provider rejected the gateway's own credentials (HTTP {status}). "
            "This is a configuration problem on the gateway's side, not with your key; "
            "please tell the portal's administrators.",
            type="upstream_error",
            code="upstream_auth_failed",
        )
    elif 400 <= status < 500:
        # The vendor's own OpenAI error object is the most useful answer to a bad request;
        # a credential it might quote is cut out first.
        secret = target.upstream_secret
        if secret and secret.encode() in payload:
            payload = payload.replace(secret.encode(), b"[redacted]")
    else:
        raise ApiError(
            502,
            f"The upstream provider failed to answer (HTTP {status}). Try again later.",
            type="upstream_error",
            code="upstream_error",
        )
    headers: Headers = [
        (b"content-type", response.headers.get("Content-Type", "application/json").encode()),
        (b"content-length", str(len(payload)).encode()),
        (b"x-request-id", request_id),
    ]
    if status >= 400:
        for name in _RELAYED_ERROR_HEADERS:
            value = response.headers.get(name)
            if value is not None:
                headers.append((name.lower().encode(), value.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return status


class _StreamState:
    __slots__ = ("disconnected",)

    def __init__(self) -> None:
        self.disconnected = False


async def _relay_stream(
    response: aiohttp.ClientResponse,
    strip_usage: bool,
    tokens: Tokens,
    request_id: bytes,
    send: Send,
    receive: Receive,
) -> int:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS_BASE, (b"x-request-id", request_id)],
        }
    )
    state = _StreamState()
    watcher = asyncio.create_task(_close_on_disconnect(receive, response, state))
    status = 200
    pending = b""
    try:
        async for chunk in response.content.iter_any():
            data = pending + chunk if pending else chunk
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            cut = data.rfind(b"\n\n")
            if cut == -1 and len(data) < _MAX_PENDING_SSE:
                pending = data
                continue
            if cut == -1:
                out, pending = data, b""
            else:
                out, pending = data[: cut + 2], data[cut + 2 :]
            if strip_usage:
                # The client gets the chunks it would have got without include_usage.
                out = out.replace(_COMPACT_NULL_USAGE, b"")
            if b'"usage"' in out:
                out = _take_usage(out, strip_usage, tokens)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except (aiohttp.ClientError, TimeoutError) as exc:
        if not state.disconnected:
            status = 504 if isinstance(exc, TimeoutError) else 502
            pending += _stream_error_event(status, request_id)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if state.disconnected:
        return status
    if b'"usage"' in pending:  # an upstream that ended without a final blank line
        pending = _take_usage(pending, strip_usage, tokens)
    await send({"type": "http.response.body", "body": pending, "more_body": False})
    return status


async def _close_on_disconnect(
    receive: Receive, response: aiohttp.ClientResponse, state: _StreamState
) -> None:
    # The request body is fully read, so the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass
    state.disconnected = True
    response.close()


def _take_usage(out: bytes, strip_usage: bool, tokens: Tokens) -> bytes:
    """Read usage from the SSE events in ``out``; drop the usage-only chunk if asked."""
    kept: list[bytes] = []
    changed = False
    for event in out.split(b"\n\n"):
        if not event:
            continue
        if b'"usage"' in event and not any(null in event for null in _NULL_USAGE):
            chunk = _event_json(event)
            if chunk is not None and isinstance(chunk.get("usage"), dict):
                tokens.read(chunk["usage"])
                if strip_usage and not chunk.get("choices"):
                    changed = True
                    continue
        kept.append(event)
    if not changed:
        return out
    return b"\n\n".join(kept) + b"\n\n" if kept else b""


def _event_json(event: bytes) -> dict[str, Any] | None:
    data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _stream_error_event(status: int, request_id: bytes) -> bytes:
    # Headers are gone by now, so the failure is told in the stream itself, as OpenAI does.
    if status == 504:
        message, code = "The upstream provider stopped sending in time.", "upstream_timeout"
    else:
        message, code = "The upstream provider broke off the stream.", "upstream_error"
    err = ApiError(status, message, type="upstream_error", code=code)
    return b"data: " + error_body(err, request_id.decode()) + b"\n\n"


def _upstream_timeout() -> ApiError:
    return ApiError(
        504,
        "The upstream provider did not answer in time. Try again later.",
        type="upstream_error",
        code="upstream_timeout",
    )


def _upstream_unreachable() -> ApiError:
    return ApiError(
        502,
        "The gateway could not reach the upstream provider. Try again later.",
        type="upstream_error",
        code="upstream_unavailable",
    )
