"""The agent card the gateway serves for an agent product.

The card is the product's (``AgentProduct.card``: the agent's own card as fetched, or
one the control plane made for a REST agent) with what belongs to the gateway put in
its place:

- ``supportedInterfaces`` name the gateway: JSON-RPC (v1.0), HTTP+JSON (v1.0) and
  JSON-RPC (v0.3), all at ``<gateway>/agents/<product>``, in that order of preference;
- the security scheme is the app's Portico key as a bearer token;
- ``signatures`` are dropped (they signed the agent's card, not this one), and so are
  push notifications and the extended card, which the gateway does not relay;
- streaming is on: the gateway streams for agents that do not (one event).

Like the SDK's own server, the card also carries the v0.3 fields (``url``,
``preferredTransport``, ``protocolVersion``, ``additionalInterfaces``, ``security``;
the scheme in both shapes), so that clients of either version can read it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.a2a.index import ServedAgent

SCHEME = "portico"
_SCHEME_TEXT = "A Portico API key of an app subscribed to this product."
_OWN = frozenset(
    {
        "supportedInterfaces",
        "securitySchemes",
        "securityRequirements",
        "signatures",
        "url",
        "preferredTransport",
        "protocolVersion",
        "additionalInterfaces",
        "security",
        "supportsAuthenticatedExtendedCard",
    }
)
_MAX_BASES = 8


def endpoint(base: str, slug: str) -> str:
    return f"{base.rstrip('/')}/agents/{slug}"


def served_card(agent: ServedAgent, base: str) -> tuple[bytes, bytes]:
    """The card's JSON and its ETag, for clients that reach the gateway at ``base``."""
    cached = agent.cards.get(base)
    if cached is not None:
        return cached
    url = endpoint(base, agent.slug)
    card: dict[str, Any] = {k: v for k, v in agent.card.items() if k not in _OWN}
    capabilities = card.get("capabilities")
    capabilities = dict(capabilities) if isinstance(capabilities, dict) else {}
    capabilities.update(streaming=True, pushNotifications=False, extendedAgentCard=False)
    capabilities.pop("stateTransitionHistory", None)
    skills = card.get("skills")
    card.update(
        name=card.get("name") or agent.slug,
        description=card.get("description") or "",
        version=card.get("version") or "1.0.0",
        capabilities=capabilities,
        defaultInputModes=card.get("defaultInputModes") or ["text/plain"],
        defaultOutputModes=card.get("defaultOutputModes") or ["text/plain"],
        skills=[
            {k: v for k, v in skill.items() if k not in ("securityRequirements", "security")}
            for skill in (skills if isinstance(skills, list) else [])
            if isinstance(skill, dict)
        ],
        supportedInterfaces=[
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": url, "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "0.3"},
        ],
        securitySchemes={
            SCHEME: {
                "httpAuthSecurityScheme": {"scheme": "bearer", "description": _SCHEME_TEXT},
                "type": "http",
                "scheme": "bearer",
                "description": _SCHEME_TEXT,
            }
        },
        securityRequirements=[{"schemes": {SCHEME: {"list": []}}}],
        # v0.3 readers
        url=url,
        preferredTransport="JSONRPC",
        protocolVersion="0.3",
        additionalInterfaces=[{"url": url, "transport": "JSONRPC"}],
        security=[{SCHEME: []}],
    )
    body = orjson.dumps(card)
    etag = f'W/"{hashlib.sha256(body).hexdigest()[:32]}"'.encode()
    if len(agent.cards) >= _MAX_BASES:
        agent.cards.clear()
    agent.cards[base] = (body, etag)
    return body, etag
