"""Writes of the authorization server: registering clients, approving, issuing and
revoking.

Secrets (codes, refresh tokens, access tokens) exist in plaintext only in the return
values that hand them to the client; the database holds SHA-256 digests of codes and
refresh tokens, and nothing of access tokens, which the gateway checks by signature.
No secret is ever logged or put in an error.

Single use is enforced by conditional updates (``... WHERE used_at IS NULL``), which
the database serialises on the row: of two requests racing with one code or refresh
token, exactly one gets tokens. Issuing tokens and revoking a grant likewise take turns
on the grant's row, so a revoked grant never issues another token, and a grant that did
issue tokens is listed in the revision once revoked (``oauth.revision``).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from catalog.models import Product
from consumers.models import Consumer
from gateway import access_tokens
from gateway.keys import SecretFormat, hash_key
from gatewaysync.compiler import gateway_keys, usable_consumers
from gatewaysync.services import gateway_changed
from oauth import protocol
from oauth.models import AuthorizationCode, OAuthClient, OAuthGrant, RefreshToken
from portal import audit

logger = logging.getLogger(__name__)

# Prefixed and checksummed like API keys (gateway/keys.py), so secret scanners can
# recognise leaked ones; neither has the shape of an API key, so the gateway can never
# take one for a key.
CODE = SecretFormat("portico_oac_")
REFRESH_TOKEN = SecretFormat("portico_ort_")
CODE_SECONDS = 60
# An approval whose code was never exchanged is forgotten after this long.
UNUSED_GRANT_SECONDS = 3600


@transaction.atomic
def client_register(
    *, client_name: str, redirect_uris: list[str], registered_from: str | None
) -> OAuthClient:
    """Register a public client (RFC 7591). The caller has validated the metadata
    (``protocol.redirect_uri_problem``)."""
    client = OAuthClient.objects.create(
        client_id=secrets.token_urlsafe(24),
        client_name=client_name,
        redirect_uris=redirect_uris,
        registered_from=registered_from,
    )
    logger.info("registered OAuth client %s", client.client_id)
    return client


@transaction.atomic
def authorization_approve(
    *,
    user: User,
    client: OAuthClient,
    consumer: Consumer,
    product: Product | None,
    resource: str,
    scope: str,
    redirect_uri: str,
    code_challenge: str,
) -> str:
    """Record the developer's approval as a grant and return a one-time code for it.

    The caller checked that ``consumer`` is one the user may choose for this resource
    (``selectors.consent_apps``) and that the redirect URI is the client's.
    """
    now = timezone.now()
    grant = OAuthGrant.objects.create(
        user=user,
        consumer=consumer,
        client=client,
        product=product,
        resource=resource,
        scope=scope,
    )
    code = CODE.generate()
    AuthorizationCode.objects.create(
        grant=grant,
        code_hash=hash_key(code),
        redirect_uri=redirect_uri,
        code_challenge=code_challenge,
        expires_at=now + timedelta(seconds=CODE_SECONDS),
    )
    audit.record(
        "oauth_grant.approve",
        grant,
        client=client.client_id,
        client_name=client.client_name,
        consumer=consumer.pk,
        resource=resource,
    )
    # Approvals whose code was never exchanged can never issue a token: forget them
    # (with their codes) rather than let them pile up.
    OAuthGrant.objects.filter(
        used_at__isnull=True,
        revoked_at__isnull=True,
        created_at__lt=now - timedelta(seconds=UNUSED_GRANT_SECONDS),
    ).delete()
    return code


@dataclass(frozen=True)
class TokenSet:
    """A token endpoint's successful answer (RFC 6749 §5.1)."""

    access_token: str
    refresh_token: str
    scope: str
    expires_in: int = access_tokens.ACCESS_TOKEN_SECONDS

    def as_json(self) -> dict[str, str | int]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
        }

    def __repr__(self) -> str:
        return f"TokenSet(scope={self.scope!r}, expires_in={self.expires_in})"


def _invalid_grant(description: str) -> protocol.OAuthError:
    return protocol.OAuthError("invalid_grant", description)


def _check_resource(grant: OAuthGrant, resource: str | None) -> None:
    """A token request may repeat the grant's resource (RFC 8707 §2.2), nothing else."""
    if resource is None:
        return
    if protocol.parse_resource(resource).resource != grant.resource:
        raise protocol.OAuthError(
            "invalid_target",
            "The resource differs from the one this authorization was granted for; "
            "authorize again for the other endpoint.",
        )


def _check_still_valid(grant: OAuthGrant) -> None:
    """The app is still its developer's and usable, and the product still served: the
    gateway would refuse the token otherwise, so say why here instead."""
    if not usable_consumers().filter(pk=grant.consumer_id, owner=grant.user_id).exists():
        raise _invalid_grant(
            "The app this authorization acts as is suspended, deleted or no longer yours; "
            "authorize again with an active app."
        )
    if (
        grant.product_id is not None
        and not Product.objects.filter(
            pk=grant.product_id, kind=Product.Kind.MCP, status=Product.Status.PUBLISHED
        ).exists()
    ):
        raise _invalid_grant("The MCP product of this authorization is no longer published.")


