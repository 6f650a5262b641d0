"""An upstream's own credential, sent as the gateway sends it, for the control plane's
calls to MCP servers (discovery) and agents (card fetches).

With no ``auth`` option a secret goes as a bearer token; ``header`` puts it in a named
header; ``oauth2`` exchanges it (the client secret) for an access token first; agents
may also take ``basic``. The styles and header shapes are the gateway's own
(``gateway.backend_auth``), so a check here succeeds exactly when the gateway's calls
will. Errors are :class:`UpstreamAuthError`, whose message is written for the admin
and never holds the credential.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from gateway.backend_auth import auth_style, credential_headers
from gateway.egress import EgressError, EgressPolicy


class UpstreamAuthError(Exception):
    """No credential could be sent; ``str(exc)`` is safe to show an admin and to store."""


async def check_egress(egress: EgressPolicy, url: str) -> None:
    """Refuse ``url`` before connecting when the egress policy does.

    Clients resolve the name again when they connect, so this is check then connect:
    it stops a URL that points inside, not a name re-pointed in that instant.
    """
    try:
        await egress.check_url_async(url)
    except EgressError as exc:
        raise UpstreamAuthError(f"Not connected: {exc}") from None


class OpenedUpstream(Protocol):
    """An upstream as the control plane calls it: its auth options, its decrypted
    secret and the egress policy its URLs must pass."""

    @property
    def options(self) -> Mapping[str, str]: ...
    @property
    def secret(self) -> str | None: ...
    @property
    def egress(self) -> EgressPolicy: ...


async def upstream_auth_headers(
    upstream: OpenedUpstream,
    *,
    styles: Sequence[str],
    seconds: float,
    secrets: list[str],
) -> dict[str, str]:
    """The headers carrying ``upstream``'s credential in its auth style, one of
    ``styles``. An OAuth access token fetched on the way is added to ``secrets`` (what
    messages must never show)."""
    options, secret, egress = upstream.options, upstream.secret, upstream.egress
    auth = auth_style(options, secret)
    if not auth:
        return {}
    if not secret:
        raise UpstreamAuthError(
            f"The upstream's auth is {auth} but it has no secret: set the secret on the upstream."
        )
    if auth not in styles:
        raise UpstreamAuthError(f"Unknown auth style {auth!r}: use {', '.join(styles)}.")
    credential = secret
    if auth == "oauth2":
        await check_egress(egress, options["token_url"])
        credential = await fetch_client_credentials_token(
            token_url=options["token_url"],
            client_id=options["client_id"],
            client_secret=secret,
            scope=options.get("scope", ""),
            seconds=seconds,
        )
        secrets.append(credential)
    return credential_headers(auth, options, credential)


async def fetch_client_credentials_token(
    *, token_url: str, client_id: str, client_secret: str, scope: str, seconds: float
) -> str:
    """An access token from an OAuth 2.0 client-credentials grant (RFC 6749 §4.4).

    The client credentials go in the form body (``client_secret_post``), as the gateway
    sends them (gateway/mcp/upstream.py): a check must succeed exactly when the
    gateway's calls will. Redirects are not followed: the secret goes to ``token_url``.
    """
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
        **({"scope": scope} if scope else {}),
    }
    try:
        async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as client:
            response = await client.post(
                token_url, data=form, headers={"Accept": "application/json"}
            )
    except httpx.TimeoutException:
        raise UpstreamAuthError(
            f"The token endpoint ({origin(token_url)}) did not answer in time."
        ) from None
    except httpx.HTTPError as exc:
        raise UpstreamAuthError(
            f"Could not reach the token endpoint ({origin(token_url)}): {network_reason(exc)}."
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200:
        code = body.get("error") if isinstance(body, dict) else None
        said = f" ({code})" if isinstance(code, str) and re.fullmatch(r"[\w.-]{1,64}", code) else ""
        raise UpstreamAuthError(
            f"The token endpoint refused the client credentials: HTTP {response.status_code}"
            f"{said}. Check the client_id option and the upstream's secret (the client secret)."
        )
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise UpstreamAuthError("The token endpoint's answer has no access_token.")
    return token


def network_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words for an admin."""
    text = str(exc).lower()
    if "refused" in text or "all connection attempts failed" in text:
        return "connection refused (is the server running, and is the port right?)"
    if "name or service not known" in text or "nodename" in text or "getaddrinfo" in text:
        return "the host name does not resolve"
    if "certificate" in text or "ssl" in text or "tls" in text:
        return "the TLS handshake failed (certificate?)"
    return f"network error ({type(exc).__name__})"


def origin(url: str) -> str:
    """``host[:port]`` of ``url``: names the server without user info, path or query."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def redact(message: str, secrets: Sequence[str]) -> str:
    """Defence in depth: no credential survives in a message, whatever quoted it."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            message = message.replace(secret, "[redacted]")
    return message
