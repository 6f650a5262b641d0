"""The demo data that ``make run`` seeds: a portal, a model product, an MCP product, a
REST-to-MCP product, an A2A agent product and a wrapped REST agent product, a developer
and a key.

Seeding is idempotent: run again, it finds what it made before and only issues a new
demo key when the last one can no longer be used (its plaintext is only ever on disk
in ``var/``, which is local to this install and git-ignored).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from catalog import services as catalog_services
from catalog.models import (
    Agent,
    AgentTarget,
    Category,
    McpServer,
    ModelRoute,
    Plan,
    Product,
    Upstream,
)
from catalog.services import TargetSpec
from consumers import services as consumer_services
from consumers.models import Consumer, Credential, Subscription
from gateway.keys import hash_key
from portal.models import Membership, Portal

DEMO_PRODUCT_SLUG = "demo-chat"
DEMO_MODEL = "demo-model"
DEMO_LARGE_MODEL = "demo-model-large"
DEMO_EMBEDDING_MODEL = "demo-embedding"
DEMO_MCP_SLUG = "demo-tools"
DEMO_MCP_UPSTREAM = "Demo MCP server"
DEMO_REST_SLUG = "demo-rest-tools"
DEMO_REST_UPSTREAM = "Demo REST service"
DEMO_AGENT_SLUG = "demo-agent"
DEMO_AGENT_UPSTREAM = "Demo A2A agent"
DEMO_REST_AGENT_SLUG = "demo-rest-agent"
DEMO_REST_AGENT_UPSTREAM = "Demo REST agent"
# The wrapped REST agent is the mock LLM's chat endpoint (its base URL ends in /v1),
# called with the "openai-chat" mapping; the mock answers whatever model it is asked.
DEMO_REST_AGENT_CALL: dict[str, Any] = {
    "method": "POST",
    "path": "/chat/completions",
    "request": {"model": "mock-agent", "messages": [{"role": "user", "content": "{{text}}"}]},
    "reply": "choices.0.message.content",
    "reply_as": "message",
}
DEMO_REST_AGENT_SKILLS: list[dict[str, Any]] = [
    {
        "id": "echo",
        "name": "Echo",
        "description": "Answers like the demo chat model: it repeats what you said.",
        "tags": ["demo", "chat"],
        "examples": ["Hello, agent", "Repeat after me: Portico"],
    }
]
ADMIN_USERNAME = "admin"
DEMO_GUIDE = """\
Demo Chat answers like an OpenAI chat model but **echoes your last message**, so you can
try the portal end to end without a vendor account.

1. Create an app under **My apps** and subscribe it to this product.
2. Create a key for the app; it is shown once, so copy it.
3. Use one of the Quick start snippets with your key in place of `YOUR_API_KEY`.

`demo-model` shares its calls between two targets (see the `x-portico-target` response
header) and falls back to `demo-model-large` when they fail or the prompt is too long
for them. `demo-embedding` serves `/v1/embeddings`.

The Free plan allows 600 requests per minute; the Trial plan, 100,000 tokens in all.
"""
DEMO_MCP_GUIDE = """\
Demo Tools is a small MCP server with made-up but stable data: **get_weather** answers
for any city, **convert_currency** converts at fixed rates, and the **trip_briefing**
prompt puts them together.

1. Subscribe an app to this product and create a key for it.
2. Paste one of the Quick start configurations into your MCP client, with your key in
   place of `YOUR_API_KEY`.

