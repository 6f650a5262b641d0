"""Anthropic's Messages API as an upstream: OpenAI Chat Completions in, Messages out.

:data:`ADAPTER` posts to ``{base_url}/messages`` (``base_url`` like
``https://api.anthropic.com/v1``) with ``x-api-key`` and ``anthropic-version:
2023-06-01``, and converts both ways (see :mod:`gateway.providers.base`). That API
version is kept because it still takes ``temperature``, ``top_p`` and ``top_k``, which
2026-10-21 (what Anthropic's 2.x SDKs send) removed; an upstream's ``api_version``
option chooses another, and from 2026-10-21 on those three are :class:`Unsupported`.

Requests. System and developer messages become ``system`` (wherever they stand: the
Messages API has no mid-conversation system turn); tool messages become ``tool_result``
blocks in a user turn, and consecutive turns of one role are merged, since Anthropic
wants user and assistant to alternate and tool results first in their turn. Image
parts become image blocks (``data:`` URLs as base64 sources, others as url sources),
PDF file parts document blocks. ``max_tokens`` (or ``max_completion_tokens``) defaults
to 4096, because Anthropic requires it.

What Anthropic cannot honour raises :class:`Unsupported` before anything is sent, when
it would change the answer: ``n`` > 1, ``logprobs``/``top_logprobs``, ``logit_bias``,
non-zero ``frequency_penalty``/``presence_penalty``, ``temperature`` above 1 (Anthropic's
range is 0-1 and rescaling would change its meaning), ``response_format: json_object``
(Anthropic has no schema-less JSON mode: send ``json_schema``, which maps to
``output_config.format``), audio, the deprecated ``functions``, web search options, and
any parameter this adapter does not know. Harmless ones are dropped: ``seed`` (best
effort even at OpenAI), ``stream_options`` (Anthropic streams always carry usage),
``store``, ``metadata``, ``service_tier``, ``prediction``, ``prompt_cache_key``.
Mapped: ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``; ``user`` (or
``safety_identifier``) → ``metadata.user_id``; ``reasoning_effort`` →
``output_config.effort`` (``minimal`` → ``low``; ``none`` is Claude's default, thinking
off, and sends nothing); ``strict`` tools stay strict; ``top_k`` (an extension
parameter, see :mod:`gateway.anthropic`) passes through.

Answers. Text blocks are joined into ``content``; ``tool_use`` blocks become
``tool_calls``; thinking and server-tool blocks have no Chat Completions form and are
left out. ``stop_reason`` maps to ``finish_reason`` (a stop sequence also sets the
choice's ``stop_reason`` to the sequence, as vLLM does); prompt tokens are input plus
cache creation plus cache reads, the cache reads also as ``cached_tokens``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.anthropic import tool_input
from gateway.providers._convert import SseDecoder, json_object
from gateway.providers.base import (
    Endpoint,
    FailureKind,
    HttpRequest,
    Json,
    StreamDecoder,
    Unsupported,
    UpstreamFailure,
    classify_status,
    mentions_context_window,
    retry_after_seconds,
    usage_dict,
)

API_VERSION = "2023-06-01"
_NO_SAMPLING_FROM = "2026-10-21"
_SAMPLING = ("temperature", "top_p", "top_k")
DEFAULT_MAX_TOKENS = 4096
_MAX_MESSAGE = 500

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Anthropic's error types, for the 4xx answers and in-stream errors that carry one.
_ERROR_KINDS = {
    "invalid_request_error": FailureKind.BAD_REQUEST,
    "request_too_large": FailureKind.BAD_REQUEST,
    "authentication_error": FailureKind.AUTH,
    "permission_error": FailureKind.AUTH,
    # No credit left on this credential's account: another credential may have some.
    "billing_error": FailureKind.AUTH,
    "not_found_error": FailureKind.SERVER,
    "rate_limit_error": FailureKind.RATE_LIMITED,
    "timeout_error": FailureKind.TIMEOUT,
    "api_error": FailureKind.SERVER,
    "overloaded_error": FailureKind.SERVER,
}

_DROPPED = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "seed",
        "store",
        "metadata",
        "service_tier",
        "prediction",
        "prompt_cache_key",
    }
)
_REFUSED = {
    "functions": "The deprecated 'functions' parameter is not supported for Anthropic "
    "models; send 'tools' instead.",
    "function_call": "The deprecated 'function_call' parameter is not supported for "
    "Anthropic models; send 'tool_choice' instead.",
    "audio": "Anthropic models do not produce audio.",
    "web_search_options": "Web search is not available for Anthropic models here.",
}
_EFFORTS = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "xhigh",
    "max": "max",
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)


class AnthropicAdapter:
    """Anthropic's Messages API (see the module docstring)."""

    vendor = "anthropic"
    openai_wire = False

    def chat_request(self, endpoint: Endpoint, request: Json, *, stream: bool) -> HttpRequest:
        version = endpoint.options.get("api_version") or API_VERSION
        body = _chat_body(endpoint.model, request)
        if version >= _NO_SAMPLING_FROM:
            for name in _SAMPLING:
                if name in body:
                    raise Unsupported(
                        name, f"Anthropic API version {version} does not take '{name}'."
                    )
        if stream:
            body["stream"] = True
        headers = {"anthropic-version": version, "content-type": "application/json"}
        if endpoint.credential:
            headers["x-api-key"] = endpoint.credential
        return HttpRequest(
            url=endpoint.base_url.rstrip("/") + "/messages",
            headers=headers,
            body=orjson.dumps(body),
        )

    def chat_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        message = json_object(payload)
        content = message.get("content") if message is not None else None
        if message is None or message.get("type") != "message" or not isinstance(content, list):
            raise UpstreamFailure(
                FailureKind.SERVER, "Anthropic answered with a malformed message."
            )
        texts: list[str] = []
        calls: list[Json] = []
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "tool_use":
                calls.append(_tool_call(block, orjson.dumps(block.get("input") or {}).decode()))
        answer: Json = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
            "refusal": None,
        }
        if calls:
            answer["tool_calls"] = calls
        choice: Json = {"index": 0, "message": answer, "logprobs": None}
        _set_finish(choice, message.get("stop_reason"), message.get("stop_sequence"))
        usage = message.get("usage")
        return {
            "id": message.get("id") or "",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": endpoint.model,
            "choices": [choice],
            "usage": _usage(usage),
        }

    def chat_stream(self, endpoint: Endpoint) -> StreamDecoder:
        return MessageEvents(endpoint.model)

    def embeddings_request(self, endpoint: Endpoint, request: Json) -> HttpRequest:
        raise Unsupported(
            "model", "Anthropic has no embeddings API; route embeddings to another upstream."
        )

    def embeddings_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        raise Unsupported(
            "model", "Anthropic has no embeddings API; route embeddings to another upstream."
        )

    def failure(self, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        """Classify an Anthropic error answer (``{"type": "error", "error": {...}}``)."""
        body = json_object(payload)
        error = body.get("error") if body is not None else None
        kind_name, message = _error_fields(error)
        kind = classify_status(status)
        # 5xx stay server failures whatever the body says; below that the type is
        # more precise than the status (402 billing, 413 from the edge, ...).
        if status < 500 and kind_name in _ERROR_KINDS:
            kind = _ERROR_KINDS[kind_name]
        if kind is FailureKind.BAD_REQUEST and mentions_context_window(message):
            kind = FailureKind.CONTEXT_WINDOW
        return UpstreamFailure(
            kind,
            message or f"Anthropic answered HTTP {status}.",
            status=status,
            retry_after=retry_after_seconds(headers),
            code=kind_name,
        )


def _error_fields(error: object) -> tuple[str | None, str]:
    if not isinstance(error, dict):
        return None, ""
    kind = error.get("type")
    message = error.get("message")
    return (
        kind if isinstance(kind, str) else None,
        message[:_MAX_MESSAGE] if isinstance(message, str) else "",
    )


def _count(usage: object, name: str) -> int:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if type(value) is int and value > 0 else 0


def _usage(usage: object) -> Json:
    """OpenAI usage from Anthropic's: its ``input_tokens`` leaves out cache writes and
    reads, which OpenAI's ``prompt_tokens`` includes (reads also as cached tokens)."""
    read = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + _count(usage, "cache_creation_input_tokens") + read
    converted = usage_dict(prompt, _count(usage, "output_tokens"))
    if read:
        converted["prompt_tokens_details"] = {"cached_tokens": read}
    return converted


def _tool_call(block: dict[str, Any], arguments: str) -> Json:
    return {
        "id": block.get("id") or "",
        "type": "function",
        "function": {"name": block.get("name") or "", "arguments": arguments},
    }


def _set_finish(choice: Json, stop_reason: object, stop_sequence: object) -> None:
    reason = stop_reason if isinstance(stop_reason, str) else "end_turn"
    choice["finish_reason"] = FINISH_REASONS.get(reason, "stop")
    if reason == "stop_sequence" and isinstance(stop_sequence, str):
        choice["stop_reason"] = stop_sequence


# Requests ------------------------------------------------------------------------------


def _chat_body(model: str, request: Json) -> Json:
    """The Messages request for an OpenAI chat request, or :class:`Unsupported`."""
    for key, value in request.items():
        if key in _REFUSED and value is not None:
            raise Unsupported(key, _REFUSED[key])
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Unsupported("messages", "'messages' must be a non-empty list.")
    system, turns = _conversation(messages)
    body: Json = {"model": model, "max_tokens": _max_tokens(request)}
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    body["messages"] = turns
    for key, value in request.items():
        if value is None or key in _DROPPED or key in _REFUSED or key in _HANDLED:
            continue
        option = _OPTIONS.get(key)
        if option is None:
            raise Unsupported(key, f"The parameter '{key}' is not supported for Anthropic models.")
        option(key, value, body)
    _tool_options(request, body)
    return body


def _max_tokens(request: Json) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = request.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise Unsupported(key, f"'{key}' must be a positive integer.")
        return value
    return DEFAULT_MAX_TOKENS


def _conversation(messages: list[Any]) -> tuple[list[Json], list[Json]]:
    """(system text blocks, alternating user/assistant turns)."""
    system: list[Json] = []
    turns: list[Json] = []
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise Unsupported(path, f"'{path}' must be a message object.")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, path))
            continue
        if role == "user":
            blocks = _user_blocks(content, path)
        elif role == "assistant":
            blocks = _assistant_blocks(message, path)
        elif role == "tool":
            blocks, role = [_tool_result(message, path)], "user"
        else:
            raise Unsupported(f"{path}.role", f"'{path}.role' {role!r} is not supported.")
        if not blocks:
            continue  # an empty turn says nothing, and Anthropic refuses empty content
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        blocks = turn["content"]
        if turn["role"] == "user":
            # Tool results must open their turn; the user's words may follow them.
            blocks.sort(key=lambda block: block["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    return system, turns


def _text_blocks(content: object, path: str) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise Unsupported(f"{path}.content", f"'{path}.content' must be a string or text parts.")
    blocks = []
    for j, part in enumerate(content):
        text = _part_text(part, f"{path}.content.{j}")
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _part_text(part: object, path: str) -> str:
    if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
        text = part.get(part["type"])
        if isinstance(text, str):
            return text
    raise Unsupported(path, f"'{path}' must be a text part here.")


def _user_blocks(content: object, path: str) -> list[Json]:
    if not isinstance(content, list):
        return _text_blocks(content, path)
    blocks = []
    for j, part in enumerate(content):
        where = f"{path}.content.{j}"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            blocks.append(_image(part, where))
        elif kind == "file":
            blocks.append(_document(part, where))
        elif kind in ("input_audio", "audio"):
            raise Unsupported(where, "Anthropic models do not take audio input.")
        else:
            text = _part_text(part, where)
            if text:
                blocks.append({"type": "text", "text": text})
    return blocks


def _image(part: dict[str, Any], path: str) -> Json:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise Unsupported(f"{path}.image_url", f"'{path}.image_url.url' must be a URL.")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = _data_url(url, path)
    if media_type not in _IMAGE_TYPES:
        raise Unsupported(
            path, f"Anthropic takes JPEG, PNG, GIF and WebP images, not {media_type}."
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document(part: dict[str, Any], path: str) -> Json:
    file = part.get("file")
    url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(url, str):
        raise Unsupported(path, "Only inline PDF files (file_data) can go to Anthropic models.")
    media_type, data = _data_url(url, path)
    if media_type != "application/pdf":
        raise Unsupported(path, f"Anthropic takes PDF documents, not {media_type}.")
    block: Json = {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }
    filename = file.get("filename") if isinstance(file, dict) else None
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _data_url(url: str, path: str) -> tuple[str, str]:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise Unsupported(path, f"'{path}' must be an http(s) URL or a base64 data: URL.")
    return match.group(1), match.group(2)


def _assistant_blocks(message: dict[str, Any], path: str) -> list[Json]:
    content = message.get("content")
    blocks = [] if content is None else _text_blocks(content, path)
    calls = message.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise Unsupported(f"{path}.tool_calls", f"'{path}.tool_calls' must be a list.")
    for k, call in enumerate(calls):
        where = f"{path}.tool_calls.{k}"
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
        ):
            raise Unsupported(where, f"'{where}' must be a function call with an id and a name.")
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _arguments(function.get("arguments"), f"{where}.function.arguments"),
            }
        )
    return blocks


