"""The OAuth rules that need no database: URLs, redirect URIs, PKCE, scopes, errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from django.conf import settings

# The one scope: call the MCP endpoint the token is for, as the approved app.
SCOPE = "mcp"
# RFC 7636 §4.1: 43 to 128 unreserved characters; S256 challenges are 43 base64url ones.
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,59}$")
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2000
MAX_STATE_LENGTH = 500
_LOOPBACK_NAMES = {"localhost"}


class OAuthError(Exception):
    """An RFC 6749 error: ``error`` is the code, ``description`` a sentence for people
    that names what to change (never a secret), ``status`` the HTTP status of a token or
    registration endpoint's answer."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def as_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def issuer() -> str:
    """The authorization server's identifier: the portal's public URL (RFC 8414)."""
    return (settings.PORTICO_PORTAL_URL or "").rstrip("/")


def resource_base() -> str:
    """The gateway's public URL, under which the MCP endpoints (the resources) live."""
    return (settings.PORTICO_GATEWAY_PUBLIC_URL or "").rstrip("/")


def endpoint_url(path: str) -> str:
    return issuer() + path


def product_resource(slug: str | None) -> str:
    """The resource (and token audience) of product ``slug``'s endpoint; ``None``: the
    aggregate ``/mcp`` endpoint."""
    return f"{resource_base()}/mcp" + (f"/{slug}" if slug else "")


def _origin_and_path(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}", parts.path.rstrip("/")


@dataclass(frozen=True)
class ResourceTarget:
    """What a ``resource`` parameter names: product ``slug``'s endpoint, or (``None``)
    the aggregate endpoint. ``resource`` is its canonical URL, the token's audience."""

    slug: str | None
    resource: str


def parse_resource(value: str | None) -> ResourceTarget:
    """Which MCP endpoint of this gateway ``value`` names (RFC 8707), or ``invalid_target``.

    Scheme and host compare case-insensitively and a trailing slash is ignored; whether
    the product exists and is a published MCP product is the caller's question.
    """
    if not value:
        raise OAuthError(
            "invalid_target",
            "The resource parameter is required: the URL of the MCP endpoint "
            f"({product_resource(None)}/<product> or {product_resource(None)}).",
        )
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    base_origin, base_path = _origin_and_path(resource_base())
    if (
        parts is None
        or len(value) > MAX_URI_LENGTH
        or parts.query
        or parts.fragment
        or f"{parts.scheme.lower()}://{parts.netloc.lower()}" != base_origin
    ):
        raise _unknown_resource()
    rest = parts.path.rstrip("/")
    prefix = f"{base_path}/mcp"
    if rest == prefix:
        return ResourceTarget(slug=None, resource=product_resource(None))
    if rest.startswith(prefix + "/"):
        slug = rest[len(prefix) + 1 :]
        if _SLUG.match(slug):
            return ResourceTarget(slug=slug, resource=product_resource(slug))
    raise _unknown_resource()


def _unknown_resource() -> OAuthError:
    return OAuthError(
        "invalid_target",
        "The resource is not an MCP endpoint of this gateway: use "
        f"{product_resource(None)}/<product> for one published MCP product, or "
        f"{product_resource(None)} for all of them.",
    )


def unknown_product_error() -> OAuthError:
    return OAuthError(
        "invalid_target",
        "No published MCP product has that endpoint: check the product's URL on its "
        "page in the portal's catalog.",
    )


def parse_scope(value: str | None) -> str:
    """The granted scope: ``mcp``, whether asked for or left out; anything else is an
    ``invalid_scope`` error."""
    requested = set((value or "").split())
    if requested - {SCOPE}:
        raise OAuthError(
            "invalid_scope",
            f"Unknown scope {' '.join(sorted(requested - {SCOPE}))!r}: this server grants "
            f"only {SCOPE!r}.",
        )
    return SCOPE


def redirect_uri_problem(uri: object) -> str | None:
    """Why ``uri`` cannot be a redirect URI, or ``None``: https, or http to a loopback
    address (native clients, RFC 8252 §7.3); absolute, no fragment, no user info."""
    if not isinstance(uri, str) or not uri:
        return "Each redirect URI must be a non-empty string."
    if len(uri) > MAX_URI_LENGTH:
        return f"Redirect URIs may be at most {MAX_URI_LENGTH} characters long."
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 (validates the port)
    except ValueError:
        return f"{uri!r} is not a valid URL."
    if parts.fragment or "#" in uri:
        return "Redirect URIs must not contain a fragment."
    if not host or parts.username is not None or parts.password is not None:
        return f"{uri!r} must name a host and no user info."
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        return "Redirect URIs must not contain spaces or control characters."
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and _is_loopback(host):
        return None
    return f"{uri!r} is not allowed: use https, or http only to localhost, 127.0.0.1 or [::1]."


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def challenge_is_well_formed(challenge: str) -> bool:
    return bool(_CHALLENGE.match(challenge))


def verifier_matches(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.6 with S256, compared in constant time."""
    if not _VERIFIER.match(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return hmac.compare_digest(computed, challenge.encode("ascii"))


def redirect_with(redirect_uri: str, params: dict[str, str]) -> str:
    """``redirect_uri`` with ``params`` added to its query (it may have one already)."""
    separator = "&" if urlsplit(redirect_uri).query else ("" if redirect_uri.endswith("?") else "?")
    return redirect_uri + separator + urlencode(params)
