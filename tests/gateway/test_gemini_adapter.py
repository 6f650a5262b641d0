"""The Gemini adapter against the fake Gemini API: what the script says arrives as OpenAI
answers, streams and failures, and what Gemini cannot do never leaves the gateway."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from devstack.procs import Stack
from gateway.providers.base import Endpoint, FailureKind, Unsupported
from gateway.providers.gemini import ADAPTER, SKIP_SIGNATURE
from tests.gateway.adapter_harness import (
    TOOLS,
    RunningFake,
    bytewise,
    chat,
    comparable,
    complete,
    decode,
    expected_usage,
    failure,
    finish_reasons,
    send,
    start_fake,
    stream,
    streamed_calls,
    streamed_text,
    tool_round,
    until_failure,
)

KEY = "gemini-test-key-0123456789"
e2e = pytest.mark.e2e


@pytest.fixture(scope="module")
def fake(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> RunningFake:
    return start_fake(stack, tmp_path_factory, "devstack.fakes.gemini", KEY)


def endpoint(fake: RunningFake, model: str = "gemini-test", key: str | None = KEY) -> Endpoint:
    return Endpoint(base_url=fake.url + "/v1beta", model=model, credential=key)


# Answers ------------------------------------------------------------------------------------


@e2e
def test_text_answer_is_the_scripts_reply_with_its_token_counts(fake: RunningFake) -> None:
    answer = complete(ADAPTER, endpoint(fake), chat("hello gateway"))
    assert answer["object"] == "chat.completion"
    (choice,) = answer["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "You said: hello gateway",
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"
    assert answer["usage"] == expected_usage("Answer briefly.", "hello gateway", completion=4)


@e2e
def test_request_reaches_gemini_in_its_own_shape_with_the_key_header(fake: RunningFake) -> None:
    complete(ADAPTER, endpoint(fake), chat(max_tokens=50, temperature=0.5, stop=["END"]))
    record = fake.records()[-1]
    assert record["path"] == "/v1beta/models/gemini-test:generateContent"
    assert record["headers"]["x-goog-api-key"] == KEY
    assert "authorization" not in record["headers"]
    assert record["body"] == {
        "contents": [{"role": "user", "parts": [{"text": "hello gateway"}]}],
        "systemInstruction": {"parts": [{"text": "Answer briefly."}]},
        "generationConfig": {"maxOutputTokens": 50, "temperature": 0.5, "stopSequences": ["END"]},
    }


@e2e
def test_stream_fed_byte_by_byte_gives_the_same_chunks_as_fed_whole(fake: RunningFake) -> None:
    target = endpoint(fake, "gemini-test-chunks-6")
    received = stream(ADAPTER, target, chat("one two three"))
    assert received.headers["content-type"].startswith("text/event-stream")
    as_sent = decode(ADAPTER, target, received.pieces)
    one_by_one = decode(ADAPTER, target, bytewise(received.body))
    assert comparable(one_by_one) == comparable(as_sent)
    assert streamed_text(as_sent) == "You said: one two three You"
    assert finish_reasons(as_sent) == ["stop"]
    assert as_sent[0]["choices"][0]["delta"]["role"] == "assistant"
    assert as_sent[-1]["choices"] == []
    assert as_sent[-1]["usage"] == expected_usage("Answer briefly.", "one two three", completion=6)
    assert len({chunk["id"] for chunk in as_sent}) == 1


@e2e
def test_tool_call_round_trip_ends_with_the_tools_answer(fake: RunningFake) -> None:
    target = endpoint(fake)
    answer = complete(ADAPTER, target, chat(tools=TOOLS, tool_choice="auto"))
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_0_")
    assert call["function"] == {"name": "lookup", "arguments": '{"query":"hello gateway"}'}
    assert answer["usage"]["completion_tokens"] == 1
    sent = fake.records()[-1]["body"]
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "lookup",
                    "description": "Looks a thing up.",
                    "parametersJsonSchema": TOOLS[0]["function"]["parameters"],
                }
            ]
        }
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}

    final = complete(ADAPTER, target, tool_round(call, "sunny and 21 degrees"))
    assert final["choices"][0]["message"]["content"] == "Tool said: sunny and 21 degrees"
    replayed = fake.records()[-1]["body"]["contents"]
    assert replayed[1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "lookup", "args": {"query": "hello gateway"}},
                "thoughtSignature": SKIP_SIGNATURE,
            }
        ],
    }
    assert replayed[2] == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "name": "lookup",
                    "response": {"output": "sunny and 21 degrees"},
                }
            }
        ],
    }
    assert final["usage"] == expected_usage(
        "Answer briefly.", "hello gateway", "sunny and 21 degrees", completion=6
    )


@e2e
def test_streamed_tool_call_has_the_same_stable_id_as_the_whole_answer(fake: RunningFake) -> None:
    target = endpoint(fake)
    received = stream(ADAPTER, target, chat(tools=TOOLS, tool_choice="required"))
    chunks = decode(ADAPTER, target, bytewise(received.body))
    (call,) = streamed_calls(chunks)
    assert call["function"] == {"name": "lookup", "arguments": '{"query":"hello gateway"}'}
    assert finish_reasons(chunks) == ["tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] == 1
    assert fake.records()[-1]["body"]["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    # The id is derived from the answer, so decoding the same bytes again gives it again.
    again = streamed_calls(decode(ADAPTER, target, received.pieces))
    assert again[0]["id"] == call["id"]


@e2e
def test_thought_signature_travels_with_the_tool_call_and_comes_back(fake: RunningFake) -> None:
    target = endpoint(fake, "gemini-test-thinking")
    answer = complete(ADAPTER, target, chat(tools=TOOLS))
    (call,) = answer["choices"][0]["message"]["tool_calls"]
    signature = call["extra_content"]["google"]["thought_signature"]
    assert signature.startswith("CiQB")

    final = complete(ADAPTER, target, tool_round(call, "done"))
    assert final["choices"][0]["message"]["content"] == "Tool said: done"
    part = fake.records()[-1]["body"]["contents"][1]["parts"][0]
    assert part["thoughtSignature"] == signature


@e2e
def test_a_client_that_drops_the_signature_still_gets_an_answer(fake: RunningFake) -> None:
    target = endpoint(fake, "gemini-test-thinking")
    answer = complete(ADAPTER, target, chat(tools=TOOLS))
    (call,) = answer["choices"][0]["message"]["tool_calls"]
    bare = {key: value for key, value in call.items() if key != "extra_content"}
    final = complete(ADAPTER, target, tool_round(bare, "done"))
    assert final["choices"][0]["message"]["content"] == "Tool said: done"


@e2e
def test_json_schema_and_n_reach_generation_config(fake: RunningFake) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    request = chat(
        n=2,
        seed=7,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    answer = complete(ADAPTER, endpoint(fake), request)
    assert [choice["index"] for choice in answer["choices"]] == [0, 1]
    config = fake.records()[-1]["body"]["generationConfig"]
    assert config == {
        "seed": 7,
        "candidateCount": 2,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }


@e2e
def test_images_go_inline_from_data_urls_and_by_reference_from_https(fake: RunningFake) -> None:
    request = chat()
    request["messages"][1]["content"] = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    answer = complete(ADAPTER, endpoint(fake), request)
    assert answer["choices"][0]["message"]["content"] == "You said: what is this"
    assert fake.records()[-1]["body"]["contents"][0]["parts"] == [
        {"text": "what is this"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}},
    ]


@e2e
def test_embeddings_come_back_in_openai_shape(fake: RunningFake) -> None:
    target = endpoint(fake, "gemini-embedding-001")
    http = ADAPTER.embeddings_request(target, {"input": ["one", "two"], "dimensions": 4})
    assert http.url.endswith("/v1beta/models/gemini-embedding-001:batchEmbedContents")
    received = send(http)
    assert received.status == 200
    answer = ADAPTER.embeddings_response(target, received.body)
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert all(len(item["embedding"]) == 4 for item in answer["data"])
    assert fake.records()[-1]["body"]["requests"][1] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "two"}]},
        "outputDimensionality": 4,
    }


# Failures -----------------------------------------------------------------------------------


@e2e
def test_wrong_key_is_an_auth_failure_though_google_answers_400(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, key="not-the-key"), chat())
    assert found.status == 400
    assert found.kind is FailureKind.AUTH
    assert "API key not valid" in found.message


@e2e
def test_missing_key_is_an_auth_failure(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, key=None), chat())
    assert (found.status, found.kind) == (403, FailureKind.AUTH)


@e2e
def test_rate_limit_carries_the_retry_delay_from_retry_info(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, "gemini-error-429"), chat())
    assert found.kind is FailureKind.RATE_LIMITED
    assert found.retry_after == 1.0


@pytest.mark.parametrize("status", [500, 503])
@e2e
def test_server_errors_are_server_failures(fake: RunningFake, status: int) -> None:
    found = failure(ADAPTER, endpoint(fake, f"gemini-error-{status}"), chat())
    assert (found.status, found.kind) == (status, FailureKind.SERVER)


@e2e
def test_prompt_over_the_limit_is_a_context_window_failure(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, "gemini-context"), chat(), stream=True)
    assert found.kind is FailureKind.CONTEXT_WINDOW
    assert "exceeds the maximum number of tokens allowed" in found.message


@e2e
def test_plain_bad_request_keeps_googles_message(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, "gemini-error-400"), chat())
    assert (found.status, found.kind) == (400, FailureKind.BAD_REQUEST)
    assert found.message == "Request contains an invalid argument."


@e2e
def test_error_event_mid_stream_raises_after_the_chunks_before_it(fake: RunningFake) -> None:
    target = endpoint(fake, "gemini-midstream-2")
    received = stream(ADAPTER, target, chat())
    chunks, found = until_failure(ADAPTER, target, bytewise(received.body))
    assert found is not None
    assert found.kind is FailureKind.SERVER
    assert "internal error" in found.message
    assert streamed_text(chunks) == "You said: "


@e2e
def test_stream_dropped_mid_way_is_a_server_failure_at_close(fake: RunningFake) -> None:
    target = endpoint(fake, "gemini-break-2")
    received = stream(ADAPTER, target, chat())
    assert received.broke
    chunks, found = until_failure(ADAPTER, target, received.pieces)
    assert streamed_text(chunks) == "You said: "
    assert found is not None
    assert (found.kind, found.message) == (FailureKind.SERVER, "The upstream broke off the stream.")


def test_retry_delay_is_read_from_retry_info_before_headers() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Quota exceeded.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"},
            ],
        }
    }
    found = ADAPTER.failure(429, orjson.dumps([body]), {"retry-after": "30"})
    assert (found.kind, found.retry_after) == (FailureKind.RATE_LIMITED, 7.5)
    del body["error"]["details"]
    assert ADAPTER.failure(429, orjson.dumps(body), {"retry-after": "30"}).retry_after == 30.0


def test_deadline_and_unreadable_answers_are_classified() -> None:
    timeout = {"error": {"code": 504, "message": "Deadline.", "status": "DEADLINE_EXCEEDED"}}
    assert ADAPTER.failure(504, orjson.dumps(timeout), {}).kind is FailureKind.TIMEOUT
    garbled = ADAPTER.failure(502, b"<html>Bad gateway</html>", {})
    assert (garbled.kind, garbled.message) == (
        FailureKind.SERVER,
        "The upstream answered HTTP 502.",
    )


def test_function_call_ids_from_gemini_are_kept_and_sent_back() -> None:
    target = Endpoint("https://generativelanguage.googleapis.com/v1beta", "gemini-x", KEY)
    payload = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Checking.", "thought": True},
                        {"functionCall": {"id": "fc-77", "name": "lookup", "args": {"q": 1}}},
                    ],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 3,
            "thoughtsTokenCount": 5,
            "cachedContentTokenCount": 4,
        },
    }
    answer = ADAPTER.chat_response(target, orjson.dumps(payload))
    message = answer["choices"][0]["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["id"] == "fc-77"
    assert answer["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 8,
        "total_tokens": 18,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    body = orjson.loads(ADAPTER.chat_request(target, tool_round(call, "ok"), stream=False).body)
    assert body["contents"][1]["parts"][0]["functionCall"]["id"] == "fc-77"
    assert body["contents"][2]["parts"][0]["functionResponse"]["id"] == "fc-77"


def test_blocked_prompt_is_a_content_filter_finish() -> None:
    target = Endpoint("https://generativelanguage.googleapis.com/v1beta", "gemini-x", KEY)
    payload = orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"}})
    answer = ADAPTER.chat_response(target, payload)
    assert answer["choices"][0]["finish_reason"] == "content_filter"
    chunks = decode(ADAPTER, target, [b"data: " + payload + b"\r\n\r\n"])
    assert finish_reasons(chunks) == ["content_filter"]


# What never leaves the gateway --------------------------------------------------------------


def _tool_without_call() -> dict[str, Any]:
    request = chat()
    request["messages"].append({"role": "tool", "tool_call_id": "call_x", "content": "?"})
    return request


def _image(url: str) -> dict[str, Any]:
    request = chat()
    request["messages"][1]["content"] = [{"type": "image_url", "image_url": {"url": url}}]
    return request


UNSUPPORTED = {
    "logprobs": chat(logprobs=True),
    "logit_bias": chat(logit_bias={"50256": -100}),
    "parallel_tool_calls": chat(tools=TOOLS, parallel_tool_calls=False),
    "modalities": chat(modalities=["text", "audio"]),
    "functions": chat(functions=[{"name": "f"}]),
    "made_up_option": chat(made_up_option=1),
    "reasoning_effort": chat(reasoning_effort="xhigh"),
    "tool_message_without_call": _tool_without_call(),
    "ftp_image": _image("ftp://example.com/cat.png"),
    "bad_inline_image": _image("data:image/png;base64,@@@"),
}


@e2e
@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_requests_reach_no_upstream(fake: RunningFake, case: str) -> None:
    before = len(fake.records())
    with pytest.raises(Unsupported) as caught:
        ADAPTER.chat_request(endpoint(fake), UNSUPPORTED[case], stream=False)
    assert caught.value.message
    assert len(fake.records()) == before


def test_token_inputs_for_embeddings_are_unsupported() -> None:
    target = Endpoint("https://generativelanguage.googleapis.com/v1beta", "text-embedding", KEY)
    with pytest.raises(Unsupported) as caught:
        ADAPTER.embeddings_request(target, {"input": [[1, 2, 3]]})
    assert caught.value.param == "input"
