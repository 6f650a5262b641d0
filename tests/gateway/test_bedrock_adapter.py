"""The Bedrock adapter against the fake Bedrock runtime: SigV4 as AWS computes it, real
event-stream frames, the script's answers and Bedrock's failures, classified."""

from __future__ import annotations

import datetime
import struct
import zlib
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
from botocore.credentials import Credentials as BotoCredentials  # type: ignore[import-untyped]
from botocore.eventstream import EventStreamBuffer  # type: ignore[import-untyped]

from devstack.fakes.bedrock import frame
from devstack.procs import Stack
from gateway.providers import sigv4
from gateway.providers.base import Endpoint, FailureKind, Unsupported, UpstreamFailure
from gateway.providers.bedrock import ADAPTER, region_of
from gateway.providers.eventstream import Decoder
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
    start_fake,
    stream,
    streamed_calls,
    streamed_text,
    tool_round,
    until_failure,
)

KEY_ID = "AKIDPORTICOTEST0001"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPORTICOKEY"
TOKEN = "FwoGZXIvYXdzEBQaDPorticoSessionToken+/="
CREDENTIAL = f"{KEY_ID}:{SECRET}:{TOKEN}"
MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
e2e = pytest.mark.e2e


@pytest.fixture(scope="module")
def fake(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> RunningFake:
    return start_fake(stack, tmp_path_factory, "devstack.fakes.bedrock", CREDENTIAL)


def endpoint(fake: RunningFake, model: str = MODEL, credential: str = CREDENTIAL) -> Endpoint:
    return Endpoint(base_url=fake.url, model=model, credential=credential)


# Answers ------------------------------------------------------------------------------------


@e2e
def test_text_answer_is_the_scripts_reply_with_its_token_counts(fake: RunningFake) -> None:
    answer = complete(ADAPTER, endpoint(fake), chat("hello gateway", max_tokens=64, top_p=0.9))
    (choice,) = answer["choices"]
    assert choice["message"]["content"] == "You said: hello gateway"
    assert choice["finish_reason"] == "stop"
    assert answer["usage"] == expected_usage("Answer briefly.", "hello gateway", completion=4)
    record = fake.records()[-1]
    assert record["path"] == "/model/anthropic.claude-3-5-haiku-20241022-v1:0/converse"
    assert record["headers"]["x-amz-security-token"] == TOKEN
    assert record["body"] == {
        "messages": [{"role": "user", "content": [{"text": "hello gateway"}]}],
        "system": [{"text": "Answer briefly."}],
        "inferenceConfig": {"maxTokens": 64, "topP": 0.9},
    }


@e2e
@pytest.mark.parametrize(
    "model",
    [
        "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc 12+x",
    ],
)
def test_model_ids_with_colons_and_slashes_are_signed_as_sent(
    fake: RunningFake, model: str
) -> None:
    # The fake recomputes the signature with botocore over the path it received: a path
    # spelled one way and signed another would be a 403 here, as at AWS.
    answer = complete(ADAPTER, endpoint(fake, model), chat())
    assert answer["choices"][0]["message"]["content"] == "You said: hello gateway"
    assert "%2F" in fake.records()[-1]["path"] or "/" not in model


@e2e
def test_stream_frames_are_real_aws_event_stream_messages(fake: RunningFake) -> None:
    received = stream(ADAPTER, endpoint(fake), chat())
    assert received.headers["content-type"] == "application/vnd.amazon.eventstream"
    parser = EventStreamBuffer()
    parser.add_data(received.body)
    events = [message.headers[":event-type"] for message in parser]
    assert events == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]


