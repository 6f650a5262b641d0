"""OAuth access tokens for the MCP endpoints: minted by the portal, checked by the gateway.

The portal is the authorization server; the gateway is the resource server. Rather
than push every token to every gateway process (a client uses its token within
milliseconds of getting it, faster than a revision travels), a token carries its own
grant, signed: a JWT (RFC 9068 profile, ``typ: at+jwt``) with HMAC-SHA256 under a key
derived from the shared gateway secret (``GatewayKeys.token_key``). A gateway checks
the signature, the expiry and the audience; the consumer must still be active and
subscribed in the applied revision, and the grant must not be among the revision's
revoked grants.

The header is fixed and compared byte for byte, so no ``alg`` the token names (``none``,
an asymmetric algorithm keyed with the HMAC secret...) is ever honoured.

This module is part of the contract between the planes: it must not import Django.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass

import orjson

ACCESS_TOKEN_SECONDS = 900
_HEADER = (
    base64.urlsafe_b64encode(orjson.dumps({"alg": "HS256", "typ": "at+jwt", "kid": "portico-1"}))
    .rstrip(b"=")
    .decode()
)


class TokenError(ValueError):
    """Not a valid access token (malformed, forged, expired or for another audience);
    the message says which, for logs, never the token."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What a valid token grants: ``consumer`` (an app) may call ``audience`` (the MCP
    endpoint's URL) until ``expires_at``, under the portal grant ``grant``."""

    consumer: int
    grant: int
    audience: str
    client_id: str
    scope: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(key: bytes, signing_input: str) -> str:
    return _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def mint(
    key: bytes,
    *,
    issuer: str,
    consumer: int,
    grant: int,
    audience: str,
    client_id: str,
    scope: str = "mcp",
    now: int,
    lifetime: int = ACCESS_TOKEN_SECONDS,
) -> str:
    """A signed access token (the portal's token endpoint)."""
    claims = {
        "iss": issuer,
        "sub": str(consumer),
        "aud": audience,
        "client_id": client_id,
        "grant": grant,
        "scope": scope,
        "iat": now,
        "exp": now + lifetime,
        "jti": _b64(os.urandom(12)),
    }
    signing_input = f"{_HEADER}.{_b64(orjson.dumps(claims))}"
    return f"{signing_input}.{_signature(key, signing_input)}"


def looks_like_token(value: bytes) -> bool:
    """Whether a presented bearer value is shaped like one of these tokens (API keys are
    not), so the gateway knows which check to apply."""
    return value.startswith(_HEADER.encode() + b".") and value.count(b".") == 2


def verify(key: bytes, token: str, *, audience: str | None, now: float) -> AccessToken:
    """The grant a token carries, if it is genuine, unexpired and for ``audience``
    (``None``: for whichever audience it names; the portal revoking a token it issued)."""
    header, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    if header != _HEADER or not payload or not signature:
        raise TokenError("malformed access token")
    expected = _signature(key, f"{header}.{payload}")
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise TokenError("access token signature does not verify")
    try:
        claims = orjson.loads(_unb64(payload))
    except (binascii.Error, ValueError):
        raise TokenError("malformed access token claims") from None
    if not isinstance(claims, dict):
        raise TokenError("malformed access token claims")
    try:
        consumer = int(claims["sub"])
        grant = claims["grant"]
        expires_at = claims["exp"]
        granted_audience = claims["aud"]
        client_id = claims.get("client_id", "")
        scope = claims.get("scope", "")
    except (KeyError, TypeError, ValueError):
        raise TokenError("access token lacks a required claim") from None
    if (
        type(grant) is not int
        or type(expires_at) is not int
        or not isinstance(granted_audience, str)
        or not isinstance(client_id, str)
        or not isinstance(scope, str)
    ):
        raise TokenError("access token has a malformed claim")
    if expires_at <= now:
        raise TokenError("access token has expired")
    if audience is not None and granted_audience != audience:
        raise TokenError("access token was issued for another resource")
    return AccessToken(consumer, grant, granted_audience, client_id, scope, expires_at)
