"""The last-known-good revision: what a gateway serves after a restart on its own."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from devstack.procs import Stack
from tests.gateway.conftest import World, assert_openai_error, start_gateway

pytestmark = pytest.mark.e2e


def test_gateway_without_a_revision_is_not_ready_and_answers_503(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    gateway = start_gateway(stack, http, "gateway-empty", tmp_path, world)
    try:
        assert http.get(gateway.url + "/healthz").status_code == 200
        ready = http.get(gateway.url + "/readyz")
        assert ready.status_code == 503
        assert ready.headers["x-request-id"]
        assert_openai_error(gateway.chat(world.alice_key), 503, "gateway_not_ready")
        assert gateway.admin("GET", "/status").json()["applied"] is None
    finally:
        gateway.service.stop()


def test_restart_with_the_control_plane_down_serves_the_last_known_good_revision(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    first = start_gateway(stack, http, "gateway-before-restart", tmp_path, world)
    try:
        assert first.push(world.revision(number=7)).status_code == 200
        assert first.push_delta(world.delta(7, remove=(world.alice_key,))).status_code == 200
    finally:
        # Uvicorn re-raises SIGTERM after its graceful shutdown, hence -15 rather than 0.
        assert first.service.stop() in (0, -signal.SIGTERM)
    assert "gateway gateway-before-restart stopped" in first.output()

    # Nothing pushes to the new process: the control plane is down (a closed port).
    second = start_gateway(stack, http, "gateway-after-restart", tmp_path, world)
    try:
        ready = http.get(second.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["revision"] == 8
        assert second.chat(world.alice_second_key).status_code == 200
        # The revocation applied by delta before the restart still holds after it.
        assert second.chat(world.alice_key).status_code == 401
        assert "serving last-known-good revision 8" in second.output()
    finally:
        second.service.stop()


def test_corrupt_last_known_good_file_leaves_the_gateway_unready_rather_than_guessing(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    (tmp_path / "revision.json").write_bytes(b'{"schema": 1, "revision": 3, "trunc')
    gateway = start_gateway(stack, http, "gateway-corrupt-file", tmp_path, world)
    try:
        assert http.get(gateway.url + "/readyz").status_code == 503
        assert "ignoring last-known-good revision" in gateway.output()
        # A push repairs it.
        assert gateway.push(world.revision(number=4)).status_code == 200
        assert gateway.chat(world.alice_key).status_code == 200
    finally:
        gateway.service.stop()


def test_revision_on_disk_keeps_upstream_secrets_sealed(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    gateway = start_gateway(stack, http, "gateway-sealed-file", tmp_path, world)
    try:
        assert gateway.push(world.revision(number=1)).status_code == 200
    finally:
        gateway.service.stop()
    on_disk = (tmp_path / "revision.json").read_bytes()
    assert world.mock.upstream_secret.encode() not in on_disk
    assert b'"secret":"v1.' in on_disk
