"""Agent products in the portal: the product page (card, skills, one health badge, the
quick start snippets, which are run against a real a2a-sdk server), and the
playground's Agents tab (who may use which app, and a real streamed reply from the demo
agent, the a2a-sdk's own server)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.core.cache import cache
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog import services as catalog_services
from catalog.models import AgentTarget, Plan, Product, Upstream
from consumers import services as consumer_services
from consumers.models import Consumer, Credential
from devstack import demo_agent
from devstack.portico import Ports, start_demo_agent
from devstack.procs import Stack, free_port
from portal.agents import a2a_message_request, agent_snippets
from portal.playground import PLAYGROUND_KEY_NAME, agent_stream, agent_targets_for
from tests.conftest import Catalog
from tests.gateway.mcp_support import serve_in_thread

PAGE = "portal:playground_agent"
SEND = "portal:playground_agent_send"
AGENT_KEY = "demo-agent-test-" + "a" * 24
GATEWAY = "https://gw.example.test"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def card(**overrides: Any) -> dict[str, Any]:
    """The demo agent's card as the control plane stores it (v1.0 JSON)."""
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]

    stored = MessageToDict(demo_agent.agent_card("http://127.0.0.1:9/"))
    return {**stored, **overrides}


def agent_product(
    catalog: Catalog,
    *,
    slug: str = "planner",
    vendor: str = Upstream.Vendor.A2A,
    health: list[str] | None = None,
    stored_card: dict[str, Any] | None = None,
    skills: list[dict[str, Any]] | None = None,
) -> tuple[Product, Plan]:
    """A published agent product with one target per ``health`` entry (each on an
    upstream of ``vendor`` of its own), each with ``stored_card`` as fetched."""
    product = catalog_services.product_create(
        name=slug.title(), slug=slug, kind="agent", description="An agent."
    )
    plan = catalog_services.plan_create(product=product, name="Free", requests_per_minute=60)
    catalog_services.product_publish(product=product, portals=[catalog.portal])
    agent = catalog_services.agent_create(product=product, skills=skills or [])
    rest = {"path": "/chat", "reply": "text"} if vendor == Upstream.Vendor.REST_AGENT else None
    for index, state in enumerate(health or ["healthy"]):
        upstream = catalog_services.upstream_create(
            name=f"agent-{slug}-{index}",
            vendor=vendor,
            base_url="http://127.0.0.1:9/private-agent",
            secret="backend-secret-" + "s" * 20,
            options={"auth": "bearer"},
        )
        target = catalog_services.agent_target_add(
            agent=agent,
            upstream=upstream,
            name=f"canary-version-{index + 1}",
            weight=7 + index,
            rest=rest,
        )
        AgentTarget.objects.filter(pk=target.pk).update(
            card={} if rest else (stored_card if stored_card is not None else card()),
            health=state,
            last_checked_at=None if state == "unknown" else timezone.now(),
        )
    return product, plan


def subscribe(app: Consumer, product: Product, plan: Plan) -> None:
    sub = consumer_services.subscription_create(consumer=app, product=product, plan=plan)
    consumer_services.subscription_approve(subscription=sub)


# The product page --------------------------------------------------------------------


def test_product_page_shows_the_card_skills_health_and_snippets(client, catalog, settings):
    settings.PORTICO_GATEWAY_PUBLIC_URL = GATEWAY
    product, _ = agent_product(catalog, health=["unhealthy", "healthy"])
    page = client.get(reverse("portal:product", args=[product.slug])).content.decode()
    assert 'id="agent-name">Trip Planner<' in page
    assert "<code>1.0.0</code>" in page
    assert "Portico demo" in page  # the provider
    assert 'id="agent-streaming">yes<' in page
    for text in ("Plan a trip", "Travel budget", "currency", "Plan a weekend in Lisbon"):
        assert text in page
    # One badge for the whole agent: healthy, since one of its targets is.
    assert 'class="badge healthy" id="agent-health">Healthy<' in page
    assert f"{GATEWAY}/agents/planner/.well-known/agent-card.json" in page
    assert "create_client(AGENT_URL" in page
    assert "A2A-Version: 1.0" in page
    assert "SendMessage" in page
    assert f"{reverse(PAGE)}?product=planner" in page
    # Versions, weights, upstreams and the backend credential are the admin's business.
    # (Labels long enough that no random token on the page contains one by chance.)
    for secret in ("private-agent", "backend-secret", "agent-planner", "canary-version", "weight"):
        assert secret not in page


