"""Routing through a real gateway process: load balancing, fallback, ejection, pools.

Faults are injected by the mock vendor's knobs (``devstack.mock_llm``): a model name
chosen as a target's upstream model makes the mock fail that way, and the mock's
record of requests shows which attempts really reached it.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from typing import Any

import openai
import pytest

from gateway.schema import (
    Consumer,
    Credential,
    ModelRoute,
    Plan,
    Product,
    Revision,
    Subscription,
    Target,
    Upstream,
)
from tests.gateway.conftest import (
    ALICE,
    ALICE_CREDENTIAL,
    CHAT_PRODUCT,
    Gateway,
    World,
    assert_openai_error,
    chat_body,
    closed_port,
    function_call,
    sha256,
)

pytestmark = pytest.mark.e2e


def routed(
    world: World,
    models: dict[str, ModelRoute],
    *,
    upstreams: dict[str, Upstream] | None = None,
    plan: Plan | None = None,
) -> Revision:
    """A revision whose product "chat" serves ``models`` to Alice's first key.

    Upstreams "a" and "b" are the mock under two names, "down" a closed port.
    """
    sealed = world.keys.seal(world.mock.upstream_secret)
    base = world.mock.base_url
    return Revision(
        schema=1,
        revision=world.next_number(),
        created_at="2026-11-24T12:00:00Z",
        upstreams={
            "a": Upstream(vendor="openai", base_url=base, secret=sealed, name="vendor-a"),
            "b": Upstream(vendor="openai", base_url=base, secret=sealed, name="vendor-b"),
            "down": Upstream(
                vendor="openai",
                base_url=f"http://127.0.0.1:{closed_port()}/v1",
                secret=sealed,
                name="vendor-down",
            ),
            **(upstreams or {}),
        },
        products={"chat": Product(id=CHAT_PRODUCT, slug="chat", kind="model", models=models)},
        consumers={
            str(ALICE): Consumer(
                id=ALICE,
                subscriptions={"chat": Subscription(id=1, plan=plan or Plan(id=1, name="Free"))},
            )
        },
        credentials={sha256(world.alice_key): Credential(id=ALICE_CREDENTIAL, consumer=ALICE)},
    )


def push(gw: Gateway, doc: Revision) -> None:
    response = gw.push(doc)
    assert response.status_code == 200, response.text


def unique(tag: str) -> str:
    """A fresh upstream model name, so that health records never carry across tests."""
    return f"mock-{tag}-{secrets.token_hex(4)}"


def arrived(world: World, before: int, model: str) -> int:
    """How many requests for ``model`` reached the mock since ``before`` records."""
    return sum(
        1
        for record in world.mock.records()[before:]
        if record.get("path", "").endswith("/chat/completions") and record.get("model") == model
    )


def test_weighted_targets_share_the_load_by_weight(gw: Gateway, world: World) -> None:
    route = ModelRoute(
        upstream="a",
        upstream_model="mock",
        weight=3,
        targets=[Target("b", "mock", 1), Target("down", "mock", 0)],
    )
    push(gw, routed(world, {"balanced": route}))
    served = Counter(
        gw.chat(world.alice_key, chat_body("balanced")).headers["x-portico-target"]
        for _ in range(200)
    )
    # Weight 0 is a standby: never chosen while the others are healthy.
    assert set(served) == {"vendor-a/mock", "vendor-b/mock"}
    # 150 expected of 200 (sd ~6): the bounds are five deviations wide.
    assert 120 <= served["vendor-a/mock"] <= 180, served


def test_connection_failure_falls_back_to_the_next_target(gw: Gateway, world: World) -> None:
    route = ModelRoute(upstream="down", upstream_model="mock", targets=[Target("a", "mock", 0)])
    push(gw, routed(world, {"resilient": route}))
    response = gw.chat(world.alice_key, chat_body("resilient", text="still here"))
    assert response.status_code == 200, response.text
    assert response.headers["x-portico-target"] == "vendor-a/mock"
    assert response.json()["choices"][0]["message"]["content"] == "You said: still here"
    assert float(response.headers["x-portico-overhead-ms"]) >= 0


def test_failing_target_is_ejected_then_probed_back(gw: Gateway, world: World) -> None:
    broken = unique("error-500")
    route = ModelRoute(
        upstream="a", upstream_model=broken, targets=[Target("b", "mock", 1)], weight=1000
    )
    push(gw, routed(world, {"flaky": route}))
    before = len(world.mock.records())
    for _ in range(10):
        response = gw.chat(world.alice_key, chat_body("flaky"))
        assert response.status_code == 200, response.text
        assert response.headers["x-portico-target"] == "vendor-b/mock"
    # Each of the first calls tries the heavy, broken target twice (one retry), until
    # three failures in a row eject it; after that no call goes near it.
    tries = sum(1 for r in world.mock.records()[before:] if r.get("model") == broken)
    assert tries == 3


def test_refused_credential_is_taken_out_of_the_pool(gw: Gateway, world: World) -> None:
    pooled = Upstream(
        vendor="openai",
        base_url=world.mock.base_url,
        secret=world.keys.seal("sk-revoked-" + secrets.token_hex(8)),
        secrets=[world.keys.seal(world.mock.upstream_secret)],
        name="pooled",
    )
    push(gw, routed(world, {"pooled": ModelRoute("pool", "mock")}, upstreams={"pool": pooled}))
    before = len(world.mock.records())
    for _ in range(4):
        assert gw.chat(world.alice_key, chat_body("pooled")).status_code == 200
    seen = [r["headers"]["authorization"] for r in world.mock.records()[before:] if "headers" in r]
    refused = [auth for auth in seen if world.mock.upstream_secret not in auth]
    # The refused key was tried once, then rested; the good one served every call.
    assert len(refused) == 1
    assert len(seen) == 5


def test_too_long_prompt_falls_back_to_the_larger_model(gw: Gateway, world: World) -> None:
    models = {
        "small": ModelRoute(
            upstream="a",
            upstream_model="mock-context",
            targets=[Target("b", "mock-context", 1)],
            fallbacks=["large"],
            context_window=128,
        ),
        "large": ModelRoute(upstream="b", upstream_model="mock", context_window=200_000),
    }
    push(gw, routed(world, models))
    before = len(world.mock.records())
    response = gw.chat(world.alice_key, chat_body("small"))
    assert response.status_code == 200, response.text
    assert response.headers["x-portico-target"] == "vendor-b/mock"
    # The small model's other target serves the same model: it is skipped, not tried.
    assert sum(1 for r in world.mock.records()[before:] if r.get("model") == "mock-context") == 1


def test_too_long_prompt_without_a_fallback_is_a_clear_400(gw: Gateway, world: World) -> None:
    push(gw, routed(world, {"small": ModelRoute("a", "mock-context")}))
    error = assert_openai_error(
        gw.chat(world.alice_key, chat_body("small")), 400, "context_length_exceeded"
    )
    assert "maximum context length" in error["message"]


def test_stream_falls_back_before_its_first_byte(gw: Gateway, world: World) -> None:
    slow = unique("delay-3000")
    route = ModelRoute(
        upstream="a", upstream_model=slow, targets=[Target("b", "mock", 0)], first_token_seconds=0.5
    )
    push(gw, routed(world, {"impatient": route}))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=world.alice_key, max_retries=0)
    started = time.monotonic()
    with client.chat.completions.with_streaming_response.create(
        model="impatient", messages=[{"role": "user", "content": "quick please"}], stream=True
    ) as response:
        assert response.headers["x-portico-target"] == "vendor-b/mock"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
    assert text == "You said: quick please"
    assert time.monotonic() - started < 2.5


def test_broken_stream_is_never_switched_after_it_started(gw: Gateway, world: World) -> None:
    breaking = unique("break-2")
    route = ModelRoute(upstream="a", upstream_model=breaking, targets=[Target("b", "mock", 0)])
    push(gw, routed(world, {"fragile": route}))
    before = len(world.mock.records())
    with gw.http.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json=chat_body("fragile", text="one two three four", stream=True),
        headers={"Authorization": f"Bearer {world.alice_key}"},
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert '"code":"upstream_error"' in body
    assert '"content":"You "' in body
    assert "[DONE]" not in body
    # Only the breaking target was asked: the stream had started, so no fallback.
    assert [r.get("model") for r in world.mock.records()[before:] if "headers" in r] == [breaking]


def test_pinned_call_goes_only_to_the_named_upstream(gw: Gateway, world: World) -> None:
    route = ModelRoute(upstream="a", upstream_model="mock", targets=[Target("b", "mock", 1)])
    push(gw, routed(world, {"pinnable": route}))
    for _ in range(10):
        response = gw.chat(
            world.alice_key, chat_body("pinnable"), headers={"x-portico-upstream": "vendor-b"}
        )
        assert response.headers["x-portico-target"] == "vendor-b/mock"


def test_tool_calls_round_trip_through_the_official_client(gw: Gateway, world: World) -> None:
    push(gw, routed(world, {"tools": ModelRoute("a", "mock")}))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=world.alice_key, max_retries=0)
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo"}]
    first = client.chat.completions.create(model="tools", messages=messages, tools=tools)
    call = function_call(first.choices[0].message.tool_calls)
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup"
    assert call.function.arguments == '{"query":"weather in Oslo"}'
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(model="tools", messages=messages, tools=tools)
    assert second.choices[0].message.content == "Tool said: sunny"
    # Streamed, the arguments arrive in pieces and add up to the same call.
    stream = client.chat.completions.create(
        model="tools", messages=messages[:1], tools=tools, stream=True
    )
    arguments = "".join(
        delta.function.arguments or ""
        for chunk in stream
        if chunk.choices
        for delta in chunk.choices[0].delta.tool_calls or []
        if delta.function
    )
    assert arguments == '{"query":"weather in Oslo"}'


def test_embeddings_are_routed_and_metered(gw: Gateway, world: World) -> None:
    models = {"embed": ModelRoute("a", "mock-embedding", kind="embeddings")}
    push(gw, routed(world, models))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=world.alice_key, max_retries=0)
    answer = client.embeddings.create(model="embed", input=["one two", "three"])
    assert [item.index for item in answer.data] == [0, 1]
    assert answer.model == "embed"
    assert answer.usage.prompt_tokens == 3
    # A chat model is not an embeddings model, and the other way round.
    with pytest.raises(openai.BadRequestError, match="embeddings model"):
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "x"}])
