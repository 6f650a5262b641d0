"""Anthropic's Messages API as the gateway serves it to clients (``POST /v1/messages``).

The gateway speaks OpenAI's Chat Completions internally (see
:mod:`gateway.providers.base`), so an Anthropic client's call goes through three pure
conversions, none of which does I/O:

- :func:`messages_to_chat` validates a Messages request and turns it into an OpenAI
  chat request, raising :class:`MessagesError` (answered with 400) for what is invalid
  or what this gateway cannot carry;
- :func:`chat_to_message` turns a ``chat.completion`` into a Messages ``message``;
- :class:`MessageStream` turns ``chat.completion.chunk`` dicts, from any upstream, into
  Anthropic's server-sent events.

:data:`CLIENT` bundles the two answer directions for ``gateway.proxy``'s
``ClientProtocol``. :func:`error_body` and :func:`error_type` write Anthropic's error
shape ``{"type": "error", "error": {"type", "message"}, "request_id"}``.

What does not survive the trip, and why:

- ``thinking`` (other than ``{"type": "disabled"}``), server tools (web search, code
  execution...), ``container``, ``mcp_servers`` and other Anthropic-only features:
  rejected, since Chat Completions has no way to carry them or their result blocks;
- ``temperature``, ``top_p`` and ``top_k`` are taken whatever ``anthropic-version`` the
  client sends (2026-10-21 removed them; older clients still send them);
- ``top_k`` has no Chat Completions equivalent: it is kept as a ``top_k`` extension
  parameter, which the Anthropic adapter and servers such as vLLM honour, and which
  OpenAI itself refuses with its own 400 (so the client learns it was not applied);
- ``tool_result.is_error`` is dropped (OpenAI tool messages have no error flag), as are
  ``cache_control`` hints and ``service_tier``;
- a stop on one of ``stop_sequences`` reaches OpenAI clients as ``finish_reason:
  "stop"``; the matched sequence rides along as the choice's ``stop_reason`` (vLLM's
  extension), which :func:`chat_to_message` and :class:`MessageStream` turn back into
  ``stop_reason: "stop_sequence"``.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from gateway.providers.base import FailureKind, Json, UpstreamFailure


class MessagesError(ValueError):
    """An invalid Messages request. ``param`` is the dotted path of the offending field
    (``messages.2.content.0.type``); the message starts with it."""

    def __init__(self, param: str, problem: str) -> None:
        self.param = param
        self.message = f"{param}: {problem}"
        super().__init__(self.message)


# OpenAI finish_reason -> Anthropic stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_TOP_LEVEL = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "stream",
        "thinking",
        "output_config",
        "service_tier",
    }
)
# Anthropic block types this gateway knows but cannot carry through Chat Completions.
_UNCARRIED_BLOCKS = frozenset(
    {
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "search_result",
        "container_upload",
        "mcp_tool_use",
        "mcp_tool_result",
    }
)
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


# Requests ------------------------------------------------------------------------------


def messages_to_chat(request: object) -> Json:
    """Validate an Anthropic Messages request and convert it to an OpenAI chat request.

    Raises :class:`MessagesError` naming the first offending field.
    """
    if not isinstance(request, dict):
        raise MessagesError("body", "must be a JSON object")
    for key in request:
        if key not in _TOP_LEVEL:
            raise MessagesError(key, "this parameter is not supported by this gateway")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise MessagesError("model", "a model name (non-empty string) is required")
    chat: Json = {"model": model, "messages": [], "max_tokens": _max_tokens(request)}
    system = request.get("system")
    if system is not None:
        chat["messages"].append({"role": "system", "content": _system_text(system)})
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise MessagesError("messages", "a non-empty list of messages is required")
    for i, message in enumerate(messages):
        chat["messages"].extend(_message(message, f"messages.{i}"))
    tools = request.get("tools")
    if tools is not None:
        chat["tools"] = _tools(tools)
    if request.get("tool_choice") is not None:
        choice = _tool_choice(request["tool_choice"])
        if chat.get("tools"):  # Chat Completions refuses a tool_choice without tools
            chat.update(choice)
    stop = request.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise MessagesError("stop_sequences", "must be a list of strings")
        if stop:
            chat["stop"] = stop
    for name in ("temperature", "top_p"):
        value = request.get(name)
        if value is not None:
            chat[name] = _unit_number(value, name)
    top_k = request.get("top_k")
    if top_k is not None:
        if type(top_k) is not int or top_k < 0:
            raise MessagesError("top_k", "must be a non-negative integer")
        chat["top_k"] = top_k
    user = _user_id(request.get("metadata"))
    if user is not None:
        chat["user"] = user
    chat.update(_thinking_and_output(request.get("thinking"), request.get("output_config")))
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise MessagesError("stream", "must be true or false")
    if stream:
        chat["stream"] = True
    return chat


def _max_tokens(request: dict[str, Any]) -> int:
    value = request.get("max_tokens")
    if value is None:
        raise MessagesError("max_tokens", "is required (a positive integer)")
    if type(value) is not int or value < 1:
        raise MessagesError("max_tokens", "must be a positive integer")
    return value


def _unit_number(value: object, param: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise MessagesError(param, "must be a number between 0 and 1")
    return value


def _system_text(system: object) -> str:
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise MessagesError("system", "must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise MessagesError(f"system.{i}.type", "system blocks must be text blocks")
        texts.append(_text(block, f"system.{i}"))
    # Chat Completions servers do not all take content parts for system messages; the
    # blocks' texts are what the model reads either way.
    return "\n\n".join(texts)


def _text(block: dict[str, Any], path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise MessagesError(f"{path}.text", "must be a string")
    return text


def _message(message: object, path: str) -> list[Json]:
    """One Anthropic message as OpenAI messages: a user message carrying tool results
    becomes one ``tool`` message per result, then the user's own content, if any."""
    if not isinstance(message, dict):
        raise MessagesError(path, "must be an object with role and content")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise MessagesError(f"{path}.role", "must be 'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list) or not content:
        raise MessagesError(f"{path}.content", "must be a string or a non-empty list of blocks")
    if role == "assistant":
        return [_assistant(content, f"{path}.content")]
    tool_messages: list[Json] = []
    parts: list[Json] = []
    for j, block in enumerate(content):
        where = f"{path}.content.{j}"
        kind = _block_type(block, where)
        if kind == "tool_result":
            tool_messages.append(_tool_result(block, where))
        elif kind == "tool_use":
            raise MessagesError(f"{where}.type", "tool_use blocks belong in assistant messages")
        else:
            parts.append(_part(block, kind, where))
    if parts or not tool_messages:
        tool_messages.append({"role": "user", "content": _parts_content(parts)})
    return tool_messages


def _block_type(block: object, path: str) -> str:
    if not isinstance(block, dict):
        raise MessagesError(path, "must be a content block object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise MessagesError(f"{path}.type", "is required")
    if kind in _UNCARRIED_BLOCKS:
        raise MessagesError(f"{path}.type", f"block type '{kind}' is not supported by this gateway")
    if kind not in ("text", "image", "document", "tool_use", "tool_result"):
        raise MessagesError(f"{path}.type", f"unknown block type '{kind}'")
    return kind


def _part(block: dict[str, Any], kind: str, path: str) -> Json:
    """A text, image or document block as an OpenAI content part."""
    if kind == "text":
        return {"type": "text", "text": _text(block, path)}
    source = block.get("source")
    if not isinstance(source, dict):
        raise MessagesError(f"{path}.source", "is required")
    source_type = source.get("type")
    if kind == "image":
        if source_type == "base64":
            return {"type": "image_url", "image_url": {"url": _data_url(source, path)}}
        if source_type == "url" and isinstance(source.get("url"), str):
            return {"type": "image_url", "image_url": {"url": source["url"]}}
        raise MessagesError(
            f"{path}.source.type", "images must be base64 or url sources for this gateway"
        )
    if kind == "document":
        if source_type == "base64" and source.get("media_type") == "application/pdf":
            title = block.get("title")
            filename = title if isinstance(title, str) and title else "document.pdf"
            return {
                "type": "file",
                "file": {"file_data": _data_url(source, path), "filename": filename},
            }
        if source_type == "text" and isinstance(source.get("data"), str):
            return {"type": "text", "text": source["data"]}
        raise MessagesError(
            f"{path}.source.type", "documents must be base64 PDF or text sources for this gateway"
        )
    raise MessagesError(f"{path}.type", f"block type '{kind}' is not allowed here")


def _data_url(source: dict[str, Any], path: str) -> str:
    media_type, data = source.get("media_type"), source.get("data")
    if not isinstance(media_type, str) or not isinstance(data, str):
        raise MessagesError(f"{path}.source", "base64 sources need media_type and data strings")
    return f"data:{media_type};base64,{data}"


def _parts_content(parts: list[Json]) -> str | list[Json]:
    # A lone text part as a plain string: every Chat Completions server takes that.
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _tool_result(block: dict[str, Any], path: str) -> Json:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise MessagesError(f"{path}.tool_use_id", "is required")
    if "is_error" in block and not isinstance(block["is_error"], bool):
        raise MessagesError(f"{path}.is_error", "must be true or false")
    content = block.get("content")
    text: str | list[Json]
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for k, inner in enumerate(content):
            where = f"{path}.content.{k}"
            if _block_type(inner, where) != "text":
                raise MessagesError(
                    f"{where}.type", "only text blocks can be tool results through this gateway"
                )
            parts.append({"type": "text", "text": _text(inner, where)})
        text = _parts_content(parts)
    else:
        raise MessagesError(f"{path}.content", "must be a string or a list of text blocks")
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}


def _assistant(content: list[Any], path: str) -> Json:
    parts: list[Json] = []
    calls: list[Json] = []
    for j, block in enumerate(content):
        where = f"{path}.{j}"
        kind = _block_type(block, where)
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        else:
            raise MessagesError(f"{where}.type", f"'{kind}' blocks belong in user messages")
    message: Json = {"role": "assistant", "content": _parts_content(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _tool_call(block: dict[str, Any], path: str) -> Json:
    ident, name, arguments = block.get("id"), block.get("name"), block.get("input")
    if not isinstance(ident, str) or not ident:
        raise MessagesError(f"{path}.id", "is required")
    if not isinstance(name, str) or not name:
        raise MessagesError(f"{path}.name", "is required")
    if not isinstance(arguments, dict):
        raise MessagesError(f"{path}.input", "must be an object")
    return {
        "id": ident,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


def _tools(tools: object) -> list[Json]:
    if not isinstance(tools, list):
        raise MessagesError("tools", "must be a list of tools")
    converted = []
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            raise MessagesError(path, "must be a tool object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise MessagesError(
                f"{path}.type", f"server tool '{kind}' is not supported by this gateway"
            )
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise MessagesError(f"{path}.name", "is required")
        if not isinstance(schema, dict):
            raise MessagesError(f"{path}.input_schema", "must be a JSON schema object")
        function: Json = {"name": name, "parameters": schema}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise MessagesError(f"{path}.description", "must be a string")
            function["description"] = description
        if tool.get("strict") is True:
            function["strict"] = True
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: object) -> Json:
    if not isinstance(choice, dict):
        raise MessagesError("tool_choice", "must be an object with a type")
    kind = choice.get("type")
    converted: Json
    if kind in _TOOL_CHOICES:
        converted = {"tool_choice": _TOOL_CHOICES[kind]}
    elif kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise MessagesError("tool_choice.name", "is required when type is 'tool'")
        converted = {"tool_choice": {"type": "function", "function": {"name": name}}}
    else:
        raise MessagesError("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise MessagesError("tool_choice.disable_parallel_tool_use", "must be true or false")
    if disable and kind != "none":
        converted["parallel_tool_calls"] = False
    return converted


def _user_id(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise MessagesError("metadata", "must be an object")
    for key in metadata:
        if key != "user_id":
            raise MessagesError(f"metadata.{key}", "unknown field (only user_id is accepted)")
    user = metadata.get("user_id")
    if user is not None and not isinstance(user, str):
        raise MessagesError("metadata.user_id", "must be a string")
    return user


def _thinking_and_output(thinking: object, output: object) -> Json:
    if thinking is not None and (
        not isinstance(thinking, dict) or thinking.get("type") != "disabled"
    ):
        raise MessagesError(
            "thinking", "extended thinking is not supported by this gateway; leave it out"
        )
    if output is None:
        return {}
    if not isinstance(output, dict):
        raise MessagesError("output_config", "must be an object")
    converted: Json = {}
    for key, value in output.items():
        if value is None:
            continue
        if key == "effort":
            if not isinstance(value, str):
                raise MessagesError("output_config.effort", "must be a string")
            converted["reasoning_effort"] = value
        elif key == "format":
            schema = value.get("schema") if isinstance(value, dict) else None
            if not isinstance(value, dict) or value.get("type") != "json_schema":
                raise MessagesError("output_config.format.type", "must be 'json_schema'")
            if not isinstance(schema, dict):
                raise MessagesError("output_config.format.schema", "must be a JSON schema object")
            converted["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": True},
            }
        else:
            raise MessagesError(f"output_config.{key}", "is not supported by this gateway")
    return converted


# Answers -------------------------------------------------------------------------------


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def _new_tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def _message_id(completion_id: object) -> str:
    """Anthropic upstreams' own ids pass through; others get the ``msg_`` prefix."""
    if isinstance(completion_id, str) and completion_id:
        if completion_id.startswith("msg_"):
            return completion_id
        return "msg_" + completion_id.removeprefix("chatcmpl-")
    return new_message_id()


def _stop(finish_reason: object, matched: object) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) from a choice's finish_reason and stop_reason."""
    if finish_reason == "stop" and isinstance(matched, str):
        return "stop_sequence", matched
    if isinstance(finish_reason, str):
        return STOP_REASONS.get(finish_reason, "end_turn"), None
    return "end_turn", None


def _usage(usage: object) -> Json:
    """Anthropic usage from OpenAI usage: cached prompt tokens count as cache reads."""
    prompt = completion = cached = 0
    if isinstance(usage, dict):
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            cached = min(_count(details.get("cached_tokens")), prompt)
    return {
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0


def chat_to_message(completion: Json, model: str) -> Json:
    """A ``chat.completion`` as an Anthropic ``message`` named ``model``.

    Tool call arguments that are not a JSON object cannot be a ``tool_use`` input: that
    is a malformed upstream answer and raises :class:`UpstreamFailure` (``SERVER``), so
    the gateway retries or falls back as for any other.
    """
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise UpstreamFailure(FailureKind.SERVER, "The upstream answered without a message.")
    content: list[Json] = []
    text = message.get("content")
    refusal = message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    elif isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_tool_id(),
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = _stop(choice.get("finish_reason"), choice.get("stop_reason"))
    return {
        "id": _message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(completion.get("usage")),
    }


def tool_input(arguments: object) -> Json | None:
    """A tool call's ``arguments`` (a JSON string) as a ``tool_use`` input, or ``None``
    when they are not a JSON object. Empty arguments are ``{}``: some models write ""
    for a call without arguments."""
    if arguments is None or arguments == "":
        return {}
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _tool_input(arguments: object) -> Json:
    parsed = tool_input(arguments)
    if parsed is None:
        raise UpstreamFailure(
            FailureKind.SERVER, "The upstream's tool call arguments are not a JSON object."
        )
    return parsed


def _event(name: bytes, data: Json) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessageStream:
    """OpenAI ``chat.completion.chunk`` dicts in, Anthropic message events out.

    :meth:`feed` takes one chunk and returns the events it completes (``message_start``
    comes with the first); :meth:`finish` closes the open content block and sends
    ``message_delta`` (stop reason and usage) and ``message_stop``; :meth:`error` sends
    an ``error`` event instead. Both end the stream: later calls return nothing.

    The message id is ``message_id`` or, without one, taken from the first chunk's (an
    Anthropic upstream's own ``msg_`` id passes through, as in :func:`chat_to_message`).
    OpenAI streams report usage in their last chunk, so ``message_start`` carries the
    ``input_tokens`` estimate given here (0 without one) and ``message_delta`` the real
    counts, which Anthropic's SDKs take over the first (its usage is cumulative).
    Text opens a text block; each tool call (by its ``index``) opens a ``tool_use``
    block whose arguments arrive as ``input_json_delta``. A block closes when the next
    one opens, as in Anthropic's own streams.
    """

    __slots__ = (
        "_block_count",
        "_ended",
        "_id",
        "_input_tokens",
        "_model",
        "_open",
        "_open_is_text",
        "_started",
        "_stop",
        "_tools",
        "_usage",
    )

    def __init__(
        self, model: str, message_id: str | None = None, input_tokens: int | None = None
    ) -> None:
        self._model = model
        self._id = message_id
        self._input_tokens = input_tokens or 0
        self._started = False
        self._ended = False
        self._block_count = 0
        self._open: int | None = None
        self._open_is_text = False
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> content block index
        self._stop: tuple[str, str | None] | None = None
        self._usage: object = None

    def feed(self, chunk: Json) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._start(out, chunk.get("id"))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 is refused on the way in; only choice 0 exists
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("content", "refusal"):
                    text = delta.get(key)
                    if isinstance(text, str) and text:
                        self._text(text, out)
                calls = delta.get("tool_calls")
                for call in calls if isinstance(calls, list) else ():
                    if isinstance(call, dict):
                        self._tool(call, out)
            if choice.get("finish_reason"):
                self._stop = _stop(choice["finish_reason"], choice.get("stop_reason"))
        return b"".join(out)

    def finish(self) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._start(out, None)
        self._close_block(out)
        self._ended = True
        if self._stop is not None:
            stop_reason, stop_sequence = self._stop
        else:
            stop_reason, stop_sequence = ("tool_use" if self._tools else "end_turn"), None
        usage = _usage(self._usage)
        if self._usage is None:
            # Without the upstream's count, the estimate is the best input figure.
            usage["input_tokens"] = self._input_tokens
        out.append(
            _event(
                b"message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage,
                },
            )
        )
        out.append(_event(b"message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, kind: str, message: str, request_id: str | None = None) -> bytes:
        """An ``error`` event; ``kind`` is Anthropic's error type (``overloaded_error``)."""
        if self._ended:
            return b""
        self._ended = True
        body: Json = {"type": "error", "error": {"type": kind, "message": message}}
        if request_id is not None:
            body["request_id"] = request_id
        return _event(b"error", body)

    def _start(self, out: list[bytes], chunk_id: object) -> None:
        if self._started:
            return
        self._started = True
        message: Json = {
            "id": self._id or _message_id(chunk_id),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        out.append(_event(b"message_start", {"type": "message_start", "message": message}))

    def _open_block(self, block: Json, is_text: bool, out: list[bytes]) -> int:
        self._close_block(out)
        index = self._block_count
        self._block_count += 1
        self._open, self._open_is_text = index, is_text
        out.append(
            _event(
                b"content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        return index

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(
                _event(b"content_block_stop", {"type": "content_block_stop", "index": self._open})
            )
            self._open = None

    def _text(self, text: str, out: list[bytes]) -> None:
        if self._open is None or not self._open_is_text:
            self._open_block({"type": "text", "text": ""}, True, out)
        self._delta(self._open, {"type": "text_delta", "text": text}, out)

    def _tool(self, call: Json, out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        index = self._tools.get(position)
        if index is None:
            block: Json = {
                "type": "tool_use",
                "id": call.get("id") or _new_tool_id(),
                "name": function.get("name") or "",
                "input": {},
            }
            index = self._tools[position] = self._open_block(block, False, out)
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # Interleaved calls (rare) still land in their own block: the index says which.
            self._delta(index, {"type": "input_json_delta", "partial_json": arguments}, out)

    @staticmethod
    def _delta(index: int | None, delta: Json, out: list[bytes]) -> None:
        out.append(
            _event(
                b"content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )


# Errors --------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (its documented table; other 4xx
    are ``invalid_request_error`` and other 5xx ``api_error``, as Anthropic does)."""
    found = _ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, message: str, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type(status), "message": message},
            "request_id": request_id,
        }
    )


# gateway.proxy's ClientProtocol --------------------------------------------------------


class AnthropicClient:
    """How ``gateway.proxy`` answers Anthropic clients (its ``ClientProtocol``)."""

    name = "anthropic"

    def whole(self, completion: Json, model: str) -> bytes:
        return orjson.dumps(chat_to_message(completion, model))

    def stream(self, model: str, include_usage: bool) -> ClientStream:
        # Anthropic streams always carry usage: include_usage does not apply.
        return ClientStream(MessageStream(model))


class ClientStream:
    """A :class:`MessageStream` behind ``gateway.proxy``'s ``StreamEncoder`` protocol."""

    __slots__ = ("_stream",)

    def __init__(self, stream: MessageStream) -> None:
        self._stream = stream

    def encode(self, chunks: list[Json]) -> bytes:
        return b"".join(self._stream.feed(chunk) for chunk in chunks)

    def finish(self) -> bytes:
        return self._stream.finish()

    def error(self, status: int, message: str, code: str, request_id: str) -> bytes:
        return self._stream.error(error_type(status), message, request_id)


CLIENT = AnthropicClient()