def _arguments(arguments: object, path: str) -> Json:
    parsed = tool_input(arguments)
    if parsed is None:
        raise Unsupported(
            path, f"'{path}' must be a JSON object for Anthropic models: {arguments!r:.80}"
        )
    return parsed


def _tool_result(message: dict[str, Any], path: str) -> Json:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise Unsupported(f"{path}.tool_call_id", f"'{path}.tool_call_id' is required.")
    block: Json = {"type": "tool_result", "tool_use_id": call_id}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content is not None:
        texts = _text_blocks(content, path)
        if texts:
            block["content"] = texts
    return block


# Parameters ----------------------------------------------------------------------------

# Read by _max_tokens, _conversation and _tool_options rather than one by one.
_HANDLED = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
    }
)


def _refuse_unless(param: str, allowed: bool, message: str) -> None:
    if not allowed:
        raise Unsupported(param, message)


def _temperature(key: str, value: object, body: Json) -> None:
    _refuse_unless(
        key,
        isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1,
        f"Anthropic models take a temperature between 0 and 1, not {value!r}.",
    )
    body[key] = value


def _passed(key: str, value: object, body: Json) -> None:
    body[key] = value


def _stop(key: str, value: object, body: Json) -> None:
    sequences = [value] if isinstance(value, str) else value
    _refuse_unless(
        key,
        isinstance(sequences, list) and all(isinstance(s, str) for s in sequences),
        "'stop' must be a string or a list of strings.",
    )
    if sequences:
        body["stop_sequences"] = sequences


