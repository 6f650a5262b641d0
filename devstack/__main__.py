"""``make run``: bring up the whole of Portico on the embedded defaults, with demo data.

Migrates, seeds the demo (idempotent), starts the mock LLM, the demo MCP server, the
demo REST service and the demo A2A agent, discovers and approves the demo MCP product's
tools, imports the REST service's OpenAPI document as the REST-to-MCP product's and
fetches the demo agent's card, starts the portal, a
Celery worker and beat, and the gateway; waits until the demo key works through the
gateway; prints how to use it and writes the same to ``var/demo.json``; then runs until
Ctrl-C (or SIGTERM), when it stops every process and exits 0.

The demo upstreams listen on loopback, which the egress policy refuses by default; so,
unless ``PORTICO_EGRESS_ALLOW`` is set, it allows loopback here (for every process).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import django
import httpx

from devstack.portico import (
    Ports,
    start_beat,
    start_demo_agent,
    start_demo_mcp,
    start_demo_rest,
    start_gateway,
    start_mock_llm,
    start_portal,
    start_worker,
)
from devstack.procs import ServiceFailed, Stack, port_in_use, wait_until

if TYPE_CHECKING:
    from portal.demo import DemoSeed


def _env_port(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def _demo_call_works(gateway_url: str, key: str, model: str) -> bool:
    try:
        response = httpx.post(
            f"{gateway_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": model, "messages": [{"role": "user", "content": "ping"}]},
            timeout=5.0,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


# What the demo's own upstreams need from the egress policy (gateway/egress.py).
DEMO_EGRESS_ALLOW = "127.0.0.0/8,::1"


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # Before the settings are read; the processes started below inherit it.
    os.environ.setdefault("PORTICO_EGRESS_ALLOW", DEMO_EGRESS_ALLOW)
    django.setup()
    # The readiness polls are not news; the processes' own logs are in var/log/.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.conf import settings
    from django.core.management import call_command

    from portal.demo import (
        seed_demo,
        seed_demo_agents,
        seed_demo_mcp_tools,
        seed_demo_rest_tools,
    )

    ports = Ports(
        portal=_env_port("PORTICO_PORTAL_PORT", 8000),
        gateway=_env_port("PORTICO_GATEWAY_PORT", 8080),
        mock_llm=_env_port("PORTICO_MOCK_LLM_PORT", 9100),
        demo_mcp=_env_port("PORTICO_DEMO_MCP_PORT", 9200),
        demo_rest=_env_port("PORTICO_DEMO_REST_PORT", 9201),
        demo_agent=_env_port("PORTICO_DEMO_AGENT_PORT", 9202),
    )
    all_ports = (
        ports.portal,
        ports.gateway,
        ports.mock_llm,
        ports.demo_mcp,
        ports.demo_rest,
        ports.demo_agent,
    )
    busy = [p for p in all_ports if port_in_use(p)]
    if busy:
        # Otherwise the readiness checks below would pass against whatever holds them.
        print(
            f"Port(s) {', '.join(map(str, busy))} are in use: is Portico already running? "
            "Stop it, or choose other ports with PORTICO_PORTAL_PORT, PORTICO_GATEWAY_PORT, "
            "PORTICO_MOCK_LLM_PORT, PORTICO_DEMO_MCP_PORT, PORTICO_DEMO_REST_PORT and "
            "PORTICO_DEMO_AGENT_PORT.",
            file=sys.stderr,
        )
        return 1
    var_dir = Path(settings.VAR_DIR)
    demo_file = var_dir / "demo.json"
    demo_file.unlink(missing_ok=True)

    print("Migrating the database…", flush=True)
    call_command("migrate", interactive=False, verbosity=0)
    # The seed's changes queue a publish for the worker, which starts below.
    seed = seed_demo(
        mock_llm_url=ports.mock_llm_url,
        demo_mcp_url=ports.demo_mcp_url,
        demo_rest_url=ports.demo_rest_url,
        demo_agent_url=ports.demo_agent_url,
    )

    child_env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PORTICO_VAR_DIR": str(var_dir),
        "PORTICO_GATEWAY_SECRET": settings.PORTICO_GATEWAY_SECRET,
        "PORTICO_GATEWAY_STATE_DIR": str(var_dir / "gateway"),
        "PORTICO_GATEWAY_PUBLIC_URL": ports.gateway_url,
        "PORTICO_PORTAL_URL": ports.portal_url,
    }
    stack = Stack(log_dir=var_dir / "log", base_env={**os.environ, **child_env})
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(
            "Starting the mock LLM, demo MCP server, demo REST service, demo agent, portal, "
            "worker, beat and gateway…",
            flush=True,
        )
        start_mock_llm(stack, ports, require_key=seed.upstream_key)
        start_demo_mcp(stack, ports, require_key=seed.mcp_upstream_key)
        start_demo_rest(stack, ports, require_key=seed.rest_upstream_key)
        start_demo_agent(stack, ports, require_key=seed.agent_upstream_key)
        # Discovered here, at once, rather than by the worker: the first revision then
        # already serves the demo tools. (Queued publishes wait for the worker below.)
        seed_demo_mcp_tools()
        # Imported from the running service's own OpenAPI document, the first time.
        seed_demo_rest_tools(openapi_url=f"{ports.demo_rest_url}/openapi.json")
        # The agent's card, fetched now for the same reason.
        seed_demo_agents()
        start_portal(stack, ports)
        start_worker(stack)
        start_beat(stack, str(var_dir / "celery" / "beat-schedule"))
        start_gateway(stack, ports)
        model = seed.models[0]
        wait_until(
            lambda: stopping.is_set() or _demo_call_works(ports.gateway_url, seed.demo_key, model),
            timeout=90,
            interval=0.5,
            what="the demo revision to reach the gateway",
        )
        if not stopping.is_set():
            _announce(stack, ports, seed, demo_file, model)
        while not stopping.wait(1.0):
            stack.check_alive()
    except (ServiceFailed, TimeoutError, RuntimeError) as exc:
        print(f"\nPortico stopped: {exc}", file=sys.stderr, flush=True)
        stack.stop_all()
        return 1
    print("\nStopping…", flush=True)
    codes = stack.stop_all()
    # uvicorn re-raises the signal it shut down on, so -SIGTERM is a clean stop too.
    clean = {0, -signal.SIGTERM}
    print(
        "Stopped: "
        + ", ".join(f"{n} ({'ok' if c in clean else f'exit {c}'})" for n, c in codes.items()),
        flush=True,
    )
    return 0 if all(code in clean for code in codes.values()) else 1


def _announce(stack: Stack, ports: Ports, seed: DemoSeed, demo_file: Path, model: str) -> None:
    """Print how to use the running system and write the same to ``demo_file``."""
    demo = {
        "portal_url": ports.portal_url,
        "admin_url": f"{ports.portal_url}/admin/",
        "gateway_url": ports.gateway_url,
        "admin": {"username": seed.admin_username, "password": seed.admin_password},
        "demo_key": seed.demo_key,
        "products": seed.products,
        "models": seed.models,
        "mcp_product": seed.products["mcp"],
        "mcp_url": f"{ports.gateway_url}/mcp/{seed.products['mcp']}",
        "rest_mcp_product": seed.products["rest_mcp"],
        "rest_mcp_url": f"{ports.gateway_url}/mcp/{seed.products['rest_mcp']}",
        "agent_product": seed.products["agent"],
        "agent_url": f"{ports.gateway_url}/agents/{seed.products['agent']}",
        "rest_agent_product": seed.products["rest_agent"],
        "rest_agent_url": f"{ports.gateway_url}/agents/{seed.products['rest_agent']}",
        "logs": str(stack.log_dir),
    }
    demo_path = str(demo_file)
    fd = os.open(demo_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(demo, handle, indent=2)
    print(_banner(demo, model, demo_path), flush=True)


def _banner(demo: Mapping[str, Any], model: str, demo_path: str) -> str:
    admin = demo["admin"]
    assert isinstance(admin, dict)
    return f"""
Portico is up.

  Portal   {demo["portal_url"]}
  Admin    {demo["admin_url"]}   user {admin["username"]}   password {admin["password"]}
  Gateway  {demo["gateway_url"]}

Call the demo model through the gateway with the demo key:

  curl {demo["gateway_url"]}/v1/chat/completions \\
    -H "Authorization: Bearer {demo["demo_key"]}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello, Portico"}}]}}'

The demo MCP server's tools, with the same key, in any MCP client: {demo["mcp_url"]}
The demo REST service's API as MCP tools (REST-to-MCP), the same way: {demo["rest_mcp_url"]}
The demo A2A agent (a trip planner), with the same key, in any A2A client: {demo["agent_url"]}
  (its card: {demo["agent_url"]}/.well-known/agent-card.json)
A plain chat endpoint served as an A2A agent, the same way: {demo["rest_agent_url"]}

The same details are in {demo_path}; logs are in {demo["logs"]}.
Press Ctrl-C to stop.
"""


if __name__ == "__main__":
    sys.exit(main())
