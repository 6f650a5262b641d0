"""Backend credentials: how the gateway authenticates to an MCP server, a REST service or
an agent with the upstream's own secret (the app's key never leaves the gateway).

``Upstream.options["auth"]`` says how the secret travels: ``bearer`` (the default when
there is a secret), ``header`` (``options["header"]`` names it, ``X-Api-Key`` if not),
``oauth2`` (a client-credentials grant at ``options["token_url"]`` as
``options["client_id"]``, with ``options["scope"]`` if set; the access token is then
sent as a bearer token and reused until shortly before it expires) or ``basic``
(``options["username"]`` and the secret as the password). REST services may also take
it in the query (``query``); that is the caller's to place.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from gateway.schema import Upstream
from gateway.wire import json_object

_TOKEN_MARGIN_SECONDS = 30.0


class BackendAuthError(Exception):
    """The credential could not be obtained; ``refused`` when the authorization server
    said no (rather than could not be reached)."""

    def __init__(self, *, refused: bool) -> None:
        super().__init__("refused" if refused else "unreachable")
        self.refused = refused


def auth_style(options: Mapping[str, str], secret: str | None) -> str:
    """How an upstream's own credential travels: ``bearer``, ``header``, ``oauth2``,
    ``basic`` or (REST services) ``query``; with no ``auth`` option a secret goes as a
    bearer token, and ``""`` means there is none. Discovery on the control plane uses
    this and :func:`credential_headers` too, so that it succeeds exactly when calls
    will."""
    return options.get("auth") or ("bearer" if secret else "")


def credential_headers(style: str, options: Mapping[str, str], credential: str) -> dict[str, str]:
    """The header carrying ``credential`` (the secret, or for ``oauth2`` the access
    token) in the upstream's ``style``."""
    if style == "header":
        return {options.get("header") or "X-Api-Key": credential}
    if style == "basic":
        pair = f"{options.get('username', '')}:{credential}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {"Authorization": f"Bearer {credential}"}


@dataclass(slots=True)
class _Token:
    value: str
    until: float


class BackendAuth:
    """The headers that carry each upstream's credential, with OAuth access tokens
    cached per upstream, URL and secret (a new secret or URL gets a new token)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        self._tokens: dict[tuple[str, str, str], _Token] = {}

    async def headers(
        self, upstream_id: str, upstream: Upstream, secret: str | None
    ) -> dict[str, str]:
        """The credential's header (none without a secret, or for ``query``). Raises
        :class:`BackendAuthError` when an OAuth token cannot be had."""
        options = upstream.options
        style = auth_style(options, secret)
        if secret is None or style in ("", "query"):
            return {}
        credential = (
            await self._token(upstream_id, upstream, secret) if style == "oauth2" else secret
        )
        return credential_headers(style, options, credential)

    async def _token(self, upstream_id: str, upstream: Upstream, secret: str) -> str:
        key = (upstream_id, upstream.options.get("token_url", ""), secret)
        cached = self._tokens.get(key)
        if cached is not None and time.monotonic() < cached.until:
            return cached.value
        options = upstream.options
        form = {
            "grant_type": "client_credentials",
            "client_id": options.get("client_id", ""),
            "client_secret": secret,
        }
        if options.get("scope"):
            form["scope"] = options["scope"]
        try:
            async with self._http.post(
                options.get("token_url", ""),
                data=form,
                timeout=aiohttp.ClientTimeout(total=upstream.timeout_seconds),
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise BackendAuthError(refused=False) from None
        answer = json_object(body) if status == 200 else {}
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise BackendAuthError(refused=True)
        lifetime = answer.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else 300.0
        if len(self._tokens) > 10_000:
            self._tokens.clear()
        self._tokens[key] = _Token(
            token, time.monotonic() + max(seconds - _TOKEN_MARGIN_SECONDS, 1.0)
        )
        return token
