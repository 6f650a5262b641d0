"""allauth hooks: portal membership on sign-up, and the per-portal sign-up switch."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.http import HttpRequest

from portal.services import membership_join


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        portal = getattr(request, "portal", None)
        return portal is None or portal.signup_enabled

    def save_user(self, request: HttpRequest, user: Any, form: Any, commit: bool = True) -> Any:
        user = super().save_user(request, user, form, commit=commit)
        portal = getattr(request, "portal", None)
        if commit and portal is not None:
            membership_join(portal=portal, user=user)
        return user
