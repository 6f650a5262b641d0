"""Every conversion path through a real gateway, with the official clients.

Each vendor is a local fake process speaking that vendor's real wire format
(``devstack/fakes/``; OpenAI's is ``devstack.mock_llm``), requiring its own credential.
Every fake follows one script (``devstack.fakes.script``), so the same assertions hold
whichever vendor serves: the reply, the tool call and the token counts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from devstack.procs import Stack, free_port
from gateway.schema import ModelRoute, Revision, Upstream
from tests.gateway.conftest import (
    PYTHON,
    ROOT,
    Gateway,
    World,
    assert_openai_error,
    function_call,
)
from tests.gateway.test_routing import push, routed

pytestmark = pytest.mark.e2e


@dataclass
class Fake:
    vendor: str
    base_url: str
    credential: str
    record: Path
    options: dict[str, str]

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [orjson.loads(line) for line in self.record.read_bytes().splitlines() if line]


def _start(stack: Stack, tmp: Path, vendor: str, credential: str, path: str) -> Fake:
    port = free_port()
    record = tmp / f"{vendor}.jsonl"
    stack.start(
        f"fake-{vendor}",
        [
            PYTHON,
            "-m",
            f"devstack.fakes.{vendor}",
            "--port",
            str(port),
            "--require-key",
            credential,
            "--record",
            str(record),
        ],
        ready_url=f"http://127.0.0.1:{port}/healthz",
        ready_timeout=20,
        cwd=ROOT,
    )
    options = {"region": "us-east-1"} if vendor == "bedrock" else {}
    return Fake(vendor, f"http://127.0.0.1:{port}{path}", credential, record, options)


@pytest.fixture(scope="session")
def fakes(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fake]:
    tmp = tmp_path_factory.mktemp("fakes")
    return {
        "anthropic": _start(stack, tmp, "anthropic", "sk-ant-" + secrets.token_hex(12), "/v1"),
        "gemini": _start(stack, tmp, "gemini", "AIza" + secrets.token_hex(16), "/v1beta"),
        "bedrock": _start(
            stack,
            tmp,
            "bedrock",
            "AKIA" + secrets.token_hex(8).upper() + ":" + secrets.token_urlsafe(30),
            "",
        ),
    }


VENDORS = ["openai", "anthropic", "gemini", "bedrock"]


def vendor_revision(world: World, fakes: dict[str, Fake], model: str = "") -> Revision:
    """Routes "<vendor>-chat" to each vendor (with ``model`` as the upstream model, or the
    fake's plain one), all in Alice's product."""
    upstreams = {
        name: Upstream(
            vendor=fake.vendor,
            base_url=fake.base_url,
            secret=world.keys.seal(fake.credential),
            name=f"fake-{name}",
            options=fake.options,
        )
        for name, fake in fakes.items()
    }
    models = {
        f"{vendor}-chat": ModelRoute(
            upstream="a" if vendor == "openai" else vendor,
            upstream_model=model or ("mock" if vendor == "openai" else f"{vendor}-model"),
        )
        for vendor in VENDORS
    }
    return routed(world, models, upstreams=upstreams)


def openai_client(gw: Gateway, world: World) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=world.alice_key, max_retries=0)


def anthropic_client(gw: Gateway, world: World) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=world.alice_key, max_retries=0)


TOOLS_OPENAI: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look something up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
TOOLS_ANTHROPIC: list[Any] = [
    {
        "name": "lookup",
        "description": "Look something up.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


@pytest.mark.parametrize("vendor", VENDORS)
def test_openai_client_chats_with_every_vendor(
    gw: Gateway, world: World, fakes: dict[str, Fake], vendor: str
) -> None:
    push(gw, vendor_revision(world, fakes))
    client = openai_client(gw, world)
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello gateway"},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=f"{vendor}-chat", messages=messages
    )
    completion = raw.parse()
    assert raw.headers["x-portico-target"].startswith(
        f"fake-{vendor}/" if vendor != "openai" else "vendor-a/"
    )
    assert completion.model == f"{vendor}-chat"
    assert completion.choices[0].message.content == "You said: hello gateway"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 4)

    stream = client.chat.completions.create(
        model=f"{vendor}-chat",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: hello gateway"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (4, 4)
    # Without include_usage the client gets no usage chunk, though the gateway metered it.
    plain = list(
        client.chat.completions.create(model=f"{vendor}-chat", messages=messages, stream=True)
    )
    assert all(c.usage is None for c in plain)


@pytest.mark.parametrize("vendor", VENDORS)
def test_openai_client_tool_calls_with_every_vendor(
    gw: Gateway, world: World, fakes: dict[str, Fake], vendor: str
) -> None:
    push(gw, vendor_revision(world, fakes))
    client = openai_client(gw, world)
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo"}]
    first = client.chat.completions.create(
        model=f"{vendor}-chat", messages=messages, tools=TOOLS_OPENAI
    )
    assert first.choices[0].finish_reason == "tool_calls"
    call = function_call(first.choices[0].message.tool_calls)
    assert call.function.name == "lookup"
    assert orjson.loads(call.function.arguments) == {"query": "weather in Oslo"}
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(
        model=f"{vendor}-chat", messages=messages, tools=TOOLS_OPENAI
    )
    assert second.choices[0].message.content == "Tool said: sunny"
    streamed = client.chat.completions.create(
        model=f"{vendor}-chat", messages=messages[:1], tools=TOOLS_OPENAI, stream=True
    )
    deltas = [
        delta
        for chunk in streamed
        if chunk.choices
        for delta in chunk.choices[0].delta.tool_calls or []
    ]
    assert deltas[0].function is not None
    assert deltas[0].function.name == "lookup"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert orjson.loads(arguments) == {"query": "weather in Oslo"}


@pytest.mark.parametrize("vendor", VENDORS)
def test_anthropic_client_talks_to_every_vendor(
    gw: Gateway, world: World, fakes: dict[str, Fake], vendor: str
) -> None:
    push(gw, vendor_revision(world, fakes))
    client = anthropic_client(gw, world)
    message = client.messages.create(
        model=f"{vendor}-chat",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello gateway"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "You said: hello gateway"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 4)

    with client.messages.stream(
        model=f"{vendor}-chat",
        max_tokens=100,
        messages=[{"role": "user", "content": "hello gateway"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "You said: hello gateway"
    assert final.usage.output_tokens == 4

    tool_turn = client.messages.create(
        model=f"{vendor}-chat",
        max_tokens=100,
        tools=TOOLS_ANTHROPIC,
        messages=[{"role": "user", "content": "weather in Oslo"}],
    )
    assert tool_turn.stop_reason == "tool_use"
    use = next(block for block in tool_turn.content if block.type == "tool_use")
    assert use.name == "lookup"
    assert use.input == {"query": "weather in Oslo"}
    conversation: list[Any] = [
        {"role": "user", "content": "weather in Oslo"},
        {"role": "assistant", "content": [block.model_dump() for block in tool_turn.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
        },
    ]
    answer = client.messages.create(
        model=f"{vendor}-chat", max_tokens=100, tools=TOOLS_ANTHROPIC, messages=conversation
    )
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "Tool said: sunny"


@pytest.mark.parametrize("vendor", ["anthropic", "gemini", "bedrock"])
def test_vendor_errors_become_gateway_errors(
    gw: Gateway, world: World, fakes: dict[str, Fake], vendor: str
) -> None:
    client = openai_client(gw, world)
    push(gw, vendor_revision(world, fakes, model=f"{vendor}-error-500-{secrets.token_hex(3)}"))
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(
            model=f"{vendor}-chat", messages=[{"role": "user", "content": "x"}]
        )
    assert failed.value.status_code == 502
    push(gw, vendor_revision(world, fakes, model=f"{vendor}-context"))
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model=f"{vendor}-chat", messages=[{"role": "user", "content": "x"}]
        )
    assert too_long.value.code == "context_length_exceeded"
    # A stream that breaks after it started ends with an error event, not a switch.
    push(gw, vendor_revision(world, fakes, model=f"{vendor}-break-2-{secrets.token_hex(3)}"))
    response = gw.http.post(
        gw.url + "/v1/chat/completions",
        json={
            "model": f"{vendor}-chat",
            "messages": [{"role": "user", "content": "one two three four"}],
            "stream": True,
        },
        headers={"Authorization": f"Bearer {world.alice_key}"},
    )
    assert response.status_code == 200
    assert '"code":"upstream_error"' in response.text
    assert "[DONE]" not in response.text


@pytest.mark.parametrize("vendor", ["anthropic", "gemini", "bedrock"])
def test_unsupported_parameters_reach_no_upstream(
    gw: Gateway, world: World, fakes: dict[str, Fake], vendor: str
) -> None:
    push(gw, vendor_revision(world, fakes))
    before = len(fakes[vendor].records())
    response = gw.http.post(
        gw.url + "/v1/chat/completions",
        json={
            "model": f"{vendor}-chat",
            "messages": [{"role": "user", "content": "x"}],
            "logit_bias": {"50256": -100},
        },
        headers={"Authorization": f"Bearer {world.alice_key}"},
    )
    error = assert_openai_error(response, 400, "unsupported_parameter")
    assert error["param"] == "logit_bias"
    assert len(fakes[vendor].records()) == before


def test_vendor_credentials_never_reach_clients(
    gw: Gateway, world: World, fakes: dict[str, Fake]
) -> None:
    push(gw, vendor_revision(world, fakes, model="error-401"))
    for vendor in ("anthropic", "gemini", "bedrock"):
        response = gw.chat(
            world.alice_key,
            {"model": f"{vendor}-chat", "messages": [{"role": "user", "content": "x"}]},
        )
        assert response.status_code == 502
        for part in fakes[vendor].credential.split(":"):
            assert part not in response.text


@pytest.mark.parametrize("vendor", VENDORS)
def test_responses_api_with_every_vendor(
    gw: Gateway, world: World, fakes: dict[str, Fake], vendor: str
) -> None:
    push(gw, vendor_revision(world, fakes))
    client = openai_client(gw, world)
    response = client.responses.create(
        model=f"{vendor}-chat", instructions="Be brief.", input="hello gateway"
    )
    assert response.output_text == "You said: hello gateway"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 4)
    with client.responses.stream(model=f"{vendor}-chat", input="hello gateway") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "You said: hello gateway"
    assert final.output_text == "You said: hello gateway"
    tools: list[Any] = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        }
    ]
    called = client.responses.create(model=f"{vendor}-chat", input="weather in Oslo", tools=tools)
    call = next(item for item in called.output if item.type == "function_call")
    assert call.name == "lookup"
    assert orjson.loads(call.arguments) == {"query": "weather in Oslo"}
    items: list[Any] = [
        {"role": "user", "content": "weather in Oslo"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    answered = client.responses.create(model=f"{vendor}-chat", tools=tools, input=items)
    assert answered.output_text == "Tool said: sunny"


def test_responses_api_refuses_stored_state_clearly(gw: Gateway, world: World) -> None:
    client = openai_client(gw, world)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="openai-chat", input="hi", previous_response_id="resp_1")
    assert refused.value.param == "previous_response_id"
