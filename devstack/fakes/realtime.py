"""A fake OpenAI Realtime API (WebSocket) that needs no internet.

Run it with ``python -m devstack.fakes.realtime --port 9300 --require-key K`` and point
an upstream (vendor ``openai``) at ``http://127.0.0.1:9300/v1``; sessions open at
``ws://127.0.0.1:9300/v1/realtime?model=<model>``. ``GET /healthz`` answers over HTTP.

It speaks the GA protocol's text subset, as much as a relay's tests need:

- the handshake needs ``Authorization: Bearer K`` (when ``--require-key`` is given) and
  a ``model``; otherwise HTTP 401 or 400 with an OpenAI error body. The model name's
  ``error-<status>`` knob (see :mod:`devstack.fakes.script`) refuses with that status;
- on connect: ``session.created`` (the session's ``model`` is the requested one);
  ``session.update`` answers ``session.updated``;
- ``conversation.item.create`` with a user message of ``input_text`` parts answers
  ``conversation.item.added``; ``response.create`` then answers ``response.created``,
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per word of ``"You said: <text>"``,
  ``response.output_text.done``, ``response.content_part.done``,
  ``response.output_item.done`` and ``response.done`` with usage (input tokens: words of
  the user's text; output tokens: the number of deltas);
- ``input_audio_buffer.append`` is counted and ``input_audio_buffer.commit`` answers
  ``input_audio_buffer.committed``;
- any other event type, or a frame that is not a JSON event, answers an ``error`` event;
  binary frames (which OpenAI does not use) are echoed back, to test relays;
- the model's ``hangup-<code>`` knob closes the socket with that code after each
  ``response.done``.

``--record FILE`` appends one JSON line per handshake (path, query, headers,
subprotocols), per client event (its type) and per close (the client's code).
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import uvicorn

from devstack.fakes.script import knobs_for, words
from devstack.mock_llm import Receive, Scope, Send

_HANGUP = re.compile(r"hangup-(\d+)")


class FakeRealtime:
    """The ASGI app."""

    def __init__(self, *, require_key: str | None = None, record: Path | None = None) -> None:
        self._key = require_key
        self._record = record
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _http(scope, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        self._write(
            {
                "path": scope["path"],
                "query": query,
                "headers": headers,
                "subprotocols": list(scope.get("subprotocols") or ()),
            }
        )
        model = (parse_qs(query).get("model") or [""])[0]
        refusal: tuple[int, str] | None = None
        if not scope["path"].endswith("/realtime"):
            refusal = 404, f"Not found: {scope['path']}"
        elif self._key is not None and headers.get("authorization") != f"Bearer {self._key}":
            refusal = 401, "Incorrect API key provided."
        elif not model:
            refusal = 400, "Missing required parameter: 'model'."
        elif knobs_for(model).error is not None:
            status = knobs_for(model).error or 500
            refusal = status, f"Fake error {status} asked for by the model name."
        if refusal is not None:
            await _refuse(scope, send, *refusal)
            return
        offered = scope.get("subprotocols") or ()
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if "realtime" in offered:
            accept["subprotocol"] = "realtime"
        await send(accept)
        session = Session(self, model, send)
        await session.send("session.created", session=session.config)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self._write({"closed": message.get("code")})
                return
            if message["type"] != "websocket.receive":
                continue
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
                continue
            if not await session.handle(message.get("text") or ""):
                return

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_fake{next(self._ids):06d}"

    def _write(self, entry: dict[str, Any]) -> None:
        if self._record is not None:
            with self._record.open("ab") as out:
                out.write(orjson.dumps(entry) + b"\n")


class Session:
    """One connection's state: the session config, the conversation, the audio count."""

    def __init__(self, app: FakeRealtime, model: str, send: Send) -> None:
        self._app = app
        self._send = send
        self.model = model
        self.config: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": app.next_id("sess"),
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "tools": [],
            "tool_choice": "auto",
        }
        self._user_texts: list[str] = []
        self._audio_bytes = 0
        hangup = _HANGUP.search(model)
        self._hangup = int(hangup.group(1)) if hangup else None

    async def send(self, kind: str, **fields: Any) -> None:
        event = {"type": kind, "event_id": self._app.next_id("event"), **fields}
        await self._send({"type": "websocket.send", "text": orjson.dumps(event).decode()})

    async def handle(self, text: str) -> bool:
        """Answer one client event; False once the socket has been closed."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self._error("invalid_json", "The frame is not a JSON event with a type.", None)
            return True
        kind = event["type"]
        self._app._write({"event": kind})
        if kind == "session.update" and isinstance(event.get("session"), dict):
            self.config.update(event["session"])
            await self.send("session.updated", session=self.config)
        elif kind == "conversation.item.create":
            await self._item(event)
        elif kind == "response.create":
            return await self._respond()
        elif kind == "input_audio_buffer.append" and isinstance(event.get("audio"), str):
            self._audio_bytes += len(event["audio"])
        elif kind == "input_audio_buffer.commit":
            await self.send(
                "input_audio_buffer.committed",
                previous_item_id=None,
                item_id=self._app.next_id("item"),
            )
        else:
            await self._error(
                "invalid_event", f"Invalid event type: '{kind}'.", event.get("event_id")
            )
        return True

    async def _item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        content = item.get("content") if isinstance(item, dict) else None
        texts = [
            part["text"]
            for part in content or ()
            if isinstance(part, dict)
            and part.get("type") == "input_text"
            and isinstance(part.get("text"), str)
        ]
        if not isinstance(item, dict) or item.get("role") != "user" or not texts:
            await self._error(
                "invalid_value",
                "This fake takes user message items with input_text parts only.",
                event.get("event_id"),
            )
            return
        self._user_texts.append(" ".join(texts))
        added = {**item, "id": item.get("id") or self._app.next_id("item"), "status": "completed"}
        await self.send("conversation.item.added", previous_item_id=None, item=added)

    async def _respond(self) -> bool:
        said = self._user_texts[-1] if self._user_texts else ""
        pieces = f"You said: {said}".split()
        pieces = [piece + (" " if i < len(pieces) - 1 else "") for i, piece in enumerate(pieces)]
        response_id, item_id = self._app.next_id("resp"), self._app.next_id("item")
        response: dict[str, Any] = {
            "object": "realtime.response",
            "id": response_id,
            "status": "in_progress",
            "output": [],
            "output_modalities": ["text"],
            "usage": None,
        }
        await self.send("response.created", response=response)
        item: dict[str, Any] = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=0, item=item
        )
        await self.send(
            "response.content_part.added",
            **where,
            content_index=0,
            part={"type": "text", "text": ""},
        )
        for piece in pieces:
            await self.send("response.output_text.delta", **where, content_index=0, delta=piece)
        text = "".join(pieces)
        await self.send("response.output_text.done", **where, content_index=0, text=text)
        part = {"type": "text", "text": text}
        await self.send("response.content_part.done", **where, content_index=0, part=part)
        item = {**item, "status": "completed", "content": [{"type": "output_text", "text": text}]}
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=0, item=item
        )
        prompt = max(1, words(said))
        usage = {
            "total_tokens": prompt + len(pieces),
            "input_tokens": prompt,
            "output_tokens": len(pieces),
            "input_token_details": {"text_tokens": prompt, "audio_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": len(pieces), "audio_tokens": 0},
        }
        done = {**response, "status": "completed", "output": [item], "usage": usage}
        await self.send("response.done", response=done)
        if self._hangup is not None:
            await self._send({"type": "websocket.close", "code": self._hangup, "reason": "hangup"})
            return False
        return True

    async def _error(self, code: str, message: str, event_id: object) -> None:
        error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": None,
            "event_id": event_id,
        }
        await self.send("error", error=error)


def _error_body(status: int, message: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = _error_body(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


async def _http(scope: Scope, send: Send) -> None:
    if scope["method"] == "GET" and scope["path"] == "/healthz":
        status, body = 200, b'{"status":"ok"}'
    else:
        status, body = 404, _error_body(404, f"Not found: {scope['method']} {scope['path']}")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI Realtime API (WebSocket)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    parser.add_argument("--require-key", help="refuse sessions without this bearer key")
    parser.add_argument("--record", type=Path, help="append handshakes, events and closes here")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = FakeRealtime(require_key=args.require_key, record=args.record)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        # The sans-I/O implementation: uvicorn's "websockets" one uses the deprecated
        # websockets.legacy API. Both support the websocket.http.response extension.
        ws="websockets-sansio",
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
