"""Writes for the catalog: upstreams, products, model routes, plans and categories.

Every write that changes what the gateway must know ends with ``gateway_changed()``,
which publishes a new revision after the transaction commits. Listing fields (category,
tags, description text, guide) only change the portal, so their writes do not; every
write that changes a part of a product's search document refreshes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from catalog.crypto import encrypt_secret
from catalog.models import (
    Category,
    ModelRoute,
    Plan,
    Product,
    RouteTarget,
    Upstream,
    UpstreamCredential,
    validate_vendor_secret,
)
from gatewaysync.services import gateway_changed
from portal import audit
from portal.models import Portal


@transaction.atomic
def upstream_create(
    *,
    name: str,
    base_url: str,
    vendor: str = Upstream.Vendor.OPENAI,
    secret: str | None = None,
    timeout_seconds: float = 120.0,
    options: Mapping[str, str] | None = None,
) -> Upstream:
    upstream = Upstream(
        name=name,
        vendor=vendor,
        base_url=base_url,
        timeout_seconds=timeout_seconds,
        options=dict(options or {}),
    )
    if secret:
        validate_vendor_secret(vendor, secret)
        upstream.secret_ciphertext = encrypt_secret(secret)
    upstream.full_clean()
    upstream.save()
    gateway_changed()
    return upstream


@transaction.atomic
def upstream_set_secret(*, upstream: Upstream, secret: str | None) -> Upstream:
    """Replace (or, with ``None``, clear) an upstream's secret. It is never read back."""
    if secret:
        validate_vendor_secret(upstream.vendor, secret)
    upstream.secret_ciphertext = encrypt_secret(secret) if secret else ""
    upstream.save(update_fields=["secret_ciphertext", "updated_at"])
    audit.record("upstream.secret_set" if secret else "upstream.secret_clear", upstream)
    gateway_changed()
    return upstream


def _record_pool_change(action: str, credential: UpstreamCredential, pk: int | None = None) -> None:
    """Audit a change to an upstream's pool (on the upstream: it outlives its credentials)."""
    audit.record(
        f"upstream.pool_{action}",
        credential.upstream,
        credential=pk or credential.pk,
        label=credential.label,
    )
    gateway_changed()


@transaction.atomic
def upstream_credential_add(
    *, upstream: Upstream, label: str, secret: str, enabled: bool = True
) -> UpstreamCredential:
    """Add a credential to ``upstream``'s pool. Its secret is never read back."""
    validate_vendor_secret(upstream.vendor, secret)
    credential = UpstreamCredential(
        upstream=upstream, label=label, enabled=enabled, secret_ciphertext=encrypt_secret(secret)
    )
    credential.full_clean()
    credential.save()
    _record_pool_change("add", credential)
    return credential


@transaction.atomic
def upstream_credential_set_secret(
    *, credential: UpstreamCredential, secret: str
) -> UpstreamCredential:
    """Replace a pool credential's secret (a pool credential always has one)."""
    validate_vendor_secret(credential.upstream.vendor, secret)
    credential.secret_ciphertext = encrypt_secret(secret)
    credential.save(update_fields=["secret_ciphertext"])
    _record_pool_change("secret_set", credential)
    return credential


@transaction.atomic
def upstream_credential_set_enabled(
    *, credential: UpstreamCredential, enabled: bool
) -> UpstreamCredential:
    credential.enabled = enabled
    credential.save(update_fields=["enabled"])
    _record_pool_change("enable" if enabled else "disable", credential)
    return credential


@transaction.atomic
def upstream_credential_remove(*, credential: UpstreamCredential) -> None:
    pk = credential.pk
    credential.delete()
    _record_pool_change("remove", credential, pk)


@transaction.atomic
def product_create(
    *, name: str, slug: str, kind: str, description: str = "", status: str = Product.Status.DRAFT
) -> Product:
    product = Product(name=name, slug=slug, kind=kind, description=description, status=status)
    product.search_document = _search_document(product, category_name="", route_names=[])
    product.full_clean()
    product.save()
    gateway_changed()
    return product


