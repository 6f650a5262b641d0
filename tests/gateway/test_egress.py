"""The gateway dials only what the egress policy allows, checked on every new upstream
connection (``gateway.connector``): an upstream on a private address, loopback here, is
unreachable unless ``PORTICO_EGRESS_ALLOW`` lists it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from devstack.procs import Stack
from tests.gateway.conftest import World, assert_openai_error, chat_body, start_gateway
from tests.gateway.mcp_support import Upstream_, mcp_revision, run

pytestmark = pytest.mark.e2e


def test_upstreams_on_addresses_the_policy_refuses_are_never_dialled(
    stack: Stack,
    http: httpx.Client,
    world: World,
    upstream: Upstream_,
    tmp_path: Path,
) -> None:
    strict = start_gateway(
        stack, http, "gateway-egress", tmp_path, world, env={"PORTICO_EGRESS_ALLOW": "10.9.0.0/16"}
    )
    assert strict.push(mcp_revision(world, upstream)).status_code == 200
    before_model, before_mcp = len(world.mock.records()), len(upstream.seen)
    refused = strict.chat(world.alice_key, chat_body())
    assert_openai_error(refused, 502, "upstream_unavailable")

    async def body(client: Client) -> Any:
        try:
            await client.call_tool("add", {"a": 1, "b": 2})
        except Exception as exc:
            return exc
        return None

    error = run(strict.url + "/mcp/tools", world.alice_key, body, "legacy")
    assert getattr(error, "code", None) == -32603
    assert "could not reach" in str(error)
    assert len(world.mock.records()) == before_model
    assert len(upstream.seen) == before_mcp
    assert "egress policy refuses 127.0.0.1" in strict.service.log_tail()
