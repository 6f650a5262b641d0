"""The response cache, consumer affinity, token estimates and the context-window check,
through real gateway processes and the mock vendor (whose request log shows what
reached it)."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from pathlib import Path

import anthropic
import httpx
import msgspec
import openai
import pytest

from devstack.procs import Stack
from gateway.schema import (
    Consumer,
    Credential,
    ModelRoute,
    ResponseCache,
    Revision,
    Target,
)
from tests.gateway.conftest import (
    ALICE,
    BOB,
    BOB_CREDENTIAL,
    Gateway,
    World,
    assert_openai_error,
    chat_body,
    sha256,
    start_redis_gateways,
)
from tests.gateway.test_routing import arrived, push, routed, unique

pytestmark = pytest.mark.e2e


def cached_revision(
    world: World, models: dict[str, ModelRoute], *, ttl: int = 60, shared: bool = False
) -> Revision:
    """``routed`` with the product's cache on, and Bob subscribed to it too."""
    doc = routed(world, models)
    product = msgspec.structs.replace(
        doc.products["chat"], cache=ResponseCache(ttl_seconds=ttl, shared=shared)
    )
    alice = doc.consumers[str(ALICE)]
    return msgspec.structs.replace(
        doc,
        products={"chat": product},
        consumers={
            **doc.consumers,
            str(BOB): Consumer(id=BOB, subscriptions=dict(alice.subscriptions)),
        },
        credentials={
            **doc.credentials,
            sha256(world.bob_key): Credential(id=BOB_CREDENTIAL, consumer=BOB),
        },
    )


def test_identical_request_is_answered_from_the_cache(gw: Gateway, world: World) -> None:
    model = unique("cached")
    push(gw, cached_revision(world, {"cached": ModelRoute("a", model)}))
    before = len(world.mock.records())
    body = chat_body("cached", text=f"remember {secrets.token_hex(4)}")
    first = gw.chat(world.alice_key, body)
    second = gw.chat(world.alice_key, body)
    assert first.status_code == second.status_code == 200, second.text
    assert first.headers["x-portico-cache"] == "miss"
    assert second.headers["x-portico-cache"] == "hit"
    assert second.content == first.content
    assert int(second.headers["age"]) >= 0
    assert second.headers["x-portico-target"] == first.headers["x-portico-target"]
    assert arrived(world, before, model) == 1
    # The hit is a call like any other in the usage, with no tokens spent.
    event = gw.wait_for_spooled(second.headers["x-request-id"])
    assert (event["status"], event["cached"], event["prompt_tokens"]) == (200, True, 0)
    missed = gw.wait_for_spooled(first.headers["x-request-id"])
    assert missed["cached"] is False
    assert missed["prompt_tokens"] > 0
    assert missed["target"] == f"vendor-a/{model}"
    # A different body is a different request.
    other = gw.chat(world.alice_key, {**body, "temperature": 0.5})
    assert other.headers["x-portico-cache"] == "miss"
    assert arrived(world, before, model) == 2


def test_cached_answers_belong_to_one_consumer_unless_shared(gw: Gateway, world: World) -> None:
    model = unique("private")
    push(gw, cached_revision(world, {"private": ModelRoute("a", model)}))
    body = chat_body("private", text=f"mine {secrets.token_hex(4)}")
    before = len(world.mock.records())
    assert gw.chat(world.alice_key, body).headers["x-portico-cache"] == "miss"
    assert gw.chat(world.bob_key, body).headers["x-portico-cache"] == "miss"
    assert arrived(world, before, model) == 2

    push(gw, cached_revision(world, {"private": ModelRoute("a", model)}, shared=True))
    body = chat_body("private", text=f"ours {secrets.token_hex(4)}")
    assert gw.chat(world.alice_key, body).headers["x-portico-cache"] == "miss"
    assert gw.chat(world.bob_key, body).headers["x-portico-cache"] == "hit"
    assert arrived(world, before, model) == 3