@transaction.atomic
def product_publish(*, product: Product, portals: Iterable[Portal]) -> Product:
    """Make a product usable through the gateway and visible on the given portals."""
    product.status = Product.Status.PUBLISHED
    product.save(update_fields=["status", "updated_at"])
    product.portals.add(*portals)
    audit.record("product.publish", product, portals=[p.pk for p in product.portals.all()])
    gateway_changed()
    return product


@transaction.atomic
def product_unpublish(*, product: Product, portal: Portal) -> Product:
    """Withdraw a product from one portal, and the access that portal's apps had to it.

    Live subscriptions held by apps created on that portal are revoked, so no key keeps
    working through a product its portal no longer offers. A product left on no portal
    goes back to draft, and the gateway stops serving it.
    """
    from consumers.models import Subscription
    from consumers.services import subscription_revoke

    product.portals.remove(portal)
    for subscription in Subscription.objects.filter(
        product=product, consumer__portal=portal, status__in=Subscription.LIVE
    ).select_related("consumer"):
        subscription_revoke(
            subscription=subscription, reason=f"{product.name} was withdrawn from {portal.name}."
        )
    if product.status == Product.Status.PUBLISHED and not product.portals.exists():
        product.status = Product.Status.DRAFT
        product.save(update_fields=["status", "updated_at"])
    audit.record("product.unpublish", product, portal=portal.pk)
    gateway_changed()
    return product


@transaction.atomic
def product_retire(*, product: Product) -> Product:
    """Take a product out of service: the gateway refuses it from the next revision."""
    product.status = Product.Status.RETIRED
    product.save(update_fields=["status", "updated_at"])
    product.portals.clear()
    audit.record("product.retire", product)
    gateway_changed()
    return product


@dataclass(frozen=True)
class TargetSpec:
    """A further target of a route, as :func:`model_route_create` takes it."""

    upstream: Upstream
    upstream_model: str
    weight: int = 1


@transaction.atomic
def model_route_create(
    *,
    product: Product,
    name: str,
    upstream: Upstream,
    upstream_model: str,
    kind: str = ModelRoute.Kind.CHAT,
    weight: int = 1,
    targets: Sequence[TargetSpec] = (),
    strategy: str = ModelRoute.Strategy.WEIGHTED,
    fallbacks: Sequence[str] = (),
    context_window: int | None = None,
    first_token_seconds: float | None = None,
    max_output_tokens: int | None = None,
    input_price_per_mtok: Decimal | None = None,
    output_price_per_mtok: Decimal | None = None,
) -> ModelRoute:
    """A public model name of ``product``: its first target, then ``targets``.

    ``fallbacks`` must name models of the product that exist already (see
    :meth:`ModelRoute.fallback_errors`).
    """
    route = ModelRoute(
        product=product,
        name=name,
        kind=kind,
        upstream=upstream,
        upstream_model=upstream_model,
        weight=weight,
        strategy=strategy,
        fallbacks=list(fallbacks),
        context_window=context_window,
        first_token_seconds=first_token_seconds,
        max_output_tokens=max_output_tokens,
        input_price_per_mtok=input_price_per_mtok,
        output_price_per_mtok=output_price_per_mtok,
    )
    route.full_clean()
    route.save()
    for position, spec in enumerate(targets, start=1):
        target = RouteTarget(
            route=route,
            upstream=spec.upstream,
            upstream_model=spec.upstream_model,
            weight=spec.weight,
            position=position,
        )
        target.full_clean()
        target.save()
    product_refresh_search_document(product=product)
    gateway_changed()
    return route


@transaction.atomic
def model_route_set_fallbacks(*, route: ModelRoute, fallbacks: Sequence[str]) -> ModelRoute:
    route.fallbacks = list(fallbacks)
    route.full_clean()
    route.save(update_fields=["fallbacks"])
    gateway_changed()
    return route


