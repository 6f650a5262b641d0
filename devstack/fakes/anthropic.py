"""A fake Anthropic Messages API that needs no internet.

Run it with ``python -m devstack.fakes.anthropic --port 9200`` and point an upstream
(vendor ``anthropic``) at ``http://127.0.0.1:9200/v1``.

It serves ``POST /v1/messages`` in Anthropic's wire format, plain and ``stream: true``
(``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``,
``content_block_stop``, ``message_delta``, ``message_stop``), and ``GET /healthz``. What
it answers follows :mod:`devstack.fakes.script`, like every fake: the reply, the tool
call, the token counts and the knobs in the model name. Errors use Anthropic's body
``{"type": "error", "error": {"type", "message"}, "request_id"}``: ``error-529`` is
``overloaded_error``, ``error-429`` a ``rate_limit_error`` with ``retry-after: 1``, and
``context`` the 400 ``prompt is too long: N tokens > 200000 maximum``.

``midstream-<n>`` (the fakes' shared knob, :mod:`devstack.fakes._asgi`) streams ``n``
content deltas, then an ``error`` event (``overloaded_error``), and ends, as Anthropic
does when it fails after the 200; ``break-<n>`` drops the connection after ``n``
instead. Both concern streams: a plain call answers normally. One knob of this fake
only: ``cached-<n>`` reports ``n`` of the prompt tokens as ``cache_read_input_tokens``
(the total input stays the script's count).

Like the real API it checks what a client most often gets wrong: the key (``x-api-key``
or ``Authorization: Bearer``; 401 ``authentication_error`` unless it is the
``--require-key`` key, when one is given), the ``anthropic-version`` header (2026-10-21
refuses ``temperature``, ``top_p`` and ``top_k``), unknown fields, ``max_tokens``,
roles, non-empty text blocks, ``temperature`` in 0-1, and that every ``tool_use`` is
answered by a ``tool_result`` in the next message and no ``tool_result`` answers
nothing. ``--record FILE`` appends each
request's method, path, headers and body as a JSON line.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import orjson

from devstack.fakes._asgi import Fake, Scope, Send, headers_of, respond, serve, stream
from devstack.fakes.script import Answer, answer, knobs_for

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_CACHED = re.compile(r"cached-(\d+)")
_CONTEXT_WINDOW = 200_000
_ERRORS = {
    400: ("invalid_request_error", "Fake error 400 asked for by the model name."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this model."),
    404: ("not_found_error", "model: not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}
# The real API's request fields (its SDK's MessageCreateParams, 2.13), sampling aside.
_PARAMS = frozenset(
    (
        "cache_control", "container", "context_management", "diagnostics", "inference_geo",
        "max_tokens", "mcp_servers", "messages", "metadata", "model", "output_config",
        "service_tier", "speed", "stop_sequences", "stream", "system", "thinking",
        "tool_choice", "tools", "user_profile_id", "workspace_id",
    )
)  # fmt: skip
_SAMPLING = ("temperature", "top_p", "top_k")
# API versions, and whether each is one from before 2026-10-21's stricter rules.
_VERSIONS = {"2023-01-01": True, "2023-06-01": True, "2026-10-21": False}


class Invalid(Exception):
    """A request the real API would refuse with 400 ``invalid_request_error``."""


class FakeAnthropic(Fake):
    """The ASGI app."""

    def __init__(self, *, require_key: str | None = None, record: Path | None = None) -> None:
        super().__init__(record=record)
        self._key = require_key.encode() if require_key else None
        self._numbers = itertools.count(1)

    async def handle(self, scope: Scope, body: bytes, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        headers = headers_of(scope)
        number = next(self._numbers)
        request_id = f"req_fake{number:06d}"
        version = headers.get("anthropic-version")
        if method != "POST" or path != "/v1/messages":
            await _error(send, 404, request_id, f"Not found: {method} {path}")
        elif self._key is not None and _key_of(headers) != self._key:
            await _error(send, 401, request_id)
        elif version is None:
            await _error(send, 400, request_id, "anthropic-version: header is required")
        elif version not in _VERSIONS:
            await _error(send, 400, request_id, f"anthropic-version: unknown '{version}'")
        else:
            request = _loads(body)
            try:
                _check(request, before_2026=_VERSIONS[version])
            except Invalid as exc:
                await _error(send, 400, request_id, str(exc))
                return
            assert isinstance(request, dict)
            await _messages(request, number, request_id, send)


async def _messages(request: dict[str, Any], number: int, request_id: str, send: Send) -> None:
    model: str = request["model"]
    knobs = knobs_for(model)
    if knobs.delay:
        await asyncio.sleep(knobs.delay)
    said = _script(request, f"toolu_fake{number:06d}")
    if knobs.error is not None:
        await _error(send, knobs.error, request_id)
        return
    if knobs.context:
        tokens = said.prompt_tokens + _CONTEXT_WINDOW
        too_long = f"prompt is too long: {tokens} tokens > {_CONTEXT_WINDOW} maximum"
        await _error(send, 400, request_id, too_long)
        return
    found = _CACHED.search(model)
    cached = min(int(found.group(1)) if found else 0, said.prompt_tokens)
    message = {
        "id": f"msg_fake{number:06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content(said),
        "stop_reason": "tool_use" if said.tool_call else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": said.prompt_tokens - cached,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
            "output_tokens": said.completion_tokens,
        },
    }
    if request.get("stream") is not True:
        await respond(send, 200, orjson.dumps(message), [*_JSON, _request_id(request_id)])
        return
    head, pieces, tail = _events(message, said)
    overloaded = _sse(b"error", _error_body("overloaded_error", "Overloaded", request_id))
    headers = [*_SSE, _request_id(request_id)]
    await stream(send, headers, knobs, model, head=head, pieces=pieces, tail=tail, error=overloaded)


async def _error(send: Send, status: int, request_id: str, message: str | None = None) -> None:
    kind, default = _ERRORS.get(
        status,
        ("api_error", "Internal server error")
        if status >= 500
        else ("invalid_request_error", f"Fake error {status}."),
    )
    headers = [*_JSON, _request_id(request_id)]
    if status == 429:
        headers.append((b"retry-after", b"1"))
    body = _error_body(kind, message or default, request_id)
    await respond(send, status, orjson.dumps(body), headers)


def _request_id(request_id: str) -> tuple[bytes, bytes]:
    return (b"request-id", request_id.encode())


def _key_of(headers: dict[str, str]) -> bytes:
    """The API key: ``x-api-key``, or a bearer token as Anthropic's 2.x SDKs send it."""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip().encode()
    return headers.get("x-api-key", "").encode()


