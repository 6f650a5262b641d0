"""Canary secrets: after real traffic, none appears in the gateway's output or spool."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest

from devstack.procs import Stack
from tests.gateway.conftest import World, chat_body, start_gateway

pytestmark = pytest.mark.e2e


def test_keys_and_secrets_never_reach_logs_or_spooled_usage(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    unknown_key = "portico_canaryUnknownKey" + "Q" * 24
    wrong_admin_token = "canary-admin-token-" + "W" * 24
    gateway = start_gateway(
        stack, http, "gateway-canary", tmp_path, world, env={"PORTICO_LOG_LEVEL": "DEBUG"}
    )
    try:
        revision = world.revision(number=1)
        assert gateway.push(revision).status_code == 200
        # Traffic down every path that logs or records something.
        for header in ("Authorization", "x-api-key", "api-key"):
            value = f"Bearer {world.alice_key}" if header == "Authorization" else world.alice_key
            assert gateway.chat(None, headers={header: value}).status_code == 200
            assert (
                gateway.chat(None, chat_body(stream=True), headers={header: value}).status_code
                == 200
            )
        assert gateway.chat(unknown_key).status_code == 401
        assert gateway.chat(world.expired_key).status_code == 401
        for model, status in [
            ("gpt-broken", 502),
            ("gpt-misconfigured", 502),
            ("gpt-down", 502),
            ("gpt-quoting", 400),
            ("gpt-limited", 429),
        ]:
            assert gateway.chat(world.alice_key, chat_body(model)).status_code == status
        assert gateway.admin("GET", "/status", token=wrong_admin_token).status_code == 401
        foreign = msgspec.structs.replace(
            revision,
            revision=2,
            upstreams={
                "mock": msgspec.structs.replace(revision.upstreams["mock"], secret="v1.x.y")
            },
        )
        assert gateway.push(foreign).status_code == 400
    finally:
        gateway.service.stop()

    spool = b"".join(path.read_bytes() for path in (tmp_path / "spool").glob("*"))
    assert spool.count(b'"request_id"') == 13, "the traffic above was not all recorded"
    output = gateway.output().encode()
    assert b"rejected revision push" in output, "the log did not capture the run"
    canaries = {
        "the client's key": world.alice_key,
        "an expired key": world.expired_key,
        "an unknown key": unknown_key,
        "the upstream secret": world.mock.upstream_secret,
        "the gateway secret": world.gateway_secret,
        "the derived gateway token": world.keys.auth_token,
        "a wrong admin token": wrong_admin_token,
    }
    for what, canary in canaries.items():
        assert canary.encode() not in output, f"{what} appears in the gateway's output"
        assert canary.encode() not in spool, f"{what} appears in the usage spool"
