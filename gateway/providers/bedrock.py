"""Amazon Bedrock's Converse API, spoken from OpenAI's format.

The upstream's ``base_url`` is the runtime endpoint (``https://bedrock-runtime.<region>.
amazonaws.com``); calls go to ``{base}/model/{modelId}/converse`` and
``/converse-stream``, signed with SigV4 (service ``bedrock``) by :mod:`.sigv4`. The
credential is ``"<access key id>:<secret access key>"``, with ``":<session token>"`` for
temporary credentials; the region is the upstream's ``region`` option, else the one in
the endpoint's host name, else ``us-east-1``. Streams are AWS event streams, decoded by
:mod:`.eventstream`.

How the OpenAI request maps:

- system and developer messages become ``system`` blocks; user and assistant messages
  ``messages`` with ``text``, ``image`` (data: URLs only: Converse takes image bytes or
  S3 objects, not web URLs) and ``document`` (``file`` parts) blocks;
- assistant ``tool_calls`` become ``toolUse`` blocks, ``tool`` messages ``toolResult``
  blocks in a user message (consecutive messages of one role are joined: Converse wants
  the roles to alternate);
- ``tools`` become ``toolConfig.tools[].toolSpec`` (``inputSchema.json``, ``strict``),
  ``tool_choice`` ``toolConfig.toolChoice`` (``auto``, ``any``, ``tool``); ``none``
  leaves the tools out, which Converse refuses once the conversation holds tool calls;
- ``max_tokens``, ``temperature``, ``top_p`` and ``stop`` go to ``inferenceConfig``;
  ``response_format`` ``json_schema`` to ``outputConfig.textFormat`` and
  ``reasoning_effort`` to ``outputConfig.effort`` (``minimal`` as ``low``; ``none``
  sends nothing), which the models that lack it refuse with their own 400.

Refused before sending (:class:`Unsupported`): ``n`` > 1, penalties, ``logprobs``,
``top_logprobs``, ``logit_bias``, ``top_k`` (model-specific on Bedrock),
``response_format`` ``json_object`` (Converse has no schema-less JSON mode), audio,
``web_search_options``, the legacy ``functions``, ``parallel_tool_calls: false`` and any
parameter this adapter does not know; ``seed`` (best effort even at OpenAI) and the
metering hints are dropped. Embeddings too are refused: on Bedrock they go through
InvokeModel with a body that differs per model family (Titan, Cohere...), which no
single translation covers.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

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
from gateway.providers.eventstream import Decoder, Message
from gateway.providers.sigv4 import Credentials, parse_credentials, path_segment, sign

# Refused on top of what _convert.check_params refuses for every converted vendor. (``seed``
# is dropped: best effort even at OpenAI, and Converse has none.)
_REFUSED = {
    "presence_penalty": "presence_penalty is not supported by this model's provider.",
    "frequency_penalty": "frequency_penalty is not supported by this model's provider.",
    "top_k": "top_k is not supported for this model's provider.",
}
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")
_DOCUMENT_NAME = re.compile(r"[^A-Za-z0-9()\[\]-]+")
_REGION = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z]{2}(?:-[a-z]+)+-\d+)\.")
_KINDS = {
    "ThrottlingException": FailureKind.RATE_LIMITED,
    "ServiceQuotaExceededException": FailureKind.RATE_LIMITED,
    "TooManyRequestsException": FailureKind.RATE_LIMITED,
    "AccessDeniedException": FailureKind.AUTH,
    "UnrecognizedClientException": FailureKind.AUTH,
    "InvalidSignatureException": FailureKind.AUTH,
    "IncompleteSignatureException": FailureKind.AUTH,
    "MissingAuthenticationTokenException": FailureKind.AUTH,
    "ExpiredTokenException": FailureKind.AUTH,
    "InvalidClientTokenId": FailureKind.AUTH,
    # Transient: retried once, then another target (ModelNotReady comes as a 429).
    "ModelNotReadyException": FailureKind.SERVER,
    "ServiceUnavailableException": FailureKind.SERVER,
    "InternalServerException": FailureKind.SERVER,
    "ModelErrorException": FailureKind.SERVER,
    "ModelStreamErrorException": FailureKind.SERVER,
    "ResourceNotFoundException": FailureKind.SERVER,
    "ModelTimeoutException": FailureKind.TIMEOUT,
}
# Bedrock's words for a prompt over the context window, beyond the common ones.
_CONTEXT_PHRASES = ("too long", "context limit")
# A ValidationException about the target itself, not the request: another may serve it.
_MISCONFIGURED = ("model identifier is invalid", "on-demand throughput")


class BedrockAdapter:
    """Bedrock's Converse API (see the module docstring)."""

    vendor = "bedrock"
    openai_wire = False

    def chat_request(self, endpoint: Endpoint, request: Json, *, stream: bool) -> HttpRequest:
        body = orjson.dumps(request_body(request))
        operation = "converse-stream" if stream else "converse"
        url = f"{endpoint.base_url.rstrip('/')}/model/{path_segment(endpoint.model)}/{operation}"
        headers = sign(
            method="POST",
            url=url,
            headers={"Content-Type": "application/json"},
            body=body,
            credentials=_credentials(endpoint),
            region=region_of(endpoint),
            service="bedrock",
        )
        return HttpRequest(url=url, headers=headers, body=body)

    def chat_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        answer = convert.json_object(payload)
        output = answer.get("output") if answer is not None else None
        message = output.get("message") if isinstance(output, dict) else None
        if answer is None or not isinstance(message, dict):
            raise convert.malformed("completion")
        text: list[str] = []
        calls: list[Json] = []
        for block in convert.dicts(message.get("content")):
            if isinstance(block.get("text"), str):
                text.append(block["text"])
            elif isinstance(block.get("toolUse"), dict):
                use = block["toolUse"]
                calls.append(
                    convert.tool_call(
                        len(calls),
                        str(use.get("toolUseId") or ""),
                        str(use.get("name") or ""),
                        convert.arguments_text(use.get("input")),
                    )
                )
        finish = _FINISH.get(str(answer.get("stopReason")), "stop")
        choice = convert.message_choice(0, "".join(text) if text else None, calls, finish)
        return convert.completion(
            convert.completion_id(), endpoint.model, [choice], _usage(answer.get("usage"))
        )

    def chat_stream(self, endpoint: Endpoint) -> BedrockStream:
        return BedrockStream(endpoint.model)

    def embeddings_request(self, endpoint: Endpoint, request: Json) -> HttpRequest:
        raise Unsupported(
            "model",
            "Embeddings are not available for Bedrock models through this gateway: Bedrock "
            "serves them with a request format that differs per model family.",
        )

    def embeddings_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        raise convert.malformed("embeddings answer")  # never called: no request is ever built

    def failure(self, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        body = convert.json_object(payload) or {}
        # "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
        error_type = headers.get("x-amzn-errortype", "").split(":", 1)[0]
        if not error_type:
            error_type = str(body.get("__type") or body.get("code") or "").rsplit("#", 1)[-1]
        message = str(body.get("message") or body.get("Message") or "")
        return error_failure(error_type, status, message, retry_after_seconds(headers))


def _credentials(endpoint: Endpoint) -> Credentials:
    try:
        return parse_credentials(endpoint.credential)
    except ValueError as exc:
        # The upstream's secret is misconfigured: this credential cannot be used.
        raise UpstreamFailure(FailureKind.AUTH, str(exc)) from None


def region_of(endpoint: Endpoint) -> str:
    """The ``region`` option, else the region in the host name, else ``us-east-1``."""
    region = endpoint.options.get("region")
    if region:
        return region
    found = _REGION.search(endpoint.base_url)
    return found.group(1) if found else "us-east-1"


# The request ------------------------------------------------------------------------------


def request_body(request: Json) -> Json:
    """The Converse body for an OpenAI request (raises :class:`Unsupported`)."""
    convert.check_params(request, refused=_REFUSED)
    if convert.choice_count(request) > 1:
        raise Unsupported("n", "This model's provider answers with one choice only (n=1).")
    system, turns = convert.conversation(
        request,
        model_role="assistant",
        user_part=_user_block,
        assistant=_assistant_blocks,
        tool_result=_tool_result,
    )
    body: Json = {"messages": turns}
    if system:
        body["system"] = system
    tool_config = _tool_config(request, body["messages"])
    if tool_config is not None:
        body["toolConfig"] = tool_config
    inference = _inference_config(request)
    if inference:
        body["inferenceConfig"] = inference
    output = _output_config(request)
    if output:
        body["outputConfig"] = output
    return body


def _output_config(request: Json) -> Json:
    config: Json = {}
    effort = request.get("reasoning_effort")
    if isinstance(effort, str) and effort != "none":
        # Converse's effort levels are low to max; OpenAI's "minimal" is the lowest.
        config["effort"] = "low" if effort == "minimal" else effort
    elif effort is not None and effort != "none":
        raise Unsupported("reasoning_effort", "reasoning_effort must be a string.")
    spec = convert.response_format(request)
    if spec is not None:
        if spec["type"] != "json_schema":
            raise Unsupported(
                "response_format",
                "This model's provider needs a JSON schema for JSON output "
                "(response_format json_schema), not json_object.",
            )
        schema: Json = {"schema": orjson.dumps(spec["schema"]).decode()}
        for key in ("name", "description"):
            if isinstance(spec.get(key), str):
                schema[key] = spec[key]
        config["textFormat"] = {"type": "json_schema", "structure": {"jsonSchema": schema}}
    return config


def _user_block(part: Json) -> Json:
    kind = part.get("type")
    if kind == "text":
        return {"text": str(part.get("text") or "")}
    if kind == "image_url":
        image = convert.image_of(part)
        fmt = _IMAGE_FORMATS.get(image.mime_type or "")
        if image.data is None or fmt is None:
            raise Unsupported(
                "messages",
                "Images must be PNG, JPEG, GIF or WebP data: URLs for this model "
                "(its provider does not fetch image URLs).",
            )
        return {"image": {"format": fmt, "source": {"bytes": image.data}}}
    if kind == "file":
        mime, data, filename = convert.file_of(part)
        fmt = _DOCUMENT_FORMATS.get(mime)
        if fmt is None:
            raise Unsupported("messages", f"Files of type {mime} are not supported by this model.")
        stem = str(filename or "document").rsplit(".", 1)[0]
        name = _DOCUMENT_NAME.sub(" ", stem).strip() or "document"
        return {"document": {"format": fmt, "name": name, "source": {"bytes": data}}}
    raise Unsupported("messages", f"Content parts of type {kind!r} are not supported.")


def _tool_result(message: Json) -> Json:
    ident = message.get("tool_call_id")
    if not isinstance(ident, str) or not ident:
        raise Unsupported("messages", "A tool message needs the tool_call_id it answers.")
    content = [{"text": convert.text_of(message.get("content"))}]
    return {"toolResult": {"toolUseId": _tool_use_id(ident), "content": content}}


def _assistant_blocks(message: Json) -> list[Json]:
    blocks: list[Json] = [{"text": text} for text in convert.assistant_texts(message)]
    for _, ident, name, arguments in convert.tool_calls_of(message):
        blocks.append(
            {"toolUse": {"toolUseId": _tool_use_id(ident), "name": name, "input": arguments}}
        )
    return blocks


def _tool_use_id(ident: str) -> str:
    """The id as Converse accepts it: ids from other vendors may not fit its pattern, so
    they are replaced by a hash (the same for the call and its result)."""
    if _TOOL_USE_ID.fullmatch(ident):
        return ident
    return "tooluse_" + hashlib.sha256(ident.encode()).hexdigest()[:24]


def _tool_config(request: Json, messages: list[Json]) -> Json | None:
    declared = convert.functions(request)
    choice = convert.tool_choice(request)
    if not declared:
        return None
    if choice == "none":
        uses_tools = any(
            "toolUse" in block or "toolResult" in block
            for message in messages
            for block in message["content"]
        )
        if uses_tools:
            raise Unsupported(
                "tool_choice",
                "This model's provider cannot forbid tool calls in a conversation that "
                "holds tool calls; leave tool_choice unset or use auto.",
            )
        return None
    config: Json = {"tools": [{"toolSpec": _tool_spec(function)} for function in declared]}
    if choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice is not None:
        config["toolChoice"] = {"tool": {"name": choice.removeprefix("function:")}}
    return config


def _tool_spec(function: convert.Function) -> Json:
    schema = function.parameters or {"type": "object", "properties": {}}
    spec: Json = {"name": function.name, "inputSchema": {"json": schema}}
    if function.description:
        spec["description"] = function.description
    if function.strict:
        spec["strict"] = True
    return spec


def _inference_config(request: Json) -> Json:
    config: Json = {}
    limit = convert.max_tokens(request)
    if limit is not None:
        config["maxTokens"] = limit
    for param, key in (("temperature", "temperature"), ("top_p", "topP")):
        value = convert.number(request, param)
        if value is not None:
            config[key] = value
    stop = convert.stop_sequences(request)
    if stop:
        config["stopSequences"] = stop
    return config


# The answer -------------------------------------------------------------------------------


def _usage(value: object) -> Json | None:
    if not isinstance(value, dict):
        return None
    prompt = 0
    # Converse counts cached prompt tokens apart; OpenAI's prompt_tokens includes them.
    for key in ("inputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"):
        count = value.get(key)
        prompt += count if type(count) is int and count > 0 else 0
    return convert.usage(
        prompt, value.get("outputTokens"), cached=value.get("cacheReadInputTokens")
    )


class BedrockStream:
    """ConverseStream's event stream → chunks (see :class:`StreamDecoder`).

    Events: ``messageStart``, then per content block an optional ``contentBlockStart``
    (tool calls: id and name), ``contentBlockDelta`` (text, or a piece of the tool
    input's JSON) and ``contentBlockStop``; then ``messageStop`` (the stop reason) and
    ``metadata`` (usage). A failure mid-stream is a frame of message type
    ``exception``.
    """

    __slots__ = ("_chunks", "_frames", "_stopped", "_tools")

    def __init__(self, model: str) -> None:
        self._frames = Decoder()
        self._chunks = convert.Chunks(model)
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._stopped = False

    def feed(self, data: bytes) -> list[Json]:
        chunks: list[Json] = []
        for message in self._frames.feed(data):
            chunk = self._chunk(message)
            if chunk is not None:
                chunks.append(chunk)
        return chunks

    def close(self) -> list[Json]:
        if self._frames.pending or not self._stopped:
            raise convert.broke_off()
        return []

    def _chunk(self, message: Message) -> Json | None:
        kind = message.header(":message-type")
        if kind == "exception":
            error_type = message.header(":exception-type") or ""
            body = convert.json_object(message.payload) or {}
            text = str(body.get("message") or body.get("Message") or "")
            # Event names are lowerCamelCase ("throttlingException"); the errors' aren't.
            raise error_failure(error_type[:1].upper() + error_type[1:], 0, text)
        if kind == "error":
            text = message.header(":error-message") or "The upstream reported an error."
            raise UpstreamFailure(FailureKind.SERVER, text[: convert.MAX_MESSAGE])
        event = convert.json_object(message.payload)
        if event is None:
            raise convert.malformed("stream event")
        name = message.header(":event-type")
        block = event.get("contentBlockIndex")
        if name == "messageStart":
            return self._chunks.delta(0, {})
        if name == "contentBlockStart":
            start = event.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if not isinstance(use, dict) or type(block) is not int:
                return None
            index = self._tools[block] = len(self._tools)
            call = convert.tool_call(
                index, str(use.get("toolUseId") or ""), str(use.get("name") or ""), ""
            )
            return self._chunks.delta(0, {"tool_calls": [call]})
        if name == "contentBlockDelta":
            delta = event.get("delta")
            if not isinstance(delta, dict):
                raise convert.malformed("stream event")
            if isinstance(delta.get("text"), str):
                return self._chunks.delta(0, {"content": delta["text"]})
            use = delta.get("toolUse")
            if isinstance(use, dict) and isinstance(use.get("input"), str) and block in self._tools:
                piece = {"index": self._tools[block], "function": {"arguments": use["input"]}}
                return self._chunks.delta(0, {"tool_calls": [piece]})
            return None  # reasoning and citations have no place in OpenAI's chunks
        if name == "messageStop":
            self._stopped = True
            finish = _FINISH.get(str(event.get("stopReason")), "stop")
            return self._chunks.delta(0, {}, finish)
        if name == "metadata":
            counted = _usage(event.get("usage"))
            return self._chunks.usage(counted) if counted is not None else None
        return None


# Failures ---------------------------------------------------------------------------------


def error_failure(
    error_type: str, status: int, message: str, retry_after: float | None = None
) -> UpstreamFailure:
    """Classify a Bedrock error by its type (``ThrottlingException``...), else status."""
    message = message[: convert.MAX_MESSAGE]
    kind = _KINDS.get(error_type)
    if kind is None:
        kind = classify_status(status) if status else FailureKind.SERVER
    if error_type == "ValidationException" or kind is FailureKind.BAD_REQUEST:
        lowered = message.lower()
        if mentions_context_window(message) or any(p in lowered for p in _CONTEXT_PHRASES):
            kind = FailureKind.CONTEXT_WINDOW
        elif any(phrase in lowered for phrase in _MISCONFIGURED):
            kind = FailureKind.SERVER
        else:
            kind = FailureKind.BAD_REQUEST
    return UpstreamFailure(
        kind,
        message or f"The upstream answered with {error_type or f'HTTP {status}'}.",
        status=status,
        retry_after=retry_after,
    )


ADAPTER = BedrockAdapter()
