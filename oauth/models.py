"""The portal as the OAuth 2.1 authorization server of the gateway's MCP endpoints.

An MCP client registers itself (:class:`OAuthClient`, RFC 7591), a developer approves it
on the consent page as one of their apps, for one MCP product or for all of them
(:class:`OAuthGrant`), the client swaps a one-time code (:class:`AuthorizationCode`)
and then rotating refresh tokens (:class:`RefreshToken`) for short-lived access tokens
(``gateway.access_tokens``) that the gateway checks on its own. Codes and refresh
tokens are stored only as SHA-256 digests; access tokens are not stored at all.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class OAuthClient(models.Model):
    """A public client (``token_endpoint_auth_method`` ``none``) registered dynamically.

    Anyone may register one, so nothing about it is trusted: its name is shown on the
    consent page as what the client calls itself, and its redirect URIs only ever
    receive a code after a developer approved.
    """

    client_id = models.CharField(max_length=64, unique=True, editable=False)
    client_name = models.CharField(max_length=120)
    redirect_uris = models.JSONField(default=list)
    registered_from = models.GenericIPAddressField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "OAuth client"

    def __str__(self) -> str:
        return f"{self.client_name} ({self.client_id[:8]}…)"


class OAuthGrant(models.Model):
    """A developer's approval: ``client`` may act as ``consumer`` (their app) towards
    ``resource`` (``<gateway>/mcp/<product>``, or ``<gateway>/mcp`` for every MCP
    product the app is subscribed to, when ``product`` is empty).

    Made when the developer approves; ``used_at`` is set when tokens are first (and
    last) issued under it. Revoking it ends its refresh tokens at once and its access
    tokens at the gateway through the revision's ``oauth.revoked_grants``.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oauth_grants"
    )
    consumer = models.ForeignKey(
        "consumers.Consumer", on_delete=models.CASCADE, related_name="oauth_grants"
    )
    # Clients are not deleted while grants name them: a grant's id must stay known
    # until its tokens have expired (see the admin).
    client = models.ForeignKey(OAuthClient, on_delete=models.PROTECT, related_name="grants")
    product = models.ForeignKey(
        "catalog.Product",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="oauth_grants",
        help_text="Empty: every MCP product the app is subscribed to (the /mcp endpoint).",
    )
    resource = models.CharField(max_length=500)
    scope = models.CharField(max_length=200, default="mcp")
    created_at = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_reason = models.CharField(max_length=200, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "OAuth grant"
        indexes = [
            # The compiler's "revoked within the last access-token lifetime".
            models.Index(fields=["revoked_at"], name="oauth_grant_revoked"),
            models.Index(fields=["user", "revoked_at"], name="oauth_grant_user"),
        ]

    def __str__(self) -> str:
        return f"grant #{self.pk}"


class AuthorizationCode(models.Model):
    """A one-time code for ``grant``, bound to the redirect URI and the PKCE challenge
    of the request it answers. Only its SHA-256 is stored."""

    grant = models.ForeignKey(OAuthGrant, on_delete=models.CASCADE, related_name="codes")
    code_hash = models.CharField(max_length=64, unique=True, editable=False)
    redirect_uri = models.CharField(max_length=2000)
    code_challenge = models.CharField(max_length=128)
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"code of grant #{self.grant_id}"


class RefreshToken(models.Model):
    """One refresh token of a grant. Each use rotates it; a used one presented again
    means it leaked, and revokes the grant. Only its SHA-256 is stored."""

    grant = models.ForeignKey(OAuthGrant, on_delete=models.CASCADE, related_name="refresh_tokens")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"refresh token of grant #{self.grant_id}"
