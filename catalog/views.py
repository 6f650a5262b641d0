"""Catalog pages: browse and search the products of this portal, and read about one."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails

from catalog.forms import CatalogSearchForm
from catalog.models import Product
from catalog.selectors import (
    category_list_for_catalog,
    mcp_listing_for,
    product_get_published,
    product_search,
    products_in_order,
)
from consumers.selectors import subscription_panel_for
from portal.models import Portal

PAGE_SIZE = 24

# The catalog's tabs: URL slug → (Product.Kind value, label). None is "All".
KIND_TABS: dict[str | None, tuple[str | None, str]] = {
    None: (None, "All"),
    "models": (Product.Kind.MODEL, "Models"),
    "mcp": (Product.Kind.MCP, "MCP servers"),
    "agents": (Product.Kind.AGENT, "Agents"),
}


class PortalRequest(HttpRequest):
    """A request after HtmxMiddleware and PortalMiddleware."""

    htmx: HtmxDetails
    portal: Portal | None


@require_GET
def catalog(request: PortalRequest, kind: str | None = None) -> HttpResponse:
    if kind not in KIND_TABS:
        raise Http404("No such kind of product.")
    kind_value, kind_label = KIND_TABS[kind]
    form = CatalogSearchForm(
        request.GET, categories=category_list_for_catalog(portal=request.portal)
    )
    search = form.search_arguments()
    products = product_search(
        portal=request.portal,
        kind=kind_value,
        q=search["q"],
        category=search["category"] or None,
    )
    # The page is chosen on primary keys alone, then its rows are fetched: a deep page
    # of a large catalog sorts narrow rows (see products_in_order).
    page = Paginator(products.values_list("pk", flat=True), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    # The page now holds the products themselves (the stubs type it by the pks).
    page.object_list = products_in_order(  # type: ignore[assignment]
        products=products, pks=list(page.object_list)
    )
    context = {
        "form": form,
        "page": page,
        "kind": kind,
        "kind_label": kind_label,
        "tabs": [(slug, label) for slug, (_, label) in KIND_TABS.items()],
        "searching": bool(search["q"] or search["category"]),
    }
    # A history restore needs the whole page, not the fragment.
    if request.htmx and not request.htmx.history_restore_request:
        response = render(request, "catalog/catalog.html#results", context)
    else:
        response = render(request, "catalog/catalog.html", context)
    # The same URL answers with a fragment or a page: caches must keep both apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_GET
def product_detail(request: PortalRequest, slug: str) -> HttpResponse:
    portal = request.portal
    product = product_get_published(portal=portal, slug=slug)
    return render(
        request,
        "catalog/product_detail.html",
        {
            "product": product,
            "mcp": mcp_listing_for(product=product),
            "panel": subscription_panel_for(user=request.user, portal=portal, product=product),
        },
    )
