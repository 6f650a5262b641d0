"""What the Gemini and Bedrock adapters share: reading an OpenAI request, writing answers.

Both vendors take a conversation as turns of typed parts and answer the same way, so the
OpenAI side of their translation is the same: which request parameters a vendor cannot
honour (refused with :class:`Unsupported` before anything is sent), the text, images and
tool calls of each message, and the ``chat.completion`` (chunk) dicts built from what
the vendor said. The vendor side stays in each adapter.

Every adapter uses its framing of server-sent events (:class:`SseEvents`) and
:func:`json_object`.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.providers.base import FailureKind, Json, Unsupported, UpstreamFailure

# Vendor messages reach clients (client errors) and logs; a few hundred characters say it.
MAX_MESSAGE = 500

# Parameters that change nothing in an answer (metering, storage, routing and latency
# hints), or that the gateway has dealt with already (stream_options).
_PASSIVE = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prediction",
    }
)


# What both adapters translate (each may handle more).
_HANDLED = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "seed",
        "response_format",
        "modalities",
        "reasoning_effort",
    }
)
# What neither vendor can do, and why (each may refuse more).
_REFUSED = {
    "logprobs": "Log probabilities are not available through this model's provider.",
    "top_logprobs": "Log probabilities are not available through this model's provider.",
    "logit_bias": "logit_bias is not supported by this model's provider.",
    "audio": "Audio output is not supported by this model's provider.",
    "web_search_options": "Web search is not supported through this gateway for this model.",
    "functions": "The legacy functions parameter is not supported; use tools.",
    "function_call": "The legacy function_call parameter is not supported; use tool_choice.",
}


def check_params(
    request: Json,
    *,
    handled: frozenset[str] = frozenset(),
    refused: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`Unsupported` for a parameter the vendor cannot honour (the common
    ones and ``refused``) when the request really uses it (``None``, ``False``, 0 and
    empty values are the defaults, so allowed), and for any parameter that is not
    ``handled`` here or by the adapter: it would otherwise be dropped unannounced."""
    for param, value in request.items():
        if value is None or param in _HANDLED or param in handled or param in _PASSIVE:
            continue
        why = (refused or {}).get(param) or _REFUSED.get(param)
        if why is None:
            raise Unsupported(param, f"{param} is not supported by this model's provider.")
        if value is False or value == 0 or value in ({}, [], ""):
            continue
        raise Unsupported(param, why)
    modalities = request.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise Unsupported("modalities", "This model answers with text only.")
    if request.get("parallel_tool_calls") is False:
        raise Unsupported(
            "parallel_tool_calls", "This model's provider cannot be limited to one tool call."
        )


def max_tokens(request: Json) -> int | None:
    value = request.get("max_completion_tokens")
    if value is None:
        value = request.get("max_tokens")
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise Unsupported("max_tokens", "max_tokens must be a positive integer.")
    return value


def stop_sequences(request: Json) -> list[str] | None:
    stop = request.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        return list(stop)
    raise Unsupported("stop", "stop must be a string or a list of strings.")


def number(request: Json, param: str) -> float | None:
    value = request.get(param)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unsupported(param, f"{param} must be a number.")
    return float(value)


def choice_count(request: Json) -> int:
    n = request.get("n")
    if n is None:
        return 1
    if type(n) is not int or n < 1:
        raise Unsupported("n", "n must be a positive integer.")
    return n


# Messages ---------------------------------------------------------------------------------


def text_of(content: object, param: str = "messages") -> str:
    """The text of a system, developer or tool message (a string or text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise Unsupported(param, "Only text parts are supported in this message.")
            texts.append(str(part.get("text") or ""))
        return "".join(texts)
    raise Unsupported(param, "Message content must be a string or a list of parts.")


def parts_of(content: object) -> list[Json]:
    """A user or assistant message's content as a list of OpenAI parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return content
    raise Unsupported("messages", "Message content must be a string or a list of parts.")


@dataclass(frozen=True, slots=True)
class Image:
    """An image part: inline bytes (base64, as given) or a URL the vendor may fetch."""

    mime_type: str | None
    data: str | None = None
    url: str | None = None


def image_of(part: Json) -> Image:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str) or not url:
        raise Unsupported("messages", "An image_url part needs a url.")
    if url.startswith("data:"):
        mime, data = data_url(url)
        return Image(mime_type=mime, data=data)
    return Image(mime_type=None, url=url)


def file_of(part: Json) -> tuple[str, str, str | None]:
    """``(mime type, base64 data, filename)`` of a ``file`` part given inline."""
    file = part.get("file")
    url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(file, dict) or not isinstance(url, str) or not url.startswith("data:"):
        raise Unsupported("messages", "File parts must carry their data as a data: URL.")
    mime, data = data_url(url)
    filename = file.get("filename")
    return mime, data, filename if isinstance(filename, str) else None


def data_url(url: str) -> tuple[str, str]:
    """``(mime type, base64 data)`` of a ``data:<mime>;base64,<data>`` URL."""
    header, _, data = url.partition(",")
    mime, _, encoding = header[5:].partition(";")
    if encoding != "base64" or not mime or not data:
        raise Unsupported("messages", "Inline images must be base64 data: URLs.")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Unsupported("messages", "An inline image is not valid base64.") from None
    return mime.lower(), data


