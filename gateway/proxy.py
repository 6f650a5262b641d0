"""Calling model upstreams: attempts, fallback, conversion and relaying the answer.

A call walks the plan ``gateway.routing.Router.plan`` gives it, one attempt at a time,
until one succeeds or the plan is spent. What happens after a failure depends on its
class (``gateway.providers.base.FailureKind``):

- rate-limited (429) or refused (401/403): the same target with another credential of
  its pool if one is not resting, else the next target;
- server error, unreachable: once more on the same target after a short backoff, then
  the next target; a timeout goes straight to the next target;
- prompt too long: the rest of this route's targets are skipped (they serve the same
  model) and the fallbacks are tried;
- the client's own mistake (other 4xx): answered at once, never retried.

Fallback is decided before the first byte reaches the client: a stream is answered only
once its first piece has arrived (within the route's ``first_token_seconds``), and once
it has started it is never switched; if it breaks, it ends with an error event.

Two ways through. The fast path, for OpenAI clients of OpenAI-wire vendors, forwards
the client's body as it is (renaming the model when needed) and relays the vendor's
bytes, reading only the usage. Every other combination is converted: the adapter builds
the vendor request from the OpenAI-shaped request, decodes the answer into
``chat.completion`` (chunk) dicts, and a :class:`ClientProtocol` encodes those for the
client (OpenAI JSON and SSE, or Anthropic's messages and events).

The client's headers never travel upstream: adapters build the complete header set.
Upstream failures become gateway errors with fixed messages, except a client error's
own explanation, from which every credential of the pool is cut first.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import orjson
from multidict import CIMultiDict

from gateway import tokens as estimate
from gateway.providers.base import (
    Endpoint,
    FailureKind,
    Json,
    StreamDecoder,
    Unsupported,
    UpstreamFailure,
)
from gateway.providers.openai import OpenAIWire
from gateway.responses import ApiError, error_body
from gateway.routing import Attempt, Route, Router, RouteTarget
from gateway.types import Headers, Receive, Send

# An upstream that never ends an SSE event must not make us buffer without bound.
_MAX_PENDING_SSE = 1 << 20
_NULL_USAGE = (b'"usage":null', b'"usage": null')
# Outside JSON strings only: inside one, the quotes would be escaped.
_COMPACT_NULL_USAGE = b',"usage":null'
_SSE_HEADERS_BASE: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
# At most this many attempts per call, whatever the plan holds.
MAX_ATTEMPTS = 6
# Backoff before the one retry of a target after a server error or connection failure.
_RETRY_BACKOFF = 0.1
# A prompt is sent to a model only if the gateway's estimate of it is within this many
# times the model's context window: the estimate is rough, and a vendor's refusal costs
# one round trip, where a wrong skip would refuse a call the model could serve.
_CONTEXT_MARGIN = 1.5


class Tokens:
    """Token counts read from an upstream answer (``None`` when it did not say).

    ``estimated`` is set when the gateway counted them itself (``gateway.tokens``)
    because the vendor's answer had none.
    """

    __slots__ = ("completion", "estimated", "prompt")

    def __init__(self) -> None:
        self.prompt: int | None = None
        self.completion: int | None = None
        self.estimated = False

    def fill_in(self, request: Json, completion: Callable[[], int]) -> None:
        """Estimate the counts the vendor did not give (both, or neither, are missing
        in practice: usage comes as one object)."""
        if self.prompt is None:
            self.prompt = estimate.count_prompt(request)
            self.estimated = True
        if self.completion is None:
            self.completion = completion()
            self.estimated = True

    def read(self, usage: object) -> None:
        if isinstance(usage, dict):
            self.prompt = _count(usage.get("prompt_tokens"))
            self.completion = _count(usage.get("completion_tokens"))

    @property
    def total(self) -> int | None:
        if self.prompt is None and self.completion is None:
            return None
        return (self.prompt or 0) + (self.completion or 0)


def _count(value: object) -> int | None:
    # Usage events are validated on ingest; one negative or non-integer count from a
    # misbehaving upstream would otherwise make a whole batch unreadable.
    if type(value) is int and value >= 0:
        return value
    return None


class Outcome:
    """What a call did, for its usage event and response headers."""

    __slots__ = ("attempt_started", "status", "target", "tokens", "upstream_seconds")

    def __init__(self) -> None:
        self.status = 500
        self.tokens = Tokens()
        self.target: str | None = None
        # Time spent in finished attempts, and when the current one started
        # (``perf_counter``): what is left of a call's time is the gateway's own.
        self.upstream_seconds = 0.0
        self.attempt_started = 0.0


class PreparedCall:
    """URL, headers and timeouts of one OpenAI-wire endpoint and operation, built once."""

    __slots__ = ("headers", "stream_timeout", "timeout", "url")

    def __init__(self, adapter: OpenAIWire, endpoint: Endpoint, operation: str, seconds: float):
        self.url = adapter.url(endpoint, operation)
        self.headers: CIMultiDict[str] = CIMultiDict(adapter.headers(endpoint))
        self.timeout = aiohttp.ClientTimeout(total=seconds)
        # A stream may run for long; what must not stall is each wait for the next chunk.
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=seconds, sock_read=seconds
        )


class PreparedCalls:
    """:class:`PreparedCall` cache, dropped whenever the model index changes.

    Keyed on the identity of ``AppliedRevision.models``, which credential-only deltas
    carry over, so a key revocation does not invalidate it.
    """

    __slots__ = ("_calls", "_models")

    def __init__(self) -> None:
        self._models: object = None
        self._calls: dict[tuple[str, int, str], PreparedCall] = {}

    def get(self, models: object, attempt: Attempt, operation: str) -> PreparedCall:
        if models is not self._models:
            self._models = models
            self._calls = {}
        key = (attempt.target.key, attempt.credential, operation)
        call = self._calls.get(key)
        if call is None:
            adapter = attempt.target.adapter
            assert isinstance(adapter, OpenAIWire)
            call = self._calls[key] = PreparedCall(
                adapter, attempt.endpoint, operation, attempt.target.upstream.timeout_seconds
            )
        return call


class ClientProtocol(Protocol):
    """How answers are written for the client: OpenAI's format or Anthropic's."""

    name: str

    def whole(self, completion: Json, model: str) -> bytes: ...

    def stream(self, model: str, include_usage: bool) -> StreamEncoder: ...


class StreamEncoder(Protocol):
    def encode(self, chunks: list[Json]) -> bytes: ...

    def finish(self) -> bytes: ...

    def error(self, status: int, message: str, code: str, request_id: str) -> bytes: ...


class OpenAIClient:
    """OpenAI clients: ``chat.completion`` JSON and ``chat.completion.chunk`` SSE."""

    name = "openai"

    def whole(self, completion: Json, model: str) -> bytes:
        completion["model"] = model
        return orjson.dumps(completion)

    def stream(self, model: str, include_usage: bool) -> OpenAIStream:
        return OpenAIStream(model, include_usage)


class OpenAIStream:
    __slots__ = ("_include_usage", "_model")

    def __init__(self, model: str, include_usage: bool) -> None:
        self._model = model
        self._include_usage = include_usage

    def encode(self, chunks: list[Json]) -> bytes:
        out = []
        for chunk in chunks:
            if not self._include_usage:
                if "usage" in chunk and not chunk.get("choices"):
                    continue
                chunk.pop("usage", None)
            chunk["model"] = self._model
            chunk.setdefault("object", "chat.completion.chunk")
            out.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, status: int, message: str, code: str, request_id: str) -> bytes:
        return _sse_error(status, message, code, request_id)


def _sse_error(status: int, message: str, code: str, request_id: str) -> bytes:
    # Headers are gone by now, so the failure is told in the stream itself, as OpenAI does.
    err = ApiError(status, message, type="upstream_error", code=code)
    return b"data: " + error_body(err, request_id) + b"\n\n"


OPENAI_CLIENT = OpenAIClient()


class CallContext(Protocol):
    """What routing needs to know of the call: the pinned upstream and the consumer."""

    pin: str | None
    consumer: int | None


class Upstreams:
    """Everything calls share in one process: the session, the router, the cache."""

    def __init__(self, session: aiohttp.ClientSession, router: Router) -> None:
        self.session = session
        self.router = router
        self.prepared = PreparedCalls()


async def serve_chat(
    upstreams: Upstreams,
    routes: dict[str, Route],
    route: Route,
    *,
    request: Json,
    body: bytes | None,
    client: ClientProtocol,
    stream: bool,
    include_usage: bool,
    call: CallContext,
    outcome: Outcome,
    request_id: str,
    extra_headers: Callable[[RouteTarget], Headers],
    send: Send,
    receive: Receive,
) -> None:
    """Serve one chat call along its plan (see the module docstring).

    ``request`` is the OpenAI-shaped request; ``body`` is the client's raw body when it
    may be forwarded as is to OpenAI-wire targets (OpenAI clients), else ``None``.
    ``extra_headers`` gives the headers every answer carries (rate limits, request id).
    Raises :class:`ApiError` when no attempt succeeds, before anything was sent.
    """

    async def attempt(planned: Attempt) -> None:
        await _attempt_chat(
            upstreams,
            routes,
            planned,
            request=request,
            body=body,
            client=client,
            stream=stream,
            include_usage=include_usage,
            outcome=outcome,
            request_id=request_id,
            extra_headers=extra_headers,
            send=send,
            receive=receive,
        )

    size = len(body) if body is not None else None
    estimated: list[int] = []

    def too_long(candidate: Route) -> str | None:
        window = candidate.spec.context_window or 0
        if size is not None and size <= window:  # a token is at least a byte
            return None
        if not estimated:
            estimated.append(estimate.count_prompt(request))
        if estimated[0] <= window * _CONTEXT_MARGIN:
            return None
        return (
            f"This model's maximum context length is {window} tokens, and the messages "
            f"are about {estimated[0]} tokens. Shorten them, or use a model with a "
            "larger context window."
        )

    await _walk(upstreams.router, routes, route, call, outcome, attempt, too_long)


async def serve_embeddings(
    upstreams: Upstreams,
    routes: dict[str, Route],
    route: Route,
    *,
    request: Json,
    body: bytes,
    call: CallContext,
    outcome: Outcome,
    extra_headers: Callable[[RouteTarget], Headers],
    send: Send,
) -> None:
    """Serve one embeddings call along its plan, as :func:`serve_chat` does."""

    async def attempt(planned: Attempt) -> None:
        target = planned.target
        adapter = target.adapter
        headers: Mapping[str, str]
        if isinstance(adapter, OpenAIWire):
            prepared = upstreams.prepared.get(routes, planned, "embeddings")
            same = request.get("model") == target.model
            payload = body if same else orjson.dumps({**request, "model": target.model})
            url, headers, timeout = prepared.url, prepared.headers, prepared.timeout
        else:
            try:
                http = adapter.embeddings_request(planned.endpoint, request)
            except Unsupported as exc:
                raise _unsupported(exc) from None
            url, headers, payload = http.url, http.headers, http.body
            timeout = aiohttp.ClientTimeout(total=target.upstream.timeout_seconds)
        response = await _post(upstreams.session, url, headers, payload, timeout)
        try:
            if response.status != 200:
                raise await _failure(adapter.failure, response, planned.endpoint)
            answer = adapter.embeddings_response(planned.endpoint, await _read(response))
        finally:
            response.release()
        answer["model"] = planned.route.name
        usage = answer.get("usage")
        counted = outcome.tokens
        counted.prompt = _count(usage.get("prompt_tokens")) if isinstance(usage, dict) else None
        counted.completion = 0
        if counted.prompt is None:
            counted.prompt = estimate.count_value(request.get("input"))
            counted.estimated = True
        outcome.status = 200
        await _send_whole(
            send, 200, orjson.dumps(answer), b"application/json", extra_headers(target)
        )

    await _walk(upstreams.router, routes, route, call, outcome, attempt)


async def _walk(
    router: Router,
    routes: dict[str, Route],
    route: Route,
    call: CallContext,
    outcome: Outcome,
    run: Callable[[Attempt], Awaitable[None]],
    too_long: Callable[[Route], str | None] | None = None,
) -> None:
    """Run attempts along the plan until one succeeds; raises the final :class:`ApiError`.

    ``too_long`` says why a route's context window cannot hold the prompt (``None``
    when it can): such routes are skipped without a call, as after the vendor's own
    context-window error.
    """
    deadline = time.monotonic() + route.targets[0].upstream.timeout_seconds
    skip_route: str | None = None
    last: UpstreamFailure | None = None
    last_attempt: Attempt | None = None
    tries = 0
    for planned in router.plan(route, routes, pin=call.pin, consumer=call.consumer):
        if planned.route.name == skip_route:
            continue
        if too_long is not None and planned.route.spec.context_window is not None:
            reason = too_long(planned.route)
            if reason is not None:
                skip_route = planned.route.name
                last = UpstreamFailure(FailureKind.CONTEXT_WINDOW, reason)
                continue
        attempt: Attempt | None = planned
        retried = False
        while attempt is not None and tries < MAX_ATTEMPTS:
            tries += 1
            last_attempt = current = attempt
            started = outcome.attempt_started = router.started(current)
            try:
                await run(current)
            except UpstreamFailure as failure:
                router.failed(current, failure)
                last = failure
                kind = failure.kind
                if kind is FailureKind.BAD_REQUEST:
                    raise _client_error(failure, current) from None
                if kind is FailureKind.CONTEXT_WINDOW:
                    skip_route = current.route.name
                    break
                if kind in (FailureKind.RATE_LIMITED, FailureKind.AUTH):
                    attempt = router.other_credential(current)
                    continue
                if (
                    kind is not FailureKind.TIMEOUT
                    and not retried
                    and router.healthy(current.target)
                    and time.monotonic() < deadline
                ):
                    retried = True
                    await asyncio.sleep(_RETRY_BACKOFF * (1 + random.random()))  # noqa: S311
                    continue
                break
            else:
                router.succeeded(current, started)
                outcome.target = current.target.label
                return
            finally:
                router.finished(current)
                outcome.upstream_seconds += time.perf_counter() - started
        if tries >= MAX_ATTEMPTS or time.monotonic() >= deadline:
            break
    raise _exhausted(last, last_attempt, router)


async def _attempt_chat(
    upstreams: Upstreams,
    routes: dict[str, Route],
    attempt: Attempt,
    *,
    request: Json,
    body: bytes | None,
    client: ClientProtocol,
    stream: bool,
    include_usage: bool,
    outcome: Outcome,
    request_id: str,
    extra_headers: Callable[[RouteTarget], Headers],
    send: Send,
    receive: Receive,
) -> None:
    target = attempt.target
    adapter = target.adapter
    public = attempt.route.name
    seconds = target.upstream.timeout_seconds
    first_token = attempt.route.spec.first_token_seconds or seconds
    if body is not None and isinstance(adapter, OpenAIWire):
        prepared = upstreams.prepared.get(routes, attempt, "chat/completions")
        payload = _passthrough_body(adapter, request, body, target.model, stream)
        first_by = time.monotonic() + first_token
        response = await _post(
            upstreams.session,
            prepared.url,
            prepared.headers,
            payload,
            prepared.stream_timeout if stream else prepared.timeout,
            first_by if stream else None,
        )
        try:
            if response.status != 200:
                raise await _failure(adapter.failure, response, attempt.endpoint)
            rename = _renaming(target.model, public)
            if not stream:
                answer = await _read(response)
                parsed = _loads(answer)
                if parsed is not None:
                    outcome.tokens.read(parsed.get("usage"))
                    outcome.tokens.fill_in(request, lambda: estimate.count_completion(parsed))
                if rename is not None:
                    answer = _rename(answer, rename)
                outcome.status = 200
                await _send_whole(send, 200, answer, _json_type(response), extra_headers(target))
                return
            first = await _first_piece(response, first_by)
            outcome.status = await _relay_stream(
                response,
                first,
                rename,
                not include_usage,
                outcome.tokens,
                request_id.encode(),
                extra_headers(target),
                send,
                receive,
            )
        finally:
            response.release()
        outcome.tokens.fill_in(request, lambda: 0)  # the prompt, if the stream said nothing
        return
    try:
        http = adapter.chat_request(attempt.endpoint, request, stream=stream)
    except Unsupported as exc:
        raise _unsupported(exc) from None
    timeout = aiohttp.ClientTimeout(
        total=None if stream else seconds, sock_connect=seconds, sock_read=seconds
    )
    first_by = time.monotonic() + first_token
    response = await _post(
        upstreams.session, http.url, http.headers, http.body, timeout, first_by if stream else None
    )
    try:
        if response.status != 200:
            raise await _failure(adapter.failure, response, attempt.endpoint)
        if not stream:
            completion = adapter.chat_response(attempt.endpoint, await _read(response))
            outcome.tokens.read(completion.get("usage"))
            outcome.tokens.fill_in(request, lambda: estimate.count_completion(completion))
            outcome.status = 200
            answer = client.whole(completion, public)
            await _send_whole(send, 200, answer, b"application/json", extra_headers(target))
            return
        decoder = adapter.chat_stream(attempt.endpoint)
        chunks = await _first_chunks(response, decoder, first_by)
        encoder = client.stream(public, include_usage)
        outcome.status = await _relay_converted(
            response,
            decoder,
            chunks,
            encoder,
            outcome.tokens,
            request_id,
            extra_headers(target),
            send,
            receive,
        )
    finally:
        response.release()
    outcome.tokens.fill_in(request, lambda: 0)  # the prompt, if the stream said nothing


def _passthrough_body(
    adapter: OpenAIWire, request: Json, body: bytes, model: str, stream: bool
) -> bytes:
    """The client's body, re-encoded only when something in it must change."""
    changes: dict[str, Any] = {}
    if request.get("model") != model:
        changes["model"] = model
    if stream:
        options = request.get("stream_options")
        if not adapter.stream_options:
            if options is not None:
                changes["stream_options"] = None
        elif not (isinstance(options, dict) and options.get("include_usage") is True):
            # Usage is how consumers are metered, so it is asked for on their behalf
            # and the extra chunk is kept from a client that did not ask for it.
            changes["stream_options"] = {**(options or {}), "include_usage": True}
    if not changes:
        return body
    rewritten = {**request, **changes}
    if rewritten.get("stream_options") is None:
        rewritten.pop("stream_options", None)
    return orjson.dumps(rewritten)


