"""What every vendor adapter provides, and the shapes they exchange with the gateway.

The gateway's one internal language for model calls is OpenAI's Chat Completions: a
request is the client's OpenAI request (or an Anthropic ``/v1/messages`` request turned
into one by ``gateway.anthropic``); an answer is a ``chat.completion`` object, and a
stream is a sequence of ``chat.completion.chunk`` objects whose last one carries
``usage``. An adapter translates that language to one vendor's wire format and back:

- :meth:`Adapter.chat_request` builds the HTTP request for one target and credential,
  and raises :class:`Unsupported` for what the vendor cannot do, before anything is sent;
- :meth:`Adapter.chat_response` turns a 2xx body into a ``chat.completion`` dict;
- :meth:`Adapter.chat_stream` returns a :class:`StreamDecoder` that turns the raw bytes
  of a 2xx streamed body, in whatever pieces they arrive, into chunk dicts;
- :meth:`Adapter.failure` classifies a non-2xx answer into a :class:`UpstreamFailure`,
  which decides retries and fallback (``gateway.routing``).

Adapters are stateless and never do I/O: the gateway sends what they build with its
one aiohttp session. They are pure functions of their inputs, which is what lets each be
tested against a fake that speaks the vendor's real wire format.

OpenAI-wire vendors (OpenAI, Azure OpenAI, DeepSeek, Mistral, DashScope, Ollama, vLLM,
any compatible server) set ``openai_wire``: the gateway then forwards the client's body
as it is (renaming the model when needed) and relays the vendor's bytes, which is the
fast path the benchmarks measure.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Json = dict[str, Any]


class FailureKind(enum.StrEnum):
    """Why an upstream call failed, which decides what the router does next."""

    RATE_LIMITED = "rate_limited"  # 429: another credential or target, honour retry-after
    AUTH = "auth"  # 401/403: this credential is out until re-enabled by a new revision
    SERVER = "server"  # 5xx, 404 of a model, malformed answers: retry, then fall back
    TIMEOUT = "timeout"  # no answer (or no first token) in time: retry, then fall back
    UNREACHABLE = "unreachable"  # connection refused, DNS, TLS: retry, then fall back
    CONTEXT_WINDOW = "context_window"  # prompt too long: fall back to a larger model
    BAD_REQUEST = "bad_request"  # the client's fault: answered as is, never retried


class UpstreamFailure(Exception):
    """An upstream answer that was not a success, classified.

    ``message`` may reach the client (for ``BAD_REQUEST`` and ``CONTEXT_WINDOW`` it is
    the vendor's own explanation, which is the useful one), so adapters take it from
    the vendor's error body and the gateway strips credentials from it before use.
    """

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int = 0,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.param = param
        self.code = code
        # The vendor's answer as received, for relaying a client error to an
        # OpenAI-wire client unchanged (set by the gateway, not by adapters).
        self.body: bytes | None = None
        self.content_type: str | None = None


class Unsupported(Exception):
    """The request asks for something this vendor cannot do; answered with 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One target with one credential: everything an adapter needs to build a call.

    ``base_url`` is the upstream's as configured (no trailing slash), ``model`` the
    model's name at the vendor (or the deployment, for Azure), ``credential`` the
    opened secret (``None`` when the upstream needs none), ``options`` the upstream's
    vendor-specific settings (``api_version`` for Azure, ``region`` for Bedrock...).
    """

    base_url: str
    model: str
    credential: str | None = field(default=None, repr=False)
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class HttpRequest:
    """A request to send upstream. ``headers`` is the complete set: nothing of the
    client's is ever added to it."""

    url: str
    headers: dict[str, str]
    body: bytes
    method: str = "POST"


class StreamDecoder(Protocol):
    """Turns a vendor's streamed body into OpenAI ``chat.completion.chunk`` dicts.

    ``feed`` takes the bytes as they arrive (any split, even mid-event) and returns the
    chunks completed by them; ``close`` is called once at the end of the body and
    returns what is left. Every chunk has ``choices`` (possibly empty); the usage chunk
    (``choices: []`` with ``usage``) comes last when the vendor reported usage. A
    vendor's in-stream error raises :class:`UpstreamFailure`.
    """

    def feed(self, data: bytes) -> list[Json]: ...

    def close(self) -> list[Json]: ...


class Adapter(Protocol):
    """One vendor's translation (see the module docstring)."""

    vendor: str
    openai_wire: bool

    def chat_request(self, endpoint: Endpoint, request: Json, *, stream: bool) -> HttpRequest: ...

    def chat_response(self, endpoint: Endpoint, payload: bytes) -> Json: ...

    def chat_stream(self, endpoint: Endpoint) -> StreamDecoder: ...

    def embeddings_request(self, endpoint: Endpoint, request: Json) -> HttpRequest: ...

    def embeddings_response(self, endpoint: Endpoint, payload: bytes) -> Json: ...

    def failure(
        self, status: int, payload: bytes, headers: Mapping[str, str]
    ) -> UpstreamFailure: ...


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds; HTTP dates are not used by LLM
    vendors and are ignored), capped at an hour."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return min(seconds, 3600.0)
    return None


def classify_status(status: int) -> FailureKind:
    """The failure kind an HTTP status means when the body says nothing more specific."""
    if status == 429:
        return FailureKind.RATE_LIMITED
    if status in (401, 403, 407):
        return FailureKind.AUTH
    if status in (408, 504):
        return FailureKind.TIMEOUT
    if status == 404 or status >= 500:
        # A 404 names a model or deployment the vendor does not have: the target is
        # misconfigured, and another one may well serve the call.
        return FailureKind.SERVER
    return FailureKind.BAD_REQUEST


# Phrases vendors use for a prompt longer than the model's context window.
CONTEXT_WINDOW_PHRASES = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the maximum number of tokens",
)


def mentions_context_window(text: str) -> bool:
    lowered = text.lower()
    return any(phrase in lowered for phrase in CONTEXT_WINDOW_PHRASES)


def usage_dict(prompt: int | None, completion: int | None) -> Json:
    """An OpenAI ``usage`` object from two counts (missing ones count as 0)."""
    prompt = prompt or 0
    completion = completion or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
