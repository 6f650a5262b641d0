"""What the vendor fakes share: the ASGI plumbing, the record file, streaming by the
script's knobs, and the command line.

A fake is a :class:`Fake` subclass: ``GET /healthz`` answers at once (readiness), every
other request is recorded (``--record FILE``: a JSON line with the method, the raw path,
the headers and the JSON body) and handed to :meth:`Fake.handle`.

Streams follow :mod:`devstack.fakes.script`'s knobs, plus one of their own:
``midstream-<n>`` streams ``n`` content events, then the vendor's in-stream error, and
ends the response normally (``break-<n>`` drops the connection instead).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvicorn

from devstack.fakes import script

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_MIDSTREAM = re.compile(r"midstream-(\d+)")


class Broken(Exception):
    """Raised inside a response to drop the connection mid-stream (the ``break`` knob):
    the server closes the socket without ending the body."""


def midstream_after(model: str) -> int | None:
    found = _MIDSTREAM.search(model)
    return int(found.group(1)) if found else None


class Fake:
    """Base of the vendor fakes (see the module docstring)."""

    def __init__(self, *, record: Path | None = None) -> None:
        self._record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            await respond(send, 200, b'{"status":"ok"}', [(b"content-type", b"application/json")])
            return
        body = await read_body(receive)
        self.write_record(
            {
                "method": scope["method"],
                "path": raw_target(scope),
                "headers": headers_of(scope),
                "body": json_object(body),
            }
        )
        await self.handle(scope, body, send)

    async def handle(self, scope: Scope, body: bytes, send: Send) -> None:
        raise NotImplementedError

    def write_record(self, entry: dict[str, object]) -> None:
        # A small synchronous append: this is a test double, and ordering matters more
        # here than a few microseconds of blocking.
        if self._record is None:
            return
        with self._record.open("ab") as handle:
            handle.write(orjson.dumps(entry) + b"\n")


def raw_target(scope: Scope) -> str:
    """The path as sent (still percent-encoded) and the query, if any."""
    path = bytes(scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    return f"{path}?{query}" if query else path


def headers_of(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    return headers


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True, slots=True)
class Said:
    """One turn of a conversation, as the script reads it: whose it is, its texts and
    the texts of the tool results it carries."""

    user: bool
    texts: list[str]
    results: list[str]


def scripted(
    model: str, system: list[str], turns: list[Said], first_tool: str | None, call_id: str
) -> script.Answer:
    """The script's answer to a conversation a fake has read from its wire format."""
    texts = list(system)
    last_user, last_result = "", ""
    for turn in turns:
        texts.extend(turn.texts + turn.results)
        if turn.user and turn.texts:
            last_user = " ".join(turn.texts)
        if turn.user and turn.results:
            last_result = turn.results[-1]
    return script.answer(
        model=model,
        texts=texts,
        last_user_text=last_user,
        last_is_tool_result=bool(turns and turns[-1].results),
        tool_result_text=last_result,
        first_tool=first_tool,
        call_id=call_id,
    )


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream(
    send: Send,
    headers: Headers,
    knobs: script.Knobs,
    model: str,
    *,
    head: list[bytes],
    pieces: list[bytes],
    tail: list[bytes],
    error: bytes,
) -> None:
    """Send ``head``, the content ``pieces`` and ``tail``, as the knobs say: a pause
    between events (``stream-delay``), the connection dropped after ``break`` pieces, or
    ``error`` (the vendor's in-stream error) after ``midstream`` pieces."""
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    midstream = midstream_after(model)
    if knobs.break_after is not None:
        events = [*head, *pieces[: knobs.break_after]]
    elif midstream is not None:
        events = [*head, *pieces[:midstream], error]
    else:
        events = [*head, *pieces, *tail]
    for event in events:
        await send({"type": "http.response.body", "body": event, "more_body": True})
        if knobs.stream_delay:
            await asyncio.sleep(knobs.stream_delay)
    if knobs.break_after is not None:
        raise Broken(f"dropping the connection after {knobs.break_after} pieces")
    await send({"type": "http.response.body", "body": b""})


def serve(
    description: str, make: Callable[[str | None, Path | None], Fake], argv: list[str] | None
) -> None:
    """The fakes' command line: ``--host``, ``--port``, ``--require-key``, ``--record``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--require-key", help="the credential requests must carry")
    parser.add_argument("--record", type=Path, help="append every request received here")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(
        make(args.require_key, args.record),
        host=args.host,
        port=args.port,
        ws="none",
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
    )