async def _post(
    session: aiohttp.ClientSession,
    url: Any,
    headers: Any,
    body: bytes,
    limits: aiohttp.ClientTimeout,
    first_by: float | None = None,
) -> aiohttp.ClientResponse:
    """Send a request; ``first_by`` (``time.monotonic``) bounds the wait for the answer's
    headers too, for streams, whose first token must come by then."""
    try:
        if first_by is None:
            return await session.post(
                url, data=body, headers=headers, timeout=limits, allow_redirects=False
            )
        async with asyncio.timeout(first_by - time.monotonic()):
            return await session.post(
                url, data=body, headers=headers, timeout=limits, allow_redirects=False
            )
    except TimeoutError:
        raise UpstreamFailure(FailureKind.TIMEOUT, "no answer in time") from None
    except aiohttp.ClientError:
        raise UpstreamFailure(FailureKind.UNREACHABLE, "could not connect") from None


async def _read(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except TimeoutError:
        raise UpstreamFailure(FailureKind.TIMEOUT, "no answer in time") from None
    except aiohttp.ClientError:
        raise UpstreamFailure(FailureKind.UNREACHABLE, "the answer broke off") from None


async def _failure(
    classify: Callable[[int, bytes, Any], UpstreamFailure],
    response: aiohttp.ClientResponse,
    endpoint: Endpoint,
) -> UpstreamFailure:
    payload = await _read(response)
    headers = {name.lower(): value for name, value in response.headers.items()}
    failure = classify(response.status, payload, headers)
    failure.message = redact(failure.message, endpoint)
    failure.body = redact_bytes(payload, endpoint)
    failure.content_type = response.headers.get("Content-Type", "application/json")
    return failure


def _secrets_of(endpoint: Endpoint) -> list[str]:
    credential = endpoint.credential
    if not credential:
        return []
    # Bedrock's credential is "<key id>:<secret>[:<token>]": each part is secret too.
    parts = [credential, *(part for part in credential.split(":") if len(part) >= 8)]
    return sorted(set(parts), key=len, reverse=True)


def redact(text: str, endpoint: Endpoint) -> str:
    for secret in _secrets_of(endpoint):
        text = text.replace(secret, "[redacted]")
    return text


def redact_bytes(payload: bytes, endpoint: Endpoint) -> bytes:
    for secret in _secrets_of(endpoint):
        payload = payload.replace(secret.encode(), b"[redacted]")
    return payload


async def _first_piece(response: aiohttp.ClientResponse, first_by: float) -> bytes:
    """The first bytes of a stream, by the time-to-first-token deadline."""
    try:
        async with asyncio.timeout(first_by - time.monotonic()):
            while True:
                piece = await response.content.readany()
                if piece:
                    return piece
                if response.content.at_eof():
                    raise UpstreamFailure(FailureKind.SERVER, "empty stream")
    except TimeoutError:
        response.close()
        raise UpstreamFailure(FailureKind.TIMEOUT, "no first token in time") from None
    except aiohttp.ClientError:
        raise UpstreamFailure(FailureKind.UNREACHABLE, "the stream broke off") from None


async def _first_chunks(
    response: aiohttp.ClientResponse, decoder: StreamDecoder, first_by: float
) -> list[Json]:
    """Decoded chunks up to the first one, by the time-to-first-token deadline."""
    try:
        async with asyncio.timeout(first_by - time.monotonic()):
            while True:
                piece = await response.content.readany()
                if not piece and response.content.at_eof():
                    chunks = decoder.close()
                    if not chunks:
                        raise UpstreamFailure(FailureKind.SERVER, "empty stream")
                    return chunks
                chunks = decoder.feed(piece)
                if chunks:
                    return chunks
    except TimeoutError:
        response.close()
        raise UpstreamFailure(FailureKind.TIMEOUT, "no first token in time") from None
    except aiohttp.ClientError:
        raise UpstreamFailure(FailureKind.UNREACHABLE, "the stream broke off") from None


def _json_type(response: aiohttp.ClientResponse) -> bytes:
    return response.headers.get("Content-Type", "application/json").encode()


async def _send_whole(
    send: Send, status: int, payload: bytes, content_type: bytes, headers: Headers
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _unsupported(exc: Unsupported) -> ApiError:
    return ApiError(400, exc.message, code="unsupported_parameter", param=exc.param)


def _client_error(failure: UpstreamFailure, attempt: Attempt) -> ApiError:
    """A vendor's 4xx about the client's request: its own words, credentials cut out."""
    status = failure.status if 400 <= failure.status < 500 else 400
    err = ApiError(
        status,
        failure.message,
        code=failure.code or "upstream_rejected_request",
        param=failure.param,
    )
    if failure.retry_after is not None:
        err.headers = [(b"retry-after", str(max(1, int(failure.retry_after + 0.999))).encode())]
    if isinstance(attempt.target.adapter, OpenAIWire) and failure.body is not None:
        # An OpenAI-wire vendor's own error object is the most useful answer as it is.
        err.raw_body = failure.body
        err.raw_content_type = (failure.content_type or "application/json").encode()
    return err


def _exhausted(last: UpstreamFailure | None, attempt: Attempt | None, router: Router) -> ApiError:
    if last is not None and attempt is None:  # nothing was tried: no route fits the prompt
        return failure_error(last)
    if last is None or attempt is None:
        return ApiError(
            503,
            "No upstream can serve this model right now. Try again later.",
            type="upstream_error",
            code="no_upstream_available",
        )
    wait = router.resting_for(attempt.target) if last.kind is FailureKind.RATE_LIMITED else None
    return failure_error(last, wait or last.retry_after)


def failure_error(failure: UpstreamFailure, wait: float | None = None) -> ApiError:
    """The client's error when ``failure`` was the last word of every upstream tried.

    ``wait`` is how long until a rate-limited upstream takes calls again. Messages are
    fixed strings, except a prompt too long, which the vendor explains best.
    """
    kind = failure.kind
    if kind is FailureKind.RATE_LIMITED:
        seconds = max(1, int((wait or 1.0) + 0.999))
        return ApiError(
            429,
            f"The upstream provider is rate-limiting this model. Retry after {seconds} second(s).",
            type="upstream_error",
            code="rate_limit_exceeded",
            headers=[(b"retry-after", str(seconds).encode())],
        )
    if kind is FailureKind.AUTH:
        return ApiError(
            502,
            "The upstream provider rejected the gateway's own credentials"
            + (f" (HTTP {failure.status})" if failure.status else "")
            + ". This is a configuration problem on the gateway's side, not with your key; "
            "please tell the portal's administrators.",
            type="upstream_error",
            code="upstream_auth_failed",
        )
    if kind is FailureKind.CONTEXT_WINDOW:
        return ApiError(
            400,
            failure.message or "The prompt is longer than the model's context window.",
            code="context_length_exceeded",
            param="messages",
        )
    if kind is FailureKind.TIMEOUT:
        return ApiError(
            504,
            "The upstream provider did not answer in time. Try again later.",
            type="upstream_error",
            code="upstream_timeout",
        )
    if kind is FailureKind.UNREACHABLE:
        return ApiError(
            502,
            "The gateway could not reach the upstream provider. Try again later.",
            type="upstream_error",
            code="upstream_unavailable",
        )
    status = f" (HTTP {failure.status})" if failure.status else ""
    return ApiError(
        502,
        f"The upstream provider failed to answer{status}. Try again later.",
        type="upstream_error",
        code="upstream_error",
    )


# Relaying streams --------------------------------------------------------------------


class _StreamState:
    __slots__ = ("disconnected",)

    def __init__(self) -> None:
        self.disconnected = False


async def _close_on_disconnect(
    receive: Receive, response: aiohttp.ClientResponse, state: _StreamState
) -> None:
    # The request body is fully read, so the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass
    state.disconnected = True
    response.close()


async def _start_stream(
    response: aiohttp.ClientResponse, headers: Headers, send: Send, receive: Receive
) -> tuple[_StreamState, asyncio.Task[None]]:
    """Start the client's SSE answer and watch for the client leaving."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [*_SSE_HEADERS_BASE, *headers]}
    )
    state = _StreamState()
    return state, asyncio.create_task(_close_on_disconnect(receive, response, state))


async def _stop(watcher: asyncio.Task[None]) -> None:
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher


async def _relay_stream(
    response: aiohttp.ClientResponse,
    first: bytes,
    rename: tuple[tuple[bytes, bytes], ...] | None,
    strip_usage: bool,
    tokens: Tokens,
    request_id: bytes,
    headers: Headers,
    send: Send,
    receive: Receive,
) -> int:
    """Relay an OpenAI-wire vendor's SSE bytes, reading (and maybe dropping) usage."""
    state, watcher = await _start_stream(response, headers, send, receive)
    status = 200
    pending = b""
    sent: list[bytes] = []  # to estimate the completion if the vendor gives no usage

    async def pieces() -> Any:
        yield first
        async for piece in response.content.iter_any():
            yield piece

    try:
        async for chunk in pieces():
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
            if rename is not None:
                out = _rename(out, rename)
            if out:
                sent.append(out)
                await send({"type": "http.response.body", "body": out, "more_body": True})
    except (aiohttp.ClientError, TimeoutError) as exc:
        if not state.disconnected:
            status = 504 if isinstance(exc, TimeoutError) else 502
            pending += _sse_error(status, *_break_message(status), request_id.decode())
    finally:
        await _stop(watcher)
    if not state.disconnected:
        if b'"usage"' in pending:  # an upstream that ended without a final blank line
            pending = _take_usage(pending, strip_usage, tokens)
        if rename is not None:
            pending = _rename(pending, rename)
        sent.append(pending)
        await send({"type": "http.response.body", "body": pending, "more_body": False})
    if tokens.completion is None:
        tokens.completion = _streamed_completion(sent)
        tokens.estimated = True
    return status


async def _relay_converted(
    response: aiohttp.ClientResponse,
    decoder: StreamDecoder,
    first: list[Json],
    encoder: StreamEncoder,
    tokens: Tokens,
    request_id: str,
    headers: Headers,
    send: Send,
    receive: Receive,
) -> int:
    """Relay a converted stream: vendor bytes → chunk dicts → the client's events."""
    state, watcher = await _start_stream(response, headers, send, receive)
    status = 200
    tail = b""
    seen: list[Json] = []  # to estimate the completion if the vendor gives no usage
    try:
        chunks, ended = first, False
        while True:
            seen.extend(chunks)
            for chunk in chunks:
                usage = chunk.get("usage")
                if isinstance(usage, dict):
                    tokens.read(usage)
            out = encoder.encode(chunks)
            if ended:
                tail = out + encoder.finish()
                break
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            piece = await response.content.readany()
            ended = not piece and response.content.at_eof()
            chunks = decoder.close() if ended else decoder.feed(piece)
    except (UpstreamFailure, aiohttp.ClientError, TimeoutError) as exc:
        if not state.disconnected:
            timed_out = isinstance(exc, TimeoutError) or (
                isinstance(exc, UpstreamFailure) and exc.kind is FailureKind.TIMEOUT
            )
            status = 504 if timed_out else 502
            tail = encoder.error(status, *_break_message(status), request_id)
    finally:
        await _stop(watcher)
    if not state.disconnected:
        await send({"type": "http.response.body", "body": tail, "more_body": False})
    if tokens.completion is None:
        tokens.completion = sum(estimate.count_completion(chunk) for chunk in seen)
        tokens.estimated = True
    return status


def _renaming(upstream: str, public: str) -> tuple[tuple[bytes, bytes], ...] | None:
    """Byte replacements that put the public model name where the vendor wrote its own.

    Safe on raw JSON: inside a JSON string a quote is escaped, so ``"model":"x"`` can only
    match a real key and value. Names that would need escaping are left alone.
    """
    if upstream == public or any(c in name for name in (upstream, public) for c in '"\\'):
        return None
    old, new = upstream.encode(), public.encode()
    return (
        (b'"model":"' + old + b'"', b'"model":"' + new + b'"'),
        (b'"model": "' + old + b'"', b'"model": "' + new + b'"'),
    )


def _rename(data: bytes, rename: tuple[tuple[bytes, bytes], ...]) -> bytes:
    for old, new in rename:
        if old in data:
            data = data.replace(old, new)
    return data


def _break_message(status: int) -> tuple[str, str]:
    if status == 504:
        return "The upstream provider stopped sending in time.", "upstream_timeout"
    return "The upstream provider broke off the stream.", "upstream_error"


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


def _streamed_completion(sent: list[bytes]) -> int:
    """Estimated completion tokens of the chat chunks in a relayed SSE stream."""
    count = 0
    for event in b"".join(sent).split(b"\n\n"):
        chunk = _event_json(event)
        if chunk is not None:
            count += estimate.count_completion(chunk)
    return count


def _event_json(event: bytes) -> dict[str, Any] | None:
    data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
    return _loads(data)


def _loads(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
