"""Personal access tokens as a DRF authentication class, for the REST API only.

Only the REST API's views consult DRF authentication classes: the Django admin signs
in with sessions, and the gateway knows nothing but API keys compiled into its
revision, so a token can never open either of them.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.cache import cache
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from gateway import keys
from portal import services
from portal.models import PersonalAccessToken

# Failed token checks allowed per client address and window, before 429s. Tokens carry
# ~238 bits, so this is not what stops guessing; it keeps a misbehaving script from
# turning every request into a database lookup, and makes probing visible.
FAILURES_ALLOWED = 20
FAILURE_WINDOW_SECONDS = 60

_INVALID = (
    "Invalid personal access token: it is unknown, expired or revoked. "
    "Create a new one in the developer portal."
)


def _failure_key(request: Request) -> str:
    return f"portico:pat-failures:{request.META.get('REMOTE_ADDR') or 'unknown'}"


def _fail(request: Request, message: str = _INVALID) -> exceptions.AuthenticationFailed:
    key = _failure_key(request)
    cache.add(key, 0, timeout=FAILURE_WINDOW_SECONDS)
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=FAILURE_WINDOW_SECONDS)
    return exceptions.AuthenticationFailed(message)


class AccessTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer portico_pat_…``; anything else wrong under Bearer is a 401.

    Without a Bearer header it steps aside (returns ``None``) for session authentication.
    ``request.auth`` is the :class:`PersonalAccessToken` used.
    """

    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[User, PersonalAccessToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if (cache.get(_failure_key(request)) or 0) >= FAILURES_ALLOWED:
            raise exceptions.Throttled(
                wait=FAILURE_WINDOW_SECONDS, detail="Too many failed token checks."
            )
        if len(parts) != 2:
            raise _fail(request, "Send the token as 'Authorization: Bearer <token>'.")
        try:
            presented = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise _fail(request) from None
        if not services.access_token_is_well_formed(presented):
            if keys.is_well_formed(presented):
                raise _fail(
                    request,
                    "That is an API key for the gateway. The REST API takes a personal "
                    "access token (portico_pat_…); create one in the developer portal.",
                )
            raise _fail(request)
        token = (
            PersonalAccessToken.objects.select_related("user")
            .filter(token_hash=services.access_token_hash(presented))
            .first()
        )
        if (
            token is None
            or token.revoked_at is not None
            or (token.expires_at is not None and token.expires_at <= timezone.now())
        ):
            raise _fail(request)
        if not token.user.is_active:
            raise _fail(request, "This account is disabled.")
        services.access_token_touch(token=token)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="portico-api"'
