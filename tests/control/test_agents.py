"""Agent products on the control plane: card fetches from real A2A SDK agents (v1.0) and
a v0.3 card, REST agents' health probes and calls, the compiled revision, the admin.

The agents run under uvicorn in a thread (``serve_in_thread``) on loopback, which the
tests' egress policy allows (tests/conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from a2a.helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentCardSignature,
    AgentInterface,
    AgentSkill,
)
from django.core.exceptions import ValidationError
from django.urls import reverse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from catalog import services
from catalog.agent_cards import MAX_CARD_BYTES, card_url, read_card
from catalog.models import Agent, AgentTarget, Product, Upstream
from catalog.rest_agents import rest_agent_call_from_json, rest_agent_preset
from catalog.tasks import agent_refresh_task, agents_refresh_task
from consumers import services as consumer_services
from devstack.fakes._asgi import Receive, Scope, Send
from gateway import revision as gw_revision
from gateway import schema
from gatewaysync import compiler
from gatewaysync.models import PendingChange
from tests.conftest import Catalog, make_subscribed_app
from tests.control.test_admin import empty_inline
from tests.gateway.mcp_support import serve_in_thread

AGENT_KEY = "agent-backend-canary-" + "k" * 20
SKILL: dict[str, Any] = {
    "id": "answer",
    "name": "Answer questions",
    "description": "Answers questions about the weather.",
    "tags": ["forecast", "qa"],
}


# Agents on local ports -------------------------------------------------------------------


class Echo(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        await event_queue.enqueue_event(
            new_text_message(f"echo: {context.get_user_input()}", context_id=context.context_id)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def sdk_agent(origin: str) -> Starlette:
    """A v1.0 a2a-sdk agent: its card lists an HTTP+JSON interface first, then JSON-RPC
    in 0.3 and in 1.0 (the gateway must take the JSON-RPC 1.0 one), and is signed."""
    card = AgentCard(
        name="Weather helper",
        description="Answers questions about the weather.",
        version="2.1.0",
        supported_interfaces=[
            AgentInterface(
                url=origin + "/rest", protocol_binding="HTTP+JSON", protocol_version="1.0"
            ),
            AgentInterface(url=origin + "/a2a", protocol_binding="JSONRPC", protocol_version="0.3"),
            AgentInterface(url=origin + "/a2a", protocol_binding="JSONRPC", protocol_version="1.0"),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(**SKILL)],
        signatures=[AgentCardSignature(protected="e30", signature="c2ln")],
    )
    handler = DefaultRequestHandler(
        agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=card
    )
    return Starlette(
        routes=[
            *create_agent_card_routes(card),
            *create_jsonrpc_routes(handler, rpc_url="/a2a", enable_v0_3_compat=True),
        ]
    )


def v03_card(origin: str) -> dict[str, Any]:
    """A card as an a2a-sdk 0.3 agent serves it: legacy ``url`` and ``preferredTransport``."""
    return {
        "name": "Legacy agent",
        "description": "Speaks A2A 0.3 only.",
        "url": origin + "/rpc",
        "preferredTransport": "JSONRPC",
        "protocolVersion": "0.3.0",
        "version": "0.9.0",
        "capabilities": {"streaming": False},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["application/json"],
        "skills": [{"id": "old", "name": "Old skill", "description": "Old.", "tags": ["legacy"]}],
    }


class LocalAgent:
    """An ASGI app built for the origin it is served on (known at its first request),
    recording each request's path and headers. ``require`` makes it answer 401 unless
    those headers are sent; ``card`` replaces everything with a fixed answer."""

    def __init__(
        self,
        build: Callable[[str], Any] | None = None,
        *,
        require: dict[str, str] | None = None,
    ) -> None:
        self.build, self.require = build, require or {}
        self.app: Any = None
        self.origin = ""
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.answer: tuple[int, bytes, dict[str, str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        host, port = scope["server"]
        self.origin = f"http://{host}:{port}"
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["path"], headers))
        response: Any
        if any(headers.get(name.lower()) != value for name, value in self.require.items()):
            response = JSONResponse({"error": "unauthorized"}, status_code=401)
        elif self.answer is not None:
            status, body, extra = self.answer
            response = Response(body, status_code=status, headers=extra)
        else:
            if self.app is None:
                assert self.build is not None
                self.app = self.build(self.origin)
            response = self.app
        await response(scope, receive, send)

    def serve(self, status: int, body: bytes | dict[str, Any], **headers: str) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answer = (status, data, {"content-type": "application/json", **headers})


@pytest.fixture
def v1_agent() -> Iterator[tuple[LocalAgent, str]]:
    local = LocalAgent(sdk_agent, require={"Authorization": f"Bearer {AGENT_KEY}"})
    with serve_in_thread(local) as origin:
        yield local, origin


@pytest.fixture
def v03_agent() -> Iterator[str]:
    def build(origin: str) -> Starlette:
        async def card(request: Request) -> JSONResponse:
            return JSONResponse(v03_card(origin))

        return Starlette(routes=[Route("/cards/legacy.json", card)])

    with serve_in_thread(LocalAgent(build)) as origin:
        yield origin


@pytest.fixture
def fixed() -> Iterator[tuple[LocalAgent, str]]:
    """An agent whose every answer the test sets (``local.serve``)."""
    local = LocalAgent()
    local.serve(200, {})
    with serve_in_thread(local) as origin:
        yield local, origin


def agent_upstream(
    url: str, *, vendor: str = Upstream.Vendor.A2A, secret: str | None = AGENT_KEY, **options: str
) -> Upstream:
    return services.upstream_create(
        name=f"agent-{len(url)}-{Upstream.objects.count()}",
        vendor=vendor,
        base_url=url,
        secret=secret,
        options=options,
        timeout_seconds=10,
    )


def agent_product(catalog: Catalog, *, slug: str = "helper", **kw: Any) -> Agent:
    product = services.product_create(
        name=slug.title(), slug=slug, kind=Product.Kind.AGENT, description="Helps."
    )
    services.plan_create(product=product, name="Free", requests_per_minute=60)
    services.product_publish(product=product, portals=[catalog.portal])
    return services.agent_create(product=product, **kw)


def refreshed(target: AgentTarget) -> AgentTarget:
    services.agent_target_refresh(target=target)
    target.refresh_from_db()
    return target


# Card fetches ---------------------------------------------------------------------------


def test_a_v1_card_is_fetched_with_the_bearer_credential_and_its_json_rpc_1_0_interface_kept(
    catalog, v1_agent
):
    local, origin = v1_agent
    agent = agent_product(catalog)
    target = services.agent_target_add(agent=agent, upstream=agent_upstream(origin))
    target = refreshed(target)
    assert target.last_error == ""
    assert target.health == AgentTarget.Health.HEALTHY
    assert target.interface_url == origin + "/a2a"
    assert target.protocol_version == "1.0"
    assert target.streaming is True
    assert target.card["name"] == "Weather helper"
    assert target.card["skills"] == [SKILL]
    assert target.card["capabilities"] == {"streaming": True}
    assert "signatures" not in target.card
    assert target.card_fetched_at is not None
    assert target.last_checked_at is not None
    [(path, headers)] = local.requests
    assert path == "/.well-known/agent-card.json"
    assert headers["authorization"] == f"Bearer {AGENT_KEY}"


def test_without_the_credential_the_agent_refuses_and_the_admin_is_told_what_to_set(
    catalog, v1_agent
):
    _, origin = v1_agent
    agent = agent_product(catalog)
    target = refreshed(
        services.agent_target_add(agent=agent, upstream=agent_upstream(origin, secret=None))
    )
    assert target.health == AgentTarget.Health.UNHEALTHY
    assert "asks for a credential" in target.last_error
    assert target.card == {}
    wrong = agent_upstream(origin, secret="not-the-key-" + "x" * 10)
    target = refreshed(services.agent_target_add(agent=agent, upstream=wrong))
    assert "refused the credential" in target.last_error
    assert "not-the-key" not in target.last_error


def test_a_v03_only_card_at_its_own_json_url_is_read_as_v1_and_speaks_0_3(catalog, v03_agent):
    agent = agent_product(catalog)
    upstream = agent_upstream(v03_agent + "/cards/legacy.json", secret=None)
    target = refreshed(services.agent_target_add(agent=agent, upstream=upstream))
    assert target.last_error == ""
    assert target.protocol_version == "0.3"
    assert target.interface_url == v03_agent + "/rpc"
    assert target.streaming is False
    card = target.card
    assert card["supportedInterfaces"] == [
        {"url": v03_agent + "/rpc", "protocolBinding": "JSONRPC", "protocolVersion": "0.3.0"}
    ]
    assert "url" not in card
    assert "preferredTransport" not in card
    assert card["defaultOutputModes"] == ["application/json"]


def test_basic_auth_sends_the_username_and_the_secret_as_password(catalog, fixed):
    local, origin = fixed
    local.serve(200, v03_card(origin))
    agent = agent_product(catalog)
    upstream = agent_upstream(origin, secret="pa55word", auth="basic", username="portico")
    target = refreshed(services.agent_target_add(agent=agent, upstream=upstream))
    assert target.last_error == ""
    # base64("portico:pa55word")
    assert local.requests[-1][1]["authorization"] == "Basic cG9ydGljbzpwYTU1d29yZA=="


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        ({"name": "x", "version": "1"}, "lacks required fields: description, skills"),
        ("http+json only", "no JSON-RPC interface (HTTP+JSON)"),
        ("speaks 0.2", "speaks A2A 0.2.5; Portico speaks 1.0 and 0.3"),
        ("inside", "interface is not usable"),
        ("huge", "larger than 256 KiB"),
        ("404", "No agent card at"),
        ("500", "failed (HTTP 500)"),
    ],
)
def test_a_broken_card_makes_the_target_unhealthy_and_keeps_the_card_it_had(
    catalog, fixed, answer, problem
):
    local, origin = fixed
    good = v03_card(origin)
    local.serve(200, good)
    agent = agent_product(catalog)
    target = refreshed(services.agent_target_add(agent=agent, upstream=agent_upstream(origin)))
    assert target.health == AgentTarget.Health.HEALTHY
    before = (target.card, target.interface_url, target.protocol_version)

    if answer == "http+json only":
        local.serve(200, {**good, "preferredTransport": "HTTP+JSON"})
    elif answer == "speaks 0.2":
        local.serve(200, {**good, "protocolVersion": "0.2.5"})
    elif answer == "inside":
        local.serve(200, {**good, "url": "http://10.1.2.3/rpc"})
    elif answer == "huge":
        local.serve(200, {**good, "description": "x" * MAX_CARD_BYTES})
    elif answer in ("404", "500"):
        local.serve(int(answer), b"{}")
    else:
        local.serve(200, answer)
    target = refreshed(target)
    assert target.health == AgentTarget.Health.UNHEALTHY
    assert problem in target.last_error
    assert (target.card, target.interface_url, target.protocol_version) == before


def test_redirects_are_followed_on_the_same_origin_only(catalog, fixed):
    local, origin = fixed
    agent = agent_product(catalog)
    target = services.agent_target_add(agent=agent, upstream=agent_upstream(origin))
    # Elsewhere (localhost is another origin than 127.0.0.1): the credential stays here.
    port = origin.rsplit(":", 1)[1]
    local.serve(302, b"", location=f"http://localhost:{port}/card.json")
    target = refreshed(target)
    assert "redirects the card to localhost" in target.last_error
    assert len(local.requests) == 1
    local.serve(302, b"", location="/.well-known/agent-card.json")
    target = refreshed(target)
    assert "More than 3 redirects" in target.last_error


def test_an_unreachable_agent_is_unhealthy_and_refresh_never_raises(catalog):
    agent = agent_product(catalog)
    a2a = services.agent_target_add(agent=agent, upstream=agent_upstream("http://127.0.0.1:9"))
    services.agent_refresh(agent=agent)
    a2a.refresh_from_db()
    assert a2a.health == AgentTarget.Health.UNHEALTHY
    assert "Could not fetch the agent card from 127.0.0.1:9: connection refused" in a2a.last_error


def test_card_urls():
    assert card_url("https://a.example/agents/x") == (
        "https://a.example/agents/x/.well-known/agent-card.json"
    )
    assert card_url("https://a.example/agents/x/") == (
        "https://a.example/agents/x/.well-known/agent-card.json"
    )
    assert card_url("https://a.example/card.json") == "https://a.example/card.json"


def test_read_card_prefers_json_rpc_1_0_whatever_the_order():
    card = v03_card("http://a.example")
    card["supportedInterfaces"] = [
        {"url": "http://a.example/old", "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
        {"url": "http://a.example/new", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
    ]
    fetched = read_card(json.dumps(card).encode())
    assert (fetched.interface_url, fetched.protocol_version) == ("http://a.example/new", "1.0")


# REST agents ----------------------------------------------------------------------------


def test_rest_presets_decode_as_the_gateway_reads_them():
    chat = rest_agent_preset("openai-chat")
    assert chat == {
        "method": "POST",
        "path": "/chat/completions",
        "request": {"model": "<model>", "messages": [{"role": "user", "content": "{{text}}"}]},
        "reply": "choices.0.message.content",
        "reply_as": "message",
    }
    assert rest_agent_call_from_json(chat) == schema.RestAgentCall(
        path="/chat/completions",
        request=chat["request"],
        reply="choices.0.message.content",
    )
    hook = rest_agent_call_from_json(rest_agent_preset("webhook"))
    assert (hook.method, hook.path, hook.reply) == ("POST", "", "reply")
    assert hook.request == {"message": "{{text}}", "session": "{{context_id}}"}
    chat["request"]["model"] = "changed"  # a copy: the preset stays as it was
    assert rest_agent_preset("openai-chat")["request"]["model"] == "<model>"


@pytest.mark.parametrize(
    ("rest", "problem"),
    [
        ({"path": "chat"}, "must start with /"),
        ({"method": "DELETE"}, "not valid"),
        ({"verb": "POST"}, "not valid"),
        ({"request": {"big": "x" * 20_000}}, "over 16 KiB"),
    ],
)
def test_a_rest_call_that_could_not_work_is_refused(catalog, rest, problem):
    agent = agent_product(catalog)
    upstream = agent_upstream("http://127.0.0.1:9", vendor=Upstream.Vendor.REST_AGENT)
    with pytest.raises(ValidationError, match=problem):
        services.agent_target_add(agent=agent, upstream=upstream, rest=rest)


def test_rest_belongs_to_rest_agents_only(catalog):
    agent = agent_product(catalog)
    rest_upstream = agent_upstream("http://127.0.0.1:9", vendor=Upstream.Vendor.REST_AGENT)
    with pytest.raises(ValidationError, match="needs its REST call"):
        services.agent_target_add(agent=agent, upstream=rest_upstream)
    with pytest.raises(ValidationError, match="leave the REST call empty"):
        services.agent_target_add(
            agent=agent,
            upstream=agent_upstream("http://127.0.0.1:9"),
            rest=rest_agent_preset("webhook"),
        )


@pytest.mark.parametrize(("status", "health"), [(405, "healthy"), (503, "unhealthy")])
def test_a_rest_agent_is_up_when_its_base_url_answers_below_500(catalog, fixed, status, health):
    local, origin = fixed
    local.serve(status, b"{}")
    agent = agent_product(catalog)
    upstream = agent_upstream(origin + "/hook", vendor=Upstream.Vendor.REST_AGENT)
    target = services.agent_target_add(
        agent=agent, upstream=upstream, rest=rest_agent_preset("webhook")
    )
    target = refreshed(target)
    assert target.health == health
    assert target.card == {}
    [(path, headers)] = local.requests
    assert path == "/hook"
    assert "authorization" not in headers  # a probe needs no credential


# Upstream options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"auth": "basic"}, "needs the username option"),
        ({"auth": "bearer", "username": "x"}, "only for auth=basic"),
        ({"auth": "basic", "username": "a:b"}, "cannot contain a colon"),
        ({"auth": "query"}, "auth option is one of bearer, header, oauth2, basic"),
        ({"auth": "header"}, "Name the header"),
        ({"auth": "oauth2"}, "need the token_url and client_id"),
        ({"param": "key"}, "takes only the auth, client_id, header, scope, token_url, username"),
    ],
)
def test_agent_upstreams_check_their_auth_options(db, options, problem):
    with pytest.raises(ValidationError, match=problem):
        agent_upstream("http://127.0.0.1:9", **options)


def test_an_mcp_upstream_takes_no_username(db):
    with pytest.raises(ValidationError, match="not username"):
        services.upstream_create(
            name="m", vendor="mcp", base_url="http://127.0.0.1:9/mcp", options={"username": "u"}
        )


def test_an_agent_base_url_passes_the_egress_policy(db):
    with pytest.raises(ValidationError, match=r"10\.0\.0\.8"):
        agent_upstream("http://10.0.0.8/agent")


# Serving ------------------------------------------------------------------------------------


def test_the_served_card_is_the_first_a2a_card_else_made_from_the_product(catalog, v1_agent):
    _, origin = v1_agent
    agent = agent_product(catalog, skills=[SKILL])
    rest = services.agent_target_add(
        agent=agent,
        upstream=agent_upstream("http://127.0.0.1:9", vendor=Upstream.Vendor.REST_AGENT),
        rest=rest_agent_preset("webhook"),
    )
    assert services.agent_served_card(agent=agent) == {
        "name": "Helper",
        "description": "Helps.",
        "version": "1.0.0",
        "capabilities": {"streaming": True},
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [SKILL],
    }
    a2a = refreshed(services.agent_target_add(agent=agent, upstream=agent_upstream(origin)))
    assert services.agent_served_card(agent=agent) == a2a.card
    rest.delete()
    assert services.agent_served_card(agent=agent)["name"] == "Weather helper"


def test_a_changed_card_publishes_a_revision_and_an_unchanged_one_does_not(catalog, fixed):
    local, origin = fixed
    local.serve(200, v03_card(origin))
    agent = agent_product(catalog)
    services.agent_target_add(agent=agent, upstream=agent_upstream(origin))
    PendingChange.objects.all().delete()
    services.agent_refresh(agent=agent)
    assert PendingChange.objects.count() == 1
    agent.product.refresh_from_db()
    assert "old skill" in agent.product.search_document
    assert "legacy" in agent.product.search_document
    services.agent_refresh(agent=agent)
    assert PendingChange.objects.count() == 1
    local.serve(200, {**v03_card(origin), "version": "1.0.0"})
    services.agent_refresh(agent=agent)
    assert PendingChange.objects.count() == 2
    # Down: the card is kept, nothing served changes.
    local.serve(500, b"")
    services.agent_refresh(agent=agent)
    assert PendingChange.objects.count() == 2


def test_the_compiled_agent_product(catalog, v1_agent):
    _, origin = v1_agent
    agent = agent_product(
        catalog, affinity="consumer", requests_per_minute=600, health_check_seconds=10
    )
    a2a_upstream = agent_upstream(origin)
    a2a = refreshed(services.agent_target_add(agent=agent, upstream=a2a_upstream, name="v2"))
    rest_upstream = agent_upstream(origin, vendor=Upstream.Vendor.REST_AGENT, secret="s3cr3t-key")
    services.agent_target_add(
        agent=agent, upstream=rest_upstream, weight=3, rest=rest_agent_preset("openai-chat")
    )
    # Not fetched yet: no interface to call, so not compiled in.
    unfetched = agent_upstream("http://127.0.0.1:9")
    services.agent_target_add(agent=agent, upstream=unfetched, name="never")

    state = compiler.compile_state()
    compiled = state.products["helper"]
    assert compiled.kind == "agent"
    assert compiled.agent == schema.AgentProduct(
        card=a2a.card,
        targets=[
            schema.AgentTarget(
                upstream=str(a2a_upstream.pk),
                name="v2",
                url=origin + "/a2a",
                protocol_version="1.0",
                streaming=True,
            ),
            schema.AgentTarget(
                upstream=str(rest_upstream.pk),
                weight=3,
                name=rest_upstream.name,
                rest=rest_agent_call_from_json(rest_agent_preset("openai-chat")),
            ),
        ],
        affinity="consumer",
        requests_per_minute=600,
        health_check_seconds=10.0,
    )
    assert str(a2a_upstream.pk) in state.upstreams
    assert state.upstreams[str(rest_upstream.pk)].vendor == "rest-agent"
    assert state.upstreams[str(rest_upstream.pk)].secret is not None
    assert str(unfetched.pk) not in state.upstreams
    # The gateway decodes it.
    document = state.to_revision(1)
    decoded = gw_revision.decode_revision(msgspec.json.encode(document))
    assert decoded.products["helper"].agent == compiled.agent


def test_a_subscription_override_is_compiled_for_every_product_kind(catalog, owner):
    app = make_subscribed_app(owner=owner, catalog=catalog)
    subscription = app.subscriptions.get()
    state = compiler.compile_state()
    assert state.consumers[str(app.pk)].subscriptions["chat"].requests_per_minute is None
    consumer_services.subscription_set_requests_per_minute(
        subscription=subscription, requests_per_minute=7
    )
    state = compiler.compile_state()
    assert state.consumers[str(app.pk)].subscriptions["chat"].requests_per_minute == 7
    with pytest.raises(ValidationError, match="at least 1"):
        consumer_services.subscription_set_requests_per_minute(
            subscription=subscription, requests_per_minute=0
        )


# Tasks ---------------------------------------------------------------------------------------


def test_beat_queues_one_refresh_per_agent_that_may_be_served(catalog, monkeypatch):
    queued: list[int] = []
    monkeypatch.setattr(agent_refresh_task, "delay", queued.append)
    agent = agent_product(catalog)
    assert agents_refresh_task() == 1
    assert queued == [agent.pk]
    services.product_retire(product=agent.product)
    assert agents_refresh_task() == 0
    agent_refresh_task(10**9)  # gone since it was queued: nothing to do


def test_adding_a_target_queues_its_agents_refresh_after_commit(
    catalog, django_capture_on_commit_callbacks, monkeypatch
):
    queued: list[int] = []
    monkeypatch.setattr(agent_refresh_task, "delay", queued.append)
    agent = agent_product(catalog)
    with django_capture_on_commit_callbacks(execute=True):
        services.agent_target_add(agent=agent, upstream=agent_upstream("http://127.0.0.1:9"))
    assert queued == [agent.pk]


# Admin -----------------------------------------------------------------------------------------


def test_the_product_page_has_the_agent_inline_for_agent_products_only(admin_client, catalog):
    agent = agent_product(catalog, skills=[SKILL])
    page = admin_client.get(reverse("admin:catalog_product_change", args=[agent.product.pk]))
    model_page = admin_client.get(
        reverse("admin:catalog_product_change", args=[catalog.product.pk])
    )
    assert 'name="agent-TOTAL_FORMS"' in page.content.decode()
    assert "No targets yet" in page.content.decode()
    assert 'name="agent-TOTAL_FORMS"' not in model_page.content.decode()


def test_the_agent_page_shows_its_targets_and_adds_one_from_a_preset(
    admin_client, catalog, v1_agent, django_capture_on_commit_callbacks, monkeypatch
):
    _, origin = v1_agent
    agent = agent_product(catalog)
    refreshed(services.agent_target_add(agent=agent, upstream=agent_upstream(origin), name="v1"))
    url = reverse("admin:catalog_agent_change", args=[agent.pk])
    page = admin_client.get(url).content.decode()
    assert "Weather helper 2.1.0; skills: Answer questions" in page
    assert origin + "/a2a" in page
    assert "Healthy" in page
    listing = admin_client.get(reverse("admin:catalog_agent_changelist"))
    assert listing.status_code == 200

    queued: list[int] = []
    monkeypatch.setattr(agent_refresh_task, "delay", queued.append)
    rest_upstream = agent_upstream("http://127.0.0.1:9", vendor=Upstream.Vendor.REST_AGENT)
    [existing] = agent.targets.all()
    data = {
        "affinity": "none",
        "requests_per_minute": "",
        "health_check_seconds": "30",
        "skills": "[]",
        **empty_inline("targets", 1),
        "targets-TOTAL_FORMS": "2",
        "targets-0-id": str(existing.pk),
        "targets-0-agent": str(agent.pk),
        "targets-0-upstream": str(existing.upstream_id),
        "targets-0-name": "v1",
        "targets-0-weight": "1",
        "targets-0-position": "0",
        "targets-0-rest": "null",
        "targets-1-agent": str(agent.pk),
        "targets-1-upstream": str(rest_upstream.pk),
        "targets-1-name": "hook",
        "targets-1-weight": "1",
        "targets-1-position": "1",
        "targets-1-preset": "webhook",
        "targets-1-rest": "null",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    hook = agent.targets.get(name="hook")
    assert hook.rest == rest_agent_preset("webhook")
    assert queued == [agent.pk]


def test_the_fetch_action_queues_the_agents(admin_client, catalog, monkeypatch):
    queued: list[int] = []
    monkeypatch.setattr(agent_refresh_task, "delay", queued.append)
    agent = agent_product(catalog)
    response = admin_client.post(
        reverse("admin:catalog_agent_changelist"),
        {"action": "fetch_cards_now", "_selected_action": [agent.pk]},
        follow=True,
    )
    assert "Checking 1 agent" in response.content.decode()


def test_admins_set_a_subscriptions_own_limit(admin_client, catalog, owner):
    app = make_subscribed_app(owner=owner, catalog=catalog)
    subscription = app.subscriptions.get()
    url = reverse("admin:consumers_subscription_change", args=[subscription.pk])
    assert 'name="requests_per_minute"' in admin_client.get(url).content.decode()
    data = {
        "consumer": str(app.pk),
        "product": str(catalog.product.pk),
        "plan": str(catalog.plan.pk),
        "allowed_tools": "",
        "requests_per_minute": "12",
    }
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    subscription.refresh_from_db()
    assert subscription.requests_per_minute == 12
    response = admin_client.post(url, {**data, "requests_per_minute": "0"})
    assert response.status_code == 200
