"""The Responses API conversion (``gateway.openai_responses``): requests to Chat
Completions, completions and chunk streams back to Responses objects and events.

The pure conversions are tested directly; then a small ASGI app in this process serves
``POST /v1/responses`` from canned chat completions through the conversion, and the
official ``openai`` client talks to it, plain and streamed, so that what the gateway
writes is what the SDK parses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
from pydantic import BaseModel

from gateway.openai_responses import (
    RESPONSES_CLIENT,
    ResponsesClient,
    ResponsesError,
    ResponseStream,
    chat_to_response,
    responses_to_chat,
    usage_counts,
)
from gateway.providers.base import Json, UpstreamFailure
from gateway.types import Receive, Scope, Send
from tests.gateway.test_realtime import serve

USAGE = {
    "id": "chatcmpl-1",
    "choices": [],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 1},
    },
}


def chunk(delta: Json, finish: str | None = None) -> Json:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def tool_delta(index: int, arguments: str, call_id: str | None = None) -> Json:
    """A tool call piece; its first piece (with the id) names the function too."""
    call: Json = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call.update(id=call_id, type="function")
        call["function"]["name"] = "weather"
    return {"tool_calls": [call]}


# Any: the SDK's parameter types are TypedDicts, which a plain dict literal is not.
WEATHER: Any = {
    "type": "function",
    "name": "weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# model name -> the chunks the canned upstream streams
CANNED: dict[str, list[Json]] = {
    "text": [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": " there"}),
        chunk({}, "stop"),
        USAGE,
    ],
    "tool": [
        chunk({"role": "assistant", "content": None}),
        chunk(tool_delta(0, "", "call_9")),
        chunk(tool_delta(0, '{"city": "Pa')),
        chunk(tool_delta(0, 'ris"}')),
        chunk({}, "tool_calls"),
        USAGE,
    ],
    "text-and-tools": [
        chunk({"content": "Checking both."}),
        chunk(tool_delta(0, '{"city": "Oslo"}', "call_1")),
        chunk(tool_delta(1, '{"city": "Rome"}', "call_2")),
        chunk({}, "tool_calls"),
        USAGE,
    ],
    "long": [chunk({"content": "Cut sh"}), chunk({}, "length"), USAGE],
    "json": [chunk({"content": '{"city": "Paris", "days": 2}'}), chunk({}, "stop"), USAGE],
    "refusal": [chunk({"refusal": "I can't help"}), chunk({"refusal": " with that."}), USAGE],
    "broken": [chunk({"content": "Hel"})],
}


def whole(chunks: list[Json]) -> Json:
    """The ``chat.completion`` a canned chunk list adds up to."""
    content: str | None = None
    refusal: str | None = None
    calls: dict[int, Json] = {}
    finish, usage = None, None
    for piece in chunks:
        usage = piece.get("usage", usage)
        for choice in piece["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                content = (content or "") + delta["content"]
            if delta.get("refusal"):
                refusal = (refusal or "") + delta["refusal"]
            for call in delta.get("tool_calls", ()):
                known = calls.setdefault(
                    call["index"],
                    {
                        "id": call.get("id"),
                        "type": "function",
                        "function": {"name": None, "arguments": ""},
                    },
                )
                known["function"]["name"] = known["function"]["name"] or call["function"].get(
                    "name"
                )
                known["function"]["arguments"] += call["function"].get("arguments", "")
            finish = choice.get("finish_reason") or finish
    message: Json = {"role": "assistant", "content": content, "refusal": refusal}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    }


def events(raw: bytes) -> list[tuple[str, Json]]:
    """(event name, data) of each server-sent event, checking the two agree."""
    parsed = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = orjson.loads(data_line.removeprefix("data: "))
        assert data["type"] == name
        parsed.append((name, data))
    return parsed


def streamed(model: str, request: Json | None = None) -> list[tuple[str, Json]]:
    stream = ResponseStream(model, request)
    raw = b"".join(stream.feed([piece]) for piece in CANNED[model]) + stream.finish()
    return events(raw)


# Requests ---------------------------------------------------------------------------------


def test_string_input_and_instructions_become_chat_messages() -> None:
    chat = responses_to_chat(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": "Hi",
            "max_output_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "stream": True,
            "store": False,
            "user": "u-1",
            "metadata": {"k": "v"},
            "stream_options": {"include_obfuscation": False},
            "reasoning": {"effort": "low", "summary": "auto"},
            "include": ["reasoning.encrypted_content"],
            "truncation": "disabled",
        }
    )
    assert chat == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_completion_tokens": 50,
        "temperature": 0.5,
        "top_p": 0.9,
        "reasoning_effort": "low",
        "user": "u-1",
        "stream": True,
    }


def test_conversation_items_become_chat_messages() -> None:
    chat = responses_to_chat(
        {
            "model": "m",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {"role": "system", "content": [{"type": "input_text", "text": "Sys."}]},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "Weather in"},
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,AAAA",
                            "detail": "low",
                        },
                        {
                            "type": "input_file",
                            "file_data": "data:application/pdf;base64,JVBE",
                            "filename": "a.pdf",
                        },
                    ],
                },
                # What the SDK sends back from a previous response's output, ids and all.
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
                },
                {
                    "id": "fc_1",
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "weather",
                    "arguments": '{"city": "Oslo"}',
                    "status": "completed",
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "weather",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
                {"role": "user", "content": "Thanks"},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {"role": "system", "content": "Sys."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                },
                {
                    "type": "file",
                    "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        {"role": "user", "content": "Thanks"},
    ]


def test_function_tools_choice_and_output_format_map_to_chat() -> None:
    chat = responses_to_chat(
        {
            "model": "m",
            "input": "Hi",
            "tools": [WEATHER, {**WEATHER, "name": "strict_one", "strict": True}],
            "tool_choice": {"type": "function", "name": "weather"},
            "parallel_tool_calls": False,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "out",
                    "schema": {"type": "object"},
                    "strict": True,
                },
                "verbosity": "low",
            },
        }
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": WEATHER["parameters"],
            },
        },
        {
            "type": "function",
            "function": {
                "name": "strict_one",
                "description": "The weather in a city.",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        },
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    assert chat["verbosity"] == "low"
    json_mode = responses_to_chat(
        {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    )
    assert json_mode["response_format"] == {"type": "json_object"}
    # No tools, no tool_choice: Chat Completions refuses one without the other.
    assert "tool_choice" not in responses_to_chat(
        {"model": "m", "input": "x", "tool_choice": "required"}
    )


@pytest.mark.parametrize(
    ("change", "param", "phrase"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no responses"),
        ({"conversation": "conv_1"}, "conversation", "keeps no responses"),
        ({"store": True}, "store", "does not store responses"),
        ({"background": True}, "background", "stored state"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "stored prompts"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type", "built-in tool 'web_search'"),
        ({"tools": [{"type": "function"}]}, "tools.0.name", "is required"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "file_search"}},
            "tool_choice.type",
            "'file_search' is not available",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type", "stored state"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input.0.type", "not supported"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role", "must be 'user'"),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}
                ]
            },
            "input.0.content.0.image_url",
            "file store",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input.0.content.0.type",
            "'input_audio' are not supported",
        ),
        (
            {
                "input": [
                    {
                        "role": "system",
                        "content": [{"type": "input_image", "image_url": "https://x/y.png"}],
                    }
                ]
            },
            "input.0.content",
            "text only",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input.0.call_id",
            "string",
        ),
        ({"input": []}, "input", "non-empty list"),
        ({"model": ""}, "model", "model name"),
        ({"max_output_tokens": 0}, "max_output_tokens", "positive integer"),
        ({"temperature": 3}, "temperature", "between 0 and 2"),
        ({"truncation": "auto"}, "truncation", "shorter input"),
        ({"include": ["file_search_call.results"]}, "include.0", "not available"),
        (
            {"text": {"format": {"type": "json_schema", "schema": {}}}},
            "text.format.name",
            "required",
        ),
        ({"frequency_penalty": 1}, "frequency_penalty", "not supported"),
        ({"top_logprobs": 2}, "top_logprobs", "log probabilities"),
    ],
)
def test_what_cannot_be_carried_is_refused_with_its_path(
    change: Json, param: str, phrase: str
) -> None:
    with pytest.raises(ResponsesError) as refused:
        responses_to_chat({"model": "m", "input": "Hi", **change})
    assert refused.value.param == param
    assert refused.value.message.startswith(f"{param}: ")
    assert phrase in refused.value.message


def test_harmless_defaults_of_refused_parameters_pass() -> None:
    chat = responses_to_chat(
        {
            "model": "m",
            "input": "Hi",
            "previous_response_id": None,
            "background": False,
            "top_logprobs": 0,
        }
    )
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}


# Answers ---------------------------------------------------------------------------------


def test_completion_becomes_a_response_echoing_the_request() -> None:
    request = {
        "model": "public",
        "input": "Hi",
        "instructions": "Be brief.",
        "tools": [WEATHER],
        "temperature": 0.2,
    }
    response = chat_to_response(whole(CANNED["text"]), "public", request)
    assert response["id"] == "resp_1"
    assert response["object"] == "response"
    assert response["created_at"] == 1700000000
    assert response["status"] == "completed"
    assert response["model"] == "public"
    (message,) = response["output"]
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["content"] == [
        {"type": "output_text", "text": "Hello there", "annotations": [], "logprobs": []}
    ]
    assert response["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 15,
    }
    assert (response["instructions"], response["tools"], response["temperature"]) == (
        "Be brief.",
        [WEATHER],
        0.2,
    )
    assert (response["tool_choice"], response["parallel_tool_calls"], response["store"]) == (
        "auto",
        True,
        False,
    )
    assert response["text"] == {"format": {"type": "text"}}


def test_tool_calls_become_function_call_items() -> None:
    response = chat_to_response(whole(CANNED["text-and-tools"]), "public", {})
    kinds = [(item["type"], item.get("call_id")) for item in response["output"]]
    assert kinds == [("message", None), ("function_call", "call_1"), ("function_call", "call_2")]
    assert response["output"][2]["arguments"] == '{"city": "Rome"}'
    assert response["output"][2]["name"] == "weather"
    assert all(item["status"] == "completed" for item in response["output"])


def test_cut_off_answer_is_incomplete() -> None:
    response = chat_to_response(whole(CANNED["long"]), "public", {})
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_completion_without_a_message_is_an_upstream_failure() -> None:
    with pytest.raises(UpstreamFailure):
        chat_to_response({"choices": []}, "public", {})


def test_usage_counts_reads_responses_and_their_events() -> None:
    response = {
        "object": "response",
        "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
    }
    assert usage_counts(response) == (5, 7)
    assert usage_counts({"type": "response.completed", "response": response}) == (5, 7)
    assert usage_counts({"type": "response.output_text.delta", "delta": "x"}) == (None, None)
    assert usage_counts({"usage": {"input_tokens": -1, "output_tokens": "2"}}) == (None, None)


def test_text_stream_events_in_order_with_sequence_numbers() -> None:
    stream = streamed("text")
    assert [name for name, _ in stream] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in stream] == list(range(len(stream)))
    ids = {data["response"]["id"] for name, data in stream if "response" in data}
    assert len(ids) == 1
    done = stream[-1][1]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["text"] == "Hello there"
    assert done["usage"]["total_tokens"] == 15
    assert stream[6][1]["text"] == "Hello there"


def test_tool_stream_opens_one_item_per_call_and_closes_the_text_first() -> None:
    stream = streamed("text-and-tools")
    items = [
        (name, data["output_index"])
        for name, data in stream
        if name.startswith("response.output_item")
    ]
    assert items == [
        ("response.output_item.added", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.output_item.done", 2),
    ]
    arguments = [
        data["arguments"]
        for name, data in stream
        if name == "response.function_call_arguments.done"
    ]
    assert arguments == ['{"city": "Oslo"}', '{"city": "Rome"}']
    final = stream[-1][1]["response"]["output"]
    assert [item["type"] for item in final] == ["message", "function_call", "function_call"]


def test_refusal_streams_as_a_refusal_part() -> None:
    names = [name for name, _ in streamed("refusal")]
    assert names.count("response.refusal.delta") == 2
    assert "response.refusal.done" in names
    assert names[-1] == "response.completed"


def test_broken_stream_ends_with_response_failed() -> None:
    stream = ResponseStream("public", {})
    raw = stream.feed(CANNED["broken"]) + stream.error(
        502, "The upstream broke off.", "upstream_error", "req_1"
    )
    name, data = events(raw)[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"]["code"] == "server_error"
    assert "req_1" in data["response"]["error"]["message"]
    assert data["response"]["output"][0]["status"] == "incomplete"
    assert stream.finish() == b""
    assert stream.feed(CANNED["text"]) == b""


def test_empty_stream_still_makes_a_whole_response() -> None:
    stream = ResponseStream("public")
    names = [name for name, _ in events(stream.encode([]) + stream.finish())]
    assert names == ["response.created", "response.in_progress", "response.completed"]


# The official client ----------------------------------------------------------------------


class CannedResponses:
    """``POST /v1/responses`` answered from :data:`CANNED` through the conversion, as the
    gateway answers for a converted target; keeps each converted chat request."""

    def __init__(self) -> None:
        self.chat_requests: list[Json] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        try:
            chat = responses_to_chat(request)
        except ResponsesError as exc:
            error = {
                "message": exc.message,
                "type": "invalid_request_error",
                "param": exc.param,
                "code": None,
            }
            await self._send(send, 400, b"application/json", orjson.dumps({"error": error}))
            return
        self.chat_requests.append(chat)
        chunks = [orjson.loads(orjson.dumps(piece)) for piece in CANNED[chat["model"]]]
        client = ResponsesClient(request)
        if not chat.get("stream"):
            await self._send(
                send, 200, b"application/json", client.whole(whole(chunks), chat["model"])
            )
            return
        encoder = client.stream(chat["model"], include_usage=False)
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for piece in chunks:
            await send(
                {"type": "http.response.body", "body": encoder.encode([piece]), "more_body": True}
            )
        if chat["model"] == "broken":
            tail = encoder.error(
                502, "The upstream provider broke off the stream.", "upstream_error", "req_7"
            )
        else:
            tail = encoder.finish()
        await send({"type": "http.response.body", "body": tail})

    @staticmethod
    async def _send(send: Send, status: int, content_type: bytes, body: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def canned() -> Iterator[tuple[openai.OpenAI, CannedResponses]]:
    app = CannedResponses()
    with (
        serve(app) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="pk-test", max_retries=0) as client,
    ):
        yield client, app


def test_official_client_reads_a_text_response(
    canned: tuple[openai.OpenAI, CannedResponses],
) -> None:
    client, _ = canned
    response = client.responses.create(model="text", input="Hi", instructions="Be brief.")
    assert response.output_text == "Hello there"
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.instructions == "Be brief."
    assert response.usage is not None
    assert (
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.total_tokens,
    ) == (12, 3, 15)
    assert response.usage.input_tokens_details.cached_tokens == 4


def test_official_client_function_call_round_trip(
    canned: tuple[openai.OpenAI, CannedResponses],
) -> None:
    client, app = canned
    asked: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    response = client.responses.create(model="tool", input=asked, tools=[WEATHER])
    (call,) = response.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        "call_9",
        "weather",
        {"city": "Paris"},
    )
    # The SDK's own output items go back as input, with the tool's answer.
    follow_up: list[Any] = [*asked, *response.output]
    follow_up.append({"type": "function_call_output", "call_id": call.call_id, "output": "sunny"})
    client.responses.create(model="text", input=follow_up, tools=[WEATHER])
    assert app.chat_requests[-1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
    ]


def test_official_client_iterates_a_streamed_response(
    canned: tuple[openai.OpenAI, CannedResponses],
) -> None:
    client, _ = canned
    stream = client.responses.create(model="text", input="Hi", stream=True)
    seen = list(stream)
    assert seen[0].type == "response.created"
    completed = seen[-1]
    assert completed.type == "response.completed"
    text = "".join(event.delta for event in seen if event.type == "response.output_text.delta")
    assert text == "Hello there"
    final = completed.response
    assert final.output_text == "Hello there"
    assert final.usage is not None
    assert final.usage.total_tokens == 15


@pytest.mark.parametrize("model", ["tool", "text-and-tools"])
def test_official_stream_helper_assembles_the_final_response(
    canned: tuple[openai.OpenAI, CannedResponses], model: str
) -> None:
    client, _ = canned
    with client.responses.stream(model=model, input="Weather?", tools=[WEATHER]) as stream:
        deltas = [
            event.delta
            for event in stream
            if event.type == "response.function_call_arguments.delta"
        ]
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert "".join(deltas) == "".join(call.arguments for call in calls)
    expected = [{"city": "Paris"}] if model == "tool" else [{"city": "Oslo"}, {"city": "Rome"}]
    assert [json.loads(call.arguments) for call in calls] == expected
    assert final.usage is not None
    assert final.usage.output_tokens == 3
    if model == "text-and-tools":
        assert final.output_text == "Checking both."


def test_official_stream_helper_parses_structured_output(
    canned: tuple[openai.OpenAI, CannedResponses],
) -> None:
    client, app = canned

    class Forecast(BaseModel):
        city: str
        days: int

    with client.responses.stream(model="json", input="Forecast?", text_format=Forecast) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == Forecast(city="Paris", days=2)
    response_format = app.chat_requests[-1]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Forecast"


def test_official_client_sees_incomplete_and_failed_streams(
    canned: tuple[openai.OpenAI, CannedResponses],
) -> None:
    client, _ = canned
    cut = client.responses.create(model="long", input="Hi", max_output_tokens=16)
    assert cut.status == "incomplete"
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    last = list(client.responses.create(model="long", input="Hi", stream=True))[-1]
    assert last.type == "response.incomplete"
    with client.responses.stream(model="broken", input="Hi") as stream:
        failed = [event for event in stream if event.type == "response.failed"]
        assert len(failed) == 1
        error = failed[0].response.error
        assert error is not None
        assert "req_7" in error.message
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()


def test_official_client_gets_a_clear_error_for_what_is_refused(
    canned: tuple[openai.OpenAI, CannedResponses],
) -> None:
    client, _ = canned
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="text", input="Hi", previous_response_id="resp_1")
    assert "keeps no responses" in refused.value.message
    assert refused.value.param == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as built_in:
        client.responses.create(model="text", input="Hi", tools=[{"type": "web_search"}])
    assert built_in.value.param == "tools.0.type"


def test_default_client_protocol_object() -> None:
    answer = orjson.loads(RESPONSES_CLIENT.whole(whole(CANNED["text"]), "public"))
    assert answer["model"] == "public"
    assert answer["tools"] == []
    encoder = RESPONSES_CLIENT.stream("public", include_usage=False)
    assert events(encoder.encode(CANNED["text"]) + encoder.finish())[-1][0] == "response.completed"
