"""Compiling the desired state in the database into a gateway revision document.

The document's schema belongs to the data plane (``gateway.schema``); building the
structs here means a revision that would not decode on the gateway cannot be made.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

import msgspec
from django.conf import settings
from django.db.models import Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from catalog.crypto import decrypt_secret
from catalog.models import (
    Agent,
    AgentTarget,
    McpServer,
    McpTool,
    ModelRoute,
    Plan,
    Product,
    RouteTarget,
    Upstream,
    UpstreamCredential,
)
from catalog.openapi import rest_call_from_json
from catalog.rest_agents import rest_agent_call_from_json
from catalog.selectors import agent_served_card
from consumers.models import Consumer, Credential, Subscription
from gateway import schema
from gateway.secrets import GatewayKeys
from oauth.revision import revision_oauth
from portal.models import Membership

_encoder = msgspec.json.Encoder()
logger = logging.getLogger(__name__)

CredentialRow = tuple[str, int, int, datetime | None]  # key_hash, pk, consumer_id, expires_at


def gateway_keys() -> GatewayKeys:
    return GatewayKeys.from_secret(settings.PORTICO_GATEWAY_SECRET)


@dataclass(frozen=True, slots=True)
class CompiledState:
    """A revision's content before it has a number."""

    upstreams: dict[str, schema.Upstream]
    products: dict[str, schema.Product]
    consumers: dict[str, schema.Consumer]
    credentials: dict[str, schema.Credential]
    content_hash: str
    oauth: schema.OAuth | None = None

    def to_revision(self, number: int) -> schema.Revision:
        return schema.Revision(
            schema=schema.SCHEMA_VERSION,
            revision=number,
            created_at=timezone.now().isoformat(),
            upstreams=self.upstreams,
            products=self.products,
            consumers=self.consumers,
            credentials=self.credentials,
            oauth=self.oauth,
        )


def usable_consumers() -> QuerySet[Consumer]:
    """Active apps of active developers who are not suspended on the app's portal."""
    suspended = Membership.objects.filter(
        portal=OuterRef("portal"), user=OuterRef("owner"), status=Membership.Status.SUSPENDED
    )
    return Consumer.objects.filter(status=Consumer.Status.ACTIVE, owner__is_active=True).exclude(
        Exists(suspended)
    )


def usable_credential_rows(now: datetime) -> QuerySet[Credential, CredentialRow]:
    """``(key_hash, pk, consumer_id, expires_at)`` of every key a gateway may accept at
    ``now``: not revoked, not expired, of a usable consumer. The one rule, for full
    compiles and incremental publishes alike."""
    return (
        Credential.objects.filter(revoked_at__isnull=True, consumer__in=usable_consumers())
        .exclude(expires_at__lte=now)
        .values_list("key_hash", "pk", "consumer_id", "expires_at")
    )


def credential_entries(rows: Iterable[CredentialRow]) -> Iterator[tuple[str, schema.Credential]]:
    """The revision's entries for rows of :func:`usable_credential_rows`."""
    for key_hash, pk, consumer_id, expires_at in rows:
        yield (
            key_hash,
            schema.Credential(
                id=pk,
                consumer=consumer_id,
                expires_at=expires_at.timestamp() if expires_at else None,
            ),
        )


