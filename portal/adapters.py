"""allauth hooks: portal membership on sign-up, and each portal's sign-in methods."""

from __future__ import annotations

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.forms import LoginForm
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialApp
from django import forms
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


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """Offers, and accepts, only the providers the request's portal has switched on.

    Providers configured in the database (the admin's Social applications) belong to
    the portals that list them; one configured in ``SOCIALACCOUNT_PROVIDERS`` settings
    has no row to list and serves every portal.
    """

    def list_apps(
        self, request: HttpRequest, provider: Any = None, client_id: Any = None
    ) -> list[SocialApp]:
        apps = super().list_apps(request, provider=provider, client_id=client_id)
        portal = getattr(request, "portal", None)
        if portal is None:
            return apps
        enabled = set(portal.social_apps.values_list("pk", flat=True))
        return [app for app in apps if app.pk is None or app.pk in enabled]

    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        # A first social sign-in creates the account: the portal's sign-up switch
        # covers it too, or a closed portal could be joined through a provider.
        portal = getattr(request, "portal", None)
        return portal is None or portal.signup_enabled


class PortalLoginForm(LoginForm):
    """allauth's sign-in form, refused on portals that have turned password sign-in off."""

    def clean(self) -> dict[str, Any]:
        portal = getattr(self.request, "portal", None)
        if portal is not None and not portal.password_login_enabled:
            raise forms.ValidationError(
                "This portal does not take passwords: sign in with one of the providers below."
            )
        return super().clean()