def _n(key: str, value: object, body: Json) -> None:
    _refuse_unless(key, value == 1, "Anthropic models give one choice per call: n must be 1.")


def _unless_set(message: str) -> Callable[[str, object, Json], None]:
    """A parameter Anthropic cannot honour: harmless when off (false, 0, empty)."""

    def option(key: str, value: object, body: Json) -> None:
        _refuse_unless(key, not value, message)

    return option


def _modalities(key: str, value: object, body: Json) -> None:
    _refuse_unless(key, value == ["text"], "Anthropic models answer in text only.")


def _response_format(key: str, value: object, body: Json) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return
    _refuse_unless(
        key,
        kind == "json_schema",
        "Anthropic models have no JSON mode without a schema: send response_format "
        "{'type': 'json_schema', 'json_schema': {'schema': ...}}, or ask for JSON in the prompt.",
    )
    spec = value.get("json_schema") if isinstance(value, dict) else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise Unsupported(key, "'response_format.json_schema.schema' is required.")
    body.setdefault("output_config", {})["format"] = {"type": "json_schema", "schema": schema}


def _effort(key: str, value: object, body: Json) -> None:
    if value == "none":
        return  # thinking is off unless asked for: the default already
    effort = _EFFORTS.get(value) if isinstance(value, str) else None
    if effort is None:
        raise Unsupported(
            key,
            f"Anthropic models take an effort of low, medium, high, xhigh or max, not {value!r}.",
        )
    body.setdefault("output_config", {})["effort"] = effort


