"""Real gateway and mock-LLM processes on loopback, and revisions built as the control
plane builds them (``gateway.schema`` structs, upstream secrets sealed with
``GatewayKeys``), pushed over the admin API with httpx.

Nothing of ours is mocked: the only fake is the LLM vendor (``devstack.mock_llm``), and
the control plane is "down" (a closed port) unless a test stands one in.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from devstack.procs import Service, Stack, free_port, wait_until
from gateway.keys import generate_key
from gateway.revision import encode
from gateway.schema import (
    Consumer,
    Credential,
    Delta,
    ModelRoute,
    Plan,
    Product,
    Revision,
    Subscription,
    Upstream,
)
from gateway.secrets import GatewayKeys

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Consumers, credentials and products of the default revision.
ALICE, BOB = 1, 2
ALICE_CREDENTIAL, ALICE_SECOND_CREDENTIAL, EXPIRED_CREDENTIAL, BOB_CREDENTIAL = 11, 12, 13, 21
CHAT_PRODUCT, OTHER_PRODUCT = 1, 2


def _clean_env() -> dict[str, str]:
    # The gateway must see only what a test gives it, not a developer's or CI's settings.
    return {
        k: v for k, v in os.environ.items() if not k.startswith("PORTICO_") and k != "REDIS_URL"
    }


@dataclass
class MockLLM:
    service: Service
    base_url: str
    record: Path
    upstream_secret: str

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [orjson.loads(line) for line in self.record.read_bytes().splitlines() if line]


@dataclass
class World:
    """Keys, secrets and a builder for revisions shaped like the control plane's."""

    gateway_secret: str
    keys: GatewayKeys
    mock: MockLLM
    alice_key: str = field(default_factory=generate_key)
    alice_second_key: str = field(default_factory=generate_key)
    expired_key: str = field(default_factory=generate_key)
    bob_key: str = field(default_factory=generate_key)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_number(self) -> int:
        return next(self._numbers)

    def credentials(self) -> dict[str, Credential]:
        return {
            sha256(self.alice_key): Credential(id=ALICE_CREDENTIAL, consumer=ALICE),
            sha256(self.alice_second_key): Credential(id=ALICE_SECOND_CREDENTIAL, consumer=ALICE),
            sha256(self.expired_key): Credential(
                id=EXPIRED_CREDENTIAL, consumer=ALICE, expires_at=time.time() - 60
            ),
            sha256(self.bob_key): Credential(id=BOB_CREDENTIAL, consumer=BOB),
        }

    def revision(
        self,
        number: int | None = None,
        *,
        upstream_secret: str | None = None,
        credentials: dict[str, Credential] | None = None,
    ) -> Revision:
        """The default revision: Alice subscribes to "chat", Bob to "other"."""
        sealed = self.keys.seal(upstream_secret or self.mock.upstream_secret)
        mock_url = self.mock.base_url
        plan = Plan(id=1, name="Free")
        return Revision(
            schema=1,
            revision=number if number is not None else self.next_number(),
            created_at="2026-11-24T12:00:00Z",
            upstreams={
                "mock": Upstream(vendor="openai", base_url=mock_url, secret=sealed),
                "slow": Upstream(
                    vendor="openai", base_url=mock_url, secret=sealed, timeout_seconds=0.5
                ),
                "wrong-secret": Upstream(
                    vendor="openai", base_url=mock_url, secret=self.keys.seal("sk-not-the-one")
                ),
                "down": Upstream(
                    vendor="openai", base_url=f"http://127.0.0.1:{closed_port()}/v1", secret=sealed
                ),
            },
            products={
                "chat": Product(
                    id=CHAT_PRODUCT,
                    slug="chat",
                    kind="model",
                    models={
                        "gpt-test": ModelRoute(upstream="mock", upstream_model="mock"),
                        "mock": ModelRoute(upstream="mock", upstream_model="mock"),
                        "gpt-slow": ModelRoute(upstream="slow", upstream_model="mock-delay-5000"),
                        "gpt-broken": ModelRoute(upstream="mock", upstream_model="mock-error-500"),
                        "gpt-limited": ModelRoute(upstream="mock", upstream_model="mock-error-429"),
                        "gpt-quoting": ModelRoute(
                            upstream="mock", upstream_model="mock-error-400-echo-key"
                        ),
                        "gpt-down": ModelRoute(upstream="down", upstream_model="mock"),
                        "gpt-misconfigured": ModelRoute(
                            upstream="wrong-secret", upstream_model="mock"
                        ),
                        "gpt-medium-stream": ModelRoute(
                            upstream="mock", upstream_model="mock-chunks-40-stream-delay-20"
                        ),
                        "gpt-long-stream": ModelRoute(
                            upstream="mock", upstream_model="mock-chunks-200-stream-delay-20"
                        ),
                    },
                ),
                "other": Product(
                    id=OTHER_PRODUCT,
                    slug="other",
                    kind="model",
                    models={"other-model": ModelRoute(upstream="mock", upstream_model="mock")},
                ),
            },
            consumers={
                str(ALICE): Consumer(
                    id=ALICE, subscriptions={"chat": Subscription(id=1, plan=plan)}
                ),
                str(BOB): Consumer(id=BOB, subscriptions={"other": Subscription(id=2, plan=plan)}),
            },
            credentials=self.credentials() if credentials is None else credentials,
        )

    def delta(
        self,
        base: int,
        *,
        remove: tuple[str, ...] = (),
        upsert: dict[str, Credential] | None = None,
    ) -> Delta:
        """A credentials-only delta from ``base`` to ``base + 1`` (keys given in clear)."""
        return Delta(
            schema=1,
            base=base,
            revision=base + 1,
            created_at="2026-11-24T12:00:01Z",
            credentials_remove=[sha256(key) for key in remove],
            credentials_upsert=upsert or {},
        )


