from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def portal(request: HttpRequest) -> dict[str, object]:
    """The request's portal and the gateway URL developers call, for every template."""
    return {
        "portal": getattr(request, "portal", None),
        "gateway_url": settings.PORTICO_GATEWAY_PUBLIC_URL,
    }
