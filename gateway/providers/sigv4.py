"""AWS Signature Version 4, for calling Bedrock without the AWS SDK.

The steps are AWS's ("Create a signed AWS API request"): a canonical request (method,
canonical URI, canonical query string, the signed headers and the SHA-256 of the body),
a string to sign naming the date, region and service, and an HMAC-SHA256 with a key
derived from the secret for that day, region and service.

One rule needs care: for every service but S3 the canonical URI is the path *as sent*,
URI-encoded once more. A Bedrock model id such as ``anthropic.claude-3-haiku-v1:0`` or an
inference-profile ARN goes into the path as one segment, so what the signature covers
depends on how that segment is spelled on the wire. :func:`path_segment` spells it the
way the gateway's HTTP client (aiohttp, through yarl) sends it unchanged: ``:`` stays as
it is (a legal path character that yarl would decode anyway) and ``/`` becomes ``%2F``
(which yarl keeps), so the path signed is the path sent.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

# Headers an intermediary may add, drop or rewrite: never signed (the list botocore uses).
_UNSIGNED = frozenset(
    {
        "authorization",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def parse_credentials(credential: str | None) -> Credentials:
    """``"<access key id>:<secret access key>"`` or ``"<id>:<secret>:<session token>"``.

    Raises ``ValueError`` (with a message safe to show: it quotes nothing) otherwise.
    """
    parts = (credential or "").split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1] or (len(parts) == 3 and not parts[2]):
        raise ValueError(
            "An AWS credential must be '<access key id>:<secret access key>' or "
            "'<access key id>:<secret access key>:<session token>'."
        )
    return Credentials(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def path_segment(value: str) -> str:
    """One path segment as the URL carries it (see the module docstring)."""
    return quote(value, safe=":@!$&'()*+,;=-._~")


def sign(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Credentials,
    region: str,
    service: str,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """``headers`` with ``Host``, ``X-Amz-Date``, ``X-Amz-Security-Token`` (with a
    session token) and ``Authorization`` added: every header given is signed."""
    when = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    split = urlsplit(url)
    signed = {name: value for name, value in headers.items() if name.lower() not in _UNSIGNED}
    signed["Host"] = _host(split.scheme, split.hostname or "", split.port)
    signed["X-Amz-Date"] = stamp
    if credentials.session_token:
        signed["X-Amz-Security-Token"] = credentials.session_token
    canonical_headers = sorted(
        (name.lower(), _SPACES.sub(" ", value.strip())) for name, value in signed.items()
    )
    signed_names = ";".join(name for name, _ in canonical_headers)
    canonical_request = "\n".join(
        [
            method.upper(),
            canonical_uri(split.path),
            canonical_query(split.query),
            "".join(f"{name}:{value}\n" for name, value in canonical_headers),
            signed_names,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            stamp,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = signing_key(credentials.secret_access_key, day, region, service)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    signed["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_names}, Signature={signature}"
    )
    return signed


def signing_key(secret: str, day: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_uri(path: str) -> str:
    """The path as sent, without dot segments or empty ones, URI-encoded once more."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized, safe="/~")


def canonical_query(query: str) -> str:
    """Each name and value URI-encoded (``-_.~`` kept), sorted by name, then value."""
    pairs = []
    for item in query.split("&") if query else []:
        name, _, value = item.partition("=")
        pairs.append(
            (quote(unquote(name), safe="-_.~"), quote(unquote(value, errors="strict"), safe="-_.~"))
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def _host(scheme: str, hostname: str, port: int | None) -> str:
    host = hostname.lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return host
