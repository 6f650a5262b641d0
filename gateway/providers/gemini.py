"""Google's Gemini API (``generativelanguage.googleapis.com``), spoken from OpenAI's format.

The upstream's ``base_url`` is the API version's root (``.../v1beta``); calls go to
``{base}/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` (one
``GenerateContentResponse`` per SSE event) and ``:batchEmbedContents``, with the key in
``x-goog-api-key``.

How the OpenAI request maps:

- system and developer messages become ``systemInstruction``; user and assistant
  messages ``contents`` of role ``user`` and ``model``; image parts ``inlineData`` (data:
  URLs) or ``fileData`` (URLs, which the API fetches itself); ``input_audio`` and
  ``file`` parts (data: URLs) ``inlineData``;
- assistant ``tool_calls`` become ``functionCall`` parts and ``tool`` messages
  ``functionResponse`` parts (``{"output": <text>}``), named after the call they answer;
- ``tools`` become ``functionDeclarations`` with the JSON Schema as it is
  (``parametersJsonSchema``), ``tool_choice`` ``functionCallingConfig``;
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` (the extension Anthropic clients
  bring), ``stop``, ``n`` (``candidateCount``), ``seed``, ``presence_penalty``,
  ``frequency_penalty``, ``reasoning_effort`` (``thinkingConfig.thinkingLevel``) and
  ``response_format`` (``json_object`` as ``responseMimeType``, ``json_schema`` as
  ``responseJsonSchema``, which takes JSON Schema as it is) go to ``generationConfig``.

Tool call ids: the API may give a ``functionCall`` an ``id``; when it does not, the call
gets a stable one, ``call_<n>_<hash>``, which is not sent back (the API matches answers
by name). Gemini 3 models also sign their function calls (``thoughtSignature``) and
refuse a conversation that replays a call without its signature, so the signature
travels with the OpenAI tool call as ``extra_content.google.thought_signature`` (where
Google's own OpenAI-compatible endpoint puts it); for a client that drops it, or a
conversation begun with another model, the call carries the value Google documents for
skipping the check.

Refused before sending (:class:`Unsupported`): ``logprobs``, ``top_logprobs``,
``logit_bias``, ``audio`` and non-text ``modalities``, ``web_search_options``, the legacy
``functions`` and ``function_call``, ``parallel_tool_calls: false`` (Gemini cannot
promise one call), and any parameter this adapter does not know. ``strict`` on a
function is not sent (Gemini has no such switch); ``prediction`` and the metering hints
(``user``, ``metadata``...) change nothing and are dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from gateway.providers import _convert as convert
from gateway.providers.base import (
    Endpoint,
    FailureKind,
    HttpRequest,
    Json,
    Unsupported,
    UpstreamFailure,
    classify_status,
    mentions_context_window,
    retry_after_seconds,
)

# Beyond what every converted vendor takes (see _convert.check_params).
_HANDLED = frozenset({"top_k", "presence_penalty", "frequency_penalty"})
_THINKING_LEVELS = frozenset({"minimal", "low", "medium", "high"})
_GENERATED_ID = re.compile(r"call_\d+_[0-9a-f]{12}")
# Google's documented value for a function call whose signature is not known.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# The image types Gemini reads, by the extension of an image URL (the type is optional).
_IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
}
_AUTH_REASONS = frozenset(
    {"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED", "ACCESS_TOKEN_EXPIRED"}
)


class GeminiAdapter:
    """The Gemini API (see the module docstring)."""

    vendor = "gemini"
    openai_wire = False

    def chat_request(self, endpoint: Endpoint, request: Json, *, stream: bool) -> HttpRequest:
        body = orjson.dumps(request_body(request))
        if stream:
            return self._request(endpoint, "streamGenerateContent?alt=sse", body)
        return self._request(endpoint, "generateContent", body)

    def chat_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        answer = convert.json_object(payload)
        if answer is None:
            raise convert.malformed("completion")
        if isinstance(answer.get("error"), dict):
            raise _error_event(answer["error"])
        ident = convert.completion_id(answer.get("responseId"))
        choices = []
        for index, candidate in _candidates(answer):
            text: list[str] = []
            calls: list[Json] = []
            for part in _parts(candidate):
                if isinstance(part.get("text"), str) and not part.get("thought"):
                    text.append(part["text"])
                elif isinstance(part.get("functionCall"), dict):
                    calls.append(_tool_call(answer, index, len(calls), part))
            finish = _finish(candidate.get("finishReason"), bool(calls)) or "stop"
            choices.append(
                convert.message_choice(index, "".join(text) if text else None, calls, finish)
            )
        if not choices:
            # The prompt itself was blocked: there is no candidate at all.
            choices.append(convert.message_choice(0, None, [], _blocked(answer)))
        return convert.completion(ident, endpoint.model, choices, _usage(answer))

    def chat_stream(self, endpoint: Endpoint) -> GeminiStream:
        return GeminiStream(endpoint.model)

    def embeddings_request(self, endpoint: Endpoint, request: Json) -> HttpRequest:
        inputs = request.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise Unsupported(
                "input", "This model takes input as a string or a list of strings (not tokens)."
            )
        dimensions = request.get("dimensions")
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            raise Unsupported("dimensions", "dimensions must be a positive integer.")
        name = _model_name(endpoint.model)
        requests = []
        for text in texts:
            item: Json = {"model": name, "content": {"parts": [{"text": text}]}}
            if dimensions is not None:
                item["outputDimensionality"] = dimensions
            requests.append(item)
        return self._request(endpoint, "batchEmbedContents", orjson.dumps({"requests": requests}))

    def embeddings_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        answer = convert.json_object(payload)
        embeddings = answer.get("embeddings") if answer is not None else None
        if not isinstance(embeddings, list):
            raise convert.malformed("embeddings answer")
        data = []
        for index, embedding in enumerate(embeddings):
            values = embedding.get("values") if isinstance(embedding, dict) else None
            if not isinstance(values, list):
                raise convert.malformed("embeddings answer")
            data.append({"object": "embedding", "index": index, "embedding": values})
        # The Gemini API does not count embedding tokens (Vertex AI's answer does): 0 then.
        metadata = answer.get("usageMetadata") if answer is not None else None
        tokens = metadata.get("promptTokenCount") if isinstance(metadata, dict) else None
        count = tokens if type(tokens) is int and tokens > 0 else 0
        return {
            "object": "list",
            "data": data,
            "model": endpoint.model,
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }

    def failure(self, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        value: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(payload)
        # Some answers wrap the error in a list (the JSON-array stream framing).
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
        error = value.get("error") if isinstance(value, dict) else None
        return error_failure(status, error if isinstance(error, dict) else {}, headers)

    @staticmethod
    def _request(endpoint: Endpoint, method: str, body: bytes) -> HttpRequest:
        base = endpoint.base_url.rstrip("/")
        headers = {"Content-Type": "application/json"}
        if endpoint.credential:
            headers["x-goog-api-key"] = endpoint.credential
        url = f"{base}/{quote(_model_name(endpoint.model), safe='/')}:{method}"
        return HttpRequest(url=url, headers=headers, body=body)


def _model_name(model: str) -> str:
    # "gemini-2.5-flash" is "models/gemini-2.5-flash"; tuned models come with their prefix.
    return model if "/" in model else "models/" + model


# The request ------------------------------------------------------------------------------


def request_body(request: Json) -> Json:
    """The ``generateContent`` body for an OpenAI request (raises :class:`Unsupported`)."""
    convert.check_params(request, handled=_HANDLED)
    names: dict[str, str] = {}  # tool call id -> function name, for functionResponse
    system, turns = convert.conversation(
        request,
        model_role="model",
        user_part=_user_part,
        assistant=lambda message: _assistant_parts(message, names),
        tool_result=lambda message: _tool_result(message, names),
    )
    body: Json = {"contents": [{"role": t["role"], "parts": t["content"]} for t in turns]}
    if system:
        body["systemInstruction"] = {"parts": system}
    declared = convert.functions(request)
    if declared:
        body["tools"] = [{"functionDeclarations": [_declaration(f) for f in declared]}]
    choice = convert.tool_choice(request)
    if choice is not None and (declared or choice == "none"):
        body["toolConfig"] = {"functionCallingConfig": _calling_config(choice)}
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    return body


def _user_part(part: Json) -> Json:
    kind = part.get("type")
    if kind == "text":
        return {"text": str(part.get("text") or "")}
    if kind == "image_url":
        image = convert.image_of(part)
        if image.data is not None:
            return {"inlineData": {"mimeType": image.mime_type, "data": image.data}}
        url = image.url or ""
        if not url.startswith(("https://", "http://", "gs://")):
            raise Unsupported("messages", "Image URLs must be http(s):, gs: or data: URLs.")
        file: Json = {"fileUri": url}
        extension = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
        if extension in _IMAGE_TYPES:
            file["mimeType"] = _IMAGE_TYPES[extension]
        return {"fileData": file}
    if kind == "input_audio":
        audio = part.get("input_audio")
        fmt = audio.get("format") if isinstance(audio, dict) else None
        data = audio.get("data") if isinstance(audio, dict) else None
        if fmt not in ("wav", "mp3") or not isinstance(data, str):
            raise Unsupported("messages", "input_audio needs base64 data in wav or mp3 format.")
        return {"inlineData": {"mimeType": f"audio/{fmt}", "data": data}}
    if kind == "file":
        mime, inline, _ = convert.file_of(part)
        return {"inlineData": {"mimeType": mime, "data": inline}}
    raise Unsupported("messages", f"Content parts of type {kind!r} are not supported.")


def _assistant_parts(message: Json, names: dict[str, str]) -> list[Json]:
    parts: list[Json] = [{"text": text} for text in convert.assistant_texts(message)]
    calls = convert.tool_calls_of(message)
    signed = any(_signature(call) for call, *_ in calls)
    for position, (call, ident, name, arguments) in enumerate(calls):
        names[ident] = name
        function: Json = {"name": name, "args": arguments}
        if not _GENERATED_ID.fullmatch(ident):
            function["id"] = ident
        signature = _signature(call)
        if signature is None and position == 0 and not signed:
            # Gemini 3 refuses a replayed step whose first call is unsigned.
            signature = SKIP_SIGNATURE
        if signature is None:
            parts.append({"functionCall": function})
        else:
            parts.append({"functionCall": function, "thoughtSignature": signature})
    return parts


def _signature(call: object) -> str | None:
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _tool_result(message: Json, names: dict[str, str]) -> Json:
    ident = message.get("tool_call_id")
    name = names.get(ident) if isinstance(ident, str) else None
    if not isinstance(ident, str) or name is None:
        raise Unsupported(
            "messages",
            "Each tool message must answer a tool call of an earlier assistant message "
            "(its tool_call_id names the call).",
        )
    response: Json = {"name": name, "response": {"output": convert.text_of(message.get("content"))}}
    if not _GENERATED_ID.fullmatch(ident):
        response["id"] = ident
    return {"functionResponse": response}


def _declaration(function: convert.Function) -> Json:
    declaration: Json = {"name": function.name}
    if function.description:
        declaration["description"] = function.description
    if function.parameters:
        declaration["parametersJsonSchema"] = function.parameters
    return declaration


def _calling_config(choice: str) -> Json:
    if choice.startswith("function:"):
        return {"mode": "ANY", "allowedFunctionNames": [choice.removeprefix("function:")]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}


def _generation_config(request: Json) -> Json:
    config: Json = {}
    limit = convert.max_tokens(request)
    if limit is not None:
        config["maxOutputTokens"] = limit
    for param, key in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = convert.number(request, param)
        if value is not None:
            config[key] = value
    seed = request.get("seed")
    if seed is not None:
        if type(seed) is not int:
            raise Unsupported("seed", "seed must be an integer.")
        config["seed"] = seed
    stop = convert.stop_sequences(request)
    if stop:
        config["stopSequences"] = stop
    n = convert.choice_count(request)
    if n > 1:
        config["candidateCount"] = n
    effort = request.get("reasoning_effort")
    if effort is not None:
        if effort not in _THINKING_LEVELS:
            raise Unsupported(
                "reasoning_effort",
                "This model takes reasoning_effort minimal, low, medium or high.",
            )
        config["thinkingConfig"] = {"thinkingLevel": effort}
    spec = convert.response_format(request)
    if spec is not None:
        config["responseMimeType"] = "application/json"
        if spec["type"] == "json_schema":
            config["responseJsonSchema"] = spec["schema"]
    return config


# The answer -------------------------------------------------------------------------------


def _candidates(answer: Json) -> list[tuple[int, Json]]:
    found = []
    for position, candidate in enumerate(convert.dicts(answer.get("candidates"))):
        index = candidate.get("index")
        found.append((index if type(index) is int and index >= 0 else position, candidate))
    return found


def _parts(candidate: Json) -> list[Json]:
    content = candidate.get("content")
    return list(convert.dicts(content.get("parts"))) if isinstance(content, dict) else []


def _tool_call(answer: Json, candidate: int, position: int, part: Json) -> Json:
    function = part["functionCall"]
    name = str(function.get("name") or "")
    arguments = convert.arguments_text(function.get("args"))
    ident = function.get("id")
    if not isinstance(ident, str) or not ident:
        seed = f"{answer.get('responseId')}|{candidate}|{position}|{name}|{arguments}"
        ident = f"call_{position}_{hashlib.sha256(seed.encode()).hexdigest()[:12]}"
    call = convert.tool_call(position, ident, name, arguments)
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


def _finish(reason: object, called: bool) -> str | None:
    if reason is None:
        return None
    finish = _FINISH.get(str(reason), "stop")
    return "tool_calls" if called and finish == "stop" else finish


def _blocked(answer: Json) -> str:
    feedback = answer.get("promptFeedback")
    return (
        "content_filter" if isinstance(feedback, dict) and feedback.get("blockReason") else "stop"
    )


def _usage(answer: Json) -> Json | None:
    metadata = answer.get("usageMetadata")
    if not isinstance(metadata, dict):
        return None
    prompt = metadata.get("promptTokenCount")
    tools = metadata.get("toolUsePromptTokenCount")
    if type(prompt) is int and type(tools) is int:
        prompt += tools
    return convert.usage(
        prompt,
        metadata.get("candidatesTokenCount"),
        cached=metadata.get("cachedContentTokenCount"),
        reasoning=metadata.get("thoughtsTokenCount"),
    )


class GeminiStream(convert.SseDecoder):
    """``streamGenerateContent?alt=sse`` events → chunks (see :class:`StreamDecoder`).

    Every event is a whole ``GenerateContentResponse`` holding the next parts. The
    stream has no end marker: it is complete when every candidate has a
    ``finishReason``. The API reports a failure after the answer has begun as a last
    event holding an ``error`` object.
    """

    __slots__ = ("_calls", "_chunks", "_finished", "_usage")

    def __init__(self, model: str) -> None:
        super().__init__()
        self._chunks = convert.Chunks(model)
        self._calls: dict[int, int] = {}  # candidate -> tool calls so far
        self._finished: set[int] = set()
        self._usage: Json | None = None

    def _end(self, chunks: list[Json]) -> None:
        if not self._finished or any(index not in self._finished for index in self._calls):
            raise convert.broke_off()
        if self._usage is not None:
            chunks.append(self._chunks.usage(self._usage))

    def _event(self, data: bytes, chunks: list[Json]) -> None:
        answer = convert.json_object(data)
        if answer is None:
            raise convert.malformed("stream event")
        if "error" in answer:
            raise _error_event(answer["error"])
        self._chunks.rename(answer.get("responseId"))
        metadata = _usage(answer)
        if metadata is not None:
            self._usage = metadata
        candidates = _candidates(answer)
        for index, candidate in candidates:
            calls = self._calls.setdefault(index, 0)
            for part in _parts(candidate):
                text = part.get("text")
                if isinstance(text, str) and text and not part.get("thought"):
                    chunks.append(self._chunks.delta(index, {"content": text}))
                elif isinstance(part.get("functionCall"), dict):
                    call = _tool_call(answer, index, calls, part)
                    chunks.append(self._chunks.delta(index, {"tool_calls": [call]}))
                    calls += 1
            self._calls[index] = calls
            finish = _finish(candidate.get("finishReason"), calls > 0)
            if finish is not None:
                self._finished.add(index)
                chunks.append(self._chunks.delta(index, {}, finish))
        if not candidates and isinstance(answer.get("promptFeedback"), dict):
            self._finished.add(0)
            self._calls.setdefault(0, 0)
            chunks.append(self._chunks.delta(0, {}, _blocked(answer)))


# Failures ---------------------------------------------------------------------------------


def error_failure(status: int, error: Json, headers: Mapping[str, str]) -> UpstreamFailure:
    """Classify a Google API error object (``{"code", "message", "status", "details"}``)."""
    message = str(error.get("message") or "")[: convert.MAX_MESSAGE]
    code = str(error.get("status") or "")
    details = list(convert.dicts(error.get("details")))
    reasons = {str(detail.get("reason")) for detail in details if "reason" in detail}
    kind = classify_status(status)
    if status == 429 or code == "RESOURCE_EXHAUSTED":
        kind = FailureKind.RATE_LIMITED
    elif code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or reasons & _AUTH_REASONS:
        # An invalid key is a 400 INVALID_ARGUMENT, told apart only by its reason.
        kind = FailureKind.AUTH
    elif code == "DEADLINE_EXCEEDED":
        kind = FailureKind.TIMEOUT
    elif kind is FailureKind.BAD_REQUEST and mentions_context_window(message):
        kind = FailureKind.CONTEXT_WINDOW
    elif kind is FailureKind.BAD_REQUEST and "location is not supported" in message.lower():
        # The key's region cannot use the API: another target may well serve the call.
        kind = FailureKind.SERVER
    retry_after = _retry_delay(details)
    if retry_after is None:
        retry_after = retry_after_seconds(headers)
    return UpstreamFailure(
        kind,
        message or f"The upstream answered HTTP {status}.",
        status=status,
        retry_after=retry_after,
    )


def _error_event(error: object) -> UpstreamFailure:
    """An error delivered in a 200 answer: the HTTP status it stands for is its code."""
    details = error if isinstance(error, dict) else {}
    status = details.get("code")
    return error_failure(status if type(status) is int else 500, details, {})


def _retry_delay(details: list[Json]) -> float | None:
    """``RetryInfo.retryDelay`` (a protobuf Duration in JSON: ``"7s"``, ``"0.5s"``)."""
    for detail in details:
        if not str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            continue
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                return None
            return min(max(seconds, 0.0), 3600.0)
    return None


ADAPTER = GeminiAdapter()
