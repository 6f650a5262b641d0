"""Reads for portals."""

from __future__ import annotations

from portal.models import Portal


def portal_for_host(host: str) -> Portal | None:
    """The portal that serves ``host`` (its domains), else the default portal."""
    name = host.split(":", 1)[0].lower()
    portal = Portal.objects.filter(domains__domain=name).first() if name else None
    return portal or Portal.objects.filter(is_default=True).first()