@pytest.mark.parametrize(
    ("health", "badge"),
    [
        (["unhealthy", "unhealthy"], 'class="badge unhealthy" id="agent-health">Not answering<'),
        (["unknown"], 'class="badge unknown" id="agent-health">Not checked yet<'),
    ],
)
def test_the_health_badge_is_unhealthy_only_when_no_target_is_healthy(
    client, catalog, health, badge
):
    product, _ = agent_product(catalog, health=health)
    page = client.get(reverse("portal:product", args=[product.slug])).content.decode()
    assert badge in page


def test_a_rest_agent_shows_the_skills_its_admin_defined(client, catalog):
    skills = [{"id": "echo", "name": "Echo", "description": "Repeats you.", "examples": ["Hi"]}]
    product, _ = agent_product(catalog, vendor=Upstream.Vendor.REST_AGENT, skills=skills)
    page = client.get(reverse("portal:product", args=[product.slug])).content.decode()
    assert 'id="agent-name">Planner<' in page
    assert "Repeats you." in page
    # The snippets send the first skill's first example.
    assert "Part(text=&quot;Hi&quot;)" in page


def test_an_agent_without_a_card_yet_says_so(client, catalog):
    product, _ = agent_product(catalog, stored_card={}, health=["unknown"])
    page = client.get(reverse("portal:product", args=[product.slug])).content.decode()
    assert "appear here once the agent has been discovered" in page


def test_what_an_agent_says_about_itself_is_escaped(client, catalog):
    hostile = "<script>alert(1)</script>"
    skill = {"id": "x", "name": hostile, "description": hostile, "tags": [hostile]}
    product, _ = agent_product(
        catalog, stored_card=card(name=hostile, description=hostile, skills=[skill])
    )
    page = client.get(reverse("portal:product", args=[product.slug])).content.decode()
    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_product_page_takes_the_same_queries_with_more_targets(client, catalog):
    few, _ = agent_product(catalog, slug="few", health=["healthy"])
    many, _ = agent_product(catalog, slug="many", health=["healthy"] * 6)
    counts = []
    for product in (few, many):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(reverse("portal:product", args=[product.slug])).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


# The snippets, run against the demo agent (the a2a-sdk's server) -----------------------


@pytest.fixture(scope="module")
def demo_agent_url(tmp_path_factory) -> Iterator[str]:
    """The demo agent as ``make run`` starts it, behind a backend credential."""
    stack = Stack(log_dir=tmp_path_factory.mktemp("demo-agent"))
    ports = Ports(demo_agent=free_port())
    start_demo_agent(stack, ports, require_key=AGENT_KEY)
    try:
        yield ports.demo_agent_url
    finally:
        stack.stop_all()


def _pointed_at(code: str, url: str, *, at: str) -> str:
    """A snippet with the agent's URL and a real key in place of the gateway's and the
    placeholder (the gateway serves the agent at /agents/<slug>; the agent itself at /)."""
    return code.replace(url, at).replace("YOUR_API_KEY", AGENT_KEY)


def test_the_python_snippet_runs_against_an_a2a_sdk_server(demo_agent_url):
    snippets = {s.id: s for s in agent_snippets(gateway_url=GATEWAY, slug="p", example="Tokyo?")}
    code = _pointed_at(snippets["qs-a2a-python"].code, f"{GATEWAY}/agents/p", at=demo_agent_url)
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert "Checking the weather in Tokyo" in ran.stdout
    assert "Trip plan for Tokyo" in ran.stdout