def arguments_of(call: Json) -> Json:
    """A tool call's arguments (a JSON string in OpenAI's format) as an object."""
    function = call.get("function")
    raw = function.get("arguments") if isinstance(function, dict) else None
    if raw is None or raw == "":
        return {}
    try:
        value = orjson.loads(raw) if isinstance(raw, str) else raw
    except orjson.JSONDecodeError:
        raise Unsupported("messages", "Tool call arguments must be a JSON object.") from None
    if not isinstance(value, dict):
        raise Unsupported("messages", "Tool call arguments must be a JSON object.")
    return value


def assistant_texts(message: Json) -> list[str]:
    """The non-blank texts of an assistant message (both vendors refuse blank ones)."""
    texts = []
    for part in parts_of(message.get("content")):
        text = part.get("text") if part.get("type") == "text" else part.get("refusal")
        if not isinstance(text, str):
            raise Unsupported("messages", "Assistant messages may hold text parts only.")
        if text.strip():
            texts.append(text)
    return texts


def tool_calls_of(message: Json) -> list[tuple[Json, str, str, Json]]:
    """``(call, id, name, arguments)`` of each tool call of an assistant message."""
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise Unsupported("messages", "tool_calls must be a list.")
    return [(call, *function_of(call)) for call in calls]


def function_of(call: object) -> tuple[str, str, Json]:
    """``(id, name, arguments)`` of an assistant message's tool call."""
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise Unsupported("messages", "Only function tool calls are supported.")
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    ident = call.get("id")
    if not isinstance(name, str) or not name or not isinstance(ident, str):
        raise Unsupported("messages", "A tool call needs an id and a function name.")
    return ident, name, arguments_of(call)


def conversation(
    request: Json,
    *,
    model_role: str,
    user_part: Callable[[Json], Json],
    assistant: Callable[[Json], list[Json]],
    tool_result: Callable[[Json], Json],
) -> tuple[list[Json], list[Json]]:
    """``(system, turns)`` of a request's messages, in a vendor's shapes.

    System and developer messages, wherever they stand, become ``{"text": ...}`` blocks
    (neither vendor has a system turn); the others become turns of role ``user`` or
    ``model_role``, each part converted by the callbacks (``tool_result`` makes the part
    of a ``tool`` message, which goes into a user turn), then :func:`merged`.
    """
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Unsupported("messages", "messages must be a non-empty list.")
    system: list[Json] = []
    turns: list[Turn] = []
    for message in messages:
        if not isinstance(message, dict):
            raise Unsupported("messages", "Every message must be an object.")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = text_of(content)
            if text:
                system.append({"text": text})
        elif role == "user":
            turns.append(Turn("user", [user_part(part) for part in parts_of(content)]))
        elif role == "assistant":
            turns.append(Turn(model_role, assistant(message)))
        elif role == "tool":
            turns.append(Turn("user", [tool_result(message)]))
        else:
            raise Unsupported("messages", f"Unknown message role {role!r}.")
    return system, merged(turns)


@dataclass(slots=True)
class Turn:
    """One vendor turn: a role and its parts, in the vendor's own shapes."""

    role: str
    parts: list[Json] = field(default_factory=list)


def merged(turns: list[Turn]) -> list[Json]:
    """Adjacent turns of one role joined, and empty ones dropped: both vendors want the
    roles to alternate, and OpenAI puts each tool result in a message of its own."""
    out: list[Turn] = []
    for turn in turns:
        if not turn.parts:
            continue
        if out and out[-1].role == turn.role:
            out[-1].parts.extend(turn.parts)
        else:
            out.append(Turn(turn.role, list(turn.parts)))
    return [{"role": turn.role, "content": turn.parts} for turn in out]


# Tools ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    description: str | None
    parameters: Json | None
    strict: bool


def functions(request: Json) -> list[Function]:
    tools = request.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise Unsupported("tools", "tools must be a list.")
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise Unsupported("tools", "Only function tools are supported by this model.")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise Unsupported("tools", "Every function tool needs a name.")
        parameters = function.get("parameters")
        description = function.get("description")
        out.append(
            Function(
                name=name,
                description=description if isinstance(description, str) else None,
                parameters=parameters if isinstance(parameters, dict) else None,
                strict=function.get("strict") is True,
            )
        )
    return out


def tool_choice(request: Json) -> str | None:
    """``"auto"``, ``"none"``, ``"required"``, a function's name, or ``None`` (unset)."""
    choice = request.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return "function:" + name
    raise Unsupported("tool_choice", "tool_choice must be auto, none, required or a function.")


def response_format(request: Json) -> Json | None:
    """``None`` for plain text, else ``{"type": "json_object"}`` or the ``json_schema``
    spec (``name``, ``schema``, optional ``description``)."""
    spec = request.get("response_format")
    if spec is None:
        return None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = spec.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            return {"type": "json_schema", **schema}
        raise Unsupported("response_format", "json_schema needs a schema object.")
    raise Unsupported(
        "response_format", "response_format must be text, json_object or json_schema."
    )


