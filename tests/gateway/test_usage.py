"""Usage and heartbeats leave the gateway, or wait on disk until they can: none is lost."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import httpx
import msgspec
import pytest
import redis

from devstack.procs import Stack, free_port, wait_until
from gateway.schema import Heartbeat, UsageBatch
from tests.gateway.conftest import ALICE, CHAT_PRODUCT, ControlPlaneStub, World, start_gateway

pytestmark = pytest.mark.e2e

REDIS_SERVER = "/usr/bin/redis-server"
STREAM = "portico:usage"  # the stream the control plane's ingest reads


def test_heartbeats_and_usage_reach_the_control_plane_with_the_gateway_token(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path, control_plane: ControlPlaneStub
) -> None:
    control_plane.usage_status = 503  # ingest is failing at first: usage must wait on disk
    gateway = start_gateway(
        stack,
        http,
        "gateway-reporting",
        tmp_path,
        world,
        env={"PORTICO_CONTROL_PLANE_URL": control_plane.url},
    )
    try:
        assert gateway.push(world.revision(number=5)).status_code == 200
        response = gateway.chat(world.alice_key, headers={"x-request-id": "reported-1"})
        assert response.status_code == 200
        gateway.wait_for_spooled("reported-1")

        control_plane.usage_status = 200
        wait_until(
            lambda: any(e["request_id"] == "reported-1" for e in control_plane.usage_events()),
            timeout=10,
            what="the spooled event to reach ingest",
        )
        wait_until(
            lambda: not list((tmp_path / "spool").glob("*.jsonl")),
            timeout=10,
            what="the delivered spool file to be removed",
        )
        event = next(e for e in control_plane.usage_events() if e["request_id"] == "reported-1")
        assert event["consumer"] == ALICE
        assert event["product"] == CHAT_PRODUCT

        def beats() -> list[Heartbeat]:
            return [
                msgspec.json.decode(body, type=Heartbeat)
                for body in control_plane.bodies("/api/v1/gateway/heartbeat")
            ]

        # The first beat goes out at start, before any revision; later ones report it.
        assert beats()[0].applied_revision is None
        wait_until(
            lambda: beats()[-1].applied_revision == 5, timeout=5, what="a beat reporting rev 5"
        )
        seen = beats()
        assert seen[-1].instance_id == "gateway-reporting"
        assert seen[-1].admin_url == gateway.admin_url
        assert seen[-1].pid == gateway.service.process.pid
        assert seen[-1].version
        assert all(b.started_at == seen[0].started_at for b in seen)
        for body in control_plane.bodies("/api/v1/gateway/usage"):
            msgspec.json.decode(body, type=UsageBatch)
        for _, headers, _ in control_plane.calls:
            assert headers["Authorization"] == f"Bearer {world.keys.auth_token}"
            assert headers["Content-Type"] == "application/json"
    finally:
        gateway.service.stop()


def test_usage_reaches_the_redis_stream_including_what_was_spooled_while_redis_was_down(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    port = free_port()
    gateway = start_gateway(
        stack,
        http,
        "gateway-redis",
        tmp_path / "state",
        world,
        env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"},
    )
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        assert gateway.push(world.revision(number=1)).status_code == 200
        assert gateway.chat(world.alice_key, headers={"x-request-id": "redis-1"}).status_code == 200
        gateway.wait_for_spooled("redis-1")

        server = stack.start(
            "redis",
            [
                REDIS_SERVER,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=tmp_path,
        )
        wait_until(lambda: _pings(client), timeout=10, what="redis-server to answer")
        assert gateway.chat(world.alice_key, headers={"x-request-id": "redis-2"}).status_code == 200

        def streamed() -> dict[str, dict[str, Any]]:
            events = {}
            entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(STREAM))
            for _, fields in entries:
                for event in msgspec.json.decode(fields[b"batch"], type=UsageBatch).events:
                    events[event.request_id] = msgspec.structs.asdict(event)
            return events

        wait_until(
            lambda: {"redis-1", "redis-2"} <= set(streamed()),
            timeout=10,
            what="both events in the portico:usage stream",
        )
        wait_until(
            lambda: not list((tmp_path / "state" / "spool").glob("*.jsonl")),
            timeout=10,
            what="the delivered spool file to be removed",
        )
        for request_id in ("redis-1", "redis-2"):
            event = streamed()[request_id]
            assert event["consumer"] == ALICE
            assert event["product"] == CHAT_PRODUCT
            assert event["model"] == "gpt-test"
            assert (event["prompt_tokens"], event["completion_tokens"]) == (2, 4)
        server.stop()
    finally:
        client.close()
        gateway.service.stop()


def test_pending_usage_is_spooled_at_shutdown_when_it_cannot_be_sent(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    gateway = start_gateway(
        stack,
        http,
        "gateway-shutdown",
        tmp_path,
        world,
        # No flush would happen for a minute: only the shutdown can save these events.
        env={"PORTICO_GATEWAY_USAGE_FLUSH_SECONDS": "60"},
    )
    assert gateway.push(world.revision(number=1)).status_code == 200
    for n in range(3):
        response = gateway.chat(world.alice_key, headers={"x-request-id": f"at-shutdown-{n}"})
        assert response.status_code == 200
    assert not gateway.spooled_events()
    gateway.service.stop()
    spooled = {e["request_id"]: e for e in gateway.spooled_events()}
    assert {"at-shutdown-0", "at-shutdown-1", "at-shutdown-2"} <= set(spooled)
    assert all(spooled[f"at-shutdown-{n}"]["completion_tokens"] == 4 for n in range(3))


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