def _loads(raw: bytes) -> object:
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None


def _error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


# What the request says --------------------------------------------------------------


def _check(request: object, *, before_2026: bool) -> None:
    """Raise :class:`Invalid` with the real API's kind of message for a bad request.

    API versions before 2026-10-21 take temperature, top_p and top_k, and documents in
    assistant messages; 2026-10-21 refuses them."""
    if not isinstance(request, dict):
        raise Invalid("The request body is not valid JSON.")
    for key in request:
        if key not in _PARAMS and not (before_2026 and key in _SAMPLING):
            raise Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(request.get("model"), str):
        raise Invalid("model: Field required")
    max_tokens = request.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        raise Invalid("max_tokens: Field required (a positive integer)")
    temperature = request.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        raise Invalid("temperature: Input should be less than or equal to 1")
    system = request.get("system")
    if not (system is None or isinstance(system, str)) and (
        not isinstance(system, list) or any(_kind(b) != "text" for b in system)
    ):
        raise Invalid("system: Input should be a valid string or a list of text blocks")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    pending: set[str] = set()  # tool_use ids the next message must answer
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(message)
        if not isinstance(blocks, list) or not blocks:
            raise Invalid(f"messages.{i}.content: at least one content block is required")
        answered = {b.get("tool_use_id") for b in blocks if _kind(b) == "tool_result"}
        if pending - answered:
            raise Invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(sorted(pending - answered))}. Each `tool_use` "
                "block must have a corresponding `tool_result` block in the next message."
            )
        if answered - pending:
            raise Invalid(
                f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{', '.join(sorted(map(str, answered - pending)))}. Each `tool_result` block "
                "must have a corresponding `tool_use` block in the previous message."
            )
        pending = set()
        for j, block in enumerate(blocks):
            kind, where = _kind(block), f"messages.{i}.content.{j}"
            if kind == "text":
                if not block.get("text"):
                    raise Invalid("messages: text content blocks must be non-empty")
            elif kind in ("tool_use", "tool_result"):
                if role != ("assistant" if kind == "tool_use" else "user"):
                    raise Invalid(f"{where}: {kind} blocks cannot be in {role} messages")
                if kind == "tool_use":
                    pending.add(block.get("id"))
            elif kind == "document" and role == "assistant" and not before_2026:
                raise Invalid(f"{where}: document blocks cannot be in assistant messages")
            elif kind not in ("image", "document"):
                raise Invalid(f"{where}.type: unexpected block type {kind!r}")
    tools = request.get("tools") or []
    if not isinstance(tools, list) or any(
        not isinstance(t, dict)
        or not isinstance(t.get("name"), str)
        or not isinstance(t.get("input_schema"), dict)
        for t in tools
    ):
        raise Invalid("tools: each tool needs a name and an input_schema")