@e2e
def test_stream_fed_byte_by_byte_gives_the_same_chunks_as_fed_whole(fake: RunningFake) -> None:
    target = endpoint(fake, MODEL + "-chunks-7")
    received = stream(ADAPTER, target, chat("one two three"))
    as_sent = decode(ADAPTER, target, received.pieces)
    one_by_one = decode(ADAPTER, target, bytewise(received.body))
    # Converse streams carry no id, so each decoder makes up its own.
    assert comparable(one_by_one, "id") == comparable(as_sent, "id")
    assert streamed_text(as_sent) == "You said: one two three You said:"
    assert finish_reasons(as_sent) == ["stop"]
    assert as_sent[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert as_sent[-1]["choices"] == []
    assert as_sent[-1]["usage"] == expected_usage("Answer briefly.", "one two three", completion=7)


@e2e
def test_tool_call_round_trip_ends_with_the_tools_answer(fake: RunningFake) -> None:
    target = endpoint(fake)
    answer = complete(ADAPTER, target, chat(tools=TOOLS, tool_choice="auto"))
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("tooluse_")
    assert call["function"] == {"name": "lookup", "arguments": '{"query":"hello gateway"}'}
    assert fake.records()[-1]["body"]["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "lookup",
                    "description": "Looks a thing up.",
                    "inputSchema": {"json": TOOLS[0]["function"]["parameters"]},
                }
            }
        ],
        "toolChoice": {"auto": {}},
    }

    final = complete(ADAPTER, target, tool_round(call, "sunny and 21 degrees"))
    assert final["choices"][0]["message"]["content"] == "Tool said: sunny and 21 degrees"
    messages = fake.records()[-1]["body"]["messages"]
    assert messages[1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "toolUse": {
                        "toolUseId": call["id"],
                        "name": "lookup",
                        "input": {"query": "hello gateway"},
                    }
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "toolResult": {
                        "toolUseId": call["id"],
                        "content": [{"text": "sunny and 21 degrees"}],
                    }
                }
            ],
        },
    ]
    assert final["usage"] == expected_usage(
        "Answer briefly.", "hello gateway", "sunny and 21 degrees", completion=6
    )


@e2e
def test_streamed_tool_call_input_is_assembled_from_its_pieces(fake: RunningFake) -> None:
    target = endpoint(fake)
    received = stream(ADAPTER, target, chat(tools=TOOLS, tool_choice="required"))
    chunks = decode(ADAPTER, target, bytewise(received.body))
    (call,) = streamed_calls(chunks)
    assert call["type"] == "function"
    assert call["function"] == {"name": "lookup", "arguments": '{"query":"hello gateway"}'}
    assert finish_reasons(chunks) == ["tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] == 1
    assert fake.records()[-1]["body"]["toolConfig"]["toolChoice"] == {"any": {}}


@e2e
def test_tool_call_ids_from_other_vendors_are_mapped_consistently(fake: RunningFake) -> None:
    call = {
        "id": "call abc/123 from elsewhere",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"query": "x"}'},
    }
    final = complete(ADAPTER, endpoint(fake), tool_round(call, "fine"))
    assert final["choices"][0]["message"]["content"] == "Tool said: fine"
    messages = fake.records()[-1]["body"]["messages"]
    use_id = messages[1]["content"][0]["toolUse"]["toolUseId"]
    assert use_id.startswith("tooluse_")
    assert messages[2]["content"][0]["toolResult"]["toolUseId"] == use_id


@e2e
def test_json_schema_goes_to_output_config_as_a_string(fake: RunningFake) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    spec = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    complete(ADAPTER, endpoint(fake), chat(response_format=spec, reasoning_effort="minimal"))
    assert fake.records()[-1]["body"]["outputConfig"] == {
        "effort": "low",
        "textFormat": {
            "type": "json_schema",
            "structure": {"jsonSchema": {"schema": orjson.dumps(schema).decode(), "name": "place"}},
        },
    }


# Failures -----------------------------------------------------------------------------------


@e2e
def test_wrong_secret_is_an_auth_failure_with_aws_words(fake: RunningFake) -> None:
    wrong = f"{KEY_ID}:not-the-secret:{TOKEN}"
    found = failure(ADAPTER, endpoint(fake, credential=wrong), chat())
    assert (found.status, found.kind) == (403, FailureKind.AUTH)
    assert "signature we calculated does not match" in found.message


@pytest.mark.parametrize(
    "credential", [f"AKIDUNKNOWN:{SECRET}:{TOKEN}", f"{KEY_ID}:{SECRET}"], ids=["key", "token"]
)
@e2e
def test_unknown_key_or_missing_token_is_an_auth_failure(
    fake: RunningFake, credential: str
) -> None:
    found = failure(ADAPTER, endpoint(fake, credential=credential), chat())
    assert (found.status, found.kind) == (403, FailureKind.AUTH)
    assert found.message == "The security token included in the request is invalid."


