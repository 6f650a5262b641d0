"""How each Portico process is started, shared by ``make run`` and the end-to-end tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from devstack.procs import PYTHON, Service, Stack, wait_until


@dataclass(frozen=True)
class Ports:
    portal: int = 8000
    gateway: int = 8080
    mock_llm: int = 9100
    demo_mcp: int = 9200
    demo_rest: int = 9201
    demo_agent: int = 9202

    @property
    def portal_url(self) -> str:
        return f"http://127.0.0.1:{self.portal}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway}"

    @property
    def mock_llm_url(self) -> str:
        return f"http://127.0.0.1:{self.mock_llm}/v1"

    @property
    def demo_mcp_url(self) -> str:
        return f"http://127.0.0.1:{self.demo_mcp}/mcp"

    @property
    def demo_rest_url(self) -> str:
        return f"http://127.0.0.1:{self.demo_rest}"

    @property
    def demo_agent_url(self) -> str:
        return f"http://127.0.0.1:{self.demo_agent}"


def _start_local_upstream(
    stack: Stack, name: str, module: str, port: int, ready_path: str, require_key: str | None
) -> Service:
    """A demo upstream (``python -m <module>``) on ``port``, refusing calls without
    ``require_key`` when given, ready once ``ready_path`` answers."""
    argv = [PYTHON, "-m", module, "--host", "127.0.0.1", "--port", str(port)]
    if require_key:
        argv += ["--require-key", require_key]
    return stack.start(
        name, argv, ready_url=f"http://127.0.0.1:{port}{ready_path}", ready_timeout=30
    )


def start_mock_llm(stack: Stack, ports: Ports, *, require_key: str | None = None) -> Service:
    return _start_local_upstream(
        stack, "mock-llm", "devstack.mock_llm", ports.mock_llm, "/v1/models", require_key
    )


def start_demo_mcp(stack: Stack, ports: Ports, *, require_key: str | None = None) -> Service:
    return _start_local_upstream(
        stack, "demo-mcp", "devstack.demo_mcp", ports.demo_mcp, "/healthz", require_key
    )


def start_demo_rest(stack: Stack, ports: Ports, *, require_key: str | None = None) -> Service:
    return _start_local_upstream(
        stack, "demo-rest", "devstack.demo_rest", ports.demo_rest, "/healthz", require_key
    )


def start_demo_agent(stack: Stack, ports: Ports, *, require_key: str | None = None) -> Service:
    return _start_local_upstream(
        stack, "demo-agent", "devstack.demo_agent", ports.demo_agent, "/healthz", require_key
    )


def start_portal(stack: Stack, ports: Ports, env: Mapping[str, str] | None = None) -> Service:
    argv = [
        PYTHON,
        "-m",
        "uvicorn",
        "config.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(ports.portal),
        "--no-access-log",
        "--lifespan",
        "off",
    ]
    return stack.start("portal", argv, env=env, ready_url=f"{ports.portal_url}/healthz")


def start_worker(stack: Stack, env: Mapping[str, str] | None = None) -> Service:
    argv = [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "config",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "2",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    service = stack.start("worker", argv, env=env)
    wait_until(
        lambda: _log_says(service, "ready."), timeout=60, what="the Celery worker to be ready"
    )
    return service


def start_beat(stack: Stack, schedule_file: str, env: Mapping[str, str] | None = None) -> Service:
    argv = [PYTHON, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO"]
    argv += ["--schedule", schedule_file]
    return stack.start("beat", argv, env=env)


def start_gateway(stack: Stack, ports: Ports, env: Mapping[str, str] | None = None) -> Service:
    gateway_env = {
        "PORTICO_GATEWAY_PORT": str(ports.gateway),
        "PORTICO_CONTROL_PLANE_URL": ports.portal_url,
        **(env or {}),
    }
    return stack.start(
        "gateway",
        [PYTHON, "-m", "gateway"],
        env=gateway_env,
        ready_url=f"{ports.gateway_url}/healthz",
    )


def _log_says(service: Service, marker: str) -> bool:
    if not service.is_running():
        raise RuntimeError(f"{service.name} exited:\n{service.log_tail()}")
    try:
        return marker in service.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return False