The gateway calls the server with its own credential; your key never reaches it. The
tools' definitions are the ones an administrator approved.
"""
DEMO_REST_GUIDE = """\
Demo REST Tools is a plain REST API (notes and a small shop's inventory) that the gateway
serves as MCP tools: **list_notes**, **create_note**, **get_item**, **reserve_item** and
more, imported from the service's OpenAPI document. Each tool call becomes one HTTP
request to the service, and its JSON answer the tool's result.

1. Subscribe an app to this product and create a key for it.
2. Paste one of the Quick start configurations into your MCP client, with your key in
   place of `YOUR_API_KEY`.

The gateway calls the service with its own API key; your key never reaches it.
"""
DEMO_AGENT_GUIDE = """\
Trip Planner is an A2A agent: ask it for a trip ("Plan a weekend in Lisbon with 300
USD") and it answers as a task, streaming its plan in pieces: the weather, what to pack
and your budget in the local currency (made-up but stable data). Say "hello" and it
answers with a plain message.

1. Subscribe an app to this product and create a key for it.
2. Point any A2A client at the agent card URL above, with your key as a bearer token,
   or try it in the playground's Agents tab.

Two versions of the agent share the traffic, 95 to 5 (the `x-portico-target` response
header names the one that answered). The gateway calls the agent with its own
credential; your key never reaches it.
"""
DEMO_REST_AGENT_GUIDE = """\
Demo REST Agent is a plain HTTP chat endpoint (the demo's mock model) that the gateway
serves as an A2A agent: each A2A message becomes one chat completion request, and the
model's reply the agent's answer. It repeats what you say.

1. Subscribe an app to this product and create a key for it.
2. Use it as any A2A agent, with your key as a bearer token.
"""


@dataclass(frozen=True)
class DemoSeed:
    admin_username: str
    admin_password: str
    demo_key: str
    upstream_key: str
    products: dict[str, str]
    models: list[str]
    mcp_upstream_key: str = ""
    rest_upstream_key: str = ""
    agent_upstream_key: str = ""


def _private_file(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_private(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


@transaction.atomic
def seed_demo(
    *,
    mock_llm_url: str,
    demo_mcp_url: str | None = None,
    demo_rest_url: str | None = None,
    demo_agent_url: str | None = None,
) -> DemoSeed:
    """Seed (or refresh) the demo; with ``demo_mcp_url``, the MCP product served there
    too, with ``demo_rest_url`` the REST-to-MCP product of the REST service there, and
    with ``demo_agent_url`` the A2A agent product of the agent there and the REST agent
    product of the mock LLM's chat endpoint.

    None of them is contacted here (they may not be running yet, and a transaction must
    not wait on them): :func:`seed_demo_mcp_tools` discovers and approves the MCP
    server's tools, :func:`seed_demo_rest_tools` imports the REST service's OpenAPI
    document, and :func:`seed_demo_agents` fetches the agent's card.
    """
    state_path = Path(settings.VAR_DIR) / "demo-secrets.json"
    state = _private_file(state_path)
    user_model = get_user_model()

    admin = user_model.objects.filter(username=ADMIN_USERNAME).first()
    if admin is None or "admin_password" not in state:
        state["admin_password"] = secrets.token_urlsafe(12)
        if admin is None:
            admin = user_model.objects.create_superuser(
                ADMIN_USERNAME, "admin@example.com", state["admin_password"]
            )
        else:
            admin.set_password(state["admin_password"])
            admin.save(update_fields=["password"])

    portal, _ = Portal.objects.get_or_create(
        slug="demo",
        defaults={
            "name": "Portico Demo Portal",
            "tagline": "Models, tools and agents for your apps",
            "is_default": True,
        },
    )
    developer, _ = user_model.objects.get_or_create(
        username="demo-developer", defaults={"email": "developer@example.com"}
    )
    Membership.objects.get_or_create(
        portal=portal, user=developer, defaults={"status": Membership.Status.APPROVED}
    )
    consumer = Consumer.objects.filter(owner=developer, name="Demo App").first()
    if consumer is None:
        consumer = consumer_services.consumer_create(
            owner=developer, name="Demo App", portal=portal
        )
    offer = _DemoOffer(portal=portal, consumer=consumer)

    state.setdefault("upstream_key", "sk-mock-" + secrets.token_urlsafe(24))
    upstream = _demo_upstream(
        name="Demo mock LLM",
        url=mock_llm_url,
        vendor=Upstream.Vendor.OPENAI_COMPATIBLE,
        secret=state["upstream_key"],
    )
    product = offer.product(
        _Listing(
            slug=DEMO_PRODUCT_SLUG,
            name="Demo Chat",
            kind=Product.Kind.MODEL,
            description="A mock OpenAI-compatible chat model that echoes your last message.",
            category=("Chat", "chat"),
            tags=("demo", "openai-compatible"),
            guide=DEMO_GUIDE,
        ),
        build=lambda product: _seed_demo_models(product=product, upstream=upstream),
    )

    products = {"model": product.slug}
    if demo_mcp_url is not None:
        state.setdefault("mcp_upstream_key", "demo-mcp-" + secrets.token_urlsafe(24))
        products["mcp"] = _seed_demo_mcp(
            offer, url=demo_mcp_url, secret=state["mcp_upstream_key"]
        ).slug
    if demo_rest_url is not None:
        state.setdefault("rest_upstream_key", "demo-rest-" + secrets.token_urlsafe(24))
        products["rest_mcp"] = _seed_demo_rest(
            offer, url=demo_rest_url, secret=state["rest_upstream_key"]
        ).slug
    if demo_agent_url is not None:
        state.setdefault("agent_upstream_key", "demo-agent-" + secrets.token_urlsafe(24))
        products["agent"] = _seed_demo_agent(
            offer, url=demo_agent_url, secret=state["agent_upstream_key"]
        ).slug
        # The mock LLM wants the same key from the REST agent as from the model routes.
        products["rest_agent"] = _seed_demo_rest_agent(
            offer, url=mock_llm_url, secret=state["upstream_key"]
        ).slug

    key = state.get("demo_key", "")
    usable = Credential.objects.filter(
        key_hash=hash_key(key), revoked_at__isnull=True, expires_at__isnull=True
    ).exists()
    if not usable:
        key = consumer_services.credential_create(consumer=consumer, name="Demo key").key
        state["demo_key"] = key
    _write_private(state_path, state)
    return DemoSeed(
        admin_username=ADMIN_USERNAME,
        admin_password=state["admin_password"],
        demo_key=key,
        upstream_key=state["upstream_key"],
        mcp_upstream_key=state.get("mcp_upstream_key", ""),
        rest_upstream_key=state.get("rest_upstream_key", ""),
        agent_upstream_key=state.get("agent_upstream_key", ""),
        products=products,
        # The demo model first: `make run` and CI call it to see that all is up.
        models=[
            DEMO_MODEL,
            *ModelRoute.objects.filter(product=product)
            .exclude(name=DEMO_MODEL)
            .values_list("name", flat=True),
        ],
    )


def _seed_demo_models(*, product: Product, upstream: Upstream) -> None:
    """The demo's models, each made when missing (an admin's edits to them are kept).

    All are served by the mock LLM, which answers whatever model it is asked for:
    ``demo-model`` has two weighted targets (two model names there, so the gateway
    counts them apart) and falls back to ``demo-model-large``. In this order, so that a
    fallback exists before the model naming it.
    """
    models: list[dict[str, Any]] = [
        {
            "name": DEMO_LARGE_MODEL,
            "upstream_model": "mock-large",
            "context_window": 128_000,
            "max_output_tokens": 16_384,
            "input_price_per_mtok": Decimal("2.50"),
            "output_price_per_mtok": Decimal("10.00"),
        },
        {
            "name": DEMO_MODEL,
            "upstream_model": "mock",
            "weight": 3,
            "targets": [TargetSpec(upstream=upstream, upstream_model="mock-replica", weight=1)],
            "fallbacks": [DEMO_LARGE_MODEL],
            "context_window": 8_192,
            "max_output_tokens": 4_096,
            "input_price_per_mtok": Decimal("0.15"),
            "output_price_per_mtok": Decimal("0.60"),
        },
        {
            "name": DEMO_EMBEDDING_MODEL,
            "upstream_model": "mock-embedding",
            "kind": ModelRoute.Kind.EMBEDDINGS,
            "context_window": 8_192,
            "input_price_per_mtok": Decimal("0.02"),
        },
    ]
    for spec in models:
        # Names are unique across products: one an admin moved elsewhere is not missing.
        if not ModelRoute.objects.filter(name=spec["name"]).exists():
            catalog_services.model_route_create(product=product, upstream=upstream, **spec)
    if not Plan.objects.filter(product=product, name="Trial").exists():
        catalog_services.plan_create(
            product=product, name="Trial", requests_per_minute=60, token_quota=100_000
        )


def _subscribe(consumer: Consumer, product: Product, plan: Plan) -> None:
    """An approved subscription of ``consumer`` to ``product``, unless it has a live one."""
    subscription = Subscription.objects.filter(
        consumer=consumer, product=product, status__in=["pending", "approved"]
    ).first()
    if subscription is None:
        subscription = consumer_services.subscription_create(
            consumer=consumer, product=product, plan=plan
        )
    if subscription.status == Subscription.Status.PENDING:
        consumer_services.subscription_approve(subscription=subscription)


@dataclass(frozen=True)
class _Listing:
    """How a demo product is made and listed: ``category`` is a (name, slug) pair."""

    slug: str
    name: str
    kind: str
    description: str
    category: tuple[str, str]
    tags: tuple[str, ...]
    guide: str


@dataclass(frozen=True)
class _DemoOffer:
    """Where the demo's products are offered: the demo portal, to the demo app."""

    portal: Portal
    consumer: Consumer

    def product(self, listing: _Listing, *, build: Callable[[Product], object]) -> Product:
        """The demo product of ``listing`` (with a Free plan, made when missing),
        ``build`` what serves it, published on the portal, and the demo app subscribed
        to its Free plan."""
        product = _demo_product(listing)
        build(product)
        catalog_services.product_publish(product=product, portals=[self.portal])
        _subscribe(self.consumer, product, Plan.objects.get(product=product, name="Free"))
        return product


def _mcp_server(upstream: Upstream) -> Callable[[Product], object]:
    """A ``build`` for :meth:`_DemoOffer.product`: ``upstream``'s MCP server, once."""

    def build(product: Product) -> None:
        if not McpServer.objects.filter(product=product).exists():
            catalog_services.mcp_server_create(product=product, upstream=upstream)

    return build


def _seed_demo_mcp(offer: _DemoOffer, *, url: str, secret: str) -> Product:
    """The demo MCP product: the server at ``url`` behind a bearer backend credential."""
    upstream = _demo_upstream(
        name=DEMO_MCP_UPSTREAM,
        url=url,
        vendor=Upstream.Vendor.MCP,
        secret=secret,
        options={"auth": "bearer"},
        timeout_seconds=30,
    )
    listing = _Listing(
        slug=DEMO_MCP_SLUG,
        name="Demo Tools",
        kind=Product.Kind.MCP,
        description="An MCP server with weather and currency tools, on made-up data.",
        category=("Tools", "tools"),
        tags=("demo", "mcp"),
        guide=DEMO_MCP_GUIDE,
    )
    return offer.product(listing, build=_mcp_server(upstream))


def _seed_demo_rest(offer: _DemoOffer, *, url: str, secret: str) -> Product:
    """The REST-to-MCP product: the service at ``url``, its key in the X-API-Key header."""
    upstream = _demo_upstream(
        name=DEMO_REST_UPSTREAM,
        url=url,
        vendor=Upstream.Vendor.REST,
        secret=secret,
        options={"auth": "header", "header": "X-API-Key"},
        timeout_seconds=30,
    )
    listing = _Listing(
        slug=DEMO_REST_SLUG,
        name="Demo REST Tools",
        kind=Product.Kind.MCP,
        description="A notes and inventory REST API, served as MCP tools by the gateway.",
        category=("Tools", "tools"),
        tags=("demo", "mcp", "rest"),
        guide=DEMO_REST_GUIDE,
    )
    return offer.product(listing, build=_mcp_server(upstream))


def _agent_targets(
    targets: list[tuple[Upstream, dict[str, Any]]], *, skills: list[dict[str, Any]] | None = None
) -> Callable[[Product], object]:
    """A ``build`` for :meth:`_DemoOffer.product`: the product's agent with ``targets``
    (each an upstream and its version's ``name``, ``weight``, ``rest``), made when the
    product has no agent yet (an admin's later changes are kept)."""

    def build(product: Product) -> None:
        if Agent.objects.filter(product=product).exists():
            return
        agent = catalog_services.agent_create(product=product, skills=skills or [])
        for upstream, fields in targets:
            catalog_services.agent_target_add(agent=agent, upstream=upstream, **fields)

    return build


def _seed_demo_agent(offer: _DemoOffer, *, url: str, secret: str) -> Product:
    """The A2A agent product: the agent at ``url`` (its card at the well-known path)
    behind a bearer backend credential, as two versions sharing the traffic 95 to 5 (a
    gray release; here both versions are the same agent, registered twice, since a
    target is one upstream)."""
    versions = [("v1", 95, DEMO_AGENT_UPSTREAM), ("v2", 5, f"{DEMO_AGENT_UPSTREAM} v2")]
    targets = [
        (
            _demo_upstream(
                name=name,
                url=url,
                vendor=Upstream.Vendor.A2A,
                secret=secret,
                options={"auth": "bearer"},
                timeout_seconds=30,
            ),
            {"name": version, "weight": weight},
        )
        for version, weight, name in versions
    ]
    listing = _Listing(
        slug=DEMO_AGENT_SLUG,
        name="Trip Planner",
        kind=Product.Kind.AGENT,
        description="An A2A agent that plans a day out: weather, packing and your budget "
        "in the local currency, streamed as it works.",
        category=("Agents", "agents"),
        tags=("demo", "a2a", "travel"),
        guide=DEMO_AGENT_GUIDE,
    )
    return offer.product(listing, build=_agent_targets(targets))


def _seed_demo_rest_agent(offer: _DemoOffer, *, url: str, secret: str) -> Product:
    """The REST agent product: the mock LLM's chat endpoint at ``url`` (``…/v1``),
    wrapped as an A2A agent by the "openai-chat" mapping."""
    upstream = _demo_upstream(
        name=DEMO_REST_AGENT_UPSTREAM,
        url=url,
        vendor=Upstream.Vendor.REST_AGENT,
        secret=secret,
        options={"auth": "bearer"},
        timeout_seconds=30,
    )
    listing = _Listing(
        slug=DEMO_REST_AGENT_SLUG,
        name="Demo REST Agent",
        kind=Product.Kind.AGENT,
        description="A plain chat endpoint served as an A2A agent by the gateway; it "
        "repeats what you say.",
        category=("Agents", "agents"),
        tags=("demo", "a2a", "rest"),
        guide=DEMO_REST_AGENT_GUIDE,
    )
    build = _agent_targets(
        [(upstream, {"name": "v1", "rest": DEMO_REST_AGENT_CALL})], skills=DEMO_REST_AGENT_SKILLS
    )
    return offer.product(listing, build=build)


def _demo_upstream(*, name: str, url: str, **create: Any) -> Upstream:
    """The demo upstream ``name``, made when missing, and pointed at ``url`` (the port
    may differ from the last run)."""
    upstream = Upstream.objects.filter(name=name).first()
    if upstream is None:
        return catalog_services.upstream_create(name=name, base_url=url, **create)
    if upstream.base_url != url:
        upstream.base_url = url
        upstream.save(update_fields=["base_url", "updated_at"])
    return upstream


def _demo_product(listing: _Listing) -> Product:
    """The demo product of ``listing``, made with a Free plan when missing. Only an
    unlisted product gets the demo listing, so an admin's edits survive the next seed."""
    product = Product.objects.filter(slug=listing.slug).first()
    if product is None:
        product = catalog_services.product_create(
            name=listing.name,
            slug=listing.slug,
            kind=listing.kind,
            description=listing.description,
        )
        catalog_services.plan_create(product=product, name="Free", requests_per_minute=600)
    if product.category_id is None and not product.tags and not product.guide_markdown:
        category_name, category_slug = listing.category
        shelf = Category.objects.filter(
            slug=category_slug
        ).first() or catalog_services.category_create(name=category_name, slug=category_slug)
        catalog_services.product_set_listing(
            product=product,
            description=product.description,
            category=shelf,
            tags=list(listing.tags),
            guide_markdown=listing.guide,
        )
    return product


def seed_demo_mcp_tools() -> McpServer:
    """Discover the demo MCP server now (it must be running) and approve it the first
    time, so ``make run`` serves its tools at once; later runs keep an admin's choices.

    Raises ``RuntimeError`` with the reason when the server cannot be discovered.
    """
    server = McpServer.objects.select_related("upstream", "product").get(
        product__slug=DEMO_MCP_SLUG
    )
    server = catalog_services.mcp_server_discover(server=server)
    if server.last_discovered_at is None or server.last_checked_at != server.last_discovered_at:
        raise RuntimeError(f"The demo MCP server could not be discovered: {server.last_error}")
    if server.approved_at is None:
        server = catalog_services.mcp_server_approve(server=server)
    return server


def seed_demo_rest_tools(*, openapi_url: str) -> McpServer:
    """Import the demo REST service's OpenAPI document (the service must be running)
    the first time, so ``make run`` serves its tools at once; later runs keep an
    admin's imports and edits (a new import could hold or remove them).

    Raises ``RuntimeError`` with the reason when the document cannot be imported.
    """
    server = McpServer.objects.select_related("upstream", "product").get(
        product__slug=DEMO_REST_SLUG
    )
    if server.tools.exists():
        return server
    try:
        document = catalog_services.openapi_fetch(url=openapi_url)
        catalog_services.rest_server_import_openapi(
            server=server, document=document, source_url=openapi_url
        )
    except ValidationError as exc:
        raise RuntimeError(
            f"The demo REST service could not be imported: {exc.messages[0]}"
        ) from None
    server.refresh_from_db()
    return server


def seed_demo_agents() -> None:
    """Fetch the demo agent's card now (the agent must be running) and check both demo
    agents, so ``make run``'s first revision serves them; the worker refreshes them on
    its schedule after that.

    Raises ``RuntimeError`` with the reason when the agent's card cannot be fetched.
    """
    for slug in (DEMO_AGENT_SLUG, DEMO_REST_AGENT_SLUG):
        agent = Agent.objects.select_related("product").get(product__slug=slug)
        catalog_services.agent_refresh(agent=agent)
    fetched = AgentTarget.objects.filter(agent__product__slug=DEMO_AGENT_SLUG).first()
    if fetched is None or not fetched.card:
        reason = fetched.last_error if fetched else "it has no target"
        raise RuntimeError(f"The demo agent's card could not be fetched: {reason}")