@dataclass
class Gateway:
    """A running ``python -m gateway`` and the ways to talk to it."""

    service: Service
    url: str
    admin_url: str
    state_dir: Path
    keys: GatewayKeys
    # One client for the whole session: creating one costs tens of milliseconds.
    http: httpx.Client

    def admin(self, method: str, path: str, body: bytes | None = None, token: str | None = None):
        token = self.keys.auth_token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.request(method, self.admin_url + path, content=body, headers=headers)

    def push(self, doc: Revision | bytes) -> httpx.Response:
        raw = doc if isinstance(doc, bytes) else encode(doc)
        return self.admin("PUT", "/revision", raw)

    def push_delta(self, delta: Delta) -> httpx.Response:
        return self.admin("POST", "/revision/delta", encode(delta))

    def chat(self, key: str | None, body: object = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        payload = body if body is not None else chat_body()
        return self.http.post(
            self.url + "/v1/chat/completions", json=payload, headers=headers, **kwargs
        )

    def spooled_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for path in sorted((self.state_dir / "spool").glob("*.jsonl")):
            for line in path.read_bytes().splitlines():
                if line:
                    events.extend(orjson.loads(line)["events"])
        return events

    def wait_for_spooled(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def spooled() -> bool:
            found[:] = [e for e in self.spooled_events() if e["request_id"] == request_id]
            return bool(found)

        wait_until(spooled, timeout=timeout, what=f"usage event {request_id} in the spool")
        assert len(found) == 1, found
        return found[0]

    def output(self) -> str:
        return self.service.log_path.read_text(errors="replace")


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def chat_body(model: str = "gpt-test", text: str = "hello gateway", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def function_call(calls: list[Any] | None) -> ChatCompletionMessageFunctionToolCall:
    """The first tool call of an answer, which must be a function call."""
    assert calls
    assert isinstance(calls[0], ChatCompletionMessageFunctionToolCall)
    return calls[0]


def closed_port() -> int:
    """A loopback port nobody listens on (the control plane, or an upstream, being down)."""
    return free_port()


def assert_openai_error(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    """The response is an OpenAI error object carrying the request id, as promised."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code", "request_id"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert error["type"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def start_gateway(
    stack: Stack,
    http: httpx.Client,
    name: str,
    state_dir: Path,
    world: World,
    *,
    env: dict[str, str] | None = None,
) -> Gateway:
    port, admin_port = free_port(), free_port()
    service = stack.start(
        name,
        [PYTHON, "-m", "gateway"],
        env={
            "PORTICO_GATEWAY_SECRET": world.gateway_secret,
            "PORTICO_GATEWAY_PORT": str(port),
            "PORTICO_GATEWAY_ADMIN_PORT": str(admin_port),
            "PORTICO_GATEWAY_STATE_DIR": str(state_dir),
            "PORTICO_CONTROL_PLANE_URL": f"http://127.0.0.1:{closed_port()}",
            "PORTICO_GATEWAY_HEARTBEAT_SECONDS": "0.5",
            "PORTICO_GATEWAY_USAGE_FLUSH_SECONDS": "0.2",
            "PORTICO_GATEWAY_MAX_BODY_BYTES": str(64 * 1024),
            "PORTICO_GATEWAY_DRAIN_SECONDS": "5",
            "PORTICO_GATEWAY_INSTANCE_ID": name,
            # The test's upstreams all listen on loopback.
            "PORTICO_EGRESS_ALLOW": "127.0.0.0/8,::1",
            **(env or {}),
        },
        ready_url=f"http://127.0.0.1:{port}/healthz",
        ready_timeout=20,
        cwd=ROOT,
    )
    return Gateway(
        service=service,
        url=f"http://127.0.0.1:{port}",
        admin_url=f"http://127.0.0.1:{admin_port}",
        state_dir=state_dir,
        keys=world.keys,
        http=http,
    )


def start_redis_gateways(
    stack: Stack,
    http: httpx.Client,
    name: str,
    state_dir: Path,
    world: World,
    redis_url: str,
    *,
    env: dict[str, str] | None = None,
) -> list[Gateway]:
    """Two gateway processes sharing one Redis (limits, cache, usage)."""
    return [
        start_gateway(
            stack,
            http,
            f"{name}-{n}",
            state_dir / f"state-{n}",
            world,
            env={"REDIS_URL": redis_url, **(env or {})},
        )
        for n in range(2)
    ]


@dataclass
class ControlPlaneStub:
    """Stands in for the control plane's two gateway endpoints, recording every call."""

    url: str
    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    usage_status: int = 200

    def bodies(self, path: str) -> list[bytes]:
        return [body for p, _, body in list(self.calls) if p == path]

    def usage_events(self) -> list[dict[str, Any]]:
        return [
            event
            for body in self.bodies("/api/v1/gateway/usage")
            for event in orjson.loads(body)["events"]
        ]


@pytest.fixture
def control_plane() -> Iterator[ControlPlaneStub]:
    port = free_port()
    stub = ControlPlaneStub(url=f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            stub.calls.append((self.path, dict(self.headers), body))
            if self.path == "/api/v1/gateway/heartbeat":
                status, answer = 200, b'{"latest_revision": 5}'
            elif self.path == "/api/v1/gateway/usage":
                status, answer = stub.usage_status, b'{"received": 1}'
            else:
                status, answer = 404, b"{}"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(log_dir=tmp_path_factory.mktemp("logs"), base_env=_clean_env())
    yield stack
    stack.stop_all(grace=10)


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def mock_llm(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> MockLLM:
    port = free_port()
    record = tmp_path_factory.mktemp("mock") / "requests.jsonl"
    upstream_secret = "sk-upstream-canary-" + secrets.token_urlsafe(24)
    service = stack.start(
        "mock-llm",
        [
            PYTHON,
            "-m",
            "devstack.mock_llm",
            "--port",
            str(port),
            "--require-key",
            upstream_secret,
            "--record",
            str(record),
        ],
        ready_url=f"http://127.0.0.1:{port}/healthz",
        ready_timeout=20,
        cwd=ROOT,
    )
    return MockLLM(service, f"http://127.0.0.1:{port}/v1", record, upstream_secret)


@pytest.fixture(scope="session")
def world(mock_llm: MockLLM) -> World:
    secret = "gw-secret-canary-" + secrets.token_urlsafe(32)
    return World(gateway_secret=secret, keys=GatewayKeys.from_secret(secret), mock=mock_llm)


@pytest.fixture(scope="session")
def shared_gateway(
    stack: Stack, http: httpx.Client, world: World, tmp_path_factory: pytest.TempPathFactory
) -> Gateway:
    return start_gateway(stack, http, "gateway-shared", tmp_path_factory.mktemp("state"), world)


@pytest.fixture
def gw(shared_gateway: Gateway, world: World) -> Gateway:
    """The shared gateway, reset to the default revision (under a new number)."""
    response = shared_gateway.push(world.revision())
    assert response.status_code == 200, response.text
    return shared_gateway


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    """An official-SDK MCP server as a product's upstream (``tests.gateway.mcp_support``,
    imported here because it builds on this module)."""
    from tests.gateway.mcp_support import upstream_server

    yield from upstream_server()


@pytest.fixture
def served(gw: Gateway, world: World, upstream: Any) -> Gateway:
    """The shared gateway serving ``upstream`` as the MCP product ``tools``."""
    from tests.gateway.mcp_support import serve_mcp

    return serve_mcp(gw, world, upstream)
