"""The demo data that ``make run`` seeds: a portal, a model product, a developer and a key.

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
from django.db import transaction

from catalog import services as catalog_services
from catalog.models import Category, ModelRoute, Plan, Product, Upstream
from catalog.services import TargetSpec
from consumers import services as consumer_services
from consumers.models import Consumer, Credential, Subscription
from gateway.keys import hash_key
from portal.models import Membership, Portal

DEMO_PRODUCT_SLUG = "demo-chat"
DEMO_MODEL = "demo-model"
DEMO_LARGE_MODEL = "demo-model-large"
DEMO_EMBEDDING_MODEL = "demo-embedding"
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


@dataclass(frozen=True)
class DemoSeed:
    admin_username: str
    admin_password: str
    demo_key: str
    upstream_key: str
    products: dict[str, str]
    models: list[str]


def _private_file(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_private(path: Path, data: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)


@transaction.atomic
def seed_demo(*, mock_llm_url: str) -> DemoSeed:
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
    upstream = Upstream.objects.filter(name="Demo mock LLM").first()
    if upstream is None:
        upstream = catalog_services.upstream_create(
            name="Demo mock LLM",
            base_url=mock_llm_url,
            vendor=Upstream.Vendor.OPENAI_COMPATIBLE,
            secret=state["upstream_key"],
        )
    elif upstream.base_url != mock_llm_url:
        upstream.base_url = mock_llm_url
        upstream.save(update_fields=["base_url", "updated_at"])

    product = Product.objects.filter(slug=DEMO_PRODUCT_SLUG).first()
    if product is None:
        product = catalog_services.product_create(
            name="Demo Chat",
            slug=DEMO_PRODUCT_SLUG,
            kind=Product.Kind.MODEL,
            description="A mock OpenAI-compatible chat model that echoes your last message.",
        )
        catalog_services.plan_create(product=product, name="Free", requests_per_minute=600)
    _seed_demo_models(product=product, upstream=upstream)
    if product.category_id is None and not product.tags and not product.guide_markdown:
        # Only an unlisted product gets the demo listing, so an admin's edits survive
        # the next seed.
        chat = Category.objects.filter(slug="chat").first() or catalog_services.category_create(
            name="Chat", slug="chat"
        )
        catalog_services.product_set_listing(
            product=product,
            description=product.description,
            category=chat,
            tags=["demo", "openai-compatible"],
            guide_markdown=DEMO_GUIDE,
        )
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
    subscription = Subscription.objects.filter(
        consumer=consumer, product=product, status__in=["pending", "approved"]
    ).first()
    if subscription is None:
        subscription = consumer_services.subscription_create(
            consumer=consumer, product=product, plan=plan
        )
    if subscription.status == Subscription.Status.PENDING:
        consumer_services.subscription_approve(subscription=subscription)

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
        products={"model": product.slug},
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
