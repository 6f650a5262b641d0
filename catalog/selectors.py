"""Reads for the catalog."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.http import Http404

from catalog.models import Agent, AgentTarget, Category, McpServer, McpTool, Product
from portal.models import Portal

# A search is a handful of words; more only makes the query longer, not better.
MAX_SEARCH_TERMS = 8


def product_list_published(*, portal: Portal | None) -> QuerySet[Product]:
    """Published products visible on ``portal``, with their model routes prefetched."""
    products = Product.objects.filter(status=Product.Status.PUBLISHED)
    if portal is not None:
        products = products.filter(portals=portal)
    return products.prefetch_related("model_routes").order_by("name")


def search_terms(q: str) -> list[str]:
    """The lower-cased, distinct words of a search, at most ``MAX_SEARCH_TERMS``."""
    return list(dict.fromkeys(q.lower().split()))[:MAX_SEARCH_TERMS]


def product_search(
    *,
    portal: Portal | None,
    kind: str | None = None,
    q: str = "",
    category: str | None = None,
) -> QuerySet[Product]:
    """Published products on ``portal`` (every portal's when None) matching all of ``q``.

    ``kind`` is a ``Product.Kind`` value and ``category`` a category slug. Each word of
    ``q`` must occur in the product's search document (name, description, tags,
    category, model names); the document is lower-cased when written, so a plain
    ``LIKE`` on the lower-cased word is a case-insensitive match.
    """
    products = Product.objects.filter(status=Product.Status.PUBLISHED)
    if portal is not None:
        # One row per (product, portal) in the through table, so no duplicates and no
        # DISTINCT, which would make the pagination count expensive.
        products = products.filter(portals=portal)
    if kind:
        products = products.filter(kind=kind)
    if category:
        products = products.filter(category__slug=category)
    for term in search_terms(q):
        products = products.filter(search_document__contains=term)
    return (
        products.select_related("category")
        .prefetch_related("model_routes")
        # The primary key breaks ties between equal names, so pages never overlap.
        .order_by("name", "pk")
    )


def products_in_order(*, products: QuerySet[Product], pks: Sequence[int]) -> list[Product]:
    """The products of ``products`` whose primary keys are ``pks``, in that order.

    The second half of a "deferred join": a page of the catalog is chosen on the primary
    keys alone (``products.values_list("pk", flat=True)[offset:offset + size]``), so the
    database sorts narrow rows, not the wide ones (description, guide, search document)
    that spilled the sort to disk on deep pages; then this fetches the page's full rows,
    with whatever ``products`` selects and prefetches, in one query plus the prefetches.
    """
    by_pk = products.order_by().in_bulk(list(pks))
    return [by_pk[pk] for pk in pks if pk in by_pk]


def product_get_published(*, portal: Portal | None, slug: str) -> Product:
    """The published product ``slug`` if it is on ``portal``, else 404.

    Drafts, retired products and products of other portals are all "not found": the
    page must not confirm that they exist.
    """
    try:
        return product_search(portal=portal).get(slug=slug)
    except Product.DoesNotExist:
        raise Http404("No such product on this portal.") from None


def category_list_for_catalog(*, portal: Portal | None) -> QuerySet[Category]:
    """Categories that hold at least one published product on ``portal``."""
    products = Product.objects.filter(status=Product.Status.PUBLISHED)
    if portal is not None:
        products = products.filter(portals=portal)
    return Category.objects.filter(
        pk__in=products.filter(category__isnull=False).values("category_id")
    ).order_by("name")


@dataclass(frozen=True)
class ToolListing:
    """A served tool as the product page shows it (its pinned definition)."""

    name: str
    title: str
    description: str
    schema: Any  # the input schema, as pinned

    @property
    def input_schema(self) -> str:
        """The input schema as pretty JSON (what the page shows)."""
        return json.dumps(self.schema, indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class McpListing:
    """What developers are shown of an MCP product: exactly what the gateway serves."""

    tools: list[ToolListing]
    instructions: str = ""
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    resource_templates: list[dict[str, Any]] = field(default_factory=list)


def mcp_listing_for(*, product: Product) -> McpListing | None:
    """The served tools (pinned definitions), prompts and resources of an MCP product;
    ``None`` before it has a server. The upstream's URL and credential are not in it."""
    if product.kind != Product.Kind.MCP:
        return None
    server = (
        McpServer.objects.filter(product=product)
        .prefetch_related(Prefetch("tools", queryset=McpTool.objects.served(), to_attr="served"))
        .first()
    )
    if server is None:
        return None
    tools = []
    for tool in getattr(server, "served", []):
        title, description = tool.served_summary()
        tools.append(
            ToolListing(
                name=tool.name,
                title=title,
                description=description,
                schema=(tool.pinned_definition or {}).get("inputSchema", {}),
            )
        )
    if server.approved_at is None:
        return McpListing(tools=tools)
    return McpListing(
        tools=tools,
        instructions=server.instructions,
        prompts=[p for p in server.prompts if isinstance(p, dict)],
        resources=[r for r in server.resources if isinstance(r, dict)],
        resource_templates=[t for t in server.resource_templates if isinstance(t, dict)],
    )


def agent_served_card(*, agent: Agent) -> dict[str, Any]:
    """The card the gateway serves for ``agent`` (before it puts its own interfaces and
    security in): the first A2A target's (by position) that has one; else one made from
    the product and the agent's skills. Uses ``agent.targets`` as prefetched, if it is."""
    targets = sorted(agent.targets.all(), key=lambda t: (t.position, t.pk))
    return served_card(agent, targets)


def served_card(agent: Agent, targets: Sequence[AgentTarget]) -> dict[str, Any]:
    """:func:`agent_served_card` for ``targets`` (``agent``'s, in position order)."""
    for target in targets:
        if not target.is_rest and target.card:
            card: dict[str, Any] = target.card
            return card
    product = agent.product
    return {
        "name": product.name,
        "description": product.description or product.name,
        "version": "1.0.0",
        "capabilities": {"streaming": True},
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": agent.skills,
    }
