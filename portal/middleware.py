"""Choose the portal for each request by its Host header."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from portal.selectors import portal_for_host


class PortalMiddleware:
    """Sets ``request.portal``: the portal whose domain is the Host, else the default."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.portal = portal_for_host(request.get_host())  # type: ignore[attr-defined]
        return self.get_response(request)
