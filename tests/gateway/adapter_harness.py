"""Driving a vendor adapter against its fake, the way the gateway does: the adapter
builds the request, aiohttp sends it, the adapter reads what comes back.

The fakes (``devstack.fakes.*``) run as real processes on loopback and record every
request they receive, so a test can also see exactly what reached the vendor.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from devstack.fakes import script
from devstack.procs import Stack, free_port
from gateway.providers.base import Adapter, Endpoint, HttpRequest, Json, UpstreamFailure

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningFake:
    url: str
    record: Path

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [orjson.loads(line) for line in self.record.read_bytes().splitlines() if line]


def start_fake(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory, module: str, key: str
) -> RunningFake:
    port = free_port()
    record = tmp_path_factory.mktemp(module.rsplit(".", 1)[-1]) / "requests.jsonl"
    stack.start(
        module,
        [
            sys.executable,
            "-m",
            module,
            "--port",
            str(port),
            "--require-key",
            key,
            "--record",
            str(record),
        ],
        ready_url=f"http://127.0.0.1:{port}/healthz",
        ready_timeout=20,
        cwd=ROOT,
    )
    return RunningFake(f"http://127.0.0.1:{port}", record)


@dataclass
class Received:
    """An upstream answer as it arrived: the body in the pieces the network gave."""

    status: int
    headers: dict[str, str]
    pieces: list[bytes]
    broke: bool  # the connection dropped before the body ended

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


def send(http: HttpRequest) -> Received:
    return asyncio.run(_send(http))


async def _send(http: HttpRequest) -> Received:
    pieces: list[bytes] = []
    broke = False
    async with (
        aiohttp.ClientSession() as session,
        session.request(http.method, http.url, data=http.body, headers=http.headers) as response,
    ):
        try:
            async for piece in response.content.iter_any():
                pieces.append(piece)
        except aiohttp.ClientPayloadError:
            broke = True
        headers = {name.lower(): value for name, value in response.headers.items()}
        return Received(response.status, headers, pieces, broke)


def complete(adapter: Adapter, endpoint: Endpoint, request: Json) -> Json:
    """A whole answer, or the adapter's :class:`UpstreamFailure` raised."""
    received = send(adapter.chat_request(endpoint, request, stream=False))
    if received.status != 200:
        raise adapter.failure(received.status, received.body, received.headers)
    return adapter.chat_response(endpoint, received.body)


def stream(adapter: Adapter, endpoint: Endpoint, request: Json) -> Received:
    received = send(adapter.chat_request(endpoint, request, stream=True))
    if received.status != 200:
        raise adapter.failure(received.status, received.body, received.headers)
    return received


def decode(adapter: Adapter, endpoint: Endpoint, pieces: Iterable[bytes]) -> list[Json]:
    """The chunks of a streamed body fed in the given pieces (close included)."""
    decoder = adapter.chat_stream(endpoint)
    chunks: list[Json] = []
    for piece in pieces:
        chunks.extend(decoder.feed(piece))
    chunks.extend(decoder.close())
    return chunks


def until_failure(
    adapter: Adapter, endpoint: Endpoint, pieces: Iterable[bytes]
) -> tuple[list[Json], UpstreamFailure | None]:
    """The chunks decoded before the stream's failure, and the failure (close included)."""
    decoder = adapter.chat_stream(endpoint)
    chunks: list[Json] = []
    try:
        for piece in pieces:
            chunks.extend(decoder.feed(piece))
        chunks.extend(decoder.close())
    except UpstreamFailure as found:
        return chunks, found
    return chunks, None


def bytewise(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


def failure(
    adapter: Adapter, endpoint: Endpoint, request: Json, *, stream: bool = False
) -> UpstreamFailure:
    received = send(adapter.chat_request(endpoint, request, stream=stream))
    assert received.status != 200, received.body
    return adapter.failure(received.status, received.body, received.headers)


def streamed_text(chunks: list[Json]) -> str:
    return "".join(
        choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"]
    )


def streamed_calls(chunks: list[Json]) -> list[Json]:
    """Tool calls assembled from their deltas, as an OpenAI client does."""
    calls: dict[int, Json] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"function": {"arguments": ""}})
                for key in ("id", "type", "extra_content"):
                    if key in delta:
                        call[key] = delta[key]
                function = delta.get("function") or {}
                if "name" in function:
                    call["function"]["name"] = function["name"]
                call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[index] for index in sorted(calls)]


def finish_reasons(chunks: list[Json]) -> list[str]:
    return [
        choice["finish_reason"]
        for chunk in chunks
        for choice in chunk["choices"]
        if choice["finish_reason"] is not None
    ]


def comparable(chunks: list[Json], *volatile: str) -> list[Json]:
    """The chunks without their clock (and the other ``volatile`` keys)."""
    drop = {"created", *volatile}
    return [{key: value for key, value in chunk.items() if key not in drop} for chunk in chunks]


TOOLS: list[Json] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Looks a thing up.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]


def expected_usage(*texts: str, completion: int) -> dict[str, int]:
    """The usage the fakes' script gives: prompt tokens are the words of ``texts``."""
    prompt = max(1, sum(script.words(text) for text in texts))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def chat(text: str = "hello gateway", **extra: Any) -> Json:
    return {
        "model": "public-name",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": text},
        ],
        **extra,
    }


def tool_round(call: Json, result: str, **extra: Any) -> Json:
    """The conversation after the model asked for ``call`` and the tool said ``result``."""
    request = chat(tools=TOOLS, **extra)
    request["messages"] += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": result},
    ]
    return request