def test_malformed_credential_fails_before_sending() -> None:
    target = Endpoint("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL, "just-a-key")
    with pytest.raises(UpstreamFailure) as caught:
        ADAPTER.chat_request(target, chat(), stream=False)
    assert caught.value.kind is FailureKind.AUTH
    assert "just-a-key" not in caught.value.message


@e2e
def test_throttling_is_rate_limited_with_the_retry_hint(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, MODEL + "-error-429"), chat())
    assert (found.kind, found.retry_after) == (FailureKind.RATE_LIMITED, 1.0)


@pytest.mark.parametrize("status", [500, 503, 424])
@e2e
def test_server_side_exceptions_are_server_failures(fake: RunningFake, status: int) -> None:
    found = failure(ADAPTER, endpoint(fake, f"{MODEL}-error-{status}"), chat(), stream=True)
    assert (found.status, found.kind) == (status, FailureKind.SERVER)


@e2e
def test_input_too_long_is_a_context_window_failure(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, MODEL + "-context"), chat())
    assert (found.kind, found.message) == (
        FailureKind.CONTEXT_WINDOW,
        "Input is too long for requested model.",
    )


@e2e
def test_plain_validation_error_keeps_bedrocks_message(fake: RunningFake) -> None:
    found = failure(ADAPTER, endpoint(fake, MODEL + "-error-400"), chat())
    assert (found.status, found.kind) == (400, FailureKind.BAD_REQUEST)
    assert found.message.startswith("Malformed input request")


@e2e
def test_exception_frame_mid_stream_raises_after_the_chunks_before_it(fake: RunningFake) -> None:
    target = endpoint(fake, MODEL + "-midstream-2")
    received = stream(ADAPTER, target, chat())
    chunks, found = until_failure(ADAPTER, target, bytewise(received.body))
    assert found is not None
    assert found.kind is FailureKind.SERVER
    assert found.message == "The model stopped answering mid-stream."
    assert streamed_text(chunks) == "You said: "


@e2e
def test_stream_dropped_mid_way_is_a_server_failure_at_close(fake: RunningFake) -> None:
    target = endpoint(fake, MODEL + "-break-3")
    received = stream(ADAPTER, target, chat())
    assert received.broke
    chunks, found = until_failure(ADAPTER, target, received.pieces)
    assert streamed_text(chunks) == "You said: hello "
    assert found is not None
    assert found.kind is FailureKind.SERVER


def test_error_type_comes_from_the_header_or_the_body() -> None:
    body = orjson.dumps({"message": "Too many tokens, please wait before trying again."})
    by_header = {"x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/coral/"}
    assert ADAPTER.failure(400, body, by_header).kind is FailureKind.RATE_LIMITED
    typed = orjson.dumps(
        {"__type": "com.amazon.coral.service#ExpiredTokenException", "message": "Expired."}
    )
    assert ADAPTER.failure(400, typed, {}).kind is FailureKind.AUTH
    not_ready = ADAPTER.failure(
        429, b'{"message": "Model is not ready."}', {"x-amzn-errortype": "ModelNotReadyException"}
    )
    assert not_ready.kind is FailureKind.SERVER
    invalid_model = orjson.dumps({"message": "The provided model identifier is invalid."})
    assert ADAPTER.failure(400, invalid_model, {}).kind is FailureKind.SERVER
    claude = orjson.dumps(
        {
            "message": "The model returned the following errors: input length and `max_tokens` "
            "exceed context limit: 198000 + 8192 > 200000"
        }
    )
    assert ADAPTER.failure(400, claude, {}).kind is FailureKind.CONTEXT_WINDOW


