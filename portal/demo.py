"""The demo data that ``make run`` seeds: a portal, a model product, an MCP product, a
REST-to-MCP product, a developer and a key.

Seeding is idempotent: run again, it finds what it made before and only issues a new
demo key when the last one can no longer be used (its plaintext is only ever on disk
in ``var/``, which is local to this install and git-ignored).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from catalog import services as catalog_services
from catalog.models import Category, McpServer, ModelRoute, Plan, Product, Upstream
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


def _private_file(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_private(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


@transaction.atomic
def seed_demo(
    *, mock_llm_url: str, demo_mcp_url: str | None = None, demo_rest_url: str | None = None
) -> DemoSeed:
    """Seed (or refresh) the demo; with ``demo_mcp_url``, the MCP product served there
    too, and with ``demo_rest_url`` the REST-to-MCP product of the REST service there.

    Neither is contacted here (they may not be running yet, and a transaction must not
    wait on them): :func:`seed_demo_mcp_tools` discovers and approves the MCP server's
    tools, and :func:`seed_demo_rest_tools` imports the REST service's OpenAPI document.
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

    state.setdefault("upstream_key", "sk-mock-" + secrets.token_urlsafe(24))
    upstream = _demo_upstream(
        name="Demo mock LLM",
        url=mock_llm_url,
        vendor=Upstream.Vendor.OPENAI_COMPATIBLE,
        secret=state["upstream_key"],
    )
    product = _demo_product(
        slug=DEMO_PRODUCT_SLUG,
        name="Demo Chat",
        kind=Product.Kind.MODEL,
        description="A mock OpenAI-compatible chat model that echoes your last message.",
        category=("Chat", "chat"),
        tags=["demo", "openai-compatible"],
        guide=DEMO_GUIDE,
    )
    _seed_demo_models(product=product, upstream=upstream)
    catalog_services.product_publish(product=product, portals=[portal])
    plan = Plan.objects.get(product=product, name="Free")

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
    _subscribe(consumer, product, plan)

    products = {"model": product.slug}
    if demo_mcp_url is not None:
        state.setdefault("mcp_upstream_key", "demo-mcp-" + secrets.token_urlsafe(24))
        tools = _seed_demo_mcp(url=demo_mcp_url, secret=state["mcp_upstream_key"], portal=portal)
        _subscribe(consumer, tools, Plan.objects.get(product=tools, name="Free"))
        products["mcp"] = tools.slug
    if demo_rest_url is not None:
        state.setdefault("rest_upstream_key", "demo-rest-" + secrets.token_urlsafe(24))
        rest = _seed_demo_rest(url=demo_rest_url, secret=state["rest_upstream_key"], portal=portal)
        _subscribe(consumer, rest, Plan.objects.get(product=rest, name="Free"))
        products["rest_mcp"] = rest.slug

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


def _seed_demo_mcp(*, url: str, secret: str, portal: Portal) -> Product:
    """The demo MCP product: the server at ``url`` behind a bearer backend credential."""
    upstream = _demo_upstream(
        name=DEMO_MCP_UPSTREAM,
        url=url,
        vendor=Upstream.Vendor.MCP,
        secret=secret,
        options={"auth": "bearer"},
        timeout_seconds=30,
    )
    product = _demo_product(
        slug=DEMO_MCP_SLUG,
        name="Demo Tools",
        kind=Product.Kind.MCP,
        description="An MCP server with weather and currency tools, on made-up data.",
        category=("Tools", "tools"),
        tags=["demo", "mcp"],
        guide=DEMO_MCP_GUIDE,
    )
    if not McpServer.objects.filter(product=product).exists():
        catalog_services.mcp_server_create(product=product, upstream=upstream)
    catalog_services.product_publish(product=product, portals=[portal])
    return product


def _seed_demo_rest(*, url: str, secret: str, portal: Portal) -> Product:
    """The REST-to-MCP product: the service at ``url``, its key in the X-API-Key header."""
    upstream = _demo_upstream(
        name=DEMO_REST_UPSTREAM,
        url=url,
        vendor=Upstream.Vendor.REST,
        secret=secret,
        options={"auth": "header", "header": "X-API-Key"},
        timeout_seconds=30,
    )
    product = _demo_product(
        slug=DEMO_REST_SLUG,
        name="Demo REST Tools",
        kind=Product.Kind.MCP,
        description="A notes and inventory REST API, served as MCP tools by the gateway.",
        category=("Tools", "tools"),
        tags=["demo", "mcp", "rest"],
        guide=DEMO_REST_GUIDE,
    )
    if not McpServer.objects.filter(product=product).exists():
        catalog_services.mcp_server_create(product=product, upstream=upstream)
    catalog_services.product_publish(product=product, portals=[portal])
    return product


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


def _demo_product(
    *,
    slug: str,
    name: str,
    kind: str,
    description: str,
    category: tuple[str, str],
    tags: list[str],
    guide: str,
) -> Product:
    """The demo product ``slug``, made with a Free plan when missing. Only an unlisted
    product gets the demo listing (``category`` is its name and slug), so an admin's
    edits survive the next seed."""
    product = Product.objects.filter(slug=slug).first()
    if product is None:
        product = catalog_services.product_create(
            name=name, slug=slug, kind=kind, description=description
        )
        catalog_services.plan_create(product=product, name="Free", requests_per_minute=600)
    if product.category_id is None and not product.tags and not product.guide_markdown:
        category_name, category_slug = category
        shelf = Category.objects.filter(
            slug=category_slug
        ).first() or catalog_services.category_create(name=category_name, slug=category_slug)
        catalog_services.product_set_listing(
            product=product,
            description=product.description,
            category=shelf,
            tags=tags,
            guide_markdown=guide,
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
