"""A fake Amazon Bedrock runtime (the Converse API) that needs no internet.

Run it with ``python -m devstack.fakes.bedrock --port 9300 --require-key
AKID:SECRET[:TOKEN] [--record FILE]`` and point a ``bedrock`` upstream's ``base_url`` at
``http://127.0.0.1:9300`` (its credential being the same string).

Endpoints, as AWS's: ``POST /model/{modelId}/converse`` and ``/converse-stream`` (an
``application/vnd.amazon.eventstream`` body of real binary frames: ``messageStart``,
``contentBlockStart`` for tool calls, ``contentBlockDelta``, ``contentBlockStop``,
``messageStop``, ``metadata``); ``GET /healthz``. The answers follow
:mod:`devstack.fakes.script`.

Every request must be signed with SigV4 for service ``bedrock`` by the ``--require-key``
credentials: the fake recomputes the signature with botocore's own signer over what it
received (method, raw path, the signed headers, body) and answers AWS's 403s otherwise
(``UnrecognizedClientException`` for an unknown key or session token,
``InvalidSignatureException`` for a wrong signature or a stale date,
``MissingAuthenticationTokenException`` without one).

The script's knobs, in Bedrock's shapes: ``error-<status>`` answers with the exception
AWS uses for that status (``x-amzn-ErrorType`` header and ``{"message"}`` body; 429 is a
``ThrottlingException`` with ``retry-after: 1``), ``context`` the "Input is too long"
``ValidationException``, ``midstream-<n>`` ends the stream after ``n`` content events with
a ``modelStreamErrorException`` frame (``:message-type: exception``).
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import re
import secrets
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials  # type: ignore[import-untyped]

from devstack.fakes import script
from devstack.fakes._asgi import (
    Fake,
    Headers,
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

_ROUTE = re.compile(r"/model/([^/]+)/(converse|converse-stream)")
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/,]+)/(\d{8})/([^/,]+)/([^/,]+)/aws4_request,\s*"
    r"SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})"
)
_ERRORS = {
    400: (
        "ValidationException",
        "Malformed input request, please reformat your input and try again.",
    ),
    403: (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    404: (
        "ResourceNotFoundException",
        "Could not resolve the foundation model from the provided model identifier.",
    ),
    408: ("ModelTimeoutException", "Model has timed out in processing the request."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}
_MAX_SKEW = datetime.timedelta(minutes=5)


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message (string headers only, as Bedrock sends)."""
    encoded = b"".join(
        bytes([len(name)])
        + name.encode()
        + b"\x07"
        + struct.pack(">H", len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(name: str, body: dict[str, Any]) -> bytes:
    # Bedrock pads event payloads ("p") so that their sizes say nothing of the text.
    payload = orjson.dumps({**body, "p": "abcdefghijklmnopqrstuvwxyzABCDEF"[: 1 + len(name)]})
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, payload)


def exception(name: str, message: str) -> bytes:
    headers = {
        ":exception-type": name,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, orjson.dumps({"message": message}))


def error_answer(kind: str, message: str) -> tuple[bytes, Headers]:
    headers = [
        (b"content-type", b"application/json"),
        (
            b"x-amzn-errortype",
            f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/".encode(),
        ),
        (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
    ]
    return orjson.dumps({"message": message}), headers


class BedrockFake(Fake):
    """The ASGI app (see the module docstring)."""

    def __init__(self, *, require_key: str | None = None, record: Path | None = None) -> None:
        super().__init__(record=record)
        parts = require_key.split(":", 2) if require_key else []
        self._credentials = Credentials(*parts) if len(parts) >= 2 else None

    async def handle(self, scope: Scope, body: bytes, send: Send) -> None:
        raw_path = bytes(scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        route = _ROUTE.fullmatch(raw_path)
        if scope["method"] != "POST" or route is None:
            payload, headers = error_answer("UnknownOperationException", "Unknown operation.")
            await respond(send, 404, payload, headers)
            return
        refusal = self._refusal(scope, raw_path, body)
        if refusal is not None:
            payload, headers = error_answer(*refusal)
            await respond(send, 403, payload, headers)
            return
        request = json_object(body)
        if request is None:
            payload, headers = error_answer(*_ERRORS[400])
            await respond(send, 400, payload, headers)
            return
        model = unquote(route.group(1))
        knobs = script.knobs_for(model)
        if knobs.delay:
            await asyncio.sleep(knobs.delay)
        if knobs.error is not None:
            kind, message = _ERRORS.get(knobs.error, ("InternalServerException", "Error."))
            payload, headers = error_answer(kind, message)
            if knobs.error == 429:
                headers.append((b"retry-after", b"1"))
            await respond(send, knobs.error, payload, headers)
            return
        if knobs.context:
            payload, headers = error_answer(
                "ValidationException", "Input is too long for requested model."
            )
            await respond(send, 400, payload, headers)
            return
        answer = _answer(model, request)
        if route.group(2) == "converse":
            await respond(
                send, 200, orjson.dumps(_whole(answer)), [(b"content-type", b"application/json")]
            )
            return
        await _stream(send, knobs, model, answer)

    def _refusal(self, scope: Scope, raw_path: str, body: bytes) -> tuple[str, str] | None:
        """Why the request's signature is refused (AWS's exception and message), if it is."""
        if self._credentials is None:
            return None
        headers = headers_of(scope)
        found = _AUTHORIZATION.fullmatch(headers.get("authorization", ""))
        if found is None:
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        key_id, day, region, service, signed, signature = found.groups()
        credentials = self._credentials
        if key_id != credentials.access_key or (
            credentials.token and headers.get("x-amz-security-token") != credentials.token
        ):
            return (
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        stamp = headers.get("x-amz-date", "")
        try:
            when = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return "IncompleteSignatureException", "Date must be in ISO-8601 'basic format'."
        if abs(datetime.datetime.now(datetime.UTC) - when) > _MAX_SKEW or not stamp.startswith(day):
            return (
                "InvalidSignatureException",
                f"Signature expired: {stamp} is now earlier than allowed.",
            )
        if service != "bedrock":
            return (
                "InvalidSignatureException",
                "Credential should be scoped to correct service: 'bedrock'.",
            )
        names = signed.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return "InvalidSignatureException", "Signed headers must include host and x-amz-date."
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        request = AWSRequest(
            method=scope["method"],
            url=f"http://{headers.get('host', '')}{raw_path}" + (f"?{query}" if query else ""),
            data=body,
            headers={name: headers.get(name, "") for name in names},
        )
        request.context["timestamp"] = stamp
        signer = SigV4Auth(credentials, "bedrock", region)
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature):
            return (
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method.",
            )
        return None


def _answer(model: str, request: dict[str, Any]) -> script.Answer:
    turns = []
    for message in request.get("messages", []):
        blocks = message.get("content", [])
        results = [
            " ".join(c.get("text", "") for c in b["toolResult"].get("content", []))
            for b in blocks
            if "toolResult" in b
        ]
        texts = [b["text"] for b in blocks if isinstance(b.get("text"), str)]
        turns.append(Said(message.get("role") == "user", texts, results))
    tools = request.get("toolConfig", {}).get("tools", [])
    specs = [tool["toolSpec"] for tool in tools if "toolSpec" in tool]
    system = [block.get("text", "") for block in request.get("system", [])]
    first_tool = specs[0]["name"] if specs else None
    return scripted(model, system, turns, first_tool, "tooluse_" + secrets.token_urlsafe(16))


def _usage(answer: script.Answer) -> dict[str, int]:
    return {
        "inputTokens": answer.prompt_tokens,
        "outputTokens": answer.completion_tokens,
        "totalTokens": answer.prompt_tokens + answer.completion_tokens,
    }


def _whole(answer: script.Answer) -> dict[str, Any]:
    call = answer.tool_call
    content: list[dict[str, Any]]
    if call is not None:
        content = [{"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}}]
    else:
        content = [{"text": answer.text}]
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": "tool_use" if call is not None else "end_turn",
        "usage": _usage(answer),
        "metrics": {"latencyMs": 12},
    }


async def _stream(send: Send, knobs: script.Knobs, model: str, answer: script.Answer) -> None:
    call = answer.tool_call
    head = [event("messageStart", {"role": "assistant"})]
    if call is not None:
        start = {"toolUse": {"toolUseId": call.id, "name": call.name}}
        head.append(event("contentBlockStart", {"contentBlockIndex": 0, "start": start}))
        # The input's JSON arrives in pieces that are not JSON on their own.
        arguments = orjson.dumps(call.arguments).decode()
        middle = len(arguments) // 2
        inputs = [arguments[:middle], arguments[middle:]]
        deltas: list[dict[str, Any]] = [{"toolUse": {"input": piece}} for piece in inputs]
    else:
        deltas = [{"text": piece} for piece in answer.pieces]
    pieces = [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": d}) for d in deltas]
    tail = [
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": "tool_use" if call is not None else "end_turn"}),
        event("metadata", {"usage": _usage(answer), "metrics": {"latencyMs": 12}}),
    ]
    headers = [
        (b"content-type", b"application/vnd.amazon.eventstream"),
        (b"x-amzn-requestid", str(uuid.uuid4()).encode()),
    ]
    error = exception("modelStreamErrorException", "The model stopped answering mid-stream.")
    await stream(send, headers, knobs, model, head=head, pieces=pieces, tail=tail, error=error)


def main(argv: list[str] | None = None) -> None:
    serve(
        "Fake Amazon Bedrock runtime (Converse API)",
        lambda key, record: BedrockFake(require_key=key, record=record),
        argv,
    )


if __name__ == "__main__":
    main()