def compile_state() -> CompiledState:
    """Read the current desired state: published products, active consumers and keys.

    Only what may be used is compiled in: draft or retired products, suspended
    consumers, subscriptions that are not approved and revoked or expired keys are
    simply absent, so the gateway refuses them by not knowing them.
    """
    keys = gateway_keys()
    now = timezone.now()

    routes = ModelRoute.objects.prefetch_related(
        Prefetch("extra_targets", queryset=RouteTarget.objects.order_by("position", "pk"))
    )
    # Only served tools travel, with their pinned definitions: new ones wait for an
    # admin, and removed ones could only fail.
    served_tools = McpTool.objects.served()
    agent_targets = AgentTarget.objects.select_related("upstream").order_by("position", "pk")
    products = list(
        Product.objects.filter(status=Product.Status.PUBLISHED)
        .select_related("mcp_server__upstream", "agent")
        .prefetch_related(
            Prefetch("model_routes", queryset=routes),
            Prefetch("mcp_server__tools", queryset=served_tools, to_attr="served_tools"),
            Prefetch("agent__targets", queryset=agent_targets),
        )
        .order_by("slug")
    )
    compiled_agents = {
        p.pk: _compile_agent(agent) for p in products if (agent := _agent_of(p)) is not None
    }
    used_upstreams = {
        upstream_id
        for p in products
        for route in p.model_routes.all()
        for upstream_id in (
            route.upstream_id,
            *(target.upstream_id for target in route.extra_targets.all()),
        )
    }
    used_upstreams.update(
        server.upstream_id for p in products if (server := _mcp_server_of(p)) is not None
    )
    used_upstreams.update(
        int(target.upstream) for agent in compiled_agents.values() for target in agent.targets
    )
    pool = UpstreamCredential.objects.filter(enabled=True).exclude(secret_ciphertext="")
    upstreams: dict[str, schema.Upstream] = {}
    # Fingerprints stand in for sealed secrets in the content hash: sealing uses a fresh
    # nonce each time, so the sealed form would make every compile look like a change.
    fingerprinted: dict[str, schema.Upstream] = {}
    for upstream in (
        Upstream.objects.filter(pk__in=used_upstreams)
        .prefetch_related(Prefetch("pool_credentials", queryset=pool.order_by("pk")))
        .order_by("pk")
    ):
        secret = decrypt_secret(upstream.secret_ciphertext) if upstream.secret_ciphertext else None
        # Oldest first, so the pool's order (the order the gateway tries) is stable.
        secrets = [decrypt_secret(c.secret_ciphertext) for c in upstream.pool_credentials.all()]
        plain = schema.Upstream(
            vendor=upstream.vendor,
            base_url=upstream.base_url,
            timeout_seconds=upstream.timeout_seconds,
            name=upstream.name,
            options=dict(sorted(upstream.options.items())),
        )
        uid = str(upstream.pk)
        upstreams[uid] = msgspec.structs.replace(
            plain,
            secret=None if secret is None else keys.seal(secret),
            secrets=[keys.seal(value) for value in secrets],
        )
        fingerprinted[uid] = _fingerprinted(plain, keys, secret, secrets)

    compiled_products = {
        p.slug: schema.Product(
            id=p.pk,
            slug=p.slug,
            kind=cast(schema.ProductKind, p.kind),
            models=_compile_routes(p.model_routes.all()),
            cache=None
            if p.kind != Product.Kind.MODEL or not p.response_cache_ttl_seconds
            else schema.ResponseCache(
                ttl_seconds=p.response_cache_ttl_seconds, shared=p.response_cache_shared
            ),
            mcp=_compile_mcp(server) if (server := _mcp_server_of(p)) is not None else None,
            agent=compiled_agents.get(p.pk),
        )
        for p in products
    }

    approved = Subscription.objects.filter(
        status=Subscription.Status.APPROVED, product__status=Product.Status.PUBLISHED
    ).select_related("plan", "product")
    consumers: dict[str, schema.Consumer] = {}
    for consumer in (
        usable_consumers()
        .prefetch_related(Prefetch("subscriptions", queryset=approved, to_attr="approved"))
        .order_by("pk")
    ):
        consumers[str(consumer.pk)] = schema.Consumer(
            id=consumer.pk,
            subscriptions={
                sub.product.slug: schema.Subscription(
                    id=sub.pk,
                    plan=_compile_plan(sub.plan),
                    tools=sub.allowed_tools if sub.product.kind == Product.Kind.MCP else None,
                    # 0 is refused where it is set; were one stored, the gateway would
                    # refuse the whole revision for it.
                    requests_per_minute=sub.requests_per_minute or None,
                )
                for sub in consumer.approved
            },
        )

    rows = usable_credential_rows(now).order_by("pk")
    credentials = dict(credential_entries(rows.iterator(chunk_size=10_000)))
    # The portal as the MCP endpoints' OAuth server, and the grants revoked lately.
    oauth = revision_oauth(now=now)

    return CompiledState(
        upstreams=upstreams,
        products=compiled_products,
        consumers=consumers,
        credentials=credentials,
        content_hash=_content_hash(fingerprinted, compiled_products, consumers, credentials, oauth),
        oauth=oauth,
    )


