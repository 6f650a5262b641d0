"""OpenAI's Responses API (``POST /v1/responses``) served by any chat model, through conversion.

Targets whose vendor serves ``/responses`` itself (OpenAI, Azure OpenAI) get the client's
body as it is, with the model renamed; for every other target (Anthropic, Gemini,
Bedrock, OpenAI-compatible servers with Chat Completions only) the gateway converts,
with three pure functions that do no I/O:

- :func:`responses_to_chat` validates a Responses request and turns it into an OpenAI
  chat request, raising :class:`ResponsesError` (answered with 400) for what is invalid
  or what a stateless gateway cannot do;
- :func:`chat_to_response` turns a ``chat.completion`` into a Responses ``response``;
- :class:`ResponseStream` turns ``chat.completion.chunk`` dicts into the Responses
  server-sent events (``response.created``, ``response.in_progress``,
  ``response.output_item.added``, ``response.content_part.added``,
  ``response.output_text.delta``/``.done``, ``response.function_call_arguments.delta``/
  ``.done``, ``response.content_part.done``, ``response.output_item.done``, then
  ``response.completed``, or ``response.incomplete`` when the output was cut at
  ``max_output_tokens``, or ``response.failed`` when the upstream broke off), every
  event with its ``sequence_number``.

:class:`ResponsesClient` bundles the answer directions as ``gateway.proxy``'s
``ClientProtocol``; build one per call with the client's request, whose settings the
``response`` object echoes (``RESPONSES_CLIENT`` echoes defaults).

What does not survive the trip, and why:

- state: this gateway keeps no responses or conversations, so ``store: true``,
  ``previous_response_id``, ``conversation``, ``background`` and ``item_reference``
  input items are refused (send the whole conversation in ``input``); answers are never
  stored (``store`` is echoed as false);
- built-in tools (web search, file search, code interpreter, computer use, image
  generation, MCP, shell...) and their tool choices: refused, since Chat Completions
  can carry function tools only; so are stored prompts (``prompt``), ``file_id``
  inputs (there is no file store), ``truncation: "auto"``, ``top_logprobs``,
  ``max_tool_calls``, and ``include`` entries other than
  ``reasoning.encrypted_content`` (no reasoning items are ever produced, so it asks for
  nothing);
- dropped as harmless: ``reasoning.summary`` (no reasoning items are produced),
  ``stream_options`` (``include_obfuscation``: no obfuscation is added), ``metadata``
  (echoed, not sent upstream: nothing is stored);
- function tools keep ``strict`` only when it is given: the Responses API's default is
  strict, which would make Chat Completions servers refuse schemas not written for it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.providers.base import FailureKind, Json, UpstreamFailure


class ResponsesError(ValueError):
    """An invalid or unsupported Responses request. ``param`` is the dotted path of the
    offending field (``input.2.content.0.type``); the message starts with it."""

    def __init__(self, param: str, problem: str) -> None:
        self.param = param
        self.message = f"{param}: {problem}"
        super().__init__(self.message)


_STATELESS = (
    "this gateway keeps no responses or conversations; send the whole conversation in "
    "'input' instead"
)
_ACCEPTED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "text",
        "reasoning",
        "stream",
        "stream_options",
        "store",
        "include",
        "truncation",
        "metadata",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "service_tier",
        "background",
    }
)
# Parameters refused whenever they ask for anything (None, False, 0 and empty are fine).
_REFUSED = {
    "previous_response_id": _STATELESS,
    "conversation": _STATELESS,
    "prompt": "stored prompts are not available through this gateway; send 'instructions' "
    "and 'input' instead",
    "top_logprobs": "log probabilities are not available through this gateway",
    "max_tool_calls": "this gateway cannot limit the number of tool calls",
}
_PASSED = ("user", "safety_identifier", "prompt_cache_key", "service_tier")
_TOOL_CHOICES = frozenset({"auto", "none", "required"})
_FINISHED_EARLY = {"length": "max_output_tokens", "content_filter": "content_filter"}


# Requests ------------------------------------------------------------------------------


def responses_to_chat(request: object) -> Json:
    """Validate a Responses request and convert it to an OpenAI chat request.

    Raises :class:`ResponsesError` naming the first offending field.
    """
    if not isinstance(request, dict):
        raise ResponsesError("body", "must be a JSON object")
    for key, value in request.items():
        if key in _REFUSED:
            if value is not None and value is not False and value not in (0, "", [], {}):
                raise ResponsesError(key, _REFUSED[key])
        elif key not in _ACCEPTED:
            raise ResponsesError(key, "this parameter is not supported by this gateway")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise ResponsesError("model", "a model name (non-empty string) is required")
    _stateless(request)
    chat: Json = {"model": model, "messages": []}
    instructions = request.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ResponsesError("instructions", "must be a string")
        chat["messages"].append({"role": "system", "content": instructions})
    chat["messages"].extend(_input_messages(request.get("input")))
    tools = request.get("tools")
    if tools is not None:
        converted = _tools(tools)
        if converted:
            chat["tools"] = converted
    choice = request.get("tool_choice")
    if choice is not None:
        chat_choice = _tool_choice(choice)
        if chat.get("tools"):  # Chat Completions refuses a tool_choice without tools
            chat["tool_choice"] = chat_choice
    parallel = request.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            raise ResponsesError("parallel_tool_calls", "must be true or false")
        if chat.get("tools"):
            chat["parallel_tool_calls"] = parallel
    limit = request.get("max_output_tokens")
    if limit is not None:
        if type(limit) is not int or limit < 1:
            raise ResponsesError("max_output_tokens", "must be a positive integer")
        chat["max_completion_tokens"] = limit
    for name, top in (("temperature", 2), ("top_p", 1)):
        value = request.get(name)
        if value is not None:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= top
            ):
                raise ResponsesError(name, f"must be a number between 0 and {top}")
            chat[name] = value
    chat.update(_text(request.get("text")))
    chat.update(_reasoning(request.get("reasoning")))
    for name in _PASSED:
        value = request.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise ResponsesError(name, "must be a string")
            chat[name] = value
    metadata = request.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ResponsesError("metadata", "must be an object of strings")
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ResponsesError("stream_options", "must be an object")
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ResponsesError("stream", "must be true or false")
    if stream:
        chat["stream"] = True
    return chat


def _stateless(request: dict[str, Any]) -> None:
    store = request.get("store")
    if store is not None and not isinstance(store, bool):
        raise ResponsesError("store", "must be true or false")
    if store:
        raise ResponsesError(
            "store", "this gateway does not store responses; send store: false or leave it out"
        )
    background = request.get("background")
    if background is not None and not isinstance(background, bool):
        raise ResponsesError("background", "must be true or false")
    if background:
        raise ResponsesError("background", f"background responses need stored state; {_STATELESS}")
    truncation = request.get("truncation")
    if truncation not in (None, "disabled"):
        raise ResponsesError(
            "truncation",
            "only 'disabled' is supported: this gateway does not drop parts of a conversation "
            "that is too long; send a shorter input",
        )
    include = request.get("include")
    if include is None:
        return
    if not isinstance(include, list) or not all(isinstance(entry, str) for entry in include):
        raise ResponsesError("include", "must be a list of strings")
    for i, entry in enumerate(include):
        if entry != "reasoning.encrypted_content":
            raise ResponsesError(f"include.{i}", f"'{entry}' is not available through this gateway")


def _input_messages(given: object) -> list[Json]:
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if not isinstance(given, list) or not given:
        raise ResponsesError("input", "a string or a non-empty list of input items is required")
    messages: list[Json] = []
    for i, item in enumerate(given):
        path = f"input.{i}"
        if not isinstance(item, dict):
            raise ResponsesError(path, "must be an input item object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, path))
        elif kind == "function_call":
            call = _function_call(item, path)
            last = messages[-1] if messages else None
            # One assistant turn: its text and the calls that follow it.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(item, path))
        elif kind == "item_reference":
            raise ResponsesError(f"{path}.type", f"item references need stored state; {_STATELESS}")
        elif isinstance(kind, str):
            raise ResponsesError(
                f"{path}.type", f"input items of type '{kind}' are not supported by this gateway"
            )
        else:
            raise ResponsesError(f"{path}.type", "must be a string")
    return messages


def _message(item: dict[str, Any], path: str) -> Json:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise ResponsesError(f"{path}.role", "must be 'user', 'assistant', 'system' or 'developer'")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise ResponsesError(f"{path}.content", "must be a string or a list of content parts")
    parts = [_part(part, role, f"{path}.content.{j}") for j, part in enumerate(content)]
    if role != "user" and any(part["type"] != "text" for part in parts):
        raise ResponsesError(f"{path}.content", f"{role} messages may hold text only")
    if role == "assistant":
        return {"role": role, "content": "".join(part["text"] for part in parts)}
    # A lone text part as a plain string: every Chat Completions server takes that.
    if len(parts) == 1 and parts[0]["type"] == "text":
        return {"role": role, "content": parts[0]["text"]}
    return {"role": role, "content": parts}


def _part(part: object, role: str, path: str) -> Json:
    if not isinstance(part, dict):
        raise ResponsesError(path, "must be a content part object")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": _string(part, "text", path)}
    if kind == "refusal" and role == "assistant":
        return {"type": "text", "text": _string(part, "refusal", path)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise ResponsesError(
                f"{path}.image_url",
                "is required (a URL or a data: URL); file_id images need a file store, "
                "which this gateway does not have",
            )
        image: Json = {"url": url}
        detail = part.get("detail")
        if detail is not None:
            if detail not in ("auto", "low", "high"):
                raise ResponsesError(f"{path}.detail", "must be 'auto', 'low' or 'high'")
            image["detail"] = detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise ResponsesError(
                f"{path}.file_data",
                "is required (a data: URL); file_id and file_url inputs are not supported "
                "by this gateway",
            )
        name = part.get("filename")
        return {
            "type": "file",
            "file": {"file_data": data, "filename": name if isinstance(name, str) else "file"},
        }
    if isinstance(kind, str):
        raise ResponsesError(
            f"{path}.type", f"content parts of type '{kind}' are not supported here"
        )
    raise ResponsesError(f"{path}.type", "is required")


def _string(item: dict[str, Any], key: str, path: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise ResponsesError(f"{path}.{key}", "must be a string")
    return value


def _function_call(item: dict[str, Any], path: str) -> Json:
    call_id = _string(item, "call_id", path)
    name = _string(item, "name", path)
    if not call_id or not name:
        raise ResponsesError(path, "a function_call needs a call_id and a name")
    arguments = _string(item, "arguments", path)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_output(item: dict[str, Any], path: str) -> Json:
    call_id = _string(item, "call_id", path)
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            converted = _part(part, "tool", f"{path}.output.{j}")
            if converted["type"] != "text":
                raise ResponsesError(
                    f"{path}.output.{j}.type", "only text can be a function call's output here"
                )
            texts.append(converted["text"])
        output = "".join(texts)
    if not isinstance(output, str):
        raise ResponsesError(f"{path}.output", "must be a string or a list of input_text parts")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def _tools(tools: object) -> list[Json]:
    if not isinstance(tools, list):
        raise ResponsesError("tools", "must be a list of tools")
    converted = []
    for i, tool in enumerate(tools):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            raise ResponsesError(path, "must be a tool object")
        kind = tool.get("type")
        if kind != "function":
            raise ResponsesError(
                f"{path}.type",
                f"built-in tool '{kind}' is not available through this gateway; "
                "only function tools are",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise ResponsesError(f"{path}.name", "is required")
        function: Json = {"name": name}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise ResponsesError(f"{path}.description", "must be a string")
            function["description"] = description
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise ResponsesError(f"{path}.parameters", "must be a JSON schema object")
            function["parameters"] = parameters
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise ResponsesError(f"{path}.strict", "must be true or false")
            function["strict"] = strict
        converted.append({"type": "function", "function": function})
    return converted


def _tool_choice(choice: object) -> object:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            raise ResponsesError("tool_choice", "must be 'auto', 'none', 'required' or a function")
        return choice
    if not isinstance(choice, dict):
        raise ResponsesError("tool_choice", "must be a string or an object")
    if choice.get("type") != "function":
        raise ResponsesError(
            "tool_choice.type",
            f"'{choice.get('type')}' is not available through this gateway; choose 'auto', "
            "'none', 'required' or a function",
        )
    name = choice.get("name")
    if not isinstance(name, str) or not name:
        raise ResponsesError("tool_choice.name", "is required when type is 'function'")
    return {"type": "function", "function": {"name": name}}


def _text(text: object) -> Json:
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise ResponsesError("text", "must be an object")
    converted: Json = {}
    verbosity = text.get("verbosity")
    if verbosity is not None:
        if verbosity not in ("low", "medium", "high"):
            raise ResponsesError("text.verbosity", "must be 'low', 'medium' or 'high'")
        converted["verbosity"] = verbosity
    form = text.get("format")
    if form is None:
        return converted
    kind = form.get("type") if isinstance(form, dict) else None
    if kind == "text":
        return converted
    if kind == "json_object":
        converted["response_format"] = {"type": "json_object"}
        return converted
    if kind != "json_schema":
        raise ResponsesError("text.format.type", "must be 'text', 'json_object' or 'json_schema'")
    assert isinstance(form, dict)
    name, schema = form.get("name"), form.get("schema")
    if not isinstance(name, str) or not name:
        raise ResponsesError("text.format.name", "is required for json_schema")
    if not isinstance(schema, dict):
        raise ResponsesError("text.format.schema", "must be a JSON schema object")
    json_schema: Json = {"name": name, "schema": schema}
    for key, expected in (("description", str), ("strict", bool)):
        value = form.get(key)
        if value is not None:
            if not isinstance(value, expected):
                raise ResponsesError(f"text.format.{key}", f"must be a {expected.__name__}")
            json_schema[key] = value
    converted["response_format"] = {"type": "json_schema", "json_schema": json_schema}
    return converted


def _reasoning(reasoning: object) -> Json:
    if reasoning is None:
        return {}
    if not isinstance(reasoning, dict):
        raise ResponsesError("reasoning", "must be an object")
    effort = reasoning.get("effort")
    if effort is None:
        return {}
    if not isinstance(effort, str):
        raise ResponsesError("reasoning.effort", "must be a string")
    return {"reasoning_effort": effort}


# Answers -------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _response_id(completion_id: object) -> str:
    if isinstance(completion_id, str) and completion_id:
        return "resp_" + completion_id.removeprefix("chatcmpl-")
    return _new_id("resp_")


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0


def _usage(usage: object) -> Json | None:
    """Responses usage from Chat Completions usage (``None`` when there was none)."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    reasoning = (
        _count(completion_details.get("reasoning_tokens"))
        if isinstance(completion_details, dict)
        else 0
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": min(cached, prompt), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def usage_counts(payload: object) -> tuple[int | None, int | None]:
    """(input, output) tokens of a Responses ``response`` object, or of a stream event
    that carries one (``response.completed``...): for metering passed-through calls."""
    if isinstance(payload, dict) and isinstance(payload.get("response"), dict):
        payload = payload["response"]
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None, None
    found = usage.get("input_tokens"), usage.get("output_tokens")
    counted = tuple(value if type(value) is int and value >= 0 else None for value in found)
    return counted[0], counted[1]


