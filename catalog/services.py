"""Writes for the catalog: upstreams, products, model routes and plans.

Every write that changes what the gateway must know ends with ``gateway_changed()``,
which publishes a new revision after the transaction commits.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction

from catalog.crypto import encrypt_secret
from catalog.models import ModelRoute, Plan, Product, Upstream
from gatewaysync.services import gateway_changed
from portal.models import Portal


@transaction.atomic
def upstream_create(
    *,
    name: str,
    base_url: str,
    vendor: str = Upstream.Vendor.OPENAI,
    secret: str | None = None,
    timeout_seconds: float = 120.0,
) -> Upstream:
    upstream = Upstream(
        name=name, vendor=vendor, base_url=base_url, timeout_seconds=timeout_seconds
    )
    if secret:
        upstream.secret_ciphertext = encrypt_secret(secret)
    upstream.full_clean()
    upstream.save()
    gateway_changed()
    return upstream


@transaction.atomic
def upstream_set_secret(*, upstream: Upstream, secret: str | None) -> Upstream:
    """Replace (or, with ``None``, clear) an upstream's secret. It is never read back."""
    upstream.secret_ciphertext = encrypt_secret(secret) if secret else ""
    upstream.save(update_fields=["secret_ciphertext", "updated_at"])
    gateway_changed()
    return upstream


@transaction.atomic
def product_create(
    *, name: str, slug: str, kind: str, description: str = "", status: str = Product.Status.DRAFT
) -> Product:
    product = Product(name=name, slug=slug, kind=kind, description=description, status=status)
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
    gateway_changed()
    return product


@transaction.atomic
def product_retire(*, product: Product) -> Product:
    """Take a product out of service: the gateway refuses it from the next revision."""
    product.status = Product.Status.RETIRED
    product.save(update_fields=["status", "updated_at"])
    product.portals.clear()
    gateway_changed()
    return product


@transaction.atomic
def model_route_create(
    *, product: Product, name: str, upstream: Upstream, upstream_model: str
) -> ModelRoute:
    route = ModelRoute(product=product, name=name, upstream=upstream, upstream_model=upstream_model)
    route.full_clean()
    route.save()
    gateway_changed()
    return route


@transaction.atomic
def plan_create(
    *,
    product: Product,
    name: str,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    tokens_per_day: int | None = None,
) -> Plan:
    plan = Plan(
        product=product,
        name=name,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        tokens_per_day=tokens_per_day,
    )
    plan.full_clean()
    plan.save()
    gateway_changed()
    return plan