def token_for_code(
    *,
    client: OAuthClient,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    resource: str | None,
) -> TokenSet:
    """The authorization-code grant (RFC 6749 §4.1.3 with PKCE, RFC 7636).

    Any attempt by the right client uses the code up, whatever its outcome; a code
    presented again revokes its grant and every token issued under it (§4.1.2).
    """
    row = AuthorizationCode.objects.select_related("grant").filter(code_hash=hash_key(code)).first()
    if row is None or row.grant.client_id != client.pk:
        raise _invalid_grant("The authorization code is unknown, or was issued to another client.")
    now = timezone.now()
    if not AuthorizationCode.objects.filter(pk=row.pk, used_at__isnull=True).update(used_at=now):
        logger.warning("authorization code of grant %s presented twice: revoking", row.grant_id)
        grant_revoke(grant=row.grant, reason="authorization code used twice")
        raise _invalid_grant(
            "The authorization code was already used; the authorization is revoked. "
            "Authorize again."
        )
    if row.expires_at <= now:
        raise _invalid_grant("The authorization code has expired; authorize again.")
    if redirect_uri != row.redirect_uri:
        raise _invalid_grant("redirect_uri differs from the one in the authorization request.")
    if not protocol.verifier_matches(code_verifier, row.code_challenge):
        raise _invalid_grant("The code_verifier does not match the code_challenge (PKCE, S256).")
    _check_resource(row.grant, resource)
    _check_still_valid(row.grant)
    return _issue(row.grant, client, now)


def token_for_refresh(
    *,
    client: OAuthClient,
    refresh_token: str,
    resource: str | None,
    scope: str | None,
) -> TokenSet:
    """The refresh-token grant, rotating the refresh token (OAuth 2.1 §4.3.1).

    A refresh token already used (so held by two parties, one of them not the client)
    revokes its grant.
    """
    row = (
        RefreshToken.objects.select_related("grant")
        .filter(token_hash=hash_key(refresh_token))
        .first()
    )
    if row is None or row.grant.client_id != client.pk:
        raise _invalid_grant("The refresh token is unknown, or was issued to another client.")
    now = timezone.now()
    if not RefreshToken.objects.filter(pk=row.pk, used_at__isnull=True).update(used_at=now):
        logger.warning("refresh token of grant %s presented twice: revoking", row.grant_id)
        grant_revoke(grant=row.grant, reason="refresh token used twice")
        raise _invalid_grant(
            "The refresh token was already used; the authorization is revoked. Authorize again."
        )
    grant = row.grant
    if grant.revoked_at is not None:
        raise _invalid_grant("The authorization was revoked; authorize again.")
    if row.expires_at <= now:
        raise _invalid_grant("The refresh token has expired; authorize again.")
    if scope is not None and protocol.parse_scope(scope) != grant.scope:
        raise protocol.OAuthError("invalid_scope", "The scope exceeds the one granted.")
    _check_resource(grant, resource)
    _check_still_valid(grant)
    return _issue(grant, client, now)


def _issue(grant: OAuthGrant, client: OAuthClient, now: datetime) -> TokenSet:
    with transaction.atomic():
        # Takes turns with grant_revoke on the grant's row (see the module's docstring).
        if not OAuthGrant.objects.filter(pk=grant.pk, revoked_at__isnull=True).update(used_at=now):
            raise _invalid_grant("The authorization was revoked; authorize again.")
        refresh = REFRESH_TOKEN.generate()
        lifetime = timedelta(days=settings.PORTICO_OAUTH_REFRESH_TOKEN_DAYS)
        RefreshToken.objects.create(
            grant=grant, token_hash=hash_key(refresh), expires_at=timezone.now() + lifetime
        )
        # Used tokens are kept to recognise their reuse until they would have expired.
        RefreshToken.objects.filter(grant=grant, expires_at__lt=timezone.now()).delete()
    access = access_tokens.mint(
        gateway_keys().token_key,
        issuer=protocol.issuer(),
        consumer=grant.consumer_id,
        grant=grant.pk,
        audience=grant.resource,
        client_id=client.client_id,
        scope=grant.scope,
        now=int(time.time()),
    )
    return TokenSet(access_token=access, refresh_token=refresh, scope=grant.scope)


def token_revoke(*, client: OAuthClient, token: str) -> None:
    """RFC 7009: revoke the grant behind a refresh or access token of ``client``.

    Answers the same whatever the token is (unknown, expired, another client's), so
    the endpoint tells a caller nothing about tokens it does not hold.
    """
    grant: OAuthGrant | None = None
    row = RefreshToken.objects.select_related("grant").filter(token_hash=hash_key(token)).first()
    if row is not None:
        grant = row.grant
    else:
        grant_id = _access_token_grant(token)
        if grant_id is not None:
            grant = OAuthGrant.objects.filter(pk=grant_id).first()
    if grant is not None and grant.client_id == client.pk:
        grant_revoke(grant=grant, reason="revoked by the client")


def _access_token_grant(token: str) -> int | None:
    """The grant of a genuine, unexpired access token, else ``None``."""
    if not access_tokens.looks_like_token(token.encode()):
        return None
    try:
        verified = access_tokens.verify(
            gateway_keys().token_key, token, audience=None, now=time.time()
        )
    except access_tokens.TokenError:
        return None
    return verified.grant


@transaction.atomic
def grant_revoke(*, grant: OAuthGrant, reason: str) -> OAuthGrant:
    """Revoke a grant: its refresh tokens stop at once, its access tokens as soon as
    the gateways apply the next revision, which this publishes (the grant's id is in
    its ``oauth.revoked_grants`` until those tokens have expired)."""
    now = timezone.now()
    if OAuthGrant.objects.filter(pk=grant.pk, revoked_at__isnull=True).update(
        revoked_at=now, revoked_reason=reason[:200]
    ):
        grant.revoked_at, grant.revoked_reason = now, reason[:200]
        audit.record("oauth_grant.revoke", grant, reason=reason, consumer=grant.consumer_id)
        gateway_changed()
    return grant
