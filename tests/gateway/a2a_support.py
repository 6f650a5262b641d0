"""The A2A tests' shared parts: agents served by the official SDK's own server (v1.0,
with its v0.3 compatibility on), recording what reaches them, and the revisions that
make them agent products."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from a2a.helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.schema import (
    AgentProduct,
    AgentTarget,
    Consumer,
    Plan,
    Product,
    RestAgentCall,
    Revision,
    Subscription,
    Upstream,
)
from tests.gateway.conftest import ALICE, BOB, World
from tests.gateway.mcp_support import serve_in_thread

BACKEND_TOKEN = "agent-backend-" + secrets.token_urlsafe(16)
AGENT_PRODUCT = 4
CARD = {
    "name": "Trip helper",
    "description": "Plans trips.",
    "version": "2.1.0",
    "capabilities": {"streaming": True, "pushNotifications": True},
    "defaultInputModes": ["text/plain"],
    "defaultOutputModes": ["text/plain"],
    "skills": [{"id": "plan", "name": "Plan a trip", "description": "Plans.", "tags": ["travel"]}],
    "supportedInterfaces": [
        {"url": "http://agent.internal/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ],
    "securitySchemes": {"internal": {"httpAuthSecurityScheme": {"scheme": "bearer"}}},
    "signatures": [{"protected": "x", "signature": "y"}],
}


class _Executor(AgentExecutor):
    """``hello``: a direct message; ``slow``: a task that runs until canceled;
    ``fail``: an exception; anything else: a task that works, streams an artifact in
    two chunks and completes. Replies name the agent's ``label``."""

    def __init__(self, label: str) -> None:
        self.label = label

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        if text == "fail":
            raise RuntimeError("kaboom")
        if text == "hello":
            reply = new_text_message(f"hello from {self.label}", context_id=context.context_id)
            await event_queue.enqueue_event(reply)
            return
        assert context.message is not None
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work(
            updater.new_agent_message([new_text_part(f"{self.label} working")])
        )
        if text == "slow":
            await asyncio.sleep(30)
        await updater.add_artifact(
            [new_text_part(f"{self.label}: ")], artifact_id="a1", name="answer", last_chunk=False
        )
        await updater.add_artifact(
            [new_text_part(text)], artifact_id="a1", append=True, last_chunk=True
        )
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


@dataclass
class AgentServer:
    """An SDK agent on a free port; ``url`` is its JSON-RPC endpoint."""

    label: str
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False

    def methods(self) -> list[str]:
        return [entry["method"] for entry in self.seen if entry.get("method")]


def agent_server(label: str) -> Iterator[AgentServer]:
    record = AgentServer(label)
    card = AgentCard(
        name=label,
        description="test agent",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url="http://x/a2a", protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="s", name="s", description="s", tags=["t"])],
    )
    handler = DefaultRequestHandler(
        agent_executor=_Executor(label), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = [
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url="/a2a", enable_v0_3_compat=True),
        *[r for r in create_rest_routes(handler, path_prefix="/rest") if not isinstance(r, Mount)],
    ]
    inner = Starlette(routes=routes)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        """Records each request (its headers and JSON-RPC method), refuses one without
        the backend token, and answers 503 to everything while ``down``."""
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        if record.down:
            await _plain(send, 503, b"down")
            return
        if scope["path"].endswith("agent-card.json"):
            await inner(scope, receive, send)
            return
        if not _authorized(headers):
            await _plain(send, 401, b"unauthorized")
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        entry: dict[str, Any] = {"path": scope["path"], "headers": headers}
        with contextlib.suppress(msgspec.DecodeError, AttributeError):
            entry.update(method=msgspec.json.decode(body).get("method")) if body else None
        record.seen.append(entry)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await inner(scope, replay, send)

    with serve_in_thread(app) as origin:
        record.url = origin + "/a2a"
        yield record


def _authorized(headers: dict[str, str]) -> bool:
    """The backend credential in any style the gateway sends it: bearer, HTTP basic
    (user ``portico``) or the ``X-Agent-Key`` header."""
    basic = base64.b64encode(f"portico:{BACKEND_TOKEN}".encode()).decode()
    return (
        headers.get("authorization") in (f"Bearer {BACKEND_TOKEN}", f"Basic {basic}")
        or headers.get("x-agent-key") == BACKEND_TOKEN
    )


async def _plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def target(
    name: str,
    server: AgentServer | None = None,
    *,
    weight: int = 1,
    version: str = "1.0",
    rest: RestAgentCall | None = None,
) -> tuple[AgentTarget, str]:
    """A target named ``name`` (also its upstream's id) and the URL its upstream has."""
    url = server.url if server is not None else ""
    spec = AgentTarget(
        upstream=name,
        weight=weight,
        name=name,
        url=url,
        protocol_version=version,  # type: ignore[arg-type]
        streaming=True,
        rest=rest,
    )
    return spec, url


def a2a_revision(
    world: World,
    targets: list[tuple[AgentTarget, str]],
    *,
    affinity: str = "none",
    health_check_seconds: float = 0.0,
    requests_per_minute: int | None = None,
    own_limit: int | None = None,
    rest_base: str | None = None,
    auth: dict[str, str] | None = None,
) -> Revision:
    """The default revision plus the agent product ``agent`` (Alice and Bob subscribed)."""
    doc = world.revision()
    plan = Plan(id=1, name="Free")
    upstreams = dict(doc.upstreams)
    for spec, url in targets:
        if spec.rest is not None:
            upstreams[spec.upstream] = Upstream(
                vendor="rest-agent",
                base_url=rest_base or world.mock.base_url,
                secret=world.keys.seal(world.mock.upstream_secret),
                name=spec.upstream,
            )
        else:
            upstreams[spec.upstream] = Upstream(
                vendor="a2a",
                base_url=url.removesuffix("/a2a"),
                secret=world.keys.seal(BACKEND_TOKEN),
                name=spec.upstream,
                options=auth or {},
            )
    product = Product(
        id=AGENT_PRODUCT,
        slug="agent",
        kind="agent",
        agent=AgentProduct(
            card=CARD,
            targets=[spec for spec, _ in targets],
            affinity=affinity,  # type: ignore[arg-type]
            requests_per_minute=requests_per_minute,
            health_check_seconds=health_check_seconds,
        ),
    )
    alice, bob = doc.consumers[str(ALICE)], doc.consumers[str(BOB)]
    return msgspec.structs.replace(
        doc,
        upstreams=upstreams,
        products={**doc.products, "agent": product},
        consumers={
            **doc.consumers,
            str(ALICE): Consumer(
                id=ALICE,
                subscriptions={
                    **alice.subscriptions,
                    "agent": Subscription(id=41, plan=plan, requests_per_minute=own_limit),
                },
            ),
            str(BOB): Consumer(
                id=BOB,
                subscriptions={**bob.subscriptions, "agent": Subscription(id=42, plan=plan)},
            ),
        },
    )
