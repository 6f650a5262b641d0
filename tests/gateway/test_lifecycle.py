"""Process life: several workers side by side, and a graceful drain on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import msgspec
import pytest

from devstack.procs import Stack, wait_until
from gateway.revision import encode
from gateway.schema import Heartbeat
from tests.gateway.conftest import ControlPlaneStub, World, chat_body, start_gateway

pytestmark = pytest.mark.e2e


def test_each_worker_process_has_its_own_admin_listener_name_and_heartbeat(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path, control_plane: ControlPlaneStub
) -> None:
    gateway = start_gateway(
        stack,
        http,
        "gateway-workers",
        tmp_path,
        world,
        env={
            "PORTICO_GATEWAY_WORKERS": "2",
            "PORTICO_GATEWAY_ADMIN_PORT": "0",
            "PORTICO_CONTROL_PLANE_URL": control_plane.url,
        },
    )
    try:

        def instances() -> dict[str, Heartbeat]:
            beats = [
                msgspec.json.decode(body, type=Heartbeat)
                for body in control_plane.bodies("/api/v1/gateway/heartbeat")
            ]
            return {beat.instance_id: beat for beat in beats}

        wait_until(lambda: len(instances()) == 2, timeout=10, what="heartbeats from two workers")
        beats = instances()
        assert all(name.startswith("gateway-workers-") for name in beats)
        assert len({beat.admin_url for beat in beats.values()}) == 2
        assert len({beat.pid for beat in beats.values()}) == 2

        # The control plane pushes to every advertised admin URL; then all traffic works.
        token = {"Authorization": f"Bearer {world.keys.auth_token}"}
        for beat in beats.values():
            response = http.put(
                beat.admin_url + "/revision",
                content=encode(world.revision(number=3)),
                headers=token,
            )
            assert response.json() == {"applied": 3}
        wait_until(
            lambda: all(b.applied_revision == 3 for b in instances().values()),
            timeout=5,
            what="both workers to report revision 3",
        )
        for _ in range(6):
            assert gateway.chat(world.alice_key).status_code == 200
    finally:
        gateway.service.stop()


def test_running_stream_finishes_during_graceful_shutdown(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    gateway = start_gateway(stack, http, "gateway-drain", tmp_path, world)
    assert gateway.push(world.revision(number=1)).status_code == 200
    body = chat_body("gpt-medium-stream", stream=True)
    headers = {"Authorization": f"Bearer {world.alice_key}", "x-request-id": "drained-stream"}
    with http.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        received = next(chunks)
        gateway.service.process.send_signal(signal.SIGTERM)
        for chunk in chunks:
            received += chunk
    # 40 chunks 20 ms apart: the stream outlived the signal and ended properly.
    assert received.count(b'"content":') == 41
    assert received.endswith(b"data: [DONE]\n\n")
    assert gateway.service.process.wait(timeout=10) in (0, -signal.SIGTERM)
    with pytest.raises(httpx.ConnectError):
        http.get(gateway.url + "/healthz")
    event = next(e for e in gateway.spooled_events() if e["request_id"] == "drained-stream")
    assert event["status"] == 200
    assert event["completion_tokens"] == 40
