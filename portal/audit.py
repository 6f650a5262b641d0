"""The audit log: who changed access to what, when, and from where.

Services call :func:`record` after each change that grants or removes access. The
actor and address come from the request being served (made current by
:class:`AuditContextMiddleware`), so the portal, the admin and the REST API are all
covered without passing the request through every service; work done outside a
request (Celery, management commands) is recorded as by "system".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import models
from django.http import HttpRequest, HttpResponse

from portal.models import AuditEvent

_request: ContextVar[HttpRequest | None] = ContextVar("portico_audit_request", default=None)


@contextmanager
def acting_for(request: HttpRequest | None) -> Iterator[None]:
    """Attribute audit events recorded inside the block to ``request``'s user."""
    token = _request.set(request)
    try:
        yield
    finally:
        _request.reset(token)


class AuditContextMiddleware:
    """Makes the request's user and address the actor of the audit events it causes."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with acting_for(request):
            return self.get_response(request)


def record(action: str, target: models.Model, **detail: Any) -> AuditEvent:
    """Write one audit event for ``target`` (inside the service's transaction)."""
    request = _request.get()
    user = getattr(request, "user", None) if request is not None else None
    if user is not None and not user.is_authenticated:
        user = None
    return AuditEvent.objects.create(
        actor=user,
        actor_label=(user.get_username() if user is not None else "system")[:254],
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        target_label=str(target)[:254],
        ip_address=(request.META.get("REMOTE_ADDR") or None) if request is not None else None,
        detail=detail,
    )
