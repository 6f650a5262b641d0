"""Fetching an A2A agent's card, and probing a REST agent, as the control plane does.

:func:`fetch_card` GETs the card from an A2A upstream (its base URL when that ends in
``.json``, else ``<base>/.well-known/agent-card.json``) with the upstream's credential,
sent as the gateway sends it (``catalog.upstream_auth``), and reads it with the A2A
SDK's ``parse_agent_card``, which turns a v0.3 card (``url``, ``preferredTransport``...)
into the v1.0 shape. It touches no database: ``catalog.services.agent_target_refresh``
records what it returns.

The card URL, every redirect (at most ``MAX_REDIRECTS``, to the same origin only: the
credential must not go elsewhere), an OAuth token URL and the JSON-RPC interface the
card names all pass the egress policy (``gateway.egress``).

:func:`probe` is a REST agent's health check: a GET of the upstream's base URL, without
the credential and without following redirects, is "up" when it gets any HTTP answer
below 500 (a 401, 404 or 405 still shows a server that answers), "down" on a 5xx, a
timeout or no connection.

Errors come out as :class:`CardError`, whose message is written for the admin and never
holds the credential.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
from a2a.client.card_resolver import parse_agent_card
from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]

from catalog.upstream_auth import (
    UpstreamAuthError,
    check_egress,
    network_reason,
    origin,
    redact,
    upstream_auth_headers,
)
from gateway.egress import EgressPolicy
from gateway.schema import AGENT_AUTH_STYLES

logger = logging.getLogger(__name__)

CARD_PATH = "/.well-known/agent-card.json"
MAX_CARD_BYTES = 256 * 1024
MAX_REDIRECTS = 3
# However long the upstream's calls may take, a card comes quickly or not at all.
MAX_SECONDS = 30.0
# Fields a card must have (A2A v1.0 §8, also required in v0.3).
REQUIRED_FIELDS = ("name", "description", "version", "skills")
# Defaults the served card is given where the agent's leaves them out.
_CARD_DEFAULTS: dict[str, Any] = {
    "capabilities": {},
    "defaultInputModes": ["text/plain"],
    "defaultOutputModes": ["text/plain"],
    "skills": [],
}


class CardError(Exception):
    """The card could not be had or used; ``str(exc)`` is safe to show and to store."""


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    """An agent upstream, opened: ``options`` its auth options, ``secret`` its decrypted
    credential, ``egress`` the policy its URLs must pass."""

    url: str
    options: dict[str, str] = field(default_factory=dict)
    secret: str | None = field(default=None, repr=False)
    egress: EgressPolicy = field(default_factory=EgressPolicy)


@dataclass(frozen=True, slots=True)
class FetchedCard:
    """A usable card: in the v1.0 shape (camelCase JSON, no ``signatures``), and the
    JSON-RPC interface the gateway calls, with the protocol version it speaks there."""

    card: dict[str, Any]
    interface_url: str
    protocol_version: str  # "1.0" or "0.3"
    streaming: bool


def card_url(base_url: str) -> str:
    """Where an A2A upstream's card is: the base URL itself when it names a ``.json``
    file, else the well-known path under it."""
    if urlsplit(base_url).path.endswith(".json"):
        return base_url
    return base_url.rstrip("/") + CARD_PATH


def fetch_card(endpoint: AgentEndpoint, *, seconds: float) -> FetchedCard:
    """The card of ``endpoint``, within ``seconds`` in all (at most ``MAX_SECONDS``).
    Synchronous (for Celery tasks): runs its own event loop."""
    return asyncio.run(fetch_card_async(endpoint, seconds=min(seconds, MAX_SECONDS)))


async def fetch_card_async(endpoint: AgentEndpoint, *, seconds: float) -> FetchedCard:
    """:func:`fetch_card` for callers that have an event loop."""
    secrets = [endpoint.secret] if endpoint.secret else []
    url = card_url(endpoint.url)
    try:
        async with asyncio.timeout(seconds):
            headers = await upstream_auth_headers(
                endpoint, styles=AGENT_AUTH_STYLES, seconds=seconds, secrets=secrets
            )
            body = await _get_card(endpoint, url, headers, seconds=seconds)
            fetched = read_card(body)
            await _check_interface(endpoint, fetched.interface_url)
            return fetched
    except (CardError, UpstreamAuthError) as exc:
        raise CardError(redact(str(exc), secrets)) from None
    except TimeoutError:
        raise CardError(
            f"{origin(url)} did not send its card within {seconds:g} seconds."
        ) from None


async def _get_card(
    endpoint: AgentEndpoint, url: str, headers: dict[str, str], *, seconds: float
) -> bytes:
    """The card's bytes, following same-origin redirects, at most ``MAX_CARD_BYTES``."""
    request_headers = {
        "Accept": "application/json",
        "User-Agent": "portico-agent-card",
        **headers,
    }
    async with httpx.AsyncClient(
        timeout=seconds, follow_redirects=False, trust_env=False
    ) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await check_egress(endpoint.egress, url)
            try:
                async with client.stream("GET", url, headers=request_headers) as response:
                    if response.is_redirect:
                        url = _redirect(url, response)
                        continue
                    if response.status_code != 200:
                        raise CardError(_status_problem(url, response.status_code, headers))
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_CARD_BYTES:
                            raise CardError(
                                f"The agent card is larger than {MAX_CARD_BYTES // 1024} KiB, "
                                "which is as much as Portico reads."
                            )
                    return bytes(body)
            except httpx.TimeoutException:
                raise CardError(
                    f"{origin(url)} did not send its card within {seconds:g} seconds."
                ) from None
            except httpx.HTTPError as exc:
                raise CardError(
                    f"Could not fetch the agent card from {origin(url)}: {network_reason(exc)}."
                ) from None
    raise CardError(f"More than {MAX_REDIRECTS} redirects from {origin(url)}; not followed.")


