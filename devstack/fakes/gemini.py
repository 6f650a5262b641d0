"""A fake Gemini API (``generativelanguage.googleapis.com``) that needs no internet.

Run it with ``python -m devstack.fakes.gemini --port 9200 [--require-key K] [--record
FILE]`` and point a ``gemini`` upstream's ``base_url`` at ``http://127.0.0.1:9200/v1beta``.

Endpoints, as Google's: ``POST /{version}/models/{model}:generateContent``,
``:streamGenerateContent`` (``?alt=sse``: one ``GenerateContentResponse`` per SSE event,
``\\r\\n\\r\\n`` apart; without it, the JSON array the API also serves) and
``:batchEmbedContents``; ``GET /healthz``. The answers follow
:mod:`devstack.fakes.script`. With ``--require-key``, a request without
``x-goog-api-key`` (or ``?key=``) gets Google's 403 ``PERMISSION_DENIED``, one with the
wrong key its 400 ``INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``.

The script's knobs in the model name, in Gemini's shapes: ``error-<status>`` answers
``{"error": {"code", "message", "status"}}`` (429: ``RESOURCE_EXHAUSTED`` with a
``RetryInfo`` ``retryDelay`` of ``1s``), ``context`` the API's "input token count
exceeds the maximum" 400, ``midstream-<n>`` ends the stream after ``n`` events with an
event holding ``{"error": {... "status": "INTERNAL"}}``, as the API does when it fails
mid-answer. One more, ``thinking``: function calls carry a ``thoughtSignature``, and a
conversation that replays a call without one is refused with the 400 Gemini 3 models
give.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson

from devstack.fakes import script
from devstack.fakes._asgi import (
    Fake,
    Said,
    Scope,
    Send,
    headers_of,
    json_object,
    respond,
    scripted,
    serve,
    stream,
)

_JSON = [(b"content-type", b"application/json; charset=UTF-8")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_ROUTE = re.compile(r"/(v1[a-z0-9]*)/models/([^/:]+):([A-Za-z]+)")
_STATUS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission."),
    404: ("NOT_FOUND", "The requested model was not found."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota. Please retry later."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "The request timed out. Please try again."),
}
_MISSING_SIGNATURE = (
    "Function call is missing a thought_signature in functionCall parts. This is required "
    "for tools to work correctly, and missing thought_signature may lead to degraded model "
    "performance. Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures "
    "for more details."
)


def error_body(status: int, message: str | None = None, details: list[Any] | None = None) -> bytes:
    code, default = _STATUS.get(status, ("UNKNOWN", f"Error {status}."))
    error: dict[str, Any] = {"code": status, "message": message or default, "status": code}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error})


class GeminiFake(Fake):
    """The ASGI app (see the module docstring)."""

    def __init__(self, *, require_key: str | None = None, record: Path | None = None) -> None:
        super().__init__(record=record)
        self._key = require_key

    async def handle(self, scope: Scope, body: bytes, send: Send) -> None:
        route = _ROUTE.fullmatch(scope["path"])
        if scope["method"] != "POST" or route is None:
            await respond(send, 404, error_body(404, "Not found."), _JSON)
            return
        query = parse_qs(bytes(scope.get("query_string") or b"").decode())
        refused = self._refused(scope, query)
        if refused is not None:
            await respond(send, refused[0], refused[1], _JSON)
            return
        request = json_object(body)
        if request is None:
            await respond(send, 400, error_body(400, "Invalid JSON payload received."), _JSON)
            return
        _, model, method = route.groups()
        if method == "batchEmbedContents":
            await respond(send, 200, _embeddings(request), _JSON)
        elif method in ("generateContent", "streamGenerateContent"):
            sse = query.get("alt") == ["sse"]
            await self._generate(model, request, method != "generateContent", sse, send)
        else:
            await respond(send, 404, error_body(404, f"Method {method} not found."), _JSON)

    def _refused(self, scope: Scope, query: dict[str, list[str]]) -> tuple[int, bytes] | None:
        if self._key is None:
            return None
        key = headers_of(scope).get("x-goog-api-key") or next(iter(query.get("key", [])), None)
        if key is None:
            message = (
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API."
            )
            return 403, error_body(403, message)
        if key != self._key:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
            return 400, error_body(400, "API key not valid. Please pass a valid API key.", details)
        return None

    async def _generate(
        self, model: str, request: dict[str, Any], streaming: bool, sse: bool, send: Send
    ) -> None:
        knobs = script.knobs_for(model)
        if knobs.delay:
            await asyncio.sleep(knobs.delay)
        failure = _failure(model, request)
        if failure is not None:
            status, payload = failure
            await respond(send, status, payload, _JSON)
            return
        answer = _answer(model, request)
        ident = secrets.token_urlsafe(12)
        n = request.get("generationConfig", {}).get("candidateCount") or 1
        usage = {
            "promptTokenCount": answer.prompt_tokens,
            "candidatesTokenCount": answer.completion_tokens * n,
            "totalTokenCount": answer.prompt_tokens + answer.completion_tokens * n,
        }
        if not streaming:
            parts = _call_parts(answer, model) if answer.tool_call else [{"text": answer.text}]
            whole = _response(ident, model, n, parts, "STOP", usage)
            await respond(send, 200, orjson.dumps(whole), _JSON)
            return
        partial = {
            "promptTokenCount": answer.prompt_tokens,
            "totalTokenCount": answer.prompt_tokens,
        }
        if answer.tool_call:
            events = [_response(ident, model, n, _call_parts(answer, model), "STOP", usage)]
        else:
            events = []
            for position, piece in enumerate(answer.pieces):
                last = position == len(answer.pieces) - 1
                finish, counts = ("STOP", usage) if last else (None, partial)
                events.append(_response(ident, model, n, [{"text": piece}], finish, counts))
        encode = _sse_event if sse else _array_item
        pieces = [encode(event, i == 0) for i, event in enumerate(events)]
        error = encode(orjson.loads(error_body(500)), not pieces)
        await stream(
            send,
            _SSE if sse else _JSON,
            knobs,
            model,
            head=[],
            pieces=pieces,
            tail=[] if sse else [b"]"],
            error=error if sse else error + b"]",
        )


def _failure(model: str, request: dict[str, Any]) -> tuple[int, bytes] | None:
    knobs = script.knobs_for(model)
    if knobs.error is not None:
        details = None
        if knobs.error == 429:
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]
        return knobs.error, error_body(knobs.error, details=details)
    if knobs.context:
        system, turns = _conversation(request)
        texts = system + [text for turn in turns for text in turn.texts + turn.results]
        words = sum(script.words(text) for text in texts)
        message = (
            f"The input token count ({1048577 + words}) exceeds the maximum number of "
            "tokens allowed (1048576)."
        )
        return 400, error_body(400, message)
    if "thinking" in model:
        for content in request.get("contents", []):
            calls = [p for p in content.get("parts", []) if "functionCall" in p]
            if calls and not calls[0].get("thoughtSignature"):
                return 400, error_body(400, _MISSING_SIGNATURE)
    return None


def _conversation(request: dict[str, Any]) -> tuple[list[str], list[Said]]:
    """The system texts and the turns of a request, as the script reads them."""
    system = [p.get("text", "") for p in request.get("systemInstruction", {}).get("parts", [])]
    turns = []
    for content in request.get("contents", []):
        parts = content.get("parts", [])
        texts = [p["text"] for p in parts if isinstance(p.get("text"), str)]
        results = [_output(p["functionResponse"]) for p in parts if "functionResponse" in p]
        turns.append(Said(content.get("role") == "user", texts, results))
    return system, turns


def _output(response: dict[str, Any]) -> str:
    value = response.get("response", {})
    output = value.get("output") if isinstance(value, dict) else None
    return output if isinstance(output, str) else orjson.dumps(value).decode()


def _answer(model: str, request: dict[str, Any]) -> script.Answer:
    system, turns = _conversation(request)
    config = request.get("toolConfig", {}).get("functionCallingConfig", {})
    declarations = [
        d for tool in request.get("tools", []) for d in tool.get("functionDeclarations", [])
    ]
    first_tool = declarations[0]["name"] if declarations and config.get("mode") != "NONE" else None
    # The Gemini API gives function calls no id.
    return scripted(model, system, turns, first_tool, call_id="")


def _call_parts(answer: script.Answer, model: str) -> list[dict[str, Any]]:
    call = answer.tool_call
    assert call is not None
    part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
    if "thinking" in model:
        digest = hashlib.sha256(orjson.dumps(call.arguments)).digest()
        part["thoughtSignature"] = "CiQB" + digest.hex()[:40]
    return [part]


def _response(
    ident: str,
    model: str,
    n: int,
    parts: list[dict[str, Any]],
    finish: str | None,
    usage: dict[str, int],
) -> dict[str, Any]:
    candidates = []
    for index in range(n):
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": index}
        if finish is not None:
            candidate["finishReason"] = finish
        candidates.append(candidate)
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": model,
        "responseId": ident,
    }


def _sse_event(event: dict[str, Any], first: bool) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\r\n\r\n"


def _array_item(event: dict[str, Any], first: bool) -> bytes:
    return (b"[" if first else b",\r\n") + orjson.dumps(event)


def _embeddings(request: dict[str, Any]) -> bytes:
    embeddings = []
    for item in request.get("requests", []):
        text = " ".join(p.get("text", "") for p in item.get("content", {}).get("parts", []))
        size = item.get("outputDimensionality") or 8
        digest = hashlib.blake2b(text.encode(), digest_size=64).digest()
        embeddings.append({"values": [digest[i % 64] / 255.0 for i in range(size)]})
    return orjson.dumps({"embeddings": embeddings})


def main(argv: list[str] | None = None) -> None:
    serve(
        "Fake Gemini API",
        lambda key, record: GeminiFake(require_key=key, record=record),
        argv,
    )


if __name__ == "__main__":
    main()
