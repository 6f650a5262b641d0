"""The client-facing Messages API (``gateway.anthropic``): conversions, and what the
official ``anthropic`` client makes of the answers and events they produce.

The SDK tests serve ``POST /v1/messages`` from small in-process ASGI apps (uvicorn on a
thread): one answers from fixed OpenAI completions and chunk lists, the other relays to
the fake Anthropic API through the Anthropic adapter, as the gateway does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
import uvicorn

from devstack.fakes._asgi import read_body
from devstack.fakes.anthropic import FakeAnthropic
from devstack.procs import free_port
from gateway.anthropic import (
    CLIENT,
    MessagesError,
    MessageStream,
    chat_to_message,
    error_body,
    error_type,
    messages_to_chat,
)
from gateway.providers.anthropic import ADAPTER
from gateway.providers.base import Endpoint, FailureKind, Json, UpstreamFailure
from gateway.types import Receive, Scope, Send

# Requests -------------------------------------------------------------------------------


def request(**extra: Any) -> Json:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


# The user asks, the assistant calls a tool: how the conversations below begin.
ASKED_AND_CALLED: list[Json] = [
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
        ],
    },
]


def test_messages_request_becomes_a_chat_request() -> None:
    chat = messages_to_chat(
        request(
            system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            messages=[
                *ASKED_AND_CALLED,
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Also this:"},
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAA="},
                            "cache_control": {"type": "ephemeral"},
                        },
                    ],
                },
            ],
            tools=[
                {
                    "name": "weather",
                    "description": "The weather.",
                    "input_schema": {"type": "object"},
                    "strict": True,
                }
            ],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            stop_sequences=["END"],
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            metadata={"user_id": "u-1"},
            output_config={"effort": "medium"},
            stream=True,
        )
    )
    assert chat == {
        "model": "claude-test",
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "Be brief.\n\nBe kind."},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            # Tool results first: OpenAI wants them right after the assistant's calls.
            {"role": "tool", "tool_call_id": "toolu_1", "content": "cold"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Also this:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}},
                ],
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "parameters": {"type": "object"},
                    "description": "The weather.",
                    "strict": True,
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "user": "u-1",
        "reasoning_effort": "medium",
        "stream": True,
    }


def test_other_blocks_and_options_convert() -> None:
    chat = messages_to_chat(
        request(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
                        {
                            "type": "document",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "JVBE",
                            },
                            "title": "a.pdf",
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t", "is_error": True},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [
                                {"type": "text", "text": "a"},
                                {"type": "text", "text": "b"},
                            ],
                        },
                    ],
                },
                {"role": "assistant", "content": "The answer is"},
            ],
            tool_choice={"type": "tool", "name": "f"},
            thinking={"type": "disabled"},
            output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
            stream=False,
        )
    )
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
                {
                    "type": "file",
                    "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
                },
                {"type": "text", "text": "notes"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "t", "content": ""},
        {
            "role": "tool",
            "tool_call_id": "t",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"role": "assistant", "content": "The answer is"},
    ]
    # Without tools, a tool_choice has nothing to choose from (and OpenAI refuses one).
    assert "tool_choice" not in chat
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": {"type": "object"}, "strict": True},
    }
    assert "stream" not in chat


def test_anthropic_request_survives_the_round_trip_through_the_adapter() -> None:
    original = request(
        system="Be brief.",
        messages=[
            *ASKED_AND_CALLED,
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "cold"},
                    {"type": "text", "text": "Thanks"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAA="},
                    },
                ],
            },
            {"role": "assistant", "content": "Prefill"},
        ],
        tools=[
            {"name": "weather", "description": "The weather.", "input_schema": {"type": "object"}}
        ],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        stop_sequences=["END", "STOP"],
        temperature=0.5,
        top_k=40,
        metadata={"user_id": "u-1"},
        output_config={
            "format": {"type": "json_schema", "schema": {"type": "object"}},
            "effort": "high",
        },
    )
    http = ADAPTER.chat_request(
        Endpoint("http://x/v1", "claude-test"), messages_to_chat(original), stream=False
    )
    assert orjson.loads(http.body) == original


@pytest.mark.parametrize(
    ("change", "param", "problem"),
    [
        ({"model": ""}, "model", "model name"),
        ({"max_tokens": None}, "max_tokens", "is required"),
        ({"max_tokens": 0}, "max_tokens", "positive integer"),
        ({"max_tokens": True}, "max_tokens", "positive integer"),
        ({"messages": []}, "messages", "non-empty list"),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "messages.0.role",
            "'user' or 'assistant'",
        ),
        ({"messages": [{"role": "user", "content": []}]}, "messages.0.content", "non-empty"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages.0.content", "string or"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "foo"}]}
                ]
            },
            "messages.0.content.1.type",
            "unknown block type 'foo'",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": "x"}]}
                ]
            },
            "messages.0.content.0.type",
            "'thinking' is not supported",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages.0.content.0.text",
            "must be a string",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}],
                    }
                ]
            },
            "messages.0.content.0.type",
            "belong in assistant messages",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "a", "name": "b", "input": []}],
                    }
                ]
            },
            "messages.0.content.0.input",
            "must be an object",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "a",
                                "content": [{"type": "image", "source": {}}],
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0.content.0.type",
            "only text blocks",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    }
                ]
            },
            "messages.0.content.0.source.type",
            "base64 or url",
        ),
        ({"system": [{"type": "image"}]}, "system.0.type", "text blocks"),
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools.0.type",
            "server tool",
        ),
        ({"tools": [{"name": "f"}]}, "tools.0.input_schema", "JSON schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type", "'auto', 'any'"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name", "is required"),
        ({"stop_sequences": "END"}, "stop_sequences", "list of strings"),
        ({"temperature": 1.5}, "temperature", "between 0 and 1"),
        ({"top_k": -1}, "top_k", "non-negative"),
        ({"metadata": {"user_id": 3}}, "metadata.user_id", "must be a string"),
        ({"metadata": {"session": "x"}}, "metadata.session", "unknown field"),
        ({"stream": "yes"}, "stream", "true or false"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", "not supported"),
        (
            {"output_config": {"format": {"type": "json_object"}}},
            "output_config.format.type",
            "json_schema",
        ),
        ({"mcp_servers": []}, "mcp_servers", "not supported"),
    ],
)
def test_invalid_requests_name_the_field(change: Json, param: str, problem: str) -> None:
    with pytest.raises(MessagesError) as caught:
        messages_to_chat(request(**change))
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")
    assert problem in caught.value.message
    assert str(caught.value) == caught.value.message


def test_a_body_that_is_not_an_object_is_invalid() -> None:
    with pytest.raises(MessagesError, match="must be a JSON object"):
        messages_to_chat([])


# Answers --------------------------------------------------------------------------------


def completion(message: Json, finish_reason: str = "stop", **choice: Any) -> Json:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, **choice}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }


def test_completion_becomes_a_message() -> None:
    message = chat_to_message(
        completion(
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "time", "arguments": ""},
                    },
                ],
            },
            "tool_calls",
        ),
        "public-model",
    )
    assert message == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "public-model",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 4,
        },
    }


@pytest.mark.parametrize(
    ("finish_reason", "extra", "stop"),
    [
        ("stop", {}, ("end_turn", None)),
        ("stop", {"stop_reason": "END"}, ("stop_sequence", "END")),
        ("length", {}, ("max_tokens", None)),
        ("content_filter", {}, ("refusal", None)),
        ("something_new", {}, ("end_turn", None)),
    ],
)
def test_finish_reasons_become_stop_reasons(
    finish_reason: str, extra: Json, stop: tuple[str, str | None]
) -> None:
    message = chat_to_message(completion({"content": "x"}, finish_reason, **extra), "m")
    assert (message["stop_reason"], message["stop_sequence"]) == stop


def test_anthropic_ids_cached_tokens_and_refusals_pass_through() -> None:
    answer = completion({"content": None, "refusal": "I can't help with that."}, "content_filter")
    answer["id"] = "msg_01ABC"
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 10}
    message = chat_to_message(answer, "m")
    assert message["id"] == "msg_01ABC"
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["usage"]["input_tokens"] == 2
    assert message["usage"]["cache_read_input_tokens"] == 10


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"'])
def test_tool_arguments_that_are_not_an_object_are_a_server_failure(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(UpstreamFailure) as caught:
        chat_to_message(completion({"content": None, "tool_calls": [call]}, "tool_calls"), "m")
    assert caught.value.kind is FailureKind.SERVER


def test_completion_without_a_message_is_a_server_failure() -> None:
    with pytest.raises(UpstreamFailure):
        chat_to_message({"id": "x", "choices": []}, "m")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_types_follow_anthropics_table(status: int, kind: str) -> None:
    assert error_type(status) == kind
    assert orjson.loads(error_body(status, "Nope.", "req_1")) == {
        "type": "error",
        "error": {"type": kind, "message": "Nope."},
        "request_id": "req_1",
    }


# Streams --------------------------------------------------------------------------------


def chunk(delta: Json | None = None, finish_reason: str | None = None, **choice: Any) -> Json:
    choice.update(index=0, delta=delta or {}, finish_reason=finish_reason)
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [choice]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}


def events(raw: bytes) -> list[tuple[str, Json]]:
    parsed = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            parsed.append((name.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return parsed


def test_stream_events_open_and_close_blocks_in_order() -> None:
    stream = MessageStream("public", "msg_1", 8)
    raw = b"".join(
        stream.feed(c)
        for c in [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hi"}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "a", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "b", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
            USAGE,
        ]
    )
    raw += stream.finish()
    assert stream.finish() == b""
    assert stream.error("api_error", "late") == b""
    names = [name for name, _ in events(raw)]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    parsed = dict(events(raw)[:1])
    assert parsed["message_start"]["message"]["usage"] == {"input_tokens": 8, "output_tokens": 0}
    _, delta = events(raw)[-2]
    assert delta == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 9,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 3,
        },
    }
    assert [e["index"] for n, e in events(raw) if n.startswith("content_block")] == [
        0,
        0,
        0,
        1,
        1,
        1,
        1,
        2,
        2,
        2,
    ]


def test_error_ends_the_stream() -> None:
    stream = MessageStream("public", "msg_1")
    raw = stream.feed(chunk({"content": "Hi"})) + stream.error(
        "overloaded_error", "Overloaded", "req_1"
    )
    assert events(raw)[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_1",
        },
    )
    assert stream.finish() == b""
    assert stream.feed(chunk({"content": "more"})) == b""


def test_empty_stream_still_makes_a_whole_message() -> None:
    parsed = events(MessageStream("m", "msg_1", 3).finish())
    assert [name for name, _ in parsed] == ["message_start", "message_delta", "message_stop"]
    assert parsed[1][1]["usage"]["input_tokens"] == 3  # no upstream count: the estimate


def test_stream_ids_come_from_the_first_chunk_without_one_given() -> None:
    (_, start), *_ = events(MessageStream("m").feed(chunk({"content": "x"})))
    assert start["message"]["id"] == "msg_1"  # from chatcmpl-1
    fresh = events(MessageStream("m").finish())[0][1]["message"]["id"]
    assert fresh.startswith("msg_")
    assert len(fresh) > len("msg_")


# The official client ----------------------------------------------------------------------


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` on a loopback port from a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started, "the test server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


TOOL_CALL = [
    chunk({"role": "assistant", "content": None}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "weather", "arguments": ""},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris", "days": 2}'}}]}),
    chunk({}, "tool_calls"),
    USAGE,
]
# model name -> (chunks, whole completion) that the canned upstream answers with
CANNED: dict[str, list[Json]] = {
    "text": [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " there"}),
        chunk({}, "stop"),
        USAGE,
    ],
    "tool": TOOL_CALL,
    "stop-sequence": [chunk({"content": "one two"}), chunk({}, "stop", stop_reason="THREE"), USAGE],
    "overloaded": [chunk({"content": "Hel"})],
}


def whole(chunks: list[Json]) -> Json:
    """The completion a canned chunk list adds up to."""
    text, calls, finish, extra = "", [], None, {}
    for piece in chunks:
        for choice in piece["choices"]:
            text += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls", []):
                if "id" in call:
                    calls.append(
                        {"id": call["id"], "type": "function", "function": {**call["function"]}}
                    )
                else:
                    calls[call["index"]]["function"]["arguments"] += call["function"]["arguments"]
            if choice["finish_reason"]:
                finish = choice["finish_reason"]
                extra = {k: v for k, v in choice.items() if k == "stop_reason"}
    message: Json = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-canned",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **extra}],
        "usage": USAGE["usage"],
    }


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"request-id", b"req_test")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Canned:
    """Answers ``/v1/messages`` from :data:`CANNED`, as the gateway answers Anthropic
    clients whatever the upstream: through the conversions under test."""

    def __init__(self) -> None:
        self.requests: list[Json] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            chat = messages_to_chat(orjson.loads(await read_body(receive)))
        except MessagesError as exc:
            await _respond(send, 400, error_body(400, exc.message, "req_test"), b"application/json")
            return
        self.requests.append(chat)
        name = chat["model"]
        if name.startswith("status-"):
            status = int(name.removeprefix("status-"))
            await _respond(
                send, status, error_body(status, "Canned failure.", "req_test"), b"application/json"
            )
            return
        chunks = CANNED[name]
        if not chat.get("stream"):
            answer = chat_to_message(whole(chunks), name)
            await _respond(send, 200, orjson.dumps(answer), b"application/json")
            return
        stream = MessageStream(name, "msg_canned", 5)
        body = b"".join(stream.feed(c) for c in chunks)
        body += (
            stream.error("overloaded_error", "Overloaded")
            if name == "overloaded"
            else stream.finish()
        )
        await _respond(send, 200, body, b"text/event-stream")


@pytest.fixture(scope="module")
def canned() -> Iterator[tuple[anthropic.Anthropic, Canned]]:
    app = Canned()
    with (
        serve(app) as url,
        anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=10) as client,
    ):
        yield client, app


def ask(model: str, **extra: Any) -> Json:
    return {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def test_sdk_reads_a_text_message(canned: tuple[anthropic.Anthropic, Canned]) -> None:
    client, _ = canned
    message = client.messages.create(**ask("text"))
    assert message.id == "msg_canned"
    assert message.model == "text"
    (block,) = message.content
    assert block.type == "text"
    assert block.text == "Hello there"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 3)


def test_sdk_reads_a_tool_use_message(canned: tuple[anthropic.Anthropic, Canned]) -> None:
    client, _ = canned
    message = client.messages.create(
        **ask("tool", tools=[{"name": "weather", "input_schema": {"type": "object"}}])
    )
    (block,) = message.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (
        "call_9",
        "weather",
        {"city": "Paris", "days": 2},
    )
    assert message.stop_reason == "tool_use"


def test_sdk_streams_text(canned: tuple[anthropic.Anthropic, Canned]) -> None:
    client, _ = canned
    with client.messages.stream(**ask("text")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello there"
    (block,) = final.content
    assert block.type == "text"
    assert block.text == "Hello there"
    assert final.stop_reason == "end_turn"
    # message_start had the estimate (5); message_delta's real count replaced it.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)


def test_sdk_streams_a_tool_call(canned: tuple[anthropic.Anthropic, Canned]) -> None:
    client, _ = canned
    with client.messages.stream(
        **ask("tool", tools=[{"name": "weather", "input_schema": {"type": "object"}}])
    ) as stream:
        final = stream.get_final_message()
    (block,) = final.content
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (
        "call_9",
        "weather",
        {"city": "Paris", "days": 2},
    )
    assert final.stop_reason == "tool_use"


def test_sdk_sees_the_stop_sequence(canned: tuple[anthropic.Anthropic, Canned]) -> None:
    client, _ = canned
    with client.messages.stream(**ask("stop-sequence", stop_sequences=["THREE"])) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "THREE")
    plain = client.messages.create(**ask("stop-sequence", stop_sequences=["THREE"]))
    assert (plain.stop_reason, plain.stop_sequence) == ("stop_sequence", "THREE")


def test_sdk_raw_events_come_in_anthropics_order(
    canned: tuple[anthropic.Anthropic, Canned],
) -> None:
    client, _ = canned
    with client.messages.create(**ask("text"), stream=True) as stream:
        kinds = [event.type for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_sdk_raises_on_an_error_event(canned: tuple[anthropic.Anthropic, Canned]) -> None:
    client, _ = canned
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(**ask("overloaded")) as stream,
    ):
        stream.get_final_message()
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
        (401, anthropic.AuthenticationError),
        (500, anthropic.InternalServerError),
    ],
)
def test_sdk_raises_its_own_error_classes(
    canned: tuple[anthropic.Anthropic, Canned], status: int, error: type[Exception]
) -> None:
    client, _ = canned
    with pytest.raises(error) as caught:
        client.messages.create(**ask(f"status-{status}"))
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": error_type(status), "message": "Canned failure."},
        "request_id": "req_test",
    }


def test_sdk_sees_which_field_was_wrong(canned: tuple[anthropic.Anthropic, Canned]) -> None:
    client, _ = canned
    block = {"type": "foo"}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**ask("text", messages=[{"role": "user", "content": [block]}]))
    body: Any = caught.value.body
    assert body["error"]["message"] == "messages.0.content.0.type: unknown block type 'foo'"


# Through the adapter to the fake Anthropic API ---------------------------------------------


class Relay:
    """A miniature gateway: Anthropic clients in, the Anthropic adapter out, with the
    OpenAI chunk language between, answered through :data:`CLIENT`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        chat = messages_to_chat(orjson.loads(await read_body(receive)))
        endpoint = Endpoint(self.upstream, chat["model"], credential="relay-key")
        stream = bool(chat.get("stream"))
        http = ADAPTER.chat_request(endpoint, chat, stream=stream)
        async with (
            aiohttp.ClientSession() as session,
            session.post(http.url, data=http.body, headers=http.headers) as response,
        ):
            if response.status != 200:
                failure = ADAPTER.failure(response.status, await response.read(), response.headers)
                body = error_body(failure.status, failure.message, "req_relay")
                await _respond(send, failure.status, body, b"application/json")
                return
            if not stream:
                answer = CLIENT.whole(
                    ADAPTER.chat_response(endpoint, await response.read()), chat["model"]
                )
                await _respond(send, 200, answer, b"application/json")
                return
            decoder = ADAPTER.chat_stream(endpoint)
            encoder = CLIENT.stream(chat["model"], include_usage=False)
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            try:
                async for piece in response.content.iter_any():
                    out = encoder.encode(decoder.feed(piece))
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                tail = encoder.encode(decoder.close()) + encoder.finish()
            except UpstreamFailure as failure:
                tail = encoder.error(502, failure.message, "upstream_error", "req_relay")
            await send({"type": "http.response.body", "body": tail})