def _redirect(url: str, response: httpx.Response) -> str:
    """Where a redirect leads, if it stays on the same origin (the credential was sent)."""
    target = urljoin(url, response.headers.get("location", ""))
    before, after = urlsplit(url), urlsplit(target)
    if (before.scheme, before.netloc) != (after.scheme, after.netloc):
        raise CardError(
            f"{origin(url)} redirects the card to {origin(target)} (HTTP "
            f"{response.status_code}), which is not followed: set the upstream's base URL to "
            "where the card is, if you trust it."
        )
    return target


def _status_problem(url: str, status: int, headers: dict[str, str]) -> str:
    where = origin(url)
    if status in (401, 403):
        if not headers:
            return (
                f"{where} asks for a credential for the card (HTTP {status}): set the "
                "upstream's secret and its auth option."
            )
        return (
            f"{where} refused the credential (HTTP {status}). Check the upstream's secret and "
            "auth options."
        )
    if status == 404:
        return (
            f"No agent card at {url} (HTTP 404). Check the upstream's base URL: the agent's "
            f"base URL (the card is at {CARD_PATH} under it) or the card's own URL."
        )
    if status >= 500:
        return f"{where} failed (HTTP {status}) instead of sending its card. Try again later."
    return f"{where} answered HTTP {status} instead of the agent card."


def read_card(body: bytes) -> FetchedCard:
    """Validate an agent card (v1.0, or v0.3 through ``parse_agent_card``) and pick the
    interface the gateway uses: JSON-RPC, speaking 1.0 rather than 0.3."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise CardError("The agent card is not valid JSON.") from None
    if not isinstance(data, dict):
        raise CardError("The agent card is not a JSON object.")
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        raise CardError(f"The agent card lacks required fields: {', '.join(missing)}.")
    try:
        # It edits what it is given (v0.3 fields become v1.0 ones).
        parsed = parse_agent_card(copy.deepcopy(data))
    except Exception as exc:  # the SDK's and protobuf's errors alike
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise CardError(f"The agent card is not a valid A2A card: {reason}") from None
    card = MessageToDict(parsed)
    card.pop("signatures", None)  # they sign the agent's card, not the one served
    for key, default in _CARD_DEFAULTS.items():
        card.setdefault(key, copy.deepcopy(default))
    for key in ("name", "version"):
        if not str(card.get(key, "")).strip():
            raise CardError(f"The agent card's {key} is empty.")
    interface_url, version = _pick_interface(card)
    return FetchedCard(
        card=card,
        interface_url=interface_url,
        protocol_version=version,
        streaming=bool(card["capabilities"].get("streaming", False)),
    )


def _version(text: str) -> str | None:
    """The protocol version Portico speaks that ``text`` (1.0, 0.3.0...) names, if any."""
    if text == "1" or text.startswith("1."):
        return "1.0"
    if text == "0.3" or text.startswith("0.3."):
        return "0.3"
    return None


def _pick_interface(card: dict[str, Any]) -> tuple[str, str]:
    interfaces = [i for i in card.get("supportedInterfaces", []) if isinstance(i, dict)]
    json_rpc = [i for i in interfaces if str(i.get("protocolBinding", "")).upper() == "JSONRPC"]
    if not json_rpc:
        offered = sorted({str(i.get("protocolBinding", "?")) for i in interfaces})
        raise CardError(
            f"The agent offers no JSON-RPC interface ({', '.join(offered) or 'none listed'}); "
            "Portico calls agents over JSON-RPC."
        )
    by_version: dict[str, str] = {}
    for interface in json_rpc:
        version = _version(str(interface.get("protocolVersion", "")))
        url = str(interface.get("url", ""))
        if version is not None and url and version not in by_version:
            by_version[version] = url
    for version in ("1.0", "0.3"):
        if version in by_version:
            url = by_version[version]
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise CardError(f"The agent's JSON-RPC interface URL {url!r} is not http(s).")
            return url, version
    spoken = sorted({str(i.get("protocolVersion", "")) or "none" for i in json_rpc})
    raise CardError(
        f"The agent's JSON-RPC interface speaks A2A {', '.join(spoken)}; Portico speaks 1.0 "
        "and 0.3."
    )


async def _check_interface(endpoint: AgentEndpoint, url: str) -> None:
    try:
        await check_egress(endpoint.egress, url)
    except UpstreamAuthError as exc:
        raise CardError(f"The card's JSON-RPC interface is not usable: {exc}") from None


def probe(endpoint: AgentEndpoint, *, seconds: float) -> None:
    """A REST agent's health check (see the module's docstring); :class:`CardError`
    says why it is down."""
    asyncio.run(_probe(endpoint, seconds=min(seconds, MAX_SECONDS)))


async def _probe(endpoint: AgentEndpoint, *, seconds: float) -> None:
    url, where = endpoint.url, origin(endpoint.url)
    try:
        await check_egress(endpoint.egress, url)
    except UpstreamAuthError as exc:
        raise CardError(str(exc)) from None
    try:
        async with httpx.AsyncClient(
            timeout=seconds, follow_redirects=False, trust_env=False
        ) as client:
            response = await client.get(url, headers={"User-Agent": "portico-health"})
    except httpx.TimeoutException:
        raise CardError(f"{where} did not answer within {seconds:g} seconds.") from None
    except httpx.HTTPError as exc:
        raise CardError(f"Could not connect to {where}: {network_reason(exc)}.") from None
    if response.status_code >= 500:
        raise CardError(f"{where} failed (HTTP {response.status_code}).")
