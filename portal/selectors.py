"""Reads for portals."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.http import Http404

from portal.models import PersonalAccessToken, Portal, PortalLogo


def portal_for_host(host: str) -> Portal | None:
    """The portal that serves ``host`` (one of its domains), else the default portal.

    One query either way: every page runs this.
    """
    name = host.split(":", 1)[0].lower()
    return (
        Portal.objects.filter(Q(domains__domain=name) | Q(is_default=True))
        .annotate(
            rank=Case(
                When(domains__domain=name, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            )
        )
        .order_by("rank")
        .first()
    )


def access_token_list_for_user(*, user: User) -> QuerySet[PersonalAccessToken]:
    """The user's own tokens, newest first (revoked ones too: they are history)."""
    return PersonalAccessToken.objects.filter(user=user).order_by("-created_at", "-pk")


def access_token_get_for_user(*, user: User, pk: int) -> PersonalAccessToken:
    """The user's own token ``pk``; anyone else's (staff too) is a 404.

    Tokens are personal credentials: staff revoke other people's in the admin.
    """
    try:
        return PersonalAccessToken.objects.get(pk=pk, user=user)
    except PersonalAccessToken.DoesNotExist:
        raise Http404("No such token.") from None


def portal_logo_get(*, slug: str, version: str) -> PortalLogo:
    """The logo of portal ``slug`` if ``version`` is its current one, else a 404.

    Logos are public (they are on every page, signed in or not); an old version's URL
    stops answering rather than serving an image the admin replaced.
    """
    try:
        return PortalLogo.objects.get(portal__slug=slug, portal__logo_version=version)
    except PortalLogo.DoesNotExist:
        raise Http404("No such logo.") from None
