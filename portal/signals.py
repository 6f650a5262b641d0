"""Sign-in glue: a developer becomes known to a portal on first sign-in there."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest

from portal.services import membership_join


@receiver(user_logged_in)
def _join_portal_on_login(sender: Any, request: HttpRequest | None, user: Any, **kw: Any) -> None:
    # A developer who signed up on another portal becomes known to this one on first
    # sign-in here, under this portal's approval rule.
    portal = getattr(request, "portal", None) if request is not None else None
    if portal is not None:
        membership_join(portal=portal, user=user)
