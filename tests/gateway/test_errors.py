"""Every refusal and failure is an OpenAI error object with a request id, and says why."""

from __future__ import annotations

import time

import pytest

from tests.gateway.conftest import Gateway, World, assert_openai_error, chat_body

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    "header", ["Authorization: Bearer {key}", "x-api-key: {key}", "api-key: {key}"]
)
def test_key_is_accepted_in_all_three_header_styles(gw: Gateway, world: World, header: str) -> None:
    name, value = header.format(key=world.alice_key).split(": ", 1)
    response = gw.chat(None, headers={name: value})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]


def test_missing_key_is_refused_with_401(gw: Gateway) -> None:
    error = assert_openai_error(gw.chat(None), 401, "invalid_api_key")
    assert error["type"] == "invalid_request_error"
    assert "Authorization: Bearer" in error["message"]


def test_unknown_key_is_refused_with_401_without_echoing_it(gw: Gateway) -> None:
    key = "portico_thisKeyWasNeverIssuedToAnyone0000000000"
    response = gw.chat(key)
    assert_openai_error(response, 401, "invalid_api_key")
    assert key not in response.text
    assert key[8:20] not in response.text


def test_expired_key_is_refused_like_an_unknown_one(gw: Gateway, world: World) -> None:
    response = gw.chat(world.expired_key)
    assert_openai_error(response, 401, "invalid_api_key")
    assert world.expired_key not in response.text


def test_unsubscribed_product_is_refused_with_403(gw: Gateway, world: World) -> None:
    error = assert_openai_error(
        gw.chat(world.bob_key, chat_body("gpt-test")), 403, "permission_denied"
    )
    assert "not subscribed" in error["message"]
    assert "'chat'" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2, 3]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 42, "messages": []}', "model"),
        (b'{"model": "gpt-test"}', "messages"),
        (b'{"model": "gpt-test", "messages": "hello"}', "messages"),
        (b'{"model": "gpt-test", "messages": [], "stream": "yes"}', "stream"),
    ],
)
def test_malformed_requests_are_refused_with_400(
    gw: Gateway, world: World, body: bytes, param: str | None
) -> None:
    response = gw.http.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {world.alice_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = assert_openai_error(response, 400, response.json()["error"]["code"])
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_unknown_model_is_404_model_not_found(gw: Gateway, world: World) -> None:
    error = assert_openai_error(
        gw.chat(world.alice_key, chat_body("gpt-nonexistent")), 404, "model_not_found"
    )
    assert error["param"] == "model"


def test_unknown_path_is_404(gw: Gateway, world: World) -> None:
    response = gw.http.get(gw.url + "/v1/unknown", headers={"x-api-key": world.alice_key})
    assert_openai_error(response, 404, "unknown_url")
    assert_openai_error(gw.http.get(gw.url + "/nothing-here"), 404, "unknown_url")
    assert_openai_error(gw.http.get(gw.url + "/v1/chat/completions"), 404, "unknown_url")


def test_body_over_the_limit_is_refused_with_413(gw: Gateway, world: World) -> None:
    big = chat_body(text="x" * (70 * 1024))
    assert_openai_error(gw.chat(world.alice_key, big), 413, "request_too_large")


def test_chunked_body_over_the_limit_is_refused_with_413(gw: Gateway, world: World) -> None:
    def chunks():  # no Content-Length: the gateway must count as it reads
        yield b'{"model": "gpt-test", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}]}'

    response = gw.http.post(
        gw.url + "/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {world.alice_key}"},
    )
    assert_openai_error(response, 413, "request_too_large")


def test_unreachable_upstream_is_502(gw: Gateway, world: World) -> None:
    error = assert_openai_error(
        gw.chat(world.alice_key, chat_body("gpt-down")), 502, "upstream_unavailable"
    )
    assert error["type"] == "upstream_error"


def test_slow_upstream_is_504_after_its_timeout(gw: Gateway, world: World) -> None:
    started = time.monotonic()
    response = gw.chat(world.alice_key, chat_body("gpt-slow"))
    elapsed = time.monotonic() - started
    assert_openai_error(response, 504, "upstream_timeout")
    assert elapsed < 2.5, "the gateway waited for the upstream beyond timeout_seconds"


def test_upstream_5xx_is_502_without_relaying_the_upstream_body(gw: Gateway, world: World) -> None:
    response = gw.chat(world.alice_key, chat_body("gpt-broken"))
    error = assert_openai_error(response, 502, "upstream_error")
    assert "HTTP 500" in error["message"]
    assert "The server had an error" not in response.text


def test_upstream_rate_limit_with_nowhere_else_to_go_is_429_with_retry_after(
    gw: Gateway, world: World
) -> None:
    response = gw.chat(world.alice_key, chat_body("gpt-limited"))
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert error["type"] == "upstream_error"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-request-id"]


def test_upstream_4xx_quoting_the_upstream_credential_is_redacted(
    gw: Gateway, world: World
) -> None:
    response = gw.chat(world.alice_key, chat_body("gpt-quoting"))
    assert response.status_code == 400
    assert world.mock.upstream_secret not in response.text
    assert "Credential used: Bearer [redacted]" in response.json()["error"]["message"]


def test_upstream_refusing_the_gateway_credential_is_502_not_401(gw: Gateway, world: World) -> None:
    # The client's key was fine; a 401 would send its developer after the wrong problem.
    response = gw.chat(world.alice_key, chat_body("gpt-misconfigured"))
    error = assert_openai_error(response, 502, "upstream_auth_failed")
    assert "Incorrect API key" not in response.text
    assert "sk-not-the-one" not in error["message"]


def test_client_request_id_is_kept_when_well_formed(gw: Gateway, world: World) -> None:
    response = gw.chat(world.alice_key, headers={"x-request-id": "client.req-42_A"})
    assert response.headers["x-request-id"] == "client.req-42_A"
    error = assert_openai_error(
        gw.chat(None, headers={"x-request-id": "client.req-43_B"}), 401, "invalid_api_key"
    )
    assert error["request_id"] == "client.req-43_B"


@pytest.mark.parametrize("bad", ["x" * 65, "has space", "semi;colon", "new\tline"])
def test_client_request_id_is_replaced_when_malformed(gw: Gateway, world: World, bad: str) -> None:
    response = gw.chat(world.alice_key, headers={"x-request-id": bad})
    assert response.status_code == 200
    generated = response.headers["x-request-id"]
    assert generated != bad
    assert 1 <= len(generated) <= 64


def test_health_endpoints_carry_request_ids(gw: Gateway) -> None:
    health = gw.http.get(gw.url + "/healthz")
    assert health.status_code == 200
    assert health.headers["x-request-id"]
    ready = gw.http.get(gw.url + "/readyz")
    assert ready.status_code == 200
    assert ready.headers["x-request-id"]
    assert isinstance(ready.json()["revision"], int)


def test_rejected_calls_are_recorded_as_usage_too(gw: Gateway, world: World) -> None:
    gw.chat("portico_unknown", headers={"x-request-id": "rejected-401"})
    gw.chat(world.bob_key, chat_body("gpt-test"), headers={"x-request-id": "rejected-403"})
    unauthenticated = gw.wait_for_spooled("rejected-401")
    assert unauthenticated["status"] == 401
    assert unauthenticated["consumer"] is None
    assert unauthenticated["credential"] is None
    unsubscribed = gw.wait_for_spooled("rejected-403")
    assert unsubscribed["status"] == 403
    assert unsubscribed["consumer"] == 2
    assert unsubscribed["product"] == 1
