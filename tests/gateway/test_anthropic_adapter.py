"""The Anthropic adapter against the fake Anthropic API (``devstack.fakes.anthropic``).

The fake runs as its own process and speaks Anthropic's wire format; the adapter builds
each request and reads each answer, and aiohttp carries the bytes between them, as the
gateway's one session does.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from devstack.fakes.script import words
from devstack.procs import Stack
from gateway.providers.anthropic import ADAPTER, DEFAULT_MAX_TOKENS
from gateway.providers.base import (
    Endpoint,
    FailureKind,
    Json,
    Unsupported,
    UpstreamFailure,
)
from tests.gateway.adapter_harness import (
    Received,
    RunningFake,
    bytewise,
    comparable,
    start_fake,
    streamed_calls,
    streamed_text,
    until_failure,
)
from tests.gateway.adapter_harness import complete as harness_complete
from tests.gateway.adapter_harness import decode as harness_decode
from tests.gateway.adapter_harness import send as harness_send

pytestmark = pytest.mark.e2e

KEY = "sk-ant-fake-canary-0123456789"


@pytest.fixture(scope="module")
def fake(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> RunningFake:
    return start_fake(stack, tmp_path_factory, "devstack.fakes.anthropic", KEY)


def endpoint_of(fake: RunningFake, model: str = "claude-fake", key: str | None = KEY) -> Endpoint:
    return Endpoint(base_url=fake.url + "/v1", model=model, credential=key)


def send(endpoint: Endpoint, request: Json, *, stream: bool = False) -> Received:
    return harness_send(ADAPTER.chat_request(endpoint, request, stream=stream))


def complete(endpoint: Endpoint, request: Json) -> Json:
    return harness_complete(ADAPTER, endpoint, request)


def decode(endpoint: Endpoint, body: bytes, pieces: list[bytes] | None = None) -> list[Json]:
    return harness_decode(ADAPTER, endpoint, [body] if pieces is None else pieces)


def user(text: str, **extra: Any) -> Json:
    return {"messages": [{"role": "user", "content": text}], **extra}


WEATHER_TOOL: Json = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


# Answers ------------------------------------------------------------------------------


def test_text_answer_follows_the_script(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake)
    completion = complete(endpoint, user("three little words"))
    assert completion["object"] == "chat.completion"
    assert completion["id"].startswith("msg_fake")
    assert completion["model"] == "claude-fake"
    assert isinstance(completion["created"], int)
    (choice,) = completion["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "You said: three little words",
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"
    assert completion["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_stream_gives_the_same_chunks_however_the_body_is_split(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake)
    answered = send(endpoint, user("stream me please"), stream=True)
    assert answered.status == 200
    assert answered.headers["content-type"].startswith("text/event-stream")
    whole = decode(endpoint, answered.body)
    crlf = answered.body.replace(b"\n", b"\r\n")
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(crlf)), 40))
    ragged = [crlf[a:b] for a, b in zip([0, *cuts], [*cuts, len(crlf)], strict=True)]
    for other in (
        decode(endpoint, answered.body, bytewise(answered.body)),
        decode(endpoint, crlf, bytewise(crlf)),
        decode(endpoint, crlf, ragged),
    ):
        assert comparable(other, "created") == comparable(whole, "created")

    first, *middle, finish, usage = whole
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in middle] == [
        "You ",
        "said: ",
        "stream ",
        "me ",
        "please",
    ]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert {c["object"] for c in whole} == {"chat.completion.chunk"}
    assert {c["model"] for c in whole} == {"claude-fake"}
    assert len({c["id"] for c in whole}) == 1
    assert whole[0]["id"].startswith("msg_fake")


def test_role_chunk_waits_for_the_first_token(fake: RunningFake) -> None:
    # The gateway takes the first chunks it decodes for the first token, and may fall
    # back to another target until then: message_start alone is not an answer yet.
    endpoint = endpoint_of(fake)
    body = send(endpoint, user("hi"), stream=True).body
    decoder = ADAPTER.chat_stream(endpoint)
    start = body.index(b"event: content_block_delta")
    assert decoder.feed(body[:start]) == []
    first = decoder.feed(body[start:])
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first[1]["choices"][0]["delta"] == {"content": "You "}


def test_chunks_knob_streams_that_many_pieces(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake, "claude-chunks-12")
    chunks = decode(endpoint, send(endpoint, user("a b"), stream=True).body)
    assert len([c for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]]) == 13
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_tool_call_round_trip(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake)
    asked = {"role": "user", "content": "weather in Paris"}
    completion = complete(endpoint, {"messages": [asked], "tools": [WEATHER_TOOL]})
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["id"].startswith("toolu_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert orjson.loads(call["function"]["arguments"]) == {"query": "weather in Paris"}
    assert completion["usage"]["completion_tokens"] == 1

    history = [
        asked,
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny and warm"},
    ]
    # The fake refuses a tool_result that answers no tool_use, so this proves the pairing.
    completion = complete(endpoint, {"messages": history, "tools": [WEATHER_TOOL]})
    assert completion["choices"][0]["message"]["content"] == "Tool said: sunny and warm"
    assert completion["choices"][0]["finish_reason"] == "stop"
    prompt = words("weather in Paris") + words("sunny and warm")
    assert completion["usage"]["prompt_tokens"] == prompt


def test_streamed_tool_call_is_the_same_call(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake)
    request = {
        "messages": [{"role": "user", "content": "weather in Oslo"}],
        "tools": [WEATHER_TOOL],
    }
    body = send(endpoint, request, stream=True).body
    chunks = decode(endpoint, body, bytewise(body))
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    opening, *rest = calls
    assert opening["index"] == 0
    assert opening["id"].startswith("toolu_")
    assert opening["type"] == "function"
    assert opening["function"] == {"name": "weather", "arguments": ""}
    assert all(set(c) == {"index", "function"} and c["index"] == 0 for c in rest)
    (call,) = streamed_calls(chunks)
    assert orjson.loads(call["function"]["arguments"]) == {"query": "weather in Oslo"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 1


def test_prompt_tokens_include_cache_reads(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake, "claude-cached-2")
    request = user("one two three four")
    expected = {
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "total_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    assert complete(endpoint, request)["usage"] == expected
    assert decode(endpoint, send(endpoint, request, stream=True).body)[-1]["usage"] == expected


def test_conversation_is_reshaped_as_anthropic_wants_it(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake)
    pixel = "iVBORw0KGgo="
    request = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": "Hello"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"query": "Oslo"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "cold"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "warm"}],
            },
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "tools": [WEATHER_TOOL],
    }
    body = orjson.loads(ADAPTER.chat_request(endpoint, request, stream=False).body)
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use metric units."},
    ]
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hello"},
                {"type": "text", "text": "Look:"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": pixel},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"query": "Oslo"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "cold"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "warm"}],
                },
                {"type": "text", "text": "Thanks"},
                # The empty assistant turn between them said nothing: the turns merge.
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "name": "weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
            "description": "The weather in a city.",
        }
    ]
    # The fake checks alternation, non-empty text and tool_use/tool_result pairing.
    completion = complete(endpoint, request)
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


def test_request_headers_url_and_parameters(fake: RunningFake) -> None:
    endpoint = Endpoint(base_url="https://api.anthropic.com/v1/", model="claude-x", credential=KEY)
    request = user(
        "hi",
        model="public-name",
        max_completion_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop="END",
        user="user-7",
        seed=3,
        stream_options={"include_usage": True},
        tools=[{**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "strict": True}}],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        parallel_tool_calls=False,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
        reasoning_effort="minimal",
        n=1,
        logprobs=False,
        frequency_penalty=0,
    )
    http = ADAPTER.chat_request(endpoint, request, stream=True)
    assert http.url == "https://api.anthropic.com/v1/messages"
    assert http.headers == {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    body = orjson.loads(http.body)
    assert body == {
        "model": "claude-x",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "output_config": {
            "format": {"type": "json_schema", "schema": {"type": "object"}},
            "effort": "low",
        },
        "metadata": {"user_id": "user-7"},
        "tools": [
            {
                "name": "weather",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
                "description": "The weather in a city.",
                "strict": True,
            }
        ],
        "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        "stream": True,
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (None, None),
    ],
)
def test_tool_choice_maps_to_anthropic(given: object, expected: object) -> None:
    request = user("hi", tools=[WEATHER_TOOL], tool_choice=given)
    body = orjson.loads(
        ADAPTER.chat_request(Endpoint("http://x/v1", "m"), request, stream=False).body
    )
    assert body.get("tool_choice") == expected


def test_defaults_and_dropped_parameters() -> None:
    request = user("hi", max_tokens=None, tool_choice="auto", parallel_tool_calls=False, seed=1)
    http = ADAPTER.chat_request(Endpoint("http://x/v1", "m"), request, stream=False)
    # Anthropic requires max_tokens; tool options mean nothing without tools.
    assert orjson.loads(http.body) == {
        "model": "m",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert "x-api-key" not in http.headers


# Failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "kind", "status", "code"),
    [
        ("claude-error-429", FailureKind.RATE_LIMITED, 429, "rate_limit_error"),
        ("claude-error-529", FailureKind.SERVER, 529, "overloaded_error"),
        ("claude-error-500", FailureKind.SERVER, 500, "api_error"),
        ("claude-error-403", FailureKind.AUTH, 403, "permission_error"),
        ("claude-error-404", FailureKind.SERVER, 404, "not_found_error"),
        ("claude-error-413", FailureKind.BAD_REQUEST, 413, "request_too_large"),
        ("claude-error-400", FailureKind.BAD_REQUEST, 400, "invalid_request_error"),
        ("claude-context", FailureKind.CONTEXT_WINDOW, 400, "invalid_request_error"),
    ],
)
def test_vendor_errors_are_classified(
    fake: RunningFake, model: str, kind: FailureKind, status: int, code: str
) -> None:
    for stream in (False, True):
        answered = send(endpoint_of(fake, model), user("hello there"), stream=stream)
        failure = ADAPTER.failure(answered.status, answered.body, answered.headers)
        assert (failure.kind, failure.status, failure.code) == (kind, status, code)
        assert failure.message == orjson.loads(answered.body)["error"]["message"]
        assert failure.retry_after == (1.0 if status == 429 else None)


def test_context_window_error_carries_anthropics_words(fake: RunningFake) -> None:
    with pytest.raises(UpstreamFailure) as caught:
        complete(endpoint_of(fake, "claude-context"), user("hello there"))
    assert caught.value.kind is FailureKind.CONTEXT_WINDOW
    assert caught.value.message == "prompt is too long: 200002 tokens > 200000 maximum"


def test_wrong_key_is_an_auth_failure_that_does_not_quote_the_key(fake: RunningFake) -> None:
    with pytest.raises(UpstreamFailure) as caught:
        complete(endpoint_of(fake, key="sk-ant-not-the-one"), user("hi"))
    assert caught.value.kind is FailureKind.AUTH
    assert caught.value.status == 401
    assert caught.value.code == "authentication_error"
    assert "sk-ant" not in caught.value.message


def test_vendor_bad_request_carries_the_vendors_message(fake: RunningFake) -> None:
    # An empty message says nothing and is left out, so nothing is left to send: the
    # vendor, not the adapter, is the one to say so.
    with pytest.raises(UpstreamFailure) as caught:
        complete(endpoint_of(fake), user(""))
    assert caught.value.kind is FailureKind.BAD_REQUEST
    assert caught.value.message == "messages: at least one message is required"


def test_fake_requires_the_version_header(fake: RunningFake) -> None:
    http = ADAPTER.chat_request(endpoint_of(fake), user("hi"), stream=False)
    del http.headers["anthropic-version"]
    answered = harness_send(http)
    assert answered.status == 400
    assert orjson.loads(answered.body)["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }


def test_newer_api_version_takes_no_sampling_parameters(fake: RunningFake) -> None:
    endpoint = Endpoint(fake.url + "/v1", "claude-fake", KEY, {"api_version": "2026-10-21"})
    with pytest.raises(Unsupported) as caught:
        ADAPTER.chat_request(endpoint, user("hi", temperature=0.5), stream=False)
    assert caught.value.param == "temperature"
    completion = complete(endpoint, user("no sampling here"))
    assert completion["choices"][0]["message"]["content"] == "You said: no sampling here"
    assert fake.records()[-1]["headers"]["anthropic-version"] == "2026-10-21"


def test_fake_refuses_sampling_parameters_in_the_newer_api_version(fake: RunningFake) -> None:
    # Proof the fake holds the adapter to what the real API accepts.
    http = ADAPTER.chat_request(endpoint_of(fake), user("hi", top_p=0.5), stream=False)
    assert harness_send(http).status == 200
    http.headers["anthropic-version"] = "2026-10-21"
    answered = harness_send(http)
    assert answered.status == 400
    assert orjson.loads(answered.body)["error"]["message"] == (
        "top_p: Extra inputs are not permitted"
    )


def test_fake_takes_the_key_as_a_bearer_token_too(fake: RunningFake) -> None:
    http = ADAPTER.chat_request(endpoint_of(fake), user("hi"), stream=False)
    http.headers["authorization"] = "Bearer " + http.headers.pop("x-api-key")
    assert harness_send(http).status == 200


def test_error_event_mid_stream_fails_after_the_chunks_before_it(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake, "claude-midstream-2")
    answered = send(endpoint, user("one two three"), stream=True)
    assert answered.status == 200
    assert b"event: error" in answered.body
    chunks, failure = until_failure(ADAPTER, endpoint, bytewise(answered.body))
    assert streamed_text(chunks) == "You said: "
    assert failure is not None
    assert failure.kind is FailureKind.SERVER
    assert failure.code == "overloaded_error"
    assert failure.message == "Overloaded"


def test_broken_stream_fails_when_the_body_ends(fake: RunningFake) -> None:
    endpoint = endpoint_of(fake, "claude-break-2")
    answered = send(endpoint, user("one two three"), stream=True)
    assert answered.status == 200
    assert answered.broke
    decoder = ADAPTER.chat_stream(endpoint)
    chunks = decoder.feed(answered.body)
    assert streamed_text(chunks) == "You said: "
    with pytest.raises(UpstreamFailure) as caught:
        decoder.close()
    assert caught.value.kind is FailureKind.SERVER
    assert "ended early" in caught.value.message


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("overloaded_error", FailureKind.SERVER),
        ("rate_limit_error", FailureKind.RATE_LIMITED),
        ("api_error", FailureKind.SERVER),
        ("timeout_error", FailureKind.TIMEOUT),
        ("invalid_request_error", FailureKind.BAD_REQUEST),
        ("something_new", FailureKind.SERVER),
    ],
)
def test_stream_error_events_are_classified(error_type: str, kind: FailureKind) -> None:
    decoder = ADAPTER.chat_stream(Endpoint("http://x/v1", "m"))
    event = {"type": "error", "error": {"type": error_type, "message": "It broke."}}
    with pytest.raises(UpstreamFailure) as caught:
        decoder.feed(b"event: error\ndata: " + orjson.dumps(event) + b"\n\n")
    assert caught.value.kind is kind
    assert caught.value.message == "It broke."


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind"),
    [
        (502, b"<html>Bad gateway</html>", {}, FailureKind.SERVER),
        (504, b"", {}, FailureKind.TIMEOUT),
        (413, b"<html>Too large</html>", {}, FailureKind.BAD_REQUEST),
        (
            402,
            b'{"type":"error","error":{"type":"billing_error","message":"No credit."}}',
            {},
            FailureKind.AUTH,
        ),
        (429, b"{}", {"retry-after-ms": "1500"}, FailureKind.RATE_LIMITED),
        (
            500,
            b'{"type":"error","error":{"type":"invalid_request_error","message":"?"}}',
            {},
            FailureKind.SERVER,
        ),
    ],
)
def test_failures_without_a_usual_body(
    status: int, body: bytes, headers: dict[str, str], kind: FailureKind
) -> None:
    failure = ADAPTER.failure(status, body, headers)
    assert failure.kind is kind
    assert failure.status == status
    assert failure.message
    if "retry-after-ms" in headers:
        assert failure.retry_after == 1.5


# What Anthropic cannot do -------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format",
        ),
        ({"temperature": 1.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"verbosity": "low"}, "verbosity"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools.0.type"),
        ({"tool_choice": {"type": "allowed_tools"}, "tools": [WEATHER_TOOL]}, "tool_choice"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{not json"},
                            }
                        ],
                    },
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/bmp;base64,Qk0="},
                            }
                        ],
                    }
                ]
            },
            "messages.0.content.0",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
                        ],
                    }
                ]
            },
            "messages.0.content.0",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages.0.role"),
    ],
)
def test_unsupported_requests_reach_no_upstream(fake: RunningFake, extra: Json, param: str) -> None:
    before = len(fake.records())
    with pytest.raises(Unsupported) as caught:
        send(endpoint_of(fake), {**user("hi"), **extra})
    assert caught.value.param == param
    assert caught.value.message
    assert KEY not in caught.value.message
    assert len(fake.records()) == before


def test_embeddings_are_unsupported() -> None:
    endpoint = Endpoint("http://x/v1", "m", credential=KEY)
    with pytest.raises(Unsupported) as caught:
        ADAPTER.embeddings_request(endpoint, {"model": "m", "input": "hi"})
    assert caught.value.param == "model"
    assert "embeddings" in caught.value.message


# Answers the fake does not give --------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "x"}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    completion = ADAPTER.chat_response(Endpoint("http://x/v1", "m"), orjson.dumps(message))
    assert completion["choices"][0]["finish_reason"] == finish_reason
    assert "stop_reason" not in completion["choices"][0]


def test_stop_sequence_is_kept_for_anthropic_clients() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "one "},
            {"type": "text", "text": "two"},
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "THREE",
        "usage": {"input_tokens": 5, "cache_creation_input_tokens": 3, "output_tokens": 2},
    }
    completion = ADAPTER.chat_response(Endpoint("http://x/v1", "m"), orjson.dumps(message))
    choice = completion["choices"][0]
    assert choice["message"]["content"] == "one two"
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", "THREE")
    assert completion["usage"] == {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}


@pytest.mark.parametrize(
    "payload", [b"not json", b"[]", b'{"type": "error"}', b'{"type": "message"}']
)
def test_malformed_answers_are_server_failures(payload: bytes) -> None:
    with pytest.raises(UpstreamFailure) as caught:
        ADAPTER.chat_response(Endpoint("http://x/v1", "m"), payload)
    assert caught.value.kind is FailureKind.SERVER


def _events(*events: Json) -> bytes:
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events
    )


def test_stream_usage_takes_the_latest_counts_and_skips_what_it_cannot_carry() -> None:
    body = _events(
        {
            "type": "message_start",
            "message": {
                "id": "msg_9",
                "usage": {"input_tokens": 7, "cache_read_input_tokens": 5, "output_tokens": 1},
            },
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hm"},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "something_new", "detail": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "stop_sequence", "stop_sequence": "X"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    )
    # Anything after message_stop is not part of the answer.
    chunks = decode(Endpoint("http://x/v1", "m"), body + b"event: ping\ndata: {}\n\n")
    assert streamed_text(chunks) == "Hi"
    assert chunks[-2]["choices"][0]["stop_reason"] == "X"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 9,
        "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 5},
    }


def test_stream_without_message_stop_fails_even_with_a_stop_reason() -> None:
    body = _events(
        {"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 1}}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 1},
        },
    )
    decoder = ADAPTER.chat_stream(Endpoint("http://x/v1", "m"))
    assert len(decoder.feed(body)) == 2
    with pytest.raises(UpstreamFailure, match="ended early"):
        decoder.close()


def test_last_event_without_a_blank_line_still_counts() -> None:
    body = _events(
        {"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 1}}},
        {"type": "message_stop"},
    )
    chunks = decode(Endpoint("http://x/v1", "m"), body.rstrip(b"\n"))
    assert chunks[-1]["usage"]["prompt_tokens"] == 1
