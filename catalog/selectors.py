"""Reads for the catalog."""

from __future__ import annotations

from django.db.models import QuerySet

from catalog.models import Product
from portal.models import Portal


def product_list_published(*, portal: Portal | None) -> QuerySet[Product]:
    """Published products visible on ``portal``, with their model routes prefetched."""
    products = Product.objects.filter(status=Product.Status.PUBLISHED)
    if portal is not None:
        products = products.filter(portals=portal)
    return products.prefetch_related("model_routes").order_by("name")
