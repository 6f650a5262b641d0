"""``{% agent_listing product gateway_url as agent %}`` and
``{% agent_quickstart product gateway_url agent as snippets %}``: an agent product's
page (``templates/catalog/product_detail.html``)."""

from __future__ import annotations

from django import template

from catalog.models import Product
from catalog.templatetags.catalog_quickstart import Snippet
from portal.agents import AgentListing, agent_listing_for, agent_quickstart_for

register = template.Library()


@register.simple_tag
def agent_listing(product: Product, gateway_url: str) -> AgentListing | None:
    return agent_listing_for(product=product, gateway_url=gateway_url)


@register.simple_tag
def agent_quickstart(
    product: Product, gateway_url: str, listing: AgentListing | None
) -> list[Snippet]:
    return agent_quickstart_for(product=product, gateway_url=gateway_url, listing=listing)