def _compile_routes(routes: Iterable[ModelRoute]) -> dict[str, schema.ModelRoute]:
    """A product's routes, by name. Fallbacks that name no other model of the same kind
    (left behind by a change the admin did not tidy) are left out rather than sent: the
    gateway refuses a whole revision for one, and every product would stop with it."""
    ordered = sorted(routes, key=lambda r: r.name)
    kinds = {route.name: route.kind for route in ordered}
    return {
        route.name: schema.ModelRoute(
            upstream=str(route.upstream_id),
            upstream_model=route.upstream_model,
            weight=route.weight,
            targets=[
                schema.Target(
                    upstream=str(target.upstream_id),
                    upstream_model=target.upstream_model,
                    weight=target.weight,
                )
                for target in route.extra_targets.all()
            ],
            strategy=cast(schema.RouteStrategy, route.strategy),
            fallbacks=list(
                dict.fromkeys(
                    name
                    for name in route.fallbacks
                    if name != route.name and kinds.get(name) == route.kind
                )
            ),
            kind=cast(Literal["chat", "embeddings"], route.kind),
            context_window=route.context_window,
            first_token_seconds=route.first_token_seconds,
            affinity="consumer" if route.consumer_affinity else "none",
        )
        for route in ordered
    }


def _mcp_server_of(product: Product) -> McpServer | None:
    """The MCP server of an MCP product, if it has one yet (from the select_related)."""
    if product.kind != Product.Kind.MCP:
        return None
    return getattr(product, "mcp_server", None)


def _compile_mcp(server: McpServer) -> schema.McpServer:
    """What the gateway serves of an MCP server. Its prompts, resources and instructions
    are served as discovered, but only once an admin has approved the server.

    A REST-to-MCP server's tools go with their pinned REST calls, and only those that
    have one; a hosted server's only without one (the gateway refuses a whole revision
    for a REST tool without its call, and would relay a REST tool to an MCP server).
    """
    approved = server.approved_at is not None
    rest = server.is_rest
    tools = []
    for tool in getattr(server, "served_tools", []):
        call = _pinned_rest_call(tool) if rest else None
        if (rest and call is None) or (not rest and tool.pinned_rest is not None):
            continue
        tools.append(
            schema.McpTool(name=tool.name, definition=tool.pinned_definition or {}, rest=call)
        )
    return schema.McpServer(
        upstream=str(server.upstream_id),
        transport=cast(Literal["streamable_http", "sse"], server.transport),
        tools=tools,
        prompts=server.prompts if approved else [],
        resources=server.resources if approved else [],
        resource_templates=server.resource_templates if approved else [],
        instructions=server.instructions if approved else "",
    )


def _pinned_rest_call(tool: McpTool) -> schema.RestCall | None:
    """A REST tool's pinned call as the gateway reads it; ``None`` when it has none or
    it no longer decodes (validated when pinned, so only a schema change could do it):
    that tool is left out rather than every product stopped with a refused revision."""
    if tool.pinned_rest is None:
        return None
    try:
        return rest_call_from_json(tool.pinned_rest)
    except ValueError:
        logger.warning(
            "REST tool %s (id %s) has a pinned call that does not decode", tool.name, tool.pk
        )
        return None


def _agent_of(product: Product) -> Agent | None:
    """The agent of an agent product, if it has one yet (from the select_related)."""
    if product.kind != Product.Kind.AGENT:
        return None
    return getattr(product, "agent", None)


def _compile_agent(agent: Agent) -> schema.AgentProduct:
    """What the gateway serves of an agent: the served card, and the targets it can
    call, in order. An A2A target is callable once its card named a JSON-RPC interface;
    a REST target when its call decodes (validated when saved, so only a schema change
    could stop it). The others are left out rather than sent: the gateway would refuse
    a whole revision, and every product with it, for one it cannot use."""
    targets: list[schema.AgentTarget] = []
    for target in agent.targets.all():
        rest = None
        if target.is_rest:
            rest = _rest_agent_call(target)
            if rest is None:
                continue
        elif not target.interface_url or target.protocol_version not in ("1.0", "0.3"):
            continue
        targets.append(
            schema.AgentTarget(
                upstream=str(target.upstream_id),
                weight=target.weight,
                name=target.name or target.upstream.name,
                url="" if rest else target.interface_url,
                protocol_version=cast(
                    Literal["1.0", "0.3"], "1.0" if rest else target.protocol_version
                ),
                streaming=False if rest else target.streaming,
                rest=rest,
            )
        )
    return schema.AgentProduct(
        card=agent_served_card(agent=agent),
        targets=targets,
        affinity=cast(Literal["none", "consumer"], agent.affinity),
        requests_per_minute=agent.requests_per_minute,
        health_check_seconds=agent.health_check_seconds,
    )