def test_the_curl_snippet_sends_a_message_to_an_a2a_sdk_server(demo_agent_url):
    snippets = {s.id: s for s in agent_snippets(gateway_url=GATEWAY, slug="p", example="hello")}
    command = _pointed_at(snippets["qs-a2a-curl"].code, f"{GATEWAY}/agents/p", at=demo_agent_url)
    argv = shlex.split(command.replace("\\\n", " "))
    ran = subprocess.run([*argv, "-s"], capture_output=True, text=True, timeout=30, check=False)
    reply = json.loads(ran.stdout)
    assert reply["result"]["message"]["role"] == "ROLE_AGENT"
    assert "I plan trips" in reply["result"]["message"]["parts"][0]["text"]


def test_the_message_request_is_a_v1_json_rpc_request():
    body = a2a_message_request("SendMessage", "hi", message_id="m1", context_id="c1")
    assert body["method"] == "SendMessage"
    assert body["params"]["message"] == {
        "role": "ROLE_USER",
        "messageId": "m1",
        "parts": [{"text": "hi"}],
        "contextId": "c1",
    }


# The playground's Agents tab: who may use what ---------------------------------------


@pytest.fixture
def planner(catalog) -> tuple[Product, Plan]:
    return agent_product(catalog)


def test_anonymous_visitors_are_sent_to_sign_in(client, db):
    response = client.get(reverse(PAGE))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_the_tab_offers_only_your_apps_subscribed_to_agents(client, owner, outsider, planner):
    mine = consumer_services.consumer_create(owner=owner, name="mine")
    subscribe(mine, *planner)
    theirs = consumer_services.consumer_create(owner=outsider, name="theirs")
    subscribe(theirs, *planner)
    assert [t.value for t in agent_targets_for(user=owner)] == [f"{mine.pk}:planner"]
    client.force_login(owner)
    page = client.get(reverse(PAGE), {"product": "planner"}).content.decode()
    assert f'value="{mine.pk}:planner" selected' in page
    assert "theirs" not in page


def test_a_product_no_app_is_subscribed_to_is_explained(client, owner, planner):
    client.force_login(owner)
    page = client.get(reverse(PAGE), {"product": "planner"}).content.decode()
    assert "None of your apps is subscribed to this agent yet." in page
    assert reverse("portal:product", args=["planner"]) in page


def test_another_developers_app_is_a_404_on_the_page_and_when_sending(
    client, owner, outsider, planner
):
    theirs = consumer_services.consumer_create(owner=outsider, name="theirs")
    subscribe(theirs, *planner)
    client.force_login(owner)
    target = f"{theirs.pk}:planner"
    assert client.get(reverse(PAGE), {"target": target}).status_code == 404
    response = client.post(reverse(SEND), {"target": target, "message": "hi"})
    assert response.status_code == 404
    assert not Credential.objects.filter(name=PLAYGROUND_KEY_NAME).exists()


def test_an_admin_may_try_anyones_app(client, staff, outsider, planner):
    theirs = consumer_services.consumer_create(owner=outsider, name="theirs")
    subscribe(theirs, *planner)
    client.force_login(staff)
    page = client.get(reverse(PAGE), {"target": f"{theirs.pk}:planner"}).content.decode()
    assert f'value="{theirs.pk}:planner" selected' in page


@pytest.mark.parametrize(
    "form",
    [
        {"message": "hi"},  # no target
        {"target": "APP:planner", "message": "hi"},  # not a target at all
        {"target": "{app}:planner", "message": "  "},  # no message
        {"target": "{app}:nothing", "message": "hi"},  # not subscribed
        {"target": "{app}:planner", "message": "hi", "context_id": "two words"},
    ],
)
def test_a_send_that_names_no_subscribed_agent_and_message_is_refused(client, owner, planner, form):
    app = consumer_services.consumer_create(owner=owner, name="mine")
    subscribe(app, *planner)
    client.force_login(owner)
    data = {name: value.replace("{app}", str(app.pk)) for name, value in form.items()}
    response = client.post(reverse(SEND), data)
    assert response.status_code == 400
    assert response.content.startswith(b"event: error\n")
    assert not Credential.objects.filter(name=PLAYGROUND_KEY_NAME).exists()