def test_streams_are_replayed_whole(gw: Gateway, world: World) -> None:
    model = unique("streamed")
    push(gw, cached_revision(world, {"streamed": ModelRoute("a", model)}))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=world.alice_key, max_retries=0)
    text = f"tell me {secrets.token_hex(4)}"
    before = len(world.mock.records())
    answers = []
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model="streamed", messages=[{"role": "user", "content": text}], stream=True
        ) as response:
            state = response.headers["x-portico-cache"]
            said = "".join(
                chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
            )
            answers.append((state, said))
    assert answers == [("miss", f"You said: {text}"), ("hit", f"You said: {text}")]
    assert arrived(world, before, model) == 1
    # The Anthropic API is keyed apart from the OpenAI one, and cached the same way.
    claude = anthropic.Anthropic(base_url=gw.url, api_key=world.alice_key, max_retries=0)
    replies = [
        claude.messages.with_raw_response.create(
            model="streamed", max_tokens=50, messages=[{"role": "user", "content": text}]
        )
        for _ in range(2)
    ]
    assert [r.headers["x-portico-cache"] for r in replies] == ["miss", "hit"]
    assert replies[1].parse().content[0].text == f"You said: {text}"  # type: ignore[union-attr]
    assert arrived(world, before, model) == 2


def test_clients_can_refresh_or_skip_the_cache(gw: Gateway, world: World) -> None:
    model = unique("steered")
    push(gw, cached_revision(world, {"steered": ModelRoute("a", model)}))
    body = chat_body("steered", text=f"fresh {secrets.token_hex(4)}")
    before = len(world.mock.records())
    assert gw.chat(world.alice_key, body).headers["x-portico-cache"] == "miss"
    refreshed = gw.chat(world.alice_key, body, headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-portico-cache"] == "miss"
    skipped = gw.chat(world.alice_key, body, headers={"x-portico-cache": "skip"})
    assert skipped.headers["x-portico-cache"] == "skip"
    assert arrived(world, before, model) == 3
    assert gw.chat(world.alice_key, body).headers["x-portico-cache"] == "hit"


def test_failures_are_never_cached_and_entries_expire(gw: Gateway, world: World) -> None:
    broken = unique("error-400")
    model = unique("brief")
    push(
        gw,
        cached_revision(
            world, {"broken": ModelRoute("a", broken), "brief": ModelRoute("a", model)}, ttl=1
        ),
    )
    before = len(world.mock.records())
    for _ in range(2):
        assert gw.chat(world.alice_key, chat_body("broken")).status_code == 400
    assert arrived(world, before, broken) == 2
    body = chat_body("brief", text=f"soon gone {secrets.token_hex(4)}")
    assert gw.chat(world.alice_key, body).headers["x-portico-cache"] == "miss"
    assert gw.chat(world.alice_key, body).headers["x-portico-cache"] == "hit"
    time.sleep(1.2)
    assert gw.chat(world.alice_key, body).headers["x-portico-cache"] == "miss"
    assert arrived(world, before, model) == 2


def test_redis_cache_is_shared_by_gateway_processes(
    stack: Stack, http: httpx.Client, world: World, redis_url: str, tmp_path: Path
) -> None:
    gateways = start_redis_gateways(stack, http, "gateway-cache", tmp_path, world, redis_url)
    model = unique("shared")
    doc = cached_revision(world, {"shared": ModelRoute("a", model)})
    for gateway in gateways:
        push(gateway, doc)
    body = chat_body("shared", text=f"across {secrets.token_hex(4)}")
    before = len(world.mock.records())
    first = gateways[0].chat(world.alice_key, body)
    second = gateways[1].chat(world.alice_key, body)
    assert (first.headers["x-portico-cache"], second.headers["x-portico-cache"]) == ("miss", "hit")
    assert second.content == first.content
    assert arrived(world, before, model) == 1


def test_products_without_the_cache_send_every_call_upstream(gw: Gateway, world: World) -> None:
    model = unique("uncached")
    push(gw, routed(world, {"uncached": ModelRoute("a", model)}))
    before = len(world.mock.records())
    body = chat_body("uncached", text="again")
    responses = [gw.chat(world.alice_key, body) for _ in range(2)]
    assert all("x-portico-cache" not in r.headers for r in responses)
    assert arrived(world, before, model) == 2


# Consumer affinity ---------------------------------------------------------------------


def test_consumer_affinity_keeps_each_consumer_on_one_target(gw: Gateway, world: World) -> None:
    route = ModelRoute(
        upstream="a", upstream_model="mock", targets=[Target("b", "mock", 1)], affinity="consumer"
    )
    doc = routed(world, {"sticky": route})
    keys = {n: f"portico_affinity_{n}_{secrets.token_hex(8)}" for n in range(100, 200)}
    subscriptions = doc.consumers[str(ALICE)].subscriptions
    doc = msgspec.structs.replace(
        doc,
        consumers={
            **doc.consumers,
            **{str(n): Consumer(id=n, subscriptions=subscriptions) for n in keys},
        },
        credentials={
            **doc.credentials,
            **{sha256(key): Credential(id=1000 + n, consumer=n) for n, key in keys.items()},
        },
    )
    push(gw, doc)
    chosen: dict[int, set[str]] = {}
    for n, key in keys.items():
        for _ in range(3):
            response = gw.chat(key, chat_body("sticky"))
            assert response.status_code == 200, response.text
            chosen.setdefault(n, set()).add(response.headers["x-portico-target"])
    assert all(len(targets) == 1 for targets in chosen.values()), chosen
    shares = Counter(next(iter(targets)) for targets in chosen.values())
    # Equal weights: 50 of 100 consumers expected on each (sd 5); five deviations.
    assert 25 <= shares["vendor-a/mock"] <= 75, shares


# Token estimates -----------------------------------------------------------------------


def test_tokens_are_estimated_when_the_vendor_reports_none(gw: Gateway, world: World) -> None:
    model = unique("no-usage")
    push(gw, routed(world, {"silent": ModelRoute("a", model)}))
    text = "please count these seven words for me"
    whole = gw.chat(world.alice_key, chat_body("silent", text=text))
    assert whole.status_code == 200, whole.text
    with gw.http.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json=chat_body("silent", text=text, stream=True),
        headers={"Authorization": f"Bearer {world.alice_key}"},
    ) as streamed:
        assert streamed.status_code == 200
        body = streamed.read().decode()
    assert '"usage"' not in body  # the client did not ask, and the vendor said nothing
    for response in (whole, streamed):
        event = gw.wait_for_spooled(response.headers["x-request-id"])
        assert event["estimated"] is True
        # "You said: please count these seven words for me": ten words and a colon.
        assert 8 <= event["completion_tokens"] <= 16, event
        assert 8 <= event["prompt_tokens"] <= 20, event