@transaction.atomic
def product_tidy_fallbacks(
    *, product: Product, renamed: Mapping[str, str] | None = None
) -> list[str]:
    """Keep the product's fallbacks pointing at its models after renames and deletions.

    ``renamed`` maps old names to new ones, which fallbacks follow; a fallback that
    then names no model of the product of the same kind (deleted, moved to another
    product, of another kind now) is dropped, since the gateway refuses a revision
    that names one. Returns a sentence per drop, for the admin to show.
    """
    renamed = renamed or {}
    routes = list(ModelRoute.objects.filter(product=product))
    kinds = {route.name: route.kind for route in routes}
    notes: list[str] = []
    for route in routes:
        kept: list[str] = []
        for old in route.fallbacks:
            name = renamed.get(old, old)
            if name != route.name and kinds.get(name) == route.kind and name not in kept:
                kept.append(name)
            elif name not in kept:
                notes.append(
                    f"Removed the fallback {old} from {route.name}: no other {route.kind} "
                    "model of this product has that name now."
                )
        if kept != route.fallbacks:
            route.fallbacks = kept
            route.save(update_fields=["fallbacks"])
            gateway_changed()
    return notes


@transaction.atomic
def plan_create(
    *,
    product: Product,
    name: str,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    token_quota: int | None = None,
) -> Plan:
    plan = Plan(
        product=product,
        name=name,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        tokens_per_day=tokens_per_day,
        token_quota=token_quota,
    )
    plan.full_clean()
    plan.save()
    gateway_changed()
    return plan


@transaction.atomic
def category_create(*, name: str, slug: str) -> Category:
    category = Category(name=name, slug=slug)
    category.full_clean()
    category.save()
    return category


@transaction.atomic
def product_set_listing(
    *,
    product: Product,
    description: str,
    category: Category | None,
    tags: Sequence[str],
    guide_markdown: str,
) -> Product:
    """Set what the catalog shows about a product. The gateway does not read these fields."""
    product.description = description
    product.category = category
    product.tags = normalize_tags(tags)
    product.guide_markdown = guide_markdown
    product.full_clean()
    product.save(update_fields=["description", "category", "tags", "guide_markdown", "updated_at"])
    product_refresh_search_document(product=product)
    return product


def normalize_tags(tags: Iterable[str]) -> list[str]:
    """Strip tags and drop empty ones and repeats (case-insensitively), keeping the order."""
    seen: set[str] = set()
    result: list[str] = []
    for tag in tags:
        cleaned = " ".join(tag.split())
        if cleaned and cleaned.casefold() not in seen:
            seen.add(cleaned.casefold())
            result.append(cleaned)
    return result


def _search_document(product: Product, *, category_name: str, route_names: Iterable[str]) -> str:
    # One lower-cased line per source. MCP tool names and agent skill names join here
    # when those features land, so one column keeps serving every search term.
    parts = [product.name, product.slug, product.description, category_name]
    parts.extend(tag for tag in product.tags if isinstance(tag, str))
    parts.extend(route_names)
    return "\n".join(part for part in parts if part).lower()


@transaction.atomic
def product_refresh_search_document(*, product: Product) -> Product:
    """Rebuild the text the catalog search matches from the product's current rows."""
    category_name = (
        Category.objects.filter(pk=product.category_id).values_list("name", flat=True).first()
        if product.category_id is not None
        else None
    )
    route_names = ModelRoute.objects.filter(product=product).values_list("name", flat=True)
    document = _search_document(product, category_name=category_name or "", route_names=route_names)
    if document != product.search_document:
        product.search_document = document
        # Not updated_at: the document is derived, nothing a person changed.
        product.save(update_fields=["search_document"])
    return product


@transaction.atomic
def products_refresh_search_documents(*, products: Iterable[Product]) -> int:
    """Rebuild the search documents of many products in a fixed number of queries."""
    ids = [product.pk for product in products]
    changed = []
    for product in (
        Product.objects.filter(pk__in=ids)
        .select_related("category")
        .prefetch_related("model_routes")
    ):
        document = _search_document(
            product,
            category_name=product.category.name if product.category else "",
            route_names=[route.name for route in product.model_routes.all()],
        )
        if document != product.search_document:
            product.search_document = document
            changed.append(product)
    Product.objects.bulk_update(changed, ["search_document"], batch_size=500)
    return len(changed)
