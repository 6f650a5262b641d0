"""What reaches the upstream: its own credential, the routed model, nothing of the client's."""

from __future__ import annotations

import orjson
import pytest

from devstack.procs import wait_until
from tests.gateway.conftest import Gateway, World, chat_body

pytestmark = pytest.mark.e2e


def test_upstream_receives_its_secret_and_never_the_clients_key(gw: Gateway, world: World) -> None:
    mock = world.mock
    before = len(mock.records())
    client_headers = [
        {"Authorization": f"Bearer {world.alice_key}"},
        {"x-api-key": world.alice_key},
        {"api-key": world.alice_key},
    ]
    for headers in client_headers:
        extra = {"Cookie": "session=client-cookie", "X-Forwarded-For": "203.0.113.9"}
        response = gw.chat(None, headers={**headers, **extra})
        assert response.status_code == 200, response.text
    arrived = mock.records()[before:]
    assert len(arrived) == len(client_headers)
    for record in arrived:
        headers = record["headers"]
        assert headers["authorization"] == f"Bearer {mock.upstream_secret}"
        assert world.alice_key not in orjson.dumps(record).decode()
        assert not {"x-api-key", "api-key", "cookie", "x-forwarded-for"} & set(headers)


def test_upstream_rejecting_the_credential_proves_the_mock_checks_it(
    gw: Gateway, world: World
) -> None:
    # The same request with the wrong upstream secret fails: the 200s above are not luck.
    assert gw.chat(world.alice_key, chat_body("gpt-misconfigured")).status_code == 502
    assert gw.chat(world.alice_key, chat_body("gpt-test")).status_code == 200


def test_routed_model_name_replaces_the_public_one_upstream_and_back(
    gw: Gateway, world: World
) -> None:
    before = len(world.mock.records())
    response = gw.chat(world.alice_key, chat_body("gpt-test"))
    assert world.mock.records()[before]["model"] == "mock"
    assert response.json()["model"] == "gpt-test"
    streamed = gw.chat(world.alice_key, chat_body("gpt-test", stream=True)).text
    assert '"model":"gpt-test"' in streamed
    assert '"model":"mock"' not in streamed


def test_unchanged_body_is_passed_through_byte_for_byte(gw: Gateway, world: World) -> None:
    # Public and upstream names are both "mock": nothing to rewrite, so odd but valid
    # formatting (and unknown fields) reach the upstream untouched.
    body = b'{ "model" : "mock",  "messages": [{"role": "user", "content": "as is"}], "x": 1 }'
    response = gw.http.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {world.alice_key}"},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: as is"
    assert world.mock.records()[-1]["headers"]["content-length"] == str(len(body))


def test_client_leaving_mid_stream_closes_the_upstream_stream(gw: Gateway, world: World) -> None:
    body = chat_body("gpt-long-stream", stream=True)
    headers = {"Authorization": f"Bearer {world.alice_key}"}
    with gw.http.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        for received, _ in enumerate(response.iter_bytes(), start=1):
            if received == 3:
                break
    # 200 chunks 20 ms apart would take 4 s; the mock must see the gateway leave well before.
    wait_until(
        lambda: any(r.get("event") == "stream_aborted" for r in world.mock.records()),
        timeout=2.5,
        what="the upstream stream to be closed",
    )
    aborted = next(r for r in world.mock.records() if r.get("event") == "stream_aborted")
    assert aborted["after_events"] < 100
