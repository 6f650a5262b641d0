"""What a revision's agent products are, indexed for the request path.

Built once per revision (``gateway.revision``): each target's upstream found and its
backend credential opened, and the key its health is kept under in the process's
:class:`~gateway.routing.Router` (``agent:<upstream id>``, stable across revisions, so
an ejected target stays ejected when a new revision arrives).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.schema import (
    A2A_VENDOR,
    REST_AGENT_VENDOR,
    AgentProduct,
    AgentTarget,
    Revision,
    Upstream,
)
from gateway.secrets import GatewayKeys, SecretError

CARD_PATH = "/.well-known/agent-card.json"


class AgentIndexError(ValueError):
    """A revision's agent products are inconsistent; the message names the culprit."""


@dataclass(frozen=True, slots=True)
class ServedTarget:
    """One target of an agent product, ready to call."""

    key: str  # the Router's health key
    upstream_id: str
    upstream: Upstream
    secret: str | None = field(repr=False)
    spec: AgentTarget
    label: str  # x-portico-target, and what x-portico-upstream may name

    @property
    def weight(self) -> int:
        return self.spec.weight

    @property
    def is_rest(self) -> bool:
        return self.upstream.vendor == REST_AGENT_VENDOR

    @property
    def probe_url(self) -> str:
        """What health checks fetch: an A2A agent's card, a REST agent's base URL."""
        base = self.upstream.base_url
        if self.is_rest or base.endswith(".json"):
            return base
        return base.rstrip("/") + CARD_PATH

    def answers_to(self, pin: str) -> bool:
        return pin in (self.label, self.upstream.name, self.upstream_id)


@dataclass(slots=True)
class ServedAgent:
    id: int
    slug: str
    product: AgentProduct
    targets: tuple[ServedTarget, ...]
    by_upstream: dict[str, ServedTarget]
    # The served card per public base URL, built on first use (``gateway.a2a.card``).
    cards: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)

    @property
    def card(self) -> dict[str, Any]:
        return self.product.card


def index_agents(doc: Revision, keys: GatewayKeys) -> dict[str, ServedAgent]:
    """The agent products of ``doc``; raises :class:`AgentIndexError` when inconsistent."""
    agents: dict[str, ServedAgent] = {}
    for slug, product in doc.products.items():
        spec = product.agent
        if product.kind != "agent" or spec is None:
            continue
        targets: list[ServedTarget] = []
        for target in spec.targets:
            upstream = doc.upstreams.get(target.upstream)
            if upstream is None or upstream.vendor not in (A2A_VENDOR, REST_AGENT_VENDOR):
                raise AgentIndexError(
                    f"agent product {slug!r} names unknown upstream {target.upstream!r}"
                )
            if (upstream.vendor == REST_AGENT_VENDOR) != (target.rest is not None):
                raise AgentIndexError(
                    f"agent product {slug!r}: a REST agent target needs a REST call, and "
                    "only a REST agent target has one"
                )
            if upstream.vendor == A2A_VENDOR and not target.url.startswith(("http://", "https://")):
                raise AgentIndexError(
                    f"agent product {slug!r}: target {target.upstream!r} has no URL"
                )
            if any(t.upstream_id == target.upstream for t in targets):
                raise AgentIndexError(
                    f"agent product {slug!r} has upstream {target.upstream!r} twice"
                )
            try:
                secret = keys.unseal(upstream.secret) if upstream.secret is not None else None
            except SecretError as exc:
                raise AgentIndexError(f"upstream {target.upstream}: {exc}") from exc
            targets.append(
                ServedTarget(
                    key=f"agent:{target.upstream}",
                    upstream_id=target.upstream,
                    upstream=upstream,
                    secret=secret,
                    spec=target,
                    label=target.name or upstream.name or target.upstream,
                )
            )
        agents[slug] = ServedAgent(
            id=product.id,
            slug=slug,
            product=spec,
            targets=tuple(targets),
            by_upstream={t.upstream_id: t for t in targets},
        )
    return agents