def test_vendor_counts_are_not_marked_estimated(gw: Gateway, world: World) -> None:
    push(gw, routed(world, {"counted": ModelRoute("a", "mock")}))
    response = gw.chat(world.alice_key, chat_body("counted", text="two words"))
    event = gw.wait_for_spooled(response.headers["x-request-id"])
    assert (event["estimated"], event["prompt_tokens"]) == (False, 2)


# Context window ------------------------------------------------------------------------


def test_prompt_far_beyond_the_context_window_skips_the_model(gw: Gateway, world: World) -> None:
    small = unique("small")
    models = {
        "small": ModelRoute("a", small, context_window=100, fallbacks=["large"]),
        "large": ModelRoute("b", "mock", context_window=100_000),
        "only": ModelRoute("a", small, context_window=100),
    }
    push(gw, routed(world, models))
    before = len(world.mock.records())
    long_text = " ".join(["word"] * 1000)
    response = gw.chat(world.alice_key, chat_body("small", text=long_text))
    assert response.status_code == 200, response.text
    assert response.headers["x-portico-target"] == "vendor-b/mock"
    error = assert_openai_error(
        gw.chat(world.alice_key, chat_body("only", text=long_text)), 400, "context_length_exceeded"
    )
    assert "maximum context length is 100 tokens" in error["message"]
    # Neither call sent the long prompt to the small model; a short one still goes there.
    assert arrived(world, before, small) == 0
    assert gw.chat(world.alice_key, chat_body("only", text="short")).status_code == 200
    assert arrived(world, before, small) == 1