# The playground's Agents tab: a real streamed reply -----------------------------------


class FakeGateway:
    """The demo agent (the a2a-sdk's server, in this loop) at ``/agents/planner``, with
    the gateway's ``GET /v1/models`` for the playground's wait on its key; it records
    each request's headers and body (as the agent reads it)."""

    def __init__(self, url: str) -> None:
        self.agent = demo_agent.build_app(url, delay=0.0)
        self.seen: list[tuple[dict[str, str], list[bytes]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/v1/models":
            body = b'{"object":"list","data":[]}'
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        prefix = "/agents/planner"
        assert scope["path"].startswith(prefix)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        chunks: list[bytes] = []
        self.seen.append((headers, chunks))

        async def recording() -> dict[str, Any]:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        path = scope["path"][len(prefix) :] or "/"
        await self.agent({**scope, "path": path, "raw_path": path.encode()}, recording, send)


@pytest.fixture
def fake_gateway(settings) -> Iterator[FakeGateway]:
    app = FakeGateway("http://127.0.0.1:9/agents/planner")  # its card is not read here
    with serve_in_thread(app) as origin:
        settings.PORTICO_GATEWAY_INTERNAL_URL = origin
        yield app


def events_of(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            events.append((lines.get("event", "message"), json.loads(lines["data"])))
    return events


@pytest.mark.anyio
@pytest.mark.django_db(transaction=True)
async def test_the_playground_streams_the_agents_events_and_continues_the_conversation(
    fake_gateway,
):
    from asgiref.sync import sync_to_async

    from tests.conftest import make_catalog

    def world() -> tuple[Any, Consumer]:
        from django.contrib.auth.models import User

        catalog = make_catalog()
        product, plan = agent_product(catalog)
        owner = User.objects.create_user("alice", "alice@example.com", "alice-password-1")
        app = consumer_services.consumer_create(owner=owner, name="mine")
        subscribe(app, product, plan)
        return owner, app

    owner, app = await sync_to_async(world)()
    client = AsyncClient()
    await client.aforce_login(owner)

    async def send(message: str, context_id: str = "") -> list[tuple[str, dict[str, Any]]]:
        form = {"target": f"{app.pk}:planner", "message": message, "context_id": context_id}
        response = await client.post(reverse(SEND), form)
        assert response.status_code == 200
        assert response["Content-Type"] == "text/event-stream"
        streamed = response.streaming_content  # type: ignore[attr-defined]
        return events_of(b"".join([chunk async for chunk in streamed]))

    first = await send("Plan a weekend in Lisbon with 300 USD")
    names = [name for name, _ in first]
    assert names == ["task", "status", "artifact", "artifact", "artifact", "status", "done"]
    assert first[1][1]["state"] == "working"
    assert first[1][1]["text"] == "Checking the weather in Lisbon…"
    plan = "".join(payload["text"] for name, payload in first if name == "artifact")
    assert plan.startswith("Trip plan for Lisbon\n")
    assert "300 USD is about" in plan
    assert [p["append"] for n, p in first if n == "artifact"] == [False, True, True]
    assert first[-2][1]["state"] == "completed"
    context_id = first[-1][1]["contextId"]
    assert context_id

    # No city this time: the agent plans for the conversation's, as the contextId says.
    second = await send("And with 200 GBP?", context_id)
    assert second[1][1]["text"] == "Checking the weather in Lisbon…"
    assert second[-1][1]["contextId"] == context_id

    greeting = await send("hello")
    assert [name for name, _ in greeting] == ["message", "done"]
    assert "I plan trips" in greeting[0][1]["text"]

    # As the gateway expects it: the app's Playground key, A2A 1.0, a streaming request.
    headers, chunks = fake_gateway.seen[1]
    credential = await Credential.objects.aget(consumer=app, name=PLAYGROUND_KEY_NAME)
    assert headers["authorization"].startswith("Bearer ")
    assert headers["a2a-version"] == "1.0"
    assert credential.expires_at is not None
    assert credential.expires_at < timezone.now() + timedelta(days=2)
    sent = json.loads(b"".join(chunks))
    assert sent["method"] == "SendStreamingMessage"
    assert sent["params"]["message"]["contextId"] == context_id
    assert sent["params"]["message"]["parts"] == [{"text": "And with 200 GBP?"}]


@pytest.mark.anyio
async def test_an_agents_json_rpc_error_becomes_an_error_event(monkeypatch):
    from portal import playground

    async def gateway(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": []})
        error = {"code": -32001, "message": "Task not found"}
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "error": error})

    monkeypatch.setattr(
        playground,
        "_gateway",
        lambda: httpx.AsyncClient(base_url="http://gw", transport=httpx.MockTransport(gateway)),
    )
    events = [e async for e in agent_stream(key="k", slug="planner", text="hi")]
    assert events == [
        b'event: error\ndata: {"message":"Task not found (JSON-RPC error -32001)"}\n\n'
    ]


@pytest.mark.anyio
async def test_an_unreachable_gateway_becomes_an_error_event(settings):
    settings.PORTICO_GATEWAY_INTERNAL_URL = f"http://127.0.0.1:{free_port()}"
    events = [e async for e in agent_stream(key="portico_x", slug="planner", text="hi")]
    assert len(events) == 1
    assert events[0].startswith(b"event: error\n")
    assert b"Could not reach the gateway" in events[0]


# The demo of `make run` ----------------------------------------------------------------


def test_the_demo_seeds_both_agents_once_and_fetches_the_agents_card(
    db, settings, tmp_path, demo_agent_url
):
    from portal.demo import (
        DEMO_AGENT_SLUG,
        DEMO_REST_AGENT_CALL,
        DEMO_REST_AGENT_SLUG,
        seed_demo,
        seed_demo_agents,
    )

    settings.VAR_DIR = tmp_path
    # The agent started above wants this key: the seed keeps what it finds on disk.
    (tmp_path / "demo-secrets.json").write_text(json.dumps({"agent_upstream_key": AGENT_KEY}))
    urls = {"mock_llm_url": "http://127.0.0.1:9/v1", "demo_agent_url": demo_agent_url}
    seed = seed_demo(**urls)
    assert seed_demo(**urls).products == seed.products  # idempotent
    assert seed.products["agent"] == DEMO_AGENT_SLUG
    assert seed.products["rest_agent"] == DEMO_REST_AGENT_SLUG

    planner = Product.objects.get(slug=DEMO_AGENT_SLUG)
    assert planner.kind == Product.Kind.AGENT
    assert planner.status == Product.Status.PUBLISHED
    targets = list(planner.agent.targets.order_by("position"))
    assert [(t.name, t.weight, t.upstream.vendor) for t in targets] == [
        ("v1", 95, "a2a"),
        ("v2", 5, "a2a"),
    ]
    rest = Product.objects.get(slug=DEMO_REST_AGENT_SLUG).agent
    assert rest.skills[0]["examples"]
    (target,) = rest.targets.all()
    assert target.rest == DEMO_REST_AGENT_CALL
    assert target.upstream.vendor == "rest-agent"
    assert target.upstream.base_url == "http://127.0.0.1:9/v1"
    app = Consumer.objects.get(name="Demo App")
    assert set(
        app.subscriptions.filter(status="approved").values_list("product__slug", flat=True)
    ) >= {DEMO_AGENT_SLUG, DEMO_REST_AGENT_SLUG}

    seed_demo_agents()
    fetched = AgentTarget.objects.filter(agent__product__slug=DEMO_AGENT_SLUG)
    assert {(t.card["name"], t.health) for t in fetched} == {("Trip Planner", "healthy")}