_OPTIONS: dict[str, Callable[[str, object, Json], None]] = {
    "temperature": _temperature,
    "top_p": _passed,
    "top_k": _passed,
    "stop": _stop,
    "n": _n,
    "logprobs": _unless_set("Anthropic models do not return log probabilities."),
    "top_logprobs": _unless_set("Anthropic models do not return log probabilities."),
    "logit_bias": _unless_set("Anthropic models do not take a logit bias."),
    "frequency_penalty": _unless_set("Anthropic models take no frequency penalty."),
    "presence_penalty": _unless_set("Anthropic models take no presence penalty."),
    "modalities": _modalities,
    "response_format": _response_format,
    "reasoning_effort": _effort,
}


def _tool_options(request: Json, body: Json) -> None:
    user = request.get("user") or request.get("safety_identifier")
    if isinstance(user, str) and user:
        body["metadata"] = {"user_id": user}
    tools = request.get("tools")
    if not tools:
        return  # tool_choice and parallel_tool_calls mean nothing without tools
    if not isinstance(tools, list):
        raise Unsupported("tools", "'tools' must be a list.")
    body["tools"] = [_tool(tool, f"tools.{i}") for i, tool in enumerate(tools)]
    choice = _tool_choice(request.get("tool_choice"))
    if request.get("parallel_tool_calls") is False and choice.get("type") != "none":
        choice["disable_parallel_tool_use"] = True
    if choice:
        body["tool_choice"] = choice


