"""Developer-facing pages (the full portal grows here; see issue 3)."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from catalog.selectors import product_list_published
from portal.selectors import portal_for_host


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    portal = portal_for_host(request.get_host())
    return render(
        request,
        "portal/home.html",
        {
            "portal": portal,
            "products": product_list_published(portal=portal),
            "gateway_url": settings.PORTICO_GATEWAY_PUBLIC_URL,
        },
    )


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness and database reachability of the control plane."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")
