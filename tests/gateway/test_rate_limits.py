"""Plan limits enforced by real gateway processes: in-process, and shared through Redis."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import anthropic
import httpx
import msgspec
import openai
import pytest

from devstack.procs import Stack
from gateway.schema import ModelRoute, Plan
from tests.gateway.conftest import (
    Gateway,
    World,
    assert_openai_error,
    chat_body,
    start_redis_gateways,
)
from tests.gateway.test_routing import push, routed

pytestmark = pytest.mark.e2e


def _inside_one_minute(seconds: float) -> None:
    """Wait, if need be, so that the next ``seconds`` fall inside one clock minute
    (limits count in windows aligned to the minute)."""
    into = time.time() % 60
    if into > 60 - seconds:
        time.sleep(60 - into + 0.05)


def test_fifty_concurrent_clients_on_two_processes_hit_one_limit_exactly(
    stack: Stack, http: httpx.Client, world: World, redis_url: str, tmp_path: Path
) -> None:
    gateways = start_redis_gateways(
        stack,
        http,
        "gateway-rl",
        tmp_path,
        world,
        redis_url,
        env={"PORTICO_GATEWAY_REDIS_TIMEOUT_SECONDS": "5"},
    )
    plan = Plan(id=7, name="Tight", requests_per_minute=20)
    doc = routed(world, {"limited": ModelRoute("a", "mock")}, plan=plan)
    for gateway in gateways:
        push(gateway, doc)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            start = asyncio.Event()

            async def one(gateway: Gateway) -> httpx.Response:
                await start.wait()
                return await client.post(
                    gateway.url + "/v1/chat/completions",
                    json=chat_body("limited"),
                    headers={"Authorization": f"Bearer {world.alice_key}"},
                )

            tasks = [asyncio.create_task(one(gateways[n % 2])) for n in range(50)]
            await asyncio.sleep(0.1)
            start.set()
            return await asyncio.gather(*tasks)

    _inside_one_minute(10)
    responses = asyncio.run(burst())
    assert Counter(r.status_code for r in responses) == {200: 20, 429: 30}
    refused = next(r for r in responses if r.status_code == 429)
    error = assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert "requests per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit-requests"] == "20"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    served = next(r for r in responses if r.status_code == 200)
    assert served.headers["x-ratelimit-limit-requests"] == "20"
    # Both processes served some: the limit held across them, not in each.
    assert {r.headers["x-portico-target"] for r in responses if r.status_code == 200}


def test_token_limits_reserve_then_settle_in_process(gw: Gateway, world: World) -> None:
    plan = Plan(id=8, name="Few tokens", tokens_per_minute=100)
    push(gw, routed(world, {"metered": ModelRoute("a", "mock")}, plan=plan))
    _inside_one_minute(5)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=world.alice_key, max_retries=0)
    served: list[int] = []

    def until_refused() -> None:
        for _ in range(20):
            completion = client.chat.completions.create(
                model="metered",
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=60,
            )
            assert completion.usage is not None
            served.append(completion.usage.total_tokens)

    with pytest.raises(openai.RateLimitError) as refused:
        until_refused()
    calls = len(served)
    assert set(served) == {6}  # the mock counts words
    # Each call reserves its prompt estimate plus max_tokens (about 83 tokens) and is
    # settled to the 6 it used: without the settling only one call would fit in 100;
    # with it, a few do, until the used tokens plus one reservation exceed the limit.
    assert 2 <= calls <= 4
    assert refused.value.response.headers["x-ratelimit-limit-tokens"] == "100"
    assert "tokens per minute" in refused.value.message


def test_limits_answer_anthropic_clients_in_anthropic_format(gw: Gateway, world: World) -> None:
    plan = Plan(id=9, name="One a minute", requests_per_minute=1)
    push(gw, routed(world, {"claude-ish": ModelRoute("a", "mock")}, plan=plan))
    _inside_one_minute(5)
    client = anthropic.Anthropic(base_url=gw.url, api_key=world.alice_key, max_retries=0)
    message = client.messages.create(
        model="claude-ish", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(
            model="claude-ish", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "rate_limit_error"
    assert refused.value.response.headers["retry-after"]


def test_an_apps_own_limit_holds_on_top_of_its_plan(gw: Gateway, world: World) -> None:
    """An admin's limit for one app (``Subscription.requests_per_minute``) refuses that
    app alone, whatever the product's kind; the plan here has no limit at all."""
    doc = routed(world, {"own": ModelRoute("a", "mock")})
    alice = doc.consumers["1"]
    subscription = msgspec.structs.replace(alice.subscriptions["chat"], requests_per_minute=2)
    doc = msgspec.structs.replace(
        doc,
        consumers={
            **doc.consumers,
            "1": msgspec.structs.replace(alice, subscriptions={"chat": subscription}),
        },
    )
    push(gw, doc)
    _inside_one_minute(5)
    statuses = [gw.chat(world.alice_key, chat_body(model="own")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = gw.chat(world.alice_key, chat_body(model="own"))
    error = assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert "the portal's administrators set for this app" in error["message"]
    assert "retry-after" in refused.headers
