"""The official MCP conformance suite against the gateway's ``/mcp/<product>``.

Processes, all on loopback: the fixture MCP server (``fixture_server``, the tools,
resources and prompts the suite's scenarios call), a real gateway serving it as an MCP
product, and a key-adding proxy in front of the gateway (``keyproxy``: the suite
cannot send credentials). The product's tools, prompts, resources and templates are
found as the control plane finds them (``catalog.mcp_discovery``) and pinned in the
revision pushed to the gateway.

The suite (``@modelcontextprotocol/conformance``, pinned with the Node it needs in
``package.json``) runs every server scenario of each protocol revision: 2026-07-28
(stateless) and 2025-11-25 (sessions). What fails through the gateway today is listed,
each with the reason, in ``expected-failures-<revision>.yaml``; the suite exits
non-zero on any other failure and on a listed one that passes, so a fix must shrink
the list. The same scenarios also run against the fixture alone, which must pass them
all: a failure through the gateway is then the gateway's.

Install the suite once with ``make conformance-deps`` (``npm ci --prefix
tests/conformance``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog.mcp_discovery import Endpoint, discover_async
from devstack.procs import Stack, free_port
from gateway.egress import EgressPolicy
from gateway.keys import generate_key
from gateway.revision import encode
from gateway.schema import (
    Consumer,
    Credential,
    McpServer,
    McpTool,
    Plan,
    Product,
    Revision,
    Subscription,
    Upstream,
)
from gateway.secrets import GatewayKeys
from tests.conformance.keyproxy import KEY_VARIABLE
from tests.gateway.conftest import World, sha256, start_gateway

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = HERE / "node_modules" / ".bin"
SLUG = "conformance"
REVISIONS = ("2026-07-28", "2025-11-25")
RUN_SECONDS = 120  # a whole CLI run; it takes about 4 s
# The CLI's output folders: server-<scenario>-<ISO time with dashes>.
_STAMPED = re.compile(r"-\d{4}-\d\d-\d\dT[\d-]+Z$")


@dataclass
class Rig:
    fixture_url: str  # the fixture server's /mcp, direct
    gateway_url: str  # /mcp/<slug> through the key-adding proxy


def _clean_env() -> dict[str, str]:
    # The processes see only what they are given, not a developer's or CI's settings.
    return {
        k: v for k, v in os.environ.items() if not k.startswith("PORTICO_") and k != "REDIS_URL"
    }


def _suite_installed() -> None:
    """Fail (never skip) unless the suite is installed at the version package.json pins."""
    package = "@modelcontextprotocol/conformance"
    wanted = json.loads((HERE / "package.json").read_text())["dependencies"][package]
    manifest = HERE / "node_modules" / package / "package.json"
    installed = json.loads(manifest.read_text())["version"] if manifest.exists() else None
    if installed != wanted or not (BIN / "node").exists() or not (BIN / "conformance").exists():
        found = f"version {installed} is installed" if installed else "it is not installed"
        pytest.fail(
            f"The MCP conformance suite {wanted} and its Node are needed, but {found}: run "
            "`make conformance-deps` (npm ci --prefix tests/conformance) first.",
            pytrace=False,
        )


def _revision(fixture_url: str, key: str) -> Revision:
    """One MCP product serving the fixture, as the control plane compiles it once an
    admin has approved what discovery found."""
    # The fixture is on loopback on purpose: allowed as an admin would allow it.
    endpoint = Endpoint(url=fixture_url, egress=EgressPolicy.parse(["127.0.0.1"]))
    found = asyncio.run(discover_async(endpoint, seconds=30))
    assert not found.problems, found.problems
    server = McpServer(
        upstream="fixture",
        tools=[McpTool(name=tool["name"], definition=tool) for tool in found.tools],
        prompts=found.prompts,
        resources=found.resources,
        resource_templates=found.resource_templates,
        instructions=found.instructions,
    )
    return Revision(
        schema=1,
        revision=1,
        created_at="2026-11-24T12:00:00Z",
        upstreams={"fixture": Upstream(vendor="mcp", base_url=fixture_url)},
        products={SLUG: Product(id=1, slug=SLUG, kind="mcp", mcp=server)},
        consumers={
            "1": Consumer(id=1, subscriptions={SLUG: Subscription(id=1, plan=Plan(1, "Free"))})
        },
        credentials={sha256(key): Credential(id=1, consumer=1)},
    )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    _suite_installed()
    stack = Stack(log_dir=tmp_path_factory.mktemp("conformance-logs"), base_env=_clean_env())
    try:
        port = free_port()
        stack.start(
            "mcp-fixture",
            [sys.executable, "-m", "tests.conformance.fixture_server", "--port", str(port)],
            ready_url=f"http://127.0.0.1:{port}/healthz",
            ready_timeout=20,
            cwd=ROOT,
        )
        fixture_url = f"http://127.0.0.1:{port}/mcp"
        key = generate_key()
        secret = "gw-secret-conformance-" + secrets.token_urlsafe(32)
        # start_gateway needs the secret and keys of a World, not its LLM upstream.
        world = World(secret, GatewayKeys.from_secret(secret), mock=None)  # type: ignore[arg-type]
        with httpx.Client(timeout=30) as http:
            gateway = start_gateway(
                stack, http, "gateway-conformance", tmp_path_factory.mktemp("gw"), world
            )
            pushed = gateway.push(encode(_revision(fixture_url, key)))
            assert pushed.status_code == 200, pushed.text
        proxy_port = free_port()
        stack.start(
            "keyproxy",
            [
                sys.executable,
                "-m",
                "tests.conformance.keyproxy",
                "--port",
                str(proxy_port),
                "--upstream",
                gateway.url,
            ],
            env={KEY_VARIABLE: key},
            ready_url=f"http://127.0.0.1:{proxy_port}/healthz",  # the gateway's, proxied
            ready_timeout=20,
            cwd=ROOT,
        )
        yield Rig(fixture_url, f"http://127.0.0.1:{proxy_port}/mcp/{SLUG}")
    finally:
        stack.stop_all(grace=5)


@dataclass
class Outcome:
    returncode: int
    output: str
    checks: dict[str, list[dict[str, Any]]]  # scenario -> its checks

    def summary(self) -> str:
        """Checks by scenario and status (INFO rows are the suite's notes)."""
        statuses = ("SUCCESS", "FAILURE", "WARNING", "SKIPPED", "INFO")
        lines = [f"{'scenario':46} {'pass':>4} {'fail':>4} {'warn':>4} {'skip':>4} {'info':>4}"]
        totals: Counter[str] = Counter()
        for scenario, checks in sorted(self.checks.items()):
            counts = Counter(check["status"] for check in checks)
            totals.update(counts)
            lines.append(f"{scenario:46} " + " ".join(f"{counts[s]:4}" for s in statuses))
        lines.append(f"{'total':46} " + " ".join(f"{totals[s]:4}" for s in statuses))
        return "\n".join(lines)

    def failures(self) -> list[str]:
        return [
            f"{scenario}:{check['id']}: {check.get('errorMessage') or check['description']}"
            for scenario, checks in sorted(self.checks.items())
            for check in checks
            if check["status"] == "FAILURE"
        ]


def conformance(url: str, revision: str, out: Path, expected: Path | None = None) -> Outcome:
    """Every server scenario of ``revision`` against ``url``; the checks by scenario."""
    command = [
        str(BIN / "conformance"),
        "server",
        "--url",
        url,
        "--spec-version",
        revision,
        "--suite",
        "all",
        "--output-dir",
        str(out),
    ]
    if expected is not None:
        command += ["--expected-failures", str(expected)]
    env = {**_clean_env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    started = time.monotonic()
    done = subprocess.run(
        command,
        env=env,
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    checks: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("server-*/checks.json")):
        scenario = _STAMPED.sub("", path.parent.name.removeprefix("server-"))
        checks[scenario] = json.loads(path.read_text())
    outcome = Outcome(done.returncode, done.stdout + done.stderr, checks)
    print(f"\n{url} at {revision}: {time.monotonic() - started:.1f} s\n{outcome.summary()}")
    return outcome


def _explain(outcome: Outcome, expected: Path | None) -> str:
    summary = outcome.output.find("=== SUMMARY ===")
    tail = outcome.output[max(summary, 0) :][-6000:]
    listed = f" (baseline {expected.name})" if expected else ""
    return (
        f"conformance exited {outcome.returncode}{listed}.\n"
        + "\n".join(outcome.failures())
        + f"\n\n{tail}"
    )


@pytest.mark.parametrize("revision", REVISIONS)
def test_the_fixture_alone_passes_every_scenario(rig: Rig, tmp_path: Path, revision: str) -> None:
    outcome = conformance(rig.fixture_url, revision, tmp_path)
    assert outcome.checks, outcome.output
    assert outcome.returncode == 0, _explain(outcome, None)
    assert not outcome.failures()


@pytest.mark.parametrize("revision", REVISIONS)
def test_the_gateway_fails_only_what_is_listed(rig: Rig, tmp_path: Path, revision: str) -> None:
    expected = HERE / f"expected-failures-{revision}.yaml"
    outcome = conformance(rig.gateway_url, revision, tmp_path, expected)
    assert outcome.checks, outcome.output
    assert outcome.returncode == 0, _explain(outcome, expected)
