"""Filters for the model table of a product page: token counts and prices, or a dash."""

from __future__ import annotations

from decimal import Decimal

from django import template

register = template.Library()

UNKNOWN = "—"


@register.filter
def token_count(value: int | None) -> str:
    """``128000`` → ``"128,000"``; unknown → a dash."""
    return UNKNOWN if value is None else f"{value:,}"


@register.filter
def usd(value: Decimal | None) -> str:
    """A price with at least cents and no trailing zeros beyond: ``$2.50``, ``$0.075``."""
    if value is None:
        return UNKNOWN
    text = f"{value:,.4f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"
