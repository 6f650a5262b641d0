"""A mock OpenAI-compatible LLM upstream that needs no internet.

Run it with ``python -m devstack.mock_llm --host 127.0.0.1 --port 9100`` and point an
upstream's ``base_url`` at ``http://127.0.0.1:9100/v1``.

Endpoints: ``POST /v1/chat/completions`` (plain and ``stream: true``, with
``stream_options.include_usage`` handled as OpenAI does), ``GET /v1/models``,
``POST /v1/embeddings`` and ``GET /healthz``. The reply echoes the last user message
(``"You said: <text>"``); token counts are word counts, so tests can predict them.

Behaviour is chosen by the model name the gateway sends upstream, so a route's
``upstream_model`` picks it without touching the gateway. Knobs combine
(``mock-chunks-20-stream-delay-50``):

- ``delay-<ms>``: wait before answering;
- ``error-<status>``: answer with that status and an OpenAI error object (429 adds
  ``retry-after: 1``);
- ``chunks-<n>``: stream ``n`` content chunks (default: one per word of the reply);
- ``stream-delay-<ms>``: wait between streamed chunks;
- ``echo-key``: error messages quote the ``Authorization`` header received, as some
  vendors' do;
- ``context``: answer 400 ``context_length_exceeded``, as OpenAI does for a long prompt;
- ``break-<n>``: stream ``n`` content chunks, then drop the connection unfinished.

Tool calls follow the script all fake vendors share (``devstack.fakes.script``): offered
tools and a user's turn last, and the first tool is called with ``{"query": <text>}``;
a tool's result last, and the reply is ``"Tool said: <result>"``.

``--require-key KEY`` answers 401 on the POST endpoints unless ``Authorization: Bearer
KEY`` is sent (``GET /v1/models`` and ``/healthz`` stay open for readiness checks), and
``--record FILE`` appends every other request's method, path and headers as a JSON line (and a
``stream_aborted`` line when a client leaves mid-stream), so tests can see exactly what
reached the upstream.

It also serves the benchmarks, so the instant path does no more than parse the request
and serialise one answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from devstack.fakes import script
from devstack.fakes._asgi import read_body
from devstack.fakes.script import Knobs, knobs_for

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_DONE = b"data: [DONE]\n\n"
_MODELS = orjson.dumps(
    {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "portico-mock"}
            for name in ("mock", "mock-embedding")
        ],
    }
)


def _error(status: int, echoed: str | None = None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    headers = list(_JSON_HEADERS)
    if status == 429:
        message, kind, code = "Rate limit reached for mock.", "requests", "rate_limit_exceeded"
        headers.append((b"retry-after", b"1"))
    elif status >= 500:
        message, kind, code = (
            "The server had an error while processing your request.",
            "server_error",
            None,
        )
    else:
        message, kind, code = f"Mock error {status}.", "invalid_request_error", None
    if echoed is not None:
        # Some vendors quote the credential they were given; a gateway must not pass it on.
        message += f" Credential used: {echoed}."
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return orjson.dumps(body), headers


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _model_of(raw: bytes) -> str | None:
    try:
        request = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else None


def _first_tool(tools: object) -> str | None:
    if isinstance(tools, list) and tools and isinstance(tools[0], dict):
        function = tools[0].get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return function["name"]
    return None


def _tool_call(call: script.ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": orjson.dumps(call.arguments).decode()},
    }


class MockLLM:
    """The ASGI app."""

    def __init__(self, *, require_key: str | None = None, record: Path | None = None) -> None:
        self._expected_auth = f"Bearer {require_key}".encode() if require_key else None
        self._record = record
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/healthz":
            await self._send(send, 200, b'{"status":"ok"}', _JSON_HEADERS)
            return
        if method == "GET" and path == "/v1/models":
            # Open even with --require-key: process runners use it as a readiness check.
            await self._send(send, 200, _MODELS, _JSON_HEADERS)
            return
        raw = await read_body(receive) if method == "POST" else b""
        if self._record is not None:
            self._write_record(
                {
                    "method": method,
                    "path": path,
                    "headers": {
                        k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                    },
                    "model": _model_of(raw),
                }
            )
        if self._expected_auth is not None and self._authorization(scope) != self._expected_auth:
            body = {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
            await self._send(send, 401, orjson.dumps(body), _JSON_HEADERS)
            return
        if method == "POST" and path == "/v1/chat/completions":
            await self._chat(raw, self._authorization(scope), receive, send)
        elif method == "POST" and path == "/v1/embeddings":
            await self._embeddings(raw, send)
        else:
            body = {
                "error": {
                    "message": f"Invalid URL ({method} {path})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            await self._send(send, 404, orjson.dumps(body), _JSON_HEADERS)

    @staticmethod
    def _authorization(scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return bytes(value)
        return None

    async def _chat(
        self, raw: bytes, authorization: bytes | None, receive: Receive, send: Send
    ) -> None:
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            request = None
        model = request.get("model") if isinstance(request, dict) else None
        messages = request.get("messages") if isinstance(request, dict) else None
        if not isinstance(model, str) or not isinstance(messages, list):
            status_body, headers = _error(400)
            await self._send(send, 400, status_body, headers)
            return
        knobs = knobs_for(model)
        if knobs.delay:
            # Like a real vendor, stop working on a request whose client has left.
            try:
                await asyncio.wait_for(_wait_for_disconnect(receive, asyncio.Event()), knobs.delay)
                return
            except TimeoutError:
                pass
        if knobs.error is not None:
            echoed = (authorization or b"").decode("latin-1") if knobs.echo_key else None
            status_body, headers = _error(knobs.error, echoed)
            await self._send(send, knobs.error, status_body, headers)
            return
        if knobs.context:
            body = {
                "error": {
                    "message": "This model's maximum context length is 128 tokens. However, "
                    "your messages resulted in 4096 tokens.",
                    "type": "invalid_request_error",
                    "param": "messages",
                    "code": "context_length_exceeded",
                }
            }
            await self._send(send, 400, orjson.dumps(body), _JSON_HEADERS)
            return
        ident = f"chatcmpl-mock{next(self._ids)}"
        said = script.answer(
            model=model,
            texts=[_text_of(m.get("content")) for m in messages if isinstance(m, dict)],
            last_user_text=next(
                (
                    _text_of(m.get("content"))
                    for m in reversed(messages)
                    if isinstance(m, dict) and m.get("role") == "user"
                ),
                "",
            ),
            last_is_tool_result=bool(messages)
            and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "tool",
            tool_result_text=_text_of(messages[-1].get("content"))
            if messages and isinstance(messages[-1], dict)
            else "",
            first_tool=_first_tool(request.get("tools")),
            call_id=f"call_{ident}",
        )
        usage = {
            "prompt_tokens": said.prompt_tokens,
            "completion_tokens": said.completion_tokens,
            "total_tokens": said.prompt_tokens + said.completion_tokens,
        }
        created = int(time.time())
        if request.get("stream") is True:
            options = request.get("stream_options")
            include_usage = (
                isinstance(options, dict)
                and options.get("include_usage") is True
                and not knobs.no_usage
            )
            await self._stream(
                send,
                receive,
                ident,
                created,
                model,
                said,
                usage if include_usage else None,
                knobs,
            )
            return
        message: dict[str, object] = {"role": "assistant", "content": said.text, "refusal": None}
        if said.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = [_tool_call(said.tool_call)]
        answer = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "stop" if said.tool_call is None else "tool_calls",
                }
            ],
            "usage": None if knobs.no_usage else usage,
            "system_fingerprint": None,
        }
        await self._send(send, 200, orjson.dumps(answer), _JSON_HEADERS)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        ident: str,
        created: int,
        model: str,
        said: script.Answer,
        usage: dict[str, int] | None,
        knobs: Knobs,
    ) -> None:
        include_usage = usage is not None

        def chunk(delta: dict[str, object], finish_reason: str | None) -> bytes:
            event: dict[str, object] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            # OpenAI adds "usage": null to every chunk only when usage was asked for.
            if include_usage:
                event["usage"] = None
            return b"data: " + orjson.dumps(event) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""}, None)]
        if said.tool_call is not None:
            call = _tool_call(said.tool_call)
            arguments = call["function"]["arguments"]
            call["function"] = {"name": said.tool_call.name, "arguments": ""}
            events.append(chunk({"tool_calls": [{"index": 0, **call}]}, None))
            half = len(arguments) // 2
            for part in (arguments[:half], arguments[half:]):
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}, None)
                )
            events.append(chunk({}, "tool_calls"))
        else:
            events.extend(chunk({"content": piece}, None) for piece in said.pieces)
            events.append(chunk({}, "stop"))
        if usage is not None:
            final = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage,
            }
            events.append(b"data: " + orjson.dumps(final) + b"\n\n")
        events.append(_DONE)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if knobs.break_after is not None:
            await send(
                {
                    "type": "http.response.body",
                    "body": b"".join(events[: knobs.break_after + 1]),
                    "more_body": True,
                }
            )
            await asyncio.sleep(0.05)
            # An exception after the response started makes the server drop the
            # connection without finishing the body, as a crashed vendor would.
            raise ConnectionAbortedError("mock: stream broken on purpose")
        if not knobs.stream_delay:
            await send({"type": "http.response.body", "body": b"".join(events)})
            return
        gone = asyncio.Event()
        watcher = asyncio.create_task(_wait_for_disconnect(receive, gone))
        try:
            for sent, event in enumerate(events):
                if gone.is_set():
                    self._write_record({"event": "stream_aborted", "after_events": sent})
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
                await asyncio.sleep(knobs.stream_delay)
            await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _embeddings(self, raw: bytes, send: Send) -> None:
        try:
            request = orjson.loads(raw)
            inputs = request["input"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            status_body, headers = _error(400)
            await self._send(send, 400, status_body, headers)
            return
        texts = [inputs] if isinstance(inputs, str) else [str(item) for item in inputs]
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": [
                    byte / 255.0 for byte in hashlib.blake2b(text.encode(), digest_size=8).digest()
                ],
            }
            for index, text in enumerate(texts)
        ]
        tokens = sum(script.words(text) for text in texts)
        answer = {
            "object": "list",
            "data": data,
            "model": request.get("model", "mock-embedding"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        await self._send(send, 200, orjson.dumps(answer), _JSON_HEADERS)

    def _write_record(self, entry: dict[str, object]) -> None:
        # A small synchronous append: this is a test double, and ordering matters more
        # here than a few microseconds of blocking.
        if self._record is None:
            return
        with self._record.open("ab") as handle:
            handle.write(orjson.dumps(entry) + b"\n")

    @staticmethod
    async def _send(
        send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _wait_for_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mock OpenAI-compatible LLM upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--require-key", help="answer 401 unless this bearer key is sent")
    parser.add_argument("--record", type=Path, help="append received request headers here")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = MockLLM(require_key=args.require_key, record=args.record)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