@pytest.fixture(scope="module")
def relayed() -> Iterator[anthropic.Anthropic]:
    with (
        serve(FakeAnthropic(require_key="relay-key")) as upstream,
        serve(Relay(upstream + "/v1")) as url,
        anthropic.Anthropic(base_url=url, api_key="x", max_retries=0, timeout=10) as client,
    ):
        yield client


def test_relayed_stream_follows_the_fakes_script(relayed: anthropic.Anthropic) -> None:
    with relayed.messages.stream(
        model="claude-fake",
        max_tokens=100,
        system="Answer plainly.",
        messages=[{"role": "user", "content": "three little words"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "You said: three little words"
    assert final.stop_reason == "end_turn"
    assert final.id.startswith("msg_fake")  # the upstream's own id
    # Prompt: every word sent, system included; completion: one per streamed piece.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 5)


def test_relayed_tool_round_trip(relayed: anthropic.Anthropic) -> None:
    tools: Any = [
        {"name": "weather", "description": "Weather.", "input_schema": {"type": "object"}}
    ]
    asked: Any = {"role": "user", "content": "weather in Paris"}
    with relayed.messages.stream(
        model="claude-fake", max_tokens=100, tools=tools, messages=[asked]
    ) as stream:
        first = stream.get_final_message()
    (call,) = first.content
    assert call.type == "tool_use"
    assert call.input == {"query": "weather in Paris"}
    assert first.stop_reason == "tool_use"
    answer = relayed.messages.create(
        model="claude-fake",
        max_tokens=100,
        tools=tools,
        messages=[
            asked,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}],
            },
        ],
    )
    (block,) = answer.content
    assert block.type == "text"
    assert block.text == "Tool said: sunny"
    assert answer.stop_reason == "end_turn"


def test_relayed_vendor_errors_reach_the_sdk(relayed: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError):
        relayed.messages.create(
            model="claude-error-429", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        relayed.messages.stream(
            model="claude-midstream-1",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi there"}],
        ) as stream,
    ):
        stream.get_final_message()
    body: Any = caught.value.body
    assert body["error"]["type"] == "api_error"
