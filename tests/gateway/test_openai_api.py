"""The official OpenAI client against the gateway: completions, streams, models."""

from __future__ import annotations

import orjson
import pytest
from openai import OpenAI

from tests.gateway.conftest import (
    ALICE,
    ALICE_CREDENTIAL,
    CHAT_PRODUCT,
    Gateway,
    World,
    chat_body,
)

pytestmark = pytest.mark.e2e


def client(gw: Gateway, key: str) -> OpenAI:
    return OpenAI(api_key=key, base_url=gw.url + "/v1", max_retries=0, timeout=15)


def test_chat_completion_through_the_gateway(gw: Gateway, world: World) -> None:
    with client(gw, world.alice_key) as openai:
        raw = openai.chat.completions.with_raw_response.create(
            model="gpt-test", messages=[{"role": "user", "content": "three little words"}]
        )
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: three little words"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 5)
    # The upstream saw its own model name; the client sees the one it asked for.
    assert completion.model == "gpt-test"
    event = gw.wait_for_spooled(raw.headers["x-request-id"])
    assert event["status"] == 200
    assert (event["prompt_tokens"], event["completion_tokens"]) == (3, 5)
    assert event["stream"] is False


def test_stream_without_include_usage_has_no_usage_chunk_but_is_metered(
    gw: Gateway, world: World
) -> None:
    with client(gw, world.alice_key) as openai:
        stream = openai.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "stream me please"}],
            stream=True,
            extra_headers={"x-request-id": "stream-no-usage-1"},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream me please"
    assert all(c.choices for c in chunks), "the usage-only chunk reached a client that did not ask"
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    event = gw.wait_for_spooled("stream-no-usage-1")
    assert (event["prompt_tokens"], event["completion_tokens"]) == (3, 5)
    assert event["stream"] is True


def test_stream_with_include_usage_gets_the_usage_chunk(gw: Gateway, world: World) -> None:
    with client(gw, world.alice_key) as openai:
        stream = openai.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "count my tokens"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-request-id": "stream-with-usage-1"},
        )
        chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 5)
    assert all(c.usage is None for c in chunks[:-1])
    event = gw.wait_for_spooled("stream-with-usage-1")
    assert (event["prompt_tokens"], event["completion_tokens"]) == (3, 5)


def test_raw_stream_is_relayed_event_by_event_and_ends_with_done(gw: Gateway, world: World) -> None:
    body = chat_body(stream=True)
    headers = {"Authorization": f"Bearer {world.alice_key}"}
    with gw.http.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=15
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        raw = response.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["choices"] for c in chunks)
    # Exactly what OpenAI sends a client that did not ask for usage: no usage field at all.
    assert all("usage" not in c for c in chunks)


def test_models_list_shows_only_models_of_subscribed_products(gw: Gateway, world: World) -> None:
    with client(gw, world.alice_key) as openai:
        alice_models = {m.id: m.owned_by for m in openai.models.list()}
    with client(gw, world.bob_key) as openai:
        bob_models = {m.id: m.owned_by for m in openai.models.list()}
    assert "gpt-test" in alice_models
    assert alice_models["gpt-test"] == "chat"
    assert "other-model" not in alice_models
    assert bob_models == {"other-model": "other"}


def test_models_list_is_an_openai_list_object(gw: Gateway, world: World) -> None:
    response = gw.http.get(gw.url + "/v1/models", headers={"api-key": world.bob_key})
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [{"id": "other-model", "object": "model", "created": 0, "owned_by": "other"}],
    }


def test_model_retrieve_hides_models_the_key_cannot_use(gw: Gateway, world: World) -> None:
    with client(gw, world.alice_key) as openai:
        assert openai.models.retrieve("gpt-test").owned_by == "chat"
    response = gw.http.get(
        gw.url + "/v1/models/other-model", headers={"x-api-key": world.alice_key}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_usage_event_names_consumer_credential_product_and_model(gw: Gateway, world: World) -> None:
    response = gw.chat(world.alice_key, headers={"x-request-id": "usage-fields-1"})
    assert response.status_code == 200
    event = gw.wait_for_spooled("usage-fields-1")
    assert event["consumer"] == ALICE
    assert event["credential"] == ALICE_CREDENTIAL
    assert event["product"] == CHAT_PRODUCT
    assert event["model"] == "gpt-test"
    assert event["route"] == "chat.completions"
    assert event["gateway"] == "gateway-shared"
    assert event["latency_ms"] > 0
