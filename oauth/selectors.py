"""Reads for the authorization server: clients, what a consent offers, grants."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404

from catalog.models import McpTool, Product
from consumers.models import Consumer, Subscription
from gatewaysync.compiler import usable_consumers
from oauth import protocol
from oauth.models import OAuthClient, OAuthGrant

# The consent page offers at most this many of the developer's apps (those subscribed
# to the product): enough for anyone choosing by eye, and a bounded page.
CONSENT_APPS = 50
# For the aggregate endpoint, at most this many subscriptions are listed in all.
CONSENT_SUBSCRIPTIONS = 500
GRANTS_LISTED = 200


def client_get(*, client_id: str) -> OAuthClient | None:
    if not client_id or len(client_id) > 64:
        return None
    return OAuthClient.objects.filter(client_id=client_id).first()


def mcp_product_for(*, target: protocol.ResourceTarget) -> Product | None:
    """The published MCP product a resource names (``None`` for the aggregate endpoint),
    or ``invalid_target``: unknown, draft, retired, or not an MCP product."""
    if target.slug is None:
        return None
    product = Product.objects.filter(
        slug=target.slug, kind=Product.Kind.MCP, status=Product.Status.PUBLISHED
    ).first()
    if product is None:
        raise protocol.unknown_product_error()
    return product


@dataclass(frozen=True)
class ConsentTool:
    name: str
    title: str
    description: str


@dataclass
class ConsentProduct:
    product: Product
    tools: list[ConsentTool]
    limited: bool  # the subscription allows only some of the product's tools


@dataclass
class ConsentApp:
    """One of the developer's apps the client may act as, and what it would reach."""

    consumer: Consumer
    products: list[ConsentProduct] = field(default_factory=list)


def consent_apps(*, user: User, product: Product | None) -> list[ConsentApp]:
    """The user's own usable apps with an approved subscription to ``product`` (to any
    published MCP product when ``None``), each with the tools it would reach: the
    product's served tools, narrowed to the subscription's allow-list if it has one.

    Three queries whatever the number of apps, products and tools.
    """
    subscriptions = Subscription.objects.filter(
        consumer__in=usable_consumers().filter(owner=user),
        status=Subscription.Status.APPROVED,
        product__kind=Product.Kind.MCP,
        product__status=Product.Status.PUBLISHED,
    )
    if product is not None:
        subscriptions = subscriptions.filter(product=product)
    rows = list(
        subscriptions.select_related("consumer", "product").order_by(
            "consumer__name", "consumer_id", "product__name"
        )[:CONSENT_SUBSCRIPTIONS]
    )
    tools: dict[int, list[ConsentTool]] = {}
    for tool in (
        McpTool.objects.served()
        .filter(server__product_id__in={sub.product_id for sub in rows})
        .select_related("server")
    ):
        title, description = tool.served_summary()
        tools.setdefault(tool.server.product_id, []).append(
            ConsentTool(name=tool.name, title=title, description=description)
        )
    apps: dict[int, ConsentApp] = {}
    for sub in rows:
        app = apps.get(sub.consumer_id)
        if app is None:
            if len(apps) == CONSENT_APPS:
                continue
            app = apps[sub.consumer_id] = ConsentApp(consumer=sub.consumer)
        served = tools.get(sub.product_id, [])
        allowed = sub.allowed_tools
        app.products.append(
            ConsentProduct(
                product=sub.product,
                tools=served if allowed is None else [t for t in served if t.name in allowed],
                limited=allowed is not None,
            )
        )
    return list(apps.values())


def grant_list_for_user(*, user: User) -> QuerySet[OAuthGrant]:
    """The user's connected clients: grants in use and not revoked, last used first."""
    return (
        OAuthGrant.objects.filter(user=user, revoked_at__isnull=True, used_at__isnull=False)
        .select_related("client", "consumer", "product")
        .order_by("-used_at", "-pk")[:GRANTS_LISTED]
    )


def grant_get_for_user(*, user: User | AnonymousUser, pk: int) -> OAuthGrant:
    """Grant ``pk`` if the user made it, or is staff; anyone else gets a 404."""
    if not user.is_authenticated:
        raise Http404("No such connection.")
    grants = OAuthGrant.objects.select_related("client", "consumer")
    if not user.is_staff:
        grants = grants.filter(user=user)
    try:
        return grants.get(pk=pk)
    except OAuthGrant.DoesNotExist:
        raise Http404("No such connection.") from None