def _response(
    response_id: str,
    created_at: float,
    model: str,
    request: Json,
    *,
    status: str,
    output: list[Json],
    usage: Json | None,
    finish_reason: object = None,
    error: Json | None = None,
) -> Json:
    """A ``response`` object, with the request's settings echoed as OpenAI does."""
    text = request.get("text")
    form = text.get("format") if isinstance(text, dict) else None
    reasoning = request.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    parallel = request.get("parallel_tool_calls")
    early = _FINISHED_EARLY.get(finish_reason) if isinstance(finish_reason, str) else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": early} if status == "incomplete" and early else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": None,
        "reasoning": {"effort": effort, "summary": None},
        "service_tier": request.get("service_tier"),
        "store": False,
        "temperature": request.get("temperature"),
        "text": {"format": form if isinstance(form, dict) else {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _status(finish_reason: object) -> str:
    return "incomplete" if finish_reason in _FINISHED_EARLY else "completed"


def chat_to_response(completion: Json, model: str, request: Json) -> Json:
    """A ``chat.completion`` as a Responses ``response`` named ``model``, echoing the
    settings of ``request`` (the client's Responses request).

    A completion without a message is a malformed upstream answer: it raises
    :class:`UpstreamFailure` (``SERVER``), so the gateway retries or falls back.
    """
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(message, dict):
        raise UpstreamFailure(FailureKind.SERVER, "The upstream answered without a message.")
    finish_reason = choice.get("finish_reason")
    status = _status(finish_reason)
    output: list[Json] = []
    text, refusal = message.get("content"), message.get("refusal")
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        calls = []
    parts: list[Json] = []
    if isinstance(text, str) and text:
        parts.append(_text_part(text))
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if not parts and not calls:  # an empty answer is still a message
        parts.append(_text_part(""))
    if parts:
        output.append(_message_item(_new_id("msg_"), status, parts))
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        arguments = function.get("arguments")
        output.append(
            _call_item(
                _new_id("fc_"),
                "completed",
                call.get("id") or _new_id("call_"),
                function.get("name") or "",
                arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
            )
        )
    created = completion.get("created")
    return _response(
        _response_id(completion.get("id")),
        created if isinstance(created, int | float) else time.time(),
        model,
        request,
        status=status,
        output=output,
        usage=_usage(completion.get("usage")),
        finish_reason=finish_reason,
    )


def _text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, status: str, content: list[Json]) -> Json:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _call_item(item_id: str, status: str, call_id: str, name: str, arguments: str) -> Json:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


class _Item:
    """One output item of a stream as it grows: a message (with its parts) or a call."""

    __slots__ = ("call", "done", "id", "index", "part_open", "parts", "status")

    def __init__(self, index: int, item_id: str, call: Json | None = None) -> None:
        self.index = index
        self.id = item_id
        self.call = call  # call_id, name and arguments of a function_call; None: a message
        self.parts: list[Json] = []  # a message's output_text and refusal parts
        self.part_open = False  # whether the last part still takes deltas
        self.done = False
        self.status = "completed"  # or "incomplete", once done

    def json(self, unfinished: str = "in_progress") -> Json:
        """The item as OpenAI writes it; ``unfinished`` is the status of an item not
        done yet (``incomplete`` in a failed response's output)."""
        status = self.status if self.done else unfinished
        if self.call is not None:
            call = self.call
            return _call_item(self.id, status, call["call_id"], call["name"], call["arguments"])
        return _message_item(self.id, status, [dict(part) for part in self.parts])


class ResponseStream:
    """OpenAI ``chat.completion.chunk`` dicts in, Responses server-sent events out.

    :meth:`feed` (also :meth:`encode`, ``gateway.proxy``'s ``StreamEncoder`` name) takes
    chunks and returns the events they complete, ``response.created`` and
    ``response.in_progress`` first; :meth:`finish` closes what is open and sends
    ``response.completed`` (``response.incomplete`` after ``finish_reason: "length"`` or
    ``"content_filter"``) with the usage; :meth:`error` sends ``response.failed``
    instead. Both end the stream: later calls return nothing.

    Text opens a message item with an ``output_text`` part (a refusal, a ``refusal``
    part); each tool call (by its ``index``) opens a ``function_call`` item. An item
    closes when the next one opens, as in OpenAI's own streams; arguments that arrive
    for a call already closed (interleaved calls, which are rare) still reach the final
    response.
    """

    __slots__ = (
        "_created_at",
        "_ended",
        "_finish_reason",
        "_id",
        "_items",
        "_model",
        "_open",
        "_request",
        "_sequence",
        "_started",
        "_tools",
        "_usage",
    )

    def __init__(self, model: str, request: Json | None = None) -> None:
        self._model = model
        self._request = request or {}
        self._id = _new_id("resp_")
        self._created_at = time.time()
        self._sequence = 0
        self._started = False
        self._ended = False
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._tools: dict[int, _Item] = {}  # chat tool call index -> its item
        self._finish_reason: object = None
        self._usage: object = None

    def feed(self, chunks: list[Json]) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._start(out)
        for chunk in chunks:
            if isinstance(chunk.get("usage"), dict):
                self._usage = chunk["usage"]
            choices = chunk.get("choices")
            for choice in choices if isinstance(choices, list) else ():
                if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                    continue  # only choice 0 exists: Responses has no n
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    self._delta(delta, out)
                if choice.get("finish_reason"):
                    self._finish_reason = choice["finish_reason"]
        return b"".join(out)

    encode = feed

    def finish(self) -> bytes:
        if self._ended:
            return b""
        out: list[bytes] = []
        self._start(out)
        status = _status(self._finish_reason)
        for item in self._items:
            self._close(item, status, out)
        self._ended = True
        self._emit(out, f"response.{status}", response=self._snapshot(status))
        return b"".join(out)

    def error(self, status: int, message: str, code: str, request_id: str) -> bytes:
        """``response.failed``, whose ``error`` says what broke (``code`` is the
        gateway's, e.g. ``upstream_timeout``; ``status`` its HTTP equivalent)."""
        if self._ended:
            return b""
        out: list[bytes] = []
        self._start(out)
        self._ended = True
        error = {
            "code": "server_error",
            "message": f"{message} (gateway code {code}, HTTP {status}; request id {request_id})",
        }
        self._emit(out, "response.failed", response=self._snapshot("failed", error))
        return b"".join(out)

    def _emit(self, out: list[bytes], kind: str, **data: Any) -> None:
        event = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        out.append(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n")

    def _snapshot(self, status: str, error: Json | None = None) -> Json:
        live = status == "in_progress"
        return _response(
            self._id,
            self._created_at,
            self._model,
            self._request,
            status=status,
            output=[item.json("in_progress" if live else "incomplete") for item in self._items],
            usage=None if live else _usage(self._usage),
            finish_reason=self._finish_reason,
            error=error,
        )

    def _start(self, out: list[bytes]) -> None:
        if not self._started:
            self._started = True
            response = self._snapshot("in_progress")
            self._emit(out, "response.created", response=response)
            self._emit(out, "response.in_progress", response=response)

    def _delta(self, delta: Json, out: list[bytes]) -> None:
        for kind in ("content", "refusal"):
            text = delta.get(kind)
            if isinstance(text, str) and text:
                self._text("output_text" if kind == "content" else "refusal", text, out)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                self._tool(call, out)

    def _add(self, item: _Item, out: list[bytes]) -> None:
        if self._open is not None:
            self._close(self._open, "completed", out)
        self._items.append(item)
        self._open = item
        self._emit(out, "response.output_item.added", output_index=item.index, item=item.json())

    def _text(self, kind: str, text: str, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.call is not None:
            item = _Item(len(self._items), _new_id("msg_"))
            self._add(item, out)
        where: Json = {"item_id": item.id, "output_index": item.index}
        if not item.part_open or item.parts[-1]["type"] != kind:
            self._close_part(item, out)
            part = _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            item.parts.append(part)
            item.part_open = True
            where["content_index"] = len(item.parts) - 1
            self._emit(out, "response.content_part.added", **where, part=dict(part))
        where["content_index"] = len(item.parts) - 1
        if kind == "output_text":
            item.parts[-1]["text"] += text
            self._emit(out, "response.output_text.delta", **where, delta=text, logprobs=[])
        else:
            item.parts[-1]["refusal"] += text
            self._emit(out, "response.refusal.delta", **where, delta=text)

    def _close_part(self, item: _Item, out: list[bytes]) -> None:
        if not item.part_open:
            return
        item.part_open = False
        part = item.parts[-1]
        where = {
            "item_id": item.id,
            "output_index": item.index,
            "content_index": len(item.parts) - 1,
        }
        if part["type"] == "output_text":
            self._emit(out, "response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            self._emit(out, "response.refusal.done", **where, refusal=part["refusal"])
        self._emit(out, "response.content_part.done", **where, part=dict(part))

    def _tool(self, call: Json, out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        item = self._tools.get(position)
        if item is None:
            call_id = call.get("id") or _new_id("call_")
            details = {"call_id": call_id, "name": function.get("name") or "", "arguments": ""}
            item = self._tools[position] = _Item(len(self._items), _new_id("fc_"), details)
            self._add(item, out)
        assert item.call is not None
        if not item.call["name"] and function.get("name"):
            item.call["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.call["arguments"] += arguments
            where = {"item_id": item.id, "output_index": item.index}
            self._emit(out, "response.function_call_arguments.delta", **where, delta=arguments)

    def _close(self, item: _Item, status: str, out: list[bytes]) -> None:
        if item.done:
            return
        item.done = True
        item.status = "incomplete" if status == "incomplete" and item.call is None else "completed"
        if self._open is item:
            self._open = None
        if item.call is None:
            self._close_part(item, out)
        else:
            where = {"item_id": item.id, "output_index": item.index}
            arguments = item.call["arguments"]
            self._emit(out, "response.function_call_arguments.done", **where, arguments=arguments)
        self._emit(out, "response.output_item.done", output_index=item.index, item=item.json())


# gateway.proxy's ClientProtocol --------------------------------------------------------


class ResponsesClient:
    """How ``gateway.proxy`` answers Responses clients (its ``ClientProtocol``).

    ``request`` is the client's Responses request, whose settings the answer echoes.
    """

    name = "openai-responses"

    def __init__(self, request: Json | None = None) -> None:
        self._request = request or {}

    def whole(self, completion: Json, model: str) -> bytes:
        return orjson.dumps(chat_to_response(completion, model, self._request))

    def stream(self, model: str, include_usage: bool) -> ResponseStream:
        # Responses streams always end with usage: include_usage does not apply.
        return ResponseStream(model, self._request)


RESPONSES_CLIENT = ResponsesClient()