def _rest_agent_call(target: AgentTarget) -> schema.RestAgentCall | None:
    if target.rest is None:
        return None
    try:
        return rest_agent_call_from_json(target.rest)
    except ValueError:
        logger.warning("REST agent target %s has a call that does not decode", target.pk)
        return None


def _compile_plan(plan: Plan) -> schema.Plan:
    return schema.Plan(
        id=plan.pk,
        name=plan.name,
        requests_per_minute=plan.requests_per_minute,
        tokens_per_minute=plan.tokens_per_minute,
        tokens_per_day=plan.tokens_per_day,
        token_quota=plan.token_quota,
    )


def _fingerprint(keys: GatewayKeys, plaintext: str) -> str:
    return hmac.new(keys.seal_key, plaintext.encode(), hashlib.sha256).hexdigest()


def _fingerprinted(
    upstream: schema.Upstream, keys: GatewayKeys, secret: str | None, secrets: list[str]
) -> schema.Upstream:
    """``upstream`` with fingerprints of its opened secrets in place of the sealed ones."""
    return msgspec.structs.replace(
        upstream,
        secret=None if secret is None else _fingerprint(keys, secret),
        secrets=[_fingerprint(keys, value) for value in secrets],
    )


def _opened(upstream: schema.Upstream, keys: GatewayKeys) -> tuple[str | None, list[str]]:
    """The plaintexts of a document upstream's secret and pool."""
    secret = None if upstream.secret is None else keys.unseal(upstream.secret)
    return secret, [keys.unseal(value) for value in upstream.secrets]


def _content_hash(
    fingerprinted: dict[str, schema.Upstream],
    products: dict[str, schema.Product],
    consumers: dict[str, schema.Consumer],
    credentials: dict[str, schema.Credential],
    oauth: schema.OAuth | None = None,
) -> str:
    digest = hashlib.sha256()
    for part in (fingerprinted, products, consumers, credentials):
        digest.update(_encoder.encode(part))
    if oauth is not None:  # a revoked grant must make a new revision
        digest.update(_encoder.encode(oauth))
    return digest.hexdigest()


def document_content_hash(doc: schema.Revision) -> str:
    """The content hash ``compile_state`` gives the content of a stored document.

    Used for documents produced by applying deltas instead of compiling. Sealed
    secrets are opened to fingerprint them, and every map is put in the order
    ``compile_state`` builds it, so equal content hashes equal whatever its history.
    """
    keys = gateway_keys()
    fingerprinted = {
        uid: _fingerprinted(u, keys, *_opened(u, keys))
        for uid, u in sorted(doc.upstreams.items(), key=lambda item: int(item[0]))
    }
    return _content_hash(
        fingerprinted,
        dict(sorted(doc.products.items())),
        dict(sorted(doc.consumers.items(), key=lambda item: item[1].id)),
        dict(sorted(doc.credentials.items(), key=lambda item: item[1].id)),
        doc.oauth,
    )


def only_credentials_changed(previous: schema.Revision, state: CompiledState) -> bool:
    """True when ``state`` differs from ``previous`` in credentials alone."""
    return (
        previous.oauth == state.oauth
        and _encoder.encode(previous.products) == _encoder.encode(state.products)
        and _encoder.encode(previous.consumers) == _encoder.encode(state.consumers)
        and previous.upstreams.keys() == state.upstreams.keys()
        and all(_same_upstream(previous.upstreams[k], state.upstreams[k]) for k in state.upstreams)
    )


def _same_upstream(a: schema.Upstream, b: schema.Upstream) -> bool:
    """Equal but for the nonces of their sealed secrets."""
    keys = gateway_keys()
    if _opened(a, keys) != _opened(b, keys):
        return False
    return msgspec.structs.replace(a, secret=None, secrets=[]) == msgspec.structs.replace(
        b, secret=None, secrets=[]
    )


def credential_delta(previous: schema.Revision, state: CompiledState, number: int) -> schema.Delta:
    before, after = previous.credentials, state.credentials
    return schema.Delta(
        schema=schema.SCHEMA_VERSION,
        base=previous.revision,
        revision=number,
        created_at=timezone.now().isoformat(),
        credentials_upsert={h: c for h, c in after.items() if before.get(h) != c},
        credentials_remove=[h for h in before if h not in after],
    )
