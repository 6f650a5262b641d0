"""Agent targets: gray release by weight, pinning by header and by consumer, and health
checks that eject a failing target and bring it back."""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.gateway.a2a_support import AgentServer, a2a_revision, agent_server, target
from tests.gateway.conftest import Gateway, World


@pytest.fixture(scope="module")
def agent_v1() -> Iterator[AgentServer]:
    yield from agent_server("v1")


@pytest.fixture(scope="module")
def agent_v2() -> Iterator[AgentServer]:
    yield from agent_server("v2")


def _hello(gw: Gateway, key: str, **headers: str) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": uuid.uuid4().hex,
                "role": "ROLE_USER",
                "parts": [{"text": "hello"}],
            }
        },
    }
    return gw.http.post(
        f"{gw.url}/agents/agent",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "A2A-Version": "1.0", **headers},
    )


def _served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "result" in body, body
    text: str = body["result"]["message"]["parts"][0]["text"]
    return text.removeprefix("hello from ")


def test_a_new_version_takes_its_weights_share(
    gw: Gateway, world: World, agent_v1: AgentServer, agent_v2: AgentServer
) -> None:
    """95/5: over 600 calls v2 takes 30 on average; 4.5 standard deviations
    (sqrt(600 * 0.05 * 0.95) = 5.3) either side is the tolerance, so an honest split
    fails it about once in 150,000 runs."""
    doc = a2a_revision(world, [target("v1", agent_v1, weight=95), target("v2", agent_v2, weight=5)])
    assert gw.push(doc).status_code == 200
    calls = 600
    counts = Counter(_served_by(_hello(gw, world.alice_key)) for _ in range(calls))
    expected = calls * 0.05
    tolerance = 4.5 * math.sqrt(calls * 0.05 * 0.95)
    assert set(counts) == {"v1", "v2"}
    assert abs(counts["v2"] - expected) <= tolerance, counts


def test_a_header_pins_a_version_and_consumer_affinity_keeps_each_app_on_one(
    gw: Gateway, world: World, agent_v1: AgentServer, agent_v2: AgentServer
) -> None:
    doc = a2a_revision(world, [target("v1", agent_v1, weight=1), target("v2", agent_v2, weight=1)])
    assert gw.push(doc).status_code == 200
    pinned = {
        _served_by(_hello(gw, world.alice_key, **{"x-portico-upstream": "v2"})) for _ in range(20)
    }
    assert pinned == {"v2"}
    unknown = _hello(gw, world.alice_key, **{"x-portico-upstream": "v9"})
    assert unknown.json()["error"]["code"] == -32602

    doc = a2a_revision(
        world,
        [target("v1", agent_v1, weight=1), target("v2", agent_v2, weight=1)],
        affinity="consumer",
    )
    assert gw.push(doc).status_code == 200
    alice = {_served_by(_hello(gw, world.alice_key)) for _ in range(20)}
    bob = {_served_by(_hello(gw, world.bob_key)) for _ in range(20)}
    assert len(alice) == 1
    assert len(bob) == 1


def test_an_unhealthy_target_is_ejected_and_comes_back(
    gw: Gateway, world: World, agent_v1: AgentServer, agent_v2: AgentServer
) -> None:
    doc = a2a_revision(
        world,
        [target("v1", agent_v1, weight=1), target("v2", agent_v2, weight=1)],
        health_check_seconds=0.2,
    )
    assert gw.push(doc).status_code == 200
    agent_v2.down = True
    try:
        # The probes (and calls that reach it) eject v2 within a few probe rounds.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            served = [_hello(gw, world.alice_key) for _ in range(10)]
            if all(r.status_code == 200 and "result" in r.json() for r in served):
                break
            time.sleep(0.3)
        answers = [_served_by(_hello(gw, world.alice_key)) for _ in range(40)]
        assert set(answers) == {"v1"}
    finally:
        agent_v2.down = False
    # Once it answers its probes again, it takes traffic again.
    deadline = time.monotonic() + 15
    seen: set[str] = set()
    while time.monotonic() < deadline and seen != {"v1", "v2"}:
        seen |= {_served_by(_hello(gw, world.alice_key)) for _ in range(10)}
        time.sleep(0.2)
    assert seen == {"v1", "v2"}


def test_a_target_that_cannot_be_reached_is_skipped(
    gw: Gateway, world: World, agent_v1: AgentServer
) -> None:
    down = AgentServer("gone", url="http://127.0.0.1:9/a2a")
    doc = a2a_revision(world, [target("gone", down, weight=1000), target("v1", agent_v1, weight=1)])
    assert gw.push(doc).status_code == 200
    answers = {_served_by(_hello(gw, world.alice_key)) for _ in range(10)}
    assert answers == {"v1"}


def test_every_call_is_reported_with_its_target(
    gw: Gateway, world: World, agent_v1: AgentServer
) -> None:
    assert gw.push(a2a_revision(world, [target("v1", agent_v1)])).status_code == 200
    response = _hello(gw, world.alice_key, **{"x-request-id": "a2a-usage-1"})
    assert response.status_code == 200
    assert response.headers["x-portico-target"] == "v1"
    event = gw.wait_for_spooled("a2a-usage-1")
    assert event["route"] == "a2a"
    assert event["model"] == "SendMessage"
    assert event["target"] == "v1"
    assert event["product"] == 4
    assert event["status"] == 200