# Answers ----------------------------------------------------------------------------------


def completion_id(vendor_id: object = None) -> str:
    if isinstance(vendor_id, str) and vendor_id:
        return "chatcmpl-" + vendor_id
    return "chatcmpl-" + secrets.token_urlsafe(18)


def usage(
    prompt: object,
    completion: object,
    *,
    cached: object = None,
    reasoning: object = None,
) -> Json:
    """OpenAI's ``usage``; ``completion`` includes reasoning tokens, as OpenAI counts."""
    prompt_tokens = _count(prompt)
    completion_tokens = _count(completion) + _count(reasoning)
    out: Json = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if _count(cached):
        out["prompt_tokens_details"] = {"cached_tokens": _count(cached)}
    if _count(reasoning):
        out["completion_tokens_details"] = {"reasoning_tokens": _count(reasoning)}
    return out


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0


def tool_call(index: int, ident: str, name: str, arguments: str) -> Json:
    return {
        "index": index,
        "id": ident,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def message_choice(index: int, text: str | None, calls: list[Json], finish: str | None) -> Json:
    message: Json = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = [
            {key: value for key, value in call.items() if key != "index"} for call in calls
        ]
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def completion(ident: str, model: str, choices: list[Json], usage: Json | None) -> Json:
    answer: Json = {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        answer["usage"] = usage
    return answer


class Chunks:
    """Builds the ``chat.completion.chunk`` dicts of one stream (one id, one clock)."""

    __slots__ = ("_base", "_started")

    def __init__(self, model: str, ident: str | None = None) -> None:
        self._base: Json = {
            "id": ident or completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self._started: set[int] = set()

    def rename(self, vendor_id: object) -> None:
        """Take the vendor's id for the stream, if it gives one before the first chunk."""
        if isinstance(vendor_id, str) and vendor_id and not self._started:
            self._base["id"] = completion_id(vendor_id)

    def delta(self, index: int, delta: Json, finish: str | None = None) -> Json:
        if index not in self._started:
            # The first delta of each choice names the role, as OpenAI's streams do.
            self._started.add(index)
            delta = {"role": "assistant", **delta}
            delta.setdefault("content", "")
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._base, "choices": [choice]}

    def usage(self, usage: Json) -> Json:
        return {**self._base, "choices": [], "usage": usage}


class SseEvents:
    """Server-sent events framing: a body in any pieces → each whole event's data.

    Events end with a blank line (CRLF line ends are accepted); an event's ``data:``
    lines are joined with newlines; events without data (comments, keep-alives) are
    skipped. An event that does not end within ``limit`` bytes means the upstream is
    not sending events at all.
    """

    __slots__ = ("_limit", "_pending")

    def __init__(self, limit: int = 32 * 1024 * 1024) -> None:
        self._pending = b""
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._pending + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        cut = buffer.rfind(b"\n\n")
        if cut == -1:
            if len(buffer) > self._limit:
                raise malformed("stream (an event without end)")
            self._pending = buffer
            return []
        self._pending = buffer[cut + 2 :]
        return [found for event in buffer[:cut].split(b"\n\n") if (found := _data(event))]

    def close(self) -> list[bytes]:
        """The data of an event the body ended without its blank line, if any."""
        found = _data(self._pending.replace(b"\r\n", b"\n"))
        self._pending = b""
        return [found] if found else []


class SseDecoder:
    """Base of the stream decoders of vendors that send server-sent events.

    Hands each event's data to :meth:`_event`, which appends the chunks it makes;
    :meth:`_end` runs once the body is over, to check the stream was complete (raising
    :class:`UpstreamFailure` when not) and to add any last chunk.
    """

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events = SseEvents()

    def feed(self, data: bytes) -> list[Json]:
        chunks: list[Json] = []
        for event in self._events.feed(data):
            self._event(event, chunks)
        return chunks

    def close(self) -> list[Json]:
        chunks: list[Json] = []
        for event in self._events.close():
            self._event(event, chunks)
        self._end(chunks)
        return chunks

    def _event(self, data: bytes, chunks: list[Json]) -> None:
        raise NotImplementedError

    def _end(self, chunks: list[Json]) -> None:
        raise NotImplementedError


def _data(event: bytes) -> bytes:
    return b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))


# Parsing vendor answers ---------------------------------------------------------------------


def json_object(payload: bytes | str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def malformed(what: str) -> UpstreamFailure:
    return UpstreamFailure(FailureKind.SERVER, f"The upstream answered with a malformed {what}.")


def broke_off() -> UpstreamFailure:
    return UpstreamFailure(FailureKind.SERVER, "The upstream broke off the stream.")


def dicts(value: object) -> Iterator[Json]:
    """The dict items of ``value`` if it is a list (vendor answers are not trusted)."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def arguments_text(value: object) -> str:
    """Tool call arguments as OpenAI carries them: a JSON string."""
    return orjson.dumps(value if isinstance(value, dict) else {}).decode()