def _tool(tool: object, path: str) -> Json:
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or not isinstance(function, dict)
    ):
        raise Unsupported(f"{path}.type", "Anthropic models take function tools only.")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise Unsupported(f"{path}.function.name", f"'{path}.function.name' is required.")
    schema = function.get("parameters")
    converted: Json = {
        "name": name,
        "input_schema": schema
        if isinstance(schema, dict)
        else {"type": "object", "properties": {}},
    }
    if isinstance(function.get("description"), str):
        converted["description"] = function["description"]
    if function.get("strict") is True:
        converted["strict"] = True
    return converted


def _tool_choice(choice: object) -> Json:
    if choice is None:
        return {}
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise Unsupported(
            "tool_choice",
            "'tool_choice' must be auto, required, none or {'type': 'function', ...}.",
        )
    return {"type": "tool", "name": name}


# Streams -------------------------------------------------------------------------------


class MessageEvents(SseDecoder):
    """Anthropic's streamed events, parsed into OpenAI chunk dicts.

    ``message_start`` gives the input usage; the first chunk (the assistant role) goes
    out just before the next one; text and tool-argument deltas become content and
    ``tool_calls`` deltas (a tool call's first chunk carries its id and name);
    ``message_delta`` gives the chunk with the finish reason and the output usage;
    ``message_stop`` the usage chunk. An
    ``error`` event raises :class:`UpstreamFailure`, and so does a body that ends
    before ``message_stop``. Events may be split anywhere between :meth:`feed` calls;
    CRLF line ends are accepted (the framing is ``_convert.SseEvents``).
    """

    __slots__ = ("_created", "_done", "_id", "_model", "_spoke", "_tools", "_usage")

    def __init__(self, model: str) -> None:
        self._model = model
        self._created = int(time.time())
        self._id = ""
        self._spoke = False  # whether the role chunk went out
        super().__init__()
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, int] = {}
        self._done = False

    def _end(self, chunks: list[Json]) -> None:
        if not self._done:
            raise UpstreamFailure(
                FailureKind.SERVER, "Anthropic's stream ended early, before message_stop."
            )

    def _event(self, data: bytes, chunks: list[Json]) -> None:
        if self._done:
            return
        event = json_object(data)
        if event is None:
            raise UpstreamFailure(FailureKind.SERVER, "Anthropic sent a malformed stream event.")
        kind = event.get("type")
        if kind == "content_block_delta":
            self._delta(event, chunks)
        elif kind == "content_block_start":
            self._block_start(event, chunks)
        elif kind == "message_start":
            message = event.get("message")
            message = message if isinstance(message, dict) else {}
            self._id = str(message.get("id") or "")
            self._read_usage(message.get("usage"))
        elif kind == "message_delta":
            self._read_usage(event.get("usage"))
            delta = event.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                chunk = self._chunk({})
                _set_finish(chunk["choices"][0], delta["stop_reason"], delta.get("stop_sequence"))
                self._emit(chunk, chunks)
        elif kind == "message_stop":
            self._done = True
            usage = _usage(self._usage)
            self._emit({**self._chunk({}), "choices": [], "usage": usage}, chunks)
        elif kind == "error":
            raise _stream_failure(event.get("error"))
        # ping, content_block_stop and event types added later carry nothing to relay.

    def _block_start(self, event: Json, chunks: list[Json]) -> None:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return
        if block.get("type") == "text" and block.get("text"):
            self._emit(self._chunk({"content": block["text"]}), chunks)
        elif block.get("type") == "tool_use":
            position = self._tools[event.get("index", 0)] = len(self._tools)
            given = block.get("input")
            # Anthropic starts a tool_use block with an empty input that deltas fill in.
            arguments = orjson.dumps(given).decode() if given else ""
            call = {"index": position, **_tool_call(block, arguments)}
            self._emit(self._chunk({"tool_calls": [call]}), chunks)

    def _delta(self, event: Json, chunks: list[Json]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            self._emit(self._chunk({"content": delta["text"]}), chunks)
        elif kind == "input_json_delta" and delta.get("partial_json"):
            position = self._tools.get(event.get("index", 0))
            if position is not None:
                call = {"index": position, "function": {"arguments": delta["partial_json"]}}
                self._emit(self._chunk({"tool_calls": [call]}), chunks)
        # thinking, signature and citations deltas have no Chat Completions form.

    def _read_usage(self, usage: object) -> None:
        """Anthropic's counts are cumulative, so a later one replaces an earlier one;
        ``message_delta`` may leave out those it does not restate."""
        if isinstance(usage, dict):
            for name, value in usage.items():
                if type(value) is int:
                    self._usage[name] = value

    def _emit(self, chunk: Json, chunks: list[Json]) -> None:
        # The role chunk waits for the first real one: Anthropic sends message_start
        # before the model has said anything, and the gateway takes the first chunk
        # for the first token (until which it may still fall back to another target).
        if not self._spoke:
            self._spoke = True
            chunks.append(self._chunk({"role": "assistant", "content": ""}))
        chunks.append(chunk)

    def _chunk(self, delta: Json) -> Json:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }


def _stream_failure(error: object) -> UpstreamFailure:
    kind_name, message = _error_fields(error)
    kind = _ERROR_KINDS.get(kind_name or "", FailureKind.SERVER)
    if kind is FailureKind.BAD_REQUEST and mentions_context_window(message):
        kind = FailureKind.CONTEXT_WINDOW
    return UpstreamFailure(
        kind, message or "Anthropic reported an error mid-stream.", code=kind_name
    )


ADAPTER = AnthropicAdapter()