def test_throttling_frame_mid_stream_is_rate_limited() -> None:
    target = Endpoint("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL, CREDENTIAL)
    headers = {
        ":exception-type": "throttlingException",
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    body = frame(headers, b'{"message": "Too many requests."}')
    _, found = until_failure(ADAPTER, target, [body])
    assert found is not None
    assert (found.kind, found.message) == (FailureKind.RATE_LIMITED, "Too many requests.")


# SigV4 ------------------------------------------------------------------------------------------


WHEN = datetime.datetime(2026, 11, 24, 12, 30, 45, tzinfo=datetime.UTC)


def botocore_signed(
    url: str, headers: dict[str, str], body: bytes, token: str | None
) -> dict[str, str]:
    """The headers botocore's own signer gives the same request at the same moment."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(BotoCredentials(KEY_ID, SECRET, token), "bedrock", "eu-west-3").add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("token", [None, TOKEN], ids=["keys", "session"])
@pytest.mark.parametrize(
    "model",
    [
        "amazon.nova-lite-v1:0",
        "arn:aws:bedrock:eu-west-3:123456789012:application-inference-profile/a1b2c3",
        "weird model (v2)+plus~tilde",
    ],
)
@pytest.mark.parametrize(
    "base", ["https://bedrock-runtime.eu-west-3.amazonaws.com", "http://127.0.0.1:8443"]
)
def test_signature_equals_botocores(
    monkeypatch: pytest.MonkeyPatch, token: str | None, model: str, base: str
) -> None:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: WHEN.replace(tzinfo=None))
    url = f"{base}/model/{sigv4.path_segment(model)}/converse-stream"
    body = b'{"messages": [{"role": "user", "content": [{"text": "hi  there"}]}]}'
    headers = {"Content-Type": "application/json", "X-Custom": "  spaced   value "}
    ours = sigv4.sign(
        method="POST",
        url=url,
        headers=headers,
        body=body,
        credentials=sigv4.Credentials(KEY_ID, SECRET, token),
        region="eu-west-3",
        service="bedrock",
        now=WHEN,
    )
    # botocore adds the date and token itself; the host it derives from the URL, as the
    # HTTP client does (ours carries it as a header, which the client then sends as is).
    theirs = botocore_signed(url, headers, body, token)
    assert ours["Authorization"] == theirs["Authorization"]
    assert {name: value for name, value in ours.items() if name != "Host"} == theirs
    assert ours["Host"] == base.split("://", 1)[1].removesuffix(":443")


def test_canonical_uri_encodes_the_sent_path_once_more() -> None:
    path = "/model/" + sigv4.path_segment("arn:aws:bedrock:x:1:inference-profile/us.m-v1:0")
    assert path == "/model/arn:aws:bedrock:x:1:inference-profile%2Fus.m-v1:0"
    assert sigv4.canonical_uri(path + "/converse") == (
        "/model/arn%3Aaws%3Abedrock%3Ax%3A1%3Ainference-profile%252Fus.m-v1%3A0/converse"
    )
    assert sigv4.canonical_uri("/a/./b/../c//d/") == "/a/c/d/"
    assert sigv4.canonical_query("b=2&a=x y&a=1") == "a=1&a=x%20y&b=2"


def test_region_comes_from_the_option_then_the_host() -> None:
    def region(url: str, **options: str) -> str:
        return region_of(Endpoint(url, MODEL, CREDENTIAL, options=options))

    assert region("https://bedrock-runtime.ap-southeast-2.amazonaws.com") == "ap-southeast-2"
    assert region("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com") == "us-gov-west-1"
    assert (
        region("https://bedrock-runtime.eu-west-1.amazonaws.com", region="eu-west-2") == "eu-west-2"
    )
    assert region("http://127.0.0.1:9300") == "us-east-1"


# Event streams --------------------------------------------------------------------------------


def frames() -> bytes:
    headers = {":event-type": "contentBlockDelta", ":message-type": "event"}
    return b"".join(
        frame(headers, orjson.dumps({"contentBlockIndex": 0, "delta": {"text": word}}))
        for word in ("one ", "two ", "three")
    )


def test_decoder_fed_one_byte_at_a_time_finds_every_message() -> None:
    decoder = Decoder()
    messages = [message for piece in bytewise(frames()) for message in decoder.feed(piece)]
    assert [orjson.loads(m.payload)["delta"]["text"] for m in messages] == ["one ", "two ", "three"]
    assert messages[0].header(":event-type") == "contentBlockDelta"
    assert decoder.pending == 0


def test_decoder_reads_every_header_type() -> None:
    encoded = (
        b"\x01t\x00"  # true
        + b"\x01f\x01"  # false
        + b"\x01b\x02\xff"  # byte -1
        + b"\x01s\x03\x01\x00"  # short 256
        + b"\x01i\x04"
        + struct.pack(">i", -7)
        + b"\x01l\x05"
        + struct.pack(">q", 2**40)
        + b"\x01y\x06\x00\x02\x00\x01"  # bytes
        + b"\x01u\x09"
        + bytes(range(16))
    )
    prelude = struct.pack(">II", 16 + len(encoded), len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded
    message += struct.pack(">I", zlib.crc32(message))
    (decoded,) = Decoder().feed(message)
    values: dict[str, Any] = dict(decoded.headers)
    assert {k: v for k, v in values.items() if k != "u"} == {
        "t": True,
        "f": False,
        "b": -1,
        "s": 256,
        "i": -7,
        "l": 2**40,
        "y": b"\x00\x01",
    }
    assert values["u"].bytes == bytes(range(16))
    assert decoded.payload == b""


@pytest.mark.parametrize("at", [9, -2], ids=["prelude", "message"])
def test_a_corrupted_checksum_is_a_server_failure(at: int) -> None:
    data = bytearray(frames())
    data[at] ^= 0x01
    with pytest.raises(UpstreamFailure) as caught:
        Decoder().feed(bytes(data))
    assert caught.value.kind is FailureKind.SERVER


def test_a_stream_ending_inside_a_frame_broke_off() -> None:
    target = Endpoint("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL, CREDENTIAL)
    start = frame(
        {":event-type": "messageStart", ":message-type": "event"}, b'{"role":"assistant"}'
    )
    _, found = until_failure(ADAPTER, target, [start + frames()[:-5]])
    assert found is not None
    assert found.kind is FailureKind.SERVER


# What never leaves the gateway ----------------------------------------------------------------


def _image(url: str) -> dict[str, Any]:
    request = chat()
    request["messages"][1]["content"] = [{"type": "image_url", "image_url": {"url": url}}]
    return request


def _none_with_tool_history() -> dict[str, Any]:
    call = {
        "id": "tooluse_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": "{}"},
    }
    return tool_round(call, "ok", tool_choice="none")


UNSUPPORTED = {
    "n": chat(n=2),
    "json_object": chat(response_format={"type": "json_object"}),
    "presence_penalty": chat(presence_penalty=0.5),
    "top_k": chat(top_k=40),
    "web_image": _image("https://example.com/cat.png"),
    "svg_image": _image("data:image/svg+xml;base64,PHN2Zz4="),
    "none_with_tool_history": _none_with_tool_history(),
    "made_up_option": chat(made_up_option=True),
}


@e2e
@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_requests_reach_no_upstream(fake: RunningFake, case: str) -> None:
    before = len(fake.records())
    with pytest.raises(Unsupported) as caught:
        ADAPTER.chat_request(endpoint(fake), UNSUPPORTED[case], stream=True)
    assert caught.value.message
    assert len(fake.records()) == before


def test_embeddings_are_unsupported_and_say_why() -> None:
    target = Endpoint(
        "https://bedrock-runtime.us-east-1.amazonaws.com", "amazon.titan-embed-text-v2:0"
    )
    with pytest.raises(Unsupported) as caught:
        ADAPTER.embeddings_request(target, {"input": "hello"})
    assert "differs per model family" in caught.value.message


def test_inline_images_and_documents_become_bedrock_blocks() -> None:
    target = Endpoint("https://bedrock-runtime.us-east-1.amazonaws.com", MODEL, CREDENTIAL)
    request = chat()
    request["messages"][1]["content"] = [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        {
            "type": "file",
            "file": {
                "filename": "Q3 report.v2.pdf",
                "file_data": "data:application/pdf;base64,JVBERi0=",
            },
        },
    ]
    body = orjson.loads(ADAPTER.chat_request(target, request, stream=False).body)
    assert body["messages"][0]["content"] == [
        {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}},
        {"document": {"format": "pdf", "name": "Q3 report v2", "source": {"bytes": "JVBERi0="}}},
    ]