def _kind(block: object) -> object:
    return block.get("type") if isinstance(block, dict) else None


def _texts(content: object) -> list[str]:
    """The text of a message's content, tool results included."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for block in content if isinstance(content, list) else ():
        if _kind(block) == "text":
            texts.append(block["text"])
        elif _kind(block) == "tool_result":
            texts.extend(_texts(block.get("content")))
    return texts


def _script(request: dict[str, Any], call_id: str) -> Answer:
    messages: list[dict[str, Any]] = request["messages"]
    system = request.get("system")
    texts = _texts(system) + [t for m in messages for t in _texts(m["content"])]
    last = _blocks(messages[-1])
    # A user turn of tool results only is a tool's answer; with words of the user's
    # own it is the user speaking (as a user message after tool messages is in OpenAI's).
    only_results = messages[-1]["role"] == "user" and all(_kind(b) == "tool_result" for b in last)
    results = [t for b in last if _kind(b) == "tool_result" for t in _texts(b.get("content"))]
    user_texts = (
        [b["text"] for b in _blocks(m) if _kind(b) == "text"]
        for m in reversed(messages)
        if m["role"] == "user"
    )
    tools = request.get("tools") or []
    return answer(
        model=request["model"],
        texts=texts,
        last_user_text=" ".join(next((t for t in user_texts if t), [])),
        last_is_tool_result=only_results,
        tool_result_text=" ".join(results),
        first_tool=tools[0]["name"] if tools else None,
        call_id=call_id,
    )


def _blocks(message: dict[str, Any]) -> Any:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


# What the fake says -----------------------------------------------------------------


def _content(said: Answer) -> list[dict[str, Any]]:
    call = said.tool_call
    if call is not None:
        return [{"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}]
    return [{"type": "text", "text": said.text}]


def _sse(name: bytes, data: object) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _events(message: dict[str, Any], said: Answer) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The stream of ``message``: the events before its content deltas, the deltas, and
    the events after them."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
    call = said.tool_call
    if call is None:
        block: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in said.pieces]
    else:
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        arguments = orjson.dumps(call.arguments).decode()
        third = max(1, len(arguments) // 3)
        # Anthropic opens with an empty partial_json, then sends the JSON in pieces.
        pieces = ["", arguments[:third], arguments[third : 2 * third], arguments[2 * third :]]
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
    head = [
        _sse(b"message_start", {"type": "message_start", "message": start}),
        _sse(
            b"content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        _sse(b"ping", {"type": "ping"}),
    ]
    content = [
        _sse(b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        for delta in deltas
    ]
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": usage,
    }
    tail = [
        _sse(b"content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(b"message_delta", end),
        _sse(b"message_stop", {"type": "message_stop"}),
    ]
    return head, content, tail


def main(argv: list[str] | None = None) -> None:
    serve(
        "Fake Anthropic Messages API",
        lambda key, record: FakeAnthropic(require_key=key, record=record),
        argv,
    )


if __name__ == "__main__":
    main()
