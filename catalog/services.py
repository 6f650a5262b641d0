"""Writes for the catalog: upstreams, products, model routes, plans and categories.

Every write that changes what the gateway must know ends with ``gateway_changed()``,
which publishes a new revision after the transaction commits. Listing fields (category,
tags, description text, guide) only change the portal, so their writes do not; every
write that changes a part of a product's search document refreshes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Prefetch
from django.utils import timezone

from catalog.crypto import decrypt_secret, encrypt_secret
from catalog.mcp_scan import scan_tool, scan_value
from catalog.models import (
    Agent,
    AgentTarget,
    Category,
    McpServer,
    McpTool,
    ModelRoute,
    Plan,
    Product,
    RouteTarget,
    Upstream,
    UpstreamCredential,
    egress_policy,
    validate_vendor_secret,
)
from catalog.openapi import (
    MAX_DOCUMENT_BYTES,
    CredentialPlace,
    OpenApiError,
    load_document,
    rest_call_to_json,
    tools_from_openapi,
)
from catalog.selectors import agent_served_card, served_card
from gateway.egress import EgressError
from gateway.schema import RestCall
from gatewaysync.services import gateway_changed
from portal import audit
from portal.models import Portal

if TYPE_CHECKING:
    from catalog.mcp_discovery import Discovery

logger = logging.getLogger(__name__)


@transaction.atomic
def upstream_create(
    *,
    name: str,
    base_url: str,
    vendor: str = Upstream.Vendor.OPENAI,
    secret: str | None = None,
    timeout_seconds: float = 120.0,
    options: Mapping[str, str] | None = None,
) -> Upstream:
    upstream = Upstream(
        name=name,
        vendor=vendor,
        base_url=base_url,
        timeout_seconds=timeout_seconds,
        options=dict(options or {}),
    )
    if secret:
        validate_vendor_secret(vendor, secret)
        upstream.secret_ciphertext = encrypt_secret(secret)
    upstream.full_clean()
    upstream.save()
    gateway_changed()
    return upstream


@transaction.atomic
def upstream_set_secret(*, upstream: Upstream, secret: str | None) -> Upstream:
    """Replace (or, with ``None``, clear) an upstream's secret. It is never read back."""
    if secret:
        validate_vendor_secret(upstream.vendor, secret)
    upstream.secret_ciphertext = encrypt_secret(secret) if secret else ""
    upstream.save(update_fields=["secret_ciphertext", "updated_at"])
    audit.record("upstream.secret_set" if secret else "upstream.secret_clear", upstream)
    gateway_changed()
    # A new credential may open (or close) what an MCP server lists: look again; and
    # an agent's card may need it.
    mcp_servers_schedule_discovery(servers=upstream.mcp_servers.all())
    agents_schedule_refresh(agents=Agent.objects.filter(targets__upstream=upstream).distinct())
    return upstream


def _record_pool_change(action: str, credential: UpstreamCredential, pk: int | None = None) -> None:
    """Audit a change to an upstream's pool (on the upstream: it outlives its credentials)."""
    audit.record(
        f"upstream.pool_{action}",
        credential.upstream,
        credential=pk or credential.pk,
        label=credential.label,
    )
    gateway_changed()


@transaction.atomic
def upstream_credential_add(
    *, upstream: Upstream, label: str, secret: str, enabled: bool = True
) -> UpstreamCredential:
    """Add a credential to ``upstream``'s pool. Its secret is never read back."""
    validate_vendor_secret(upstream.vendor, secret)
    credential = UpstreamCredential(
        upstream=upstream, label=label, enabled=enabled, secret_ciphertext=encrypt_secret(secret)
    )
    credential.full_clean()
    credential.save()
    _record_pool_change("add", credential)
    return credential


@transaction.atomic
def upstream_credential_set_secret(
    *, credential: UpstreamCredential, secret: str
) -> UpstreamCredential:
    """Replace a pool credential's secret (a pool credential always has one)."""
    validate_vendor_secret(credential.upstream.vendor, secret)
    credential.secret_ciphertext = encrypt_secret(secret)
    credential.save(update_fields=["secret_ciphertext"])
    _record_pool_change("secret_set", credential)
    return credential


@transaction.atomic
def upstream_credential_set_enabled(
    *, credential: UpstreamCredential, enabled: bool
) -> UpstreamCredential:
    credential.enabled = enabled
    credential.save(update_fields=["enabled"])
    _record_pool_change("enable" if enabled else "disable", credential)
    return credential


@transaction.atomic
def upstream_credential_remove(*, credential: UpstreamCredential) -> None:
    pk = credential.pk
    credential.delete()
    _record_pool_change("remove", credential, pk)


@transaction.atomic
def product_create(
    *, name: str, slug: str, kind: str, description: str = "", status: str = Product.Status.DRAFT
) -> Product:
    product = Product(name=name, slug=slug, kind=kind, description=description, status=status)
    product.search_document = _search_document(product, category_name="", route_names=[])
    product.full_clean()
    product.save()
    gateway_changed()
    return product


@transaction.atomic
def product_publish(*, product: Product, portals: Iterable[Portal]) -> Product:
    """Make a product usable through the gateway and visible on the given portals."""
    product.status = Product.Status.PUBLISHED
    product.save(update_fields=["status", "updated_at"])
    product.portals.add(*portals)
    audit.record("product.publish", product, portals=[p.pk for p in product.portals.all()])
    gateway_changed()
    return product


@transaction.atomic
def product_unpublish(*, product: Product, portal: Portal) -> Product:
    """Withdraw a product from one portal, and the access that portal's apps had to it.

    Live subscriptions held by apps created on that portal are revoked, so no key keeps
    working through a product its portal no longer offers. A product left on no portal
    goes back to draft, and the gateway stops serving it.
    """
    from consumers.models import Subscription
    from consumers.services import subscription_revoke

    product.portals.remove(portal)
    for subscription in Subscription.objects.filter(
        product=product, consumer__portal=portal, status__in=Subscription.LIVE
    ).select_related("consumer"):
        subscription_revoke(
            subscription=subscription, reason=f"{product.name} was withdrawn from {portal.name}."
        )
    if product.status == Product.Status.PUBLISHED and not product.portals.exists():
        product.status = Product.Status.DRAFT
        product.save(update_fields=["status", "updated_at"])
    audit.record("product.unpublish", product, portal=portal.pk)
    gateway_changed()
    return product


@transaction.atomic
def product_retire(*, product: Product) -> Product:
    """Take a product out of service: the gateway refuses it from the next revision."""
    product.status = Product.Status.RETIRED
    product.save(update_fields=["status", "updated_at"])
    product.portals.clear()
    audit.record("product.retire", product)
    gateway_changed()
    return product


@dataclass(frozen=True)
class TargetSpec:
    """A further target of a route, as :func:`model_route_create` takes it."""

    upstream: Upstream
    upstream_model: str
    weight: int = 1


@transaction.atomic
def model_route_create(
    *,
    product: Product,
    name: str,
    upstream: Upstream,
    upstream_model: str,
    kind: str = ModelRoute.Kind.CHAT,
    weight: int = 1,
    targets: Sequence[TargetSpec] = (),
    strategy: str = ModelRoute.Strategy.WEIGHTED,
    fallbacks: Sequence[str] = (),
    context_window: int | None = None,
    first_token_seconds: float | None = None,
    max_output_tokens: int | None = None,
    input_price_per_mtok: Decimal | None = None,
    output_price_per_mtok: Decimal | None = None,
) -> ModelRoute:
    """A public model name of ``product``: its first target, then ``targets``.

    ``fallbacks`` must name models of the product that exist already (see
    :meth:`ModelRoute.fallback_errors`).
    """
    route = ModelRoute(
        product=product,
        name=name,
        kind=kind,
        upstream=upstream,
        upstream_model=upstream_model,
        weight=weight,
        strategy=strategy,
        fallbacks=list(fallbacks),
        context_window=context_window,
        first_token_seconds=first_token_seconds,
        max_output_tokens=max_output_tokens,
        input_price_per_mtok=input_price_per_mtok,
        output_price_per_mtok=output_price_per_mtok,
    )
    route.full_clean()
    route.save()
    for position, spec in enumerate(targets, start=1):
        target = RouteTarget(
            route=route,
            upstream=spec.upstream,
            upstream_model=spec.upstream_model,
            weight=spec.weight,
            position=position,
        )
        target.full_clean()
        target.save()
    product_refresh_search_document(product=product)
    gateway_changed()
    return route


@transaction.atomic
def model_route_set_fallbacks(*, route: ModelRoute, fallbacks: Sequence[str]) -> ModelRoute:
    route.fallbacks = list(fallbacks)
    route.full_clean()
    route.save(update_fields=["fallbacks"])
    gateway_changed()
    return route


@transaction.atomic
def product_tidy_fallbacks(
    *, product: Product, renamed: Mapping[str, str] | None = None
) -> list[str]:
    """Keep the product's fallbacks pointing at its models after renames and deletions.

    ``renamed`` maps old names to new ones, which fallbacks follow; a fallback that
    then names no model of the product of the same kind (deleted, moved to another
    product, of another kind now) is dropped, since the gateway refuses a revision
    that names one. Returns a sentence per drop, for the admin to show.
    """
    renamed = renamed or {}
    routes = list(ModelRoute.objects.filter(product=product))
    kinds = {route.name: route.kind for route in routes}
    notes: list[str] = []
    for route in routes:
        kept: list[str] = []
        for old in route.fallbacks:
            name = renamed.get(old, old)
            if name != route.name and kinds.get(name) == route.kind and name not in kept:
                kept.append(name)
            elif name not in kept:
                notes.append(
                    f"Removed the fallback {old} from {route.name}: no other {route.kind} "
                    "model of this product has that name now."
                )
        if kept != route.fallbacks:
            route.fallbacks = kept
            route.save(update_fields=["fallbacks"])
            gateway_changed()
    return notes


@transaction.atomic
def plan_create(
    *,
    product: Product,
    name: str,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    token_quota: int | None = None,
) -> Plan:
    plan = Plan(
        product=product,
        name=name,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
        tokens_per_day=tokens_per_day,
        token_quota=token_quota,
    )
    plan.full_clean()
    plan.save()
    gateway_changed()
    return plan


@transaction.atomic
def category_create(*, name: str, slug: str) -> Category:
    category = Category(name=name, slug=slug)
    category.full_clean()
    category.save()
    return category


@transaction.atomic
def product_set_listing(
    *,
    product: Product,
    description: str,
    category: Category | None,
    tags: Sequence[str],
    guide_markdown: str,
) -> Product:
    """Set what the catalog shows about a product. The gateway does not read these fields."""
    product.description = description
    product.category = category
    product.tags = normalize_tags(tags)
    product.guide_markdown = guide_markdown
    product.full_clean()
    product.save(update_fields=["description", "category", "tags", "guide_markdown", "updated_at"])
    product_refresh_search_document(product=product)
    return product


def normalize_tags(tags: Iterable[str]) -> list[str]:
    """Strip tags and drop empty ones and repeats (case-insensitively), keeping the order."""
    seen: set[str] = set()
    result: list[str] = []
    for tag in tags:
        cleaned = " ".join(tag.split())
        if cleaned and cleaned.casefold() not in seen:
            seen.add(cleaned.casefold())
            result.append(cleaned)
    return result


def _search_document(
    product: Product,
    *,
    category_name: str,
    route_names: Iterable[str],
    tools: Iterable[McpTool] = (),
    skills: Iterable[object] = (),
) -> str:
    # One lower-cased line per source: one column keeps serving every search term.
    parts = [product.name, product.slug, product.description, category_name]
    parts.extend(tag for tag in product.tags if isinstance(tag, str))
    parts.extend(route_names)
    for tool in tools:  # served tools only (what developers are shown), as pinned
        description = (tool.pinned_definition or {}).get("description")
        parts.append(tool.name)
        parts.append(" ".join(description.split()) if isinstance(description, str) else "")
    for skill in skills:  # an agent's, as its served card lists them
        if not isinstance(skill, dict):
            continue
        tags = skill.get("tags")
        texts = [skill.get("name"), skill.get("description")]
        texts.extend(tags if isinstance(tags, list) else [])
        parts.extend(" ".join(text.split()) for text in texts if isinstance(text, str))
    return "\n".join(part for part in parts if part).lower()


def _served_skills(agent: Agent | None) -> list[object]:
    if agent is None:
        return []
    skills = agent_served_card(agent=agent).get("skills")
    return skills if isinstance(skills, list) else []


@transaction.atomic
def product_refresh_search_document(*, product: Product) -> Product:
    """Rebuild the text the catalog search matches from the product's current rows."""
    category_name = (
        Category.objects.filter(pk=product.category_id).values_list("name", flat=True).first()
        if product.category_id is not None
        else None
    )
    route_names = ModelRoute.objects.filter(product=product).values_list("name", flat=True)
    document = _search_document(
        product,
        category_name=category_name or "",
        route_names=route_names,
        tools=McpTool.objects.served().filter(server__product=product),
        skills=_served_skills(
            Agent.objects.filter(product=product).prefetch_related(_TARGETS).first()
        ),
    )
    if document != product.search_document:
        product.search_document = document
        # Not updated_at: the document is derived, nothing a person changed.
        product.save(update_fields=["search_document"])
    return product


@transaction.atomic
def products_refresh_search_documents(*, products: Iterable[Product]) -> int:
    """Rebuild the search documents of many products in a fixed number of queries."""
    ids = [product.pk for product in products]
    changed = []
    for product in (
        Product.objects.filter(pk__in=ids)
        .select_related("category", "mcp_server", "agent")
        .prefetch_related(
            "model_routes",
            Prefetch("mcp_server__tools", queryset=McpTool.objects.served()),
            Prefetch("agent__targets", queryset=_TARGETS.queryset),
        )
    ):
        server = getattr(product, "mcp_server", None)
        document = _search_document(
            product,
            category_name=product.category.name if product.category else "",
            route_names=[route.name for route in product.model_routes.all()],
            tools=server.tools.all() if server is not None else (),
            skills=_served_skills(getattr(product, "agent", None)),
        )
        if document != product.search_document:
            product.search_document = document
            changed.append(product)
    Product.objects.bulk_update(changed, ["search_document"], batch_size=500)
    return len(changed)


# MCP servers ------------------------------------------------------------------------------


@transaction.atomic
def mcp_server_create(
    *,
    product: Product,
    upstream: Upstream,
    transport: str = McpServer.Transport.STREAMABLE_HTTP,
) -> McpServer:
    """Put the MCP server ``upstream`` behind ``product`` and discover it after commit.

    Nothing it offers is served until an admin approves it (:func:`mcp_server_approve`).
    """
    server = McpServer(product=product, upstream=upstream, transport=transport)
    server.full_clean()
    server.save()
    audit.record("mcp_server.create", server, upstream=upstream.pk, transport=transport)
    gateway_changed()
    mcp_servers_schedule_discovery(servers=[server])
    return server


def mcp_servers_schedule_discovery(*, servers: Iterable[McpServer]) -> None:
    """Discover ``servers`` in the background once the current transaction commits.
    REST-to-MCP servers are left out: their tools are imported, not discovered."""
    from catalog.tasks import mcp_server_discover_task

    for server in servers:
        if not server.is_rest:
            transaction.on_commit(partial(mcp_server_discover_task.delay, server.pk))


def mcp_server_discover(*, server: McpServer) -> McpServer:
    """Connect to the server now, list what it offers and record it (or why it failed).

    Blocks for up to ``PORTICO_MCP_DISCOVERY_TIMEOUT_SECONDS`` (or the upstream's own
    timeout when shorter); Celery's task and the demo seed call it. Deliberately not
    atomic: no transaction (nor SQLite's write lock) is held while waiting on a server.
    A REST-to-MCP server is returned as it is: there is no MCP server to ask.
    """
    if server.is_rest:
        return server
    # Imported here: the SDK takes a second to import, which only discovery should pay.
    from catalog.mcp_discovery import DiscoveryError, Endpoint, discover

    upstream = server.upstream
    endpoint = Endpoint(
        url=upstream.base_url,
        transport=server.transport,
        options=dict(upstream.options),
        secret=decrypt_secret(upstream.secret_ciphertext) if upstream.has_secret else None,
        egress=egress_policy(),
    )
    seconds = min(upstream.timeout_seconds, float(settings.PORTICO_MCP_DISCOVERY_TIMEOUT_SECONDS))
    try:
        found = discover(endpoint, timeout=seconds)
    except DiscoveryError as exc:
        return mcp_server_record_failure(server=server, error=str(exc))
    return mcp_server_record_discovery(server=server, discovery=found)


@transaction.atomic
def mcp_server_record_failure(*, server: McpServer, error: str) -> McpServer:
    """Note a failed discovery. What was found before stays, and keeps being served:
    a server that is down for a while must not lose its approved tools."""
    server.last_error = error
    server.last_checked_at = timezone.now()
    server.save(update_fields=["last_error", "last_checked_at", "updated_at"])
    return server


def _served_state(server: McpServer) -> tuple[Any, ...]:
    """What of ``server`` the gateway serves but its pinned definitions (which discovery
    never changes): a difference before and after a discovery means a new revision."""
    served = list(McpTool.objects.served().filter(server=server).values_list("name", flat=True))
    if server.approved_at is None:
        return (served,)
    return (
        served,
        server.instructions,
        server.prompts,
        server.resources,
        server.resource_templates,
    )


def _held_status(tool: McpTool, definition: dict[str, Any], rest: dict[str, Any] | None) -> str:
    """The pinning rule: what a tool's status is when the server now says ``definition``
    (and, for a REST tool, the OpenAPI document now says ``rest``)."""
    if tool.pinned_definition is None:
        return McpTool.Status.NEW
    if (tool.pinned_definition, tool.pinned_rest) == (definition, rest):
        return McpTool.Status.APPROVED
    return McpTool.Status.CHANGED


@dataclass
class _Listed:
    """Names of the tools a listing added, held for review (changed) and removed."""

    fresh: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)


def _apply_listing(
    server: McpServer,
    listing: Sequence[tuple[dict[str, Any], dict[str, Any] | None]],
    *,
    now: datetime,
    approve_new: bool,
) -> _Listed:
    """Apply the pinning rules to ``server``'s tools for a new listing of ``(definition,
    REST call)`` pairs: a discovery (hosted, no REST calls) or an OpenAPI import.

    - a tool never seen is ``new``: not served until an admin approves it, unless
      ``approve_new`` (an import: the admin importing is its reviewer), when it is
      pinned as listed;
    - a pinned tool whose definition or REST call differs now is ``changed``: held for
      review, and the pinned one keeps being served (a "rug pull" changes nothing
      served); back as pinned, it is ``approved`` again;
    - a pinned tool no longer listed is ``removed`` and no longer served (calls to it
      could only fail); an unapproved one is forgotten.

    Every listed definition is scanned for injection markers (``flags``).
    """
    existing = {tool.name: tool for tool in server.tools.all()}
    listed = _Listed()
    fresh: list[McpTool] = []
    for definition, rest in listing:
        name = definition["name"]
        flags = [finding.as_json() for finding in scan_tool(definition)]
        tool = existing.pop(name, None)
        if tool is None:
            tool = McpTool(
                server=server, name=name, discovered_definition=definition, rest=rest, flags=flags
            )
            if approve_new:
                _pin(tool, now)
            fresh.append(tool)
            listed.fresh.append(name)
            continue
        status = _held_status(tool, definition, rest)
        if status == McpTool.Status.NEW and approve_new:
            tool.discovered_definition, tool.rest, tool.flags = definition, rest, flags
            _pin(tool, now)
            tool.save(update_fields=["discovered_definition", "rest", "flags", *_PINNED_FIELDS])
            listed.fresh.append(name)
            continue
        current = (tool.status, tool.discovered_definition, tool.rest, tool.flags)
        if (status, definition, rest, flags) == current:
            continue
        if status == McpTool.Status.CHANGED and (definition, rest) != current[1:3]:
            tool.changed_at = now
            listed.held.append(name)
        tool.status, tool.discovered_definition, tool.rest, tool.flags = (
            status,
            definition,
            rest,
            flags,
        )
        tool.save(update_fields=["status", "discovered_definition", "rest", "flags", "changed_at"])
    McpTool.objects.bulk_create(fresh)
    for tool in existing.values():
        if tool.status == McpTool.Status.REMOVED:
            continue
        if tool.pinned_definition is None:
            tool.delete()
        else:
            tool.status, tool.changed_at = McpTool.Status.REMOVED, now
            tool.save(update_fields=["status", "changed_at"])
            listed.gone.append(tool.name)
    return listed


@transaction.atomic
def mcp_server_record_discovery(*, server: McpServer, discovery: Discovery) -> McpServer:
    """Store what a discovery found and apply the pinning rules to the tools
    (:func:`_apply_listing`; new tools wait for an admin).

    Every discovered definition is scanned for injection markers (``flags``), and so are
    the server's instructions, prompts and resources (the server's ``flags``). Only a
    change to what is served (a removal; prompts, resources or instructions of an
    approved server) publishes a revision.
    """
    # Two discoveries of one server (beat's and an admin's) take turns; the caller's
    # instance is brought up to date, so it sees what was recorded.
    McpServer.objects.select_for_update().filter(pk=server.pk).values_list("pk").get()
    server.refresh_from_db()
    before = _served_state(server)
    now = timezone.now()
    listed = _apply_listing(
        server, [(definition, None) for definition in discovery.tools], now=now, approve_new=False
    )
    held, fresh = listed.held, listed.fresh

    server.protocol_version = discovery.protocol_version
    server.server_name = discovery.server_name
    server.server_version = discovery.server_version
    server.instructions = discovery.instructions
    server.prompts = discovery.prompts
    server.resources = discovery.resources
    server.resource_templates = discovery.resource_templates
    served_text = {
        "instructions": discovery.instructions,
        "prompts": discovery.prompts,
        "resources": discovery.resources,
        "resource_templates": discovery.resource_templates,
    }
    server.flags = [finding.as_json() for finding in scan_value(served_text)]
    server.last_error = "\n".join(discovery.problems)
    server.last_checked_at = server.last_discovered_at = now
    server.save()
    if held or (fresh and server.approved_at is not None):
        # Changes after approval are what review is for: keep a trail of them.
        audit.record("mcp_server.tools_held", server, changed=held, new=fresh)
    if _served_state(server) != before:
        product_refresh_search_document(product=server.product)
        gateway_changed()
    return server


_PINNED_FIELDS = ["pinned_definition", "pinned_rest", "status", "approved_at"]


def _pin(tool: McpTool, now: datetime) -> None:
    """Pin what was last listed: the definition, and a REST tool's call with it (the
    caller saves, with ``_PINNED_FIELDS`` among what it saves)."""
    tool.pinned_definition = tool.discovered_definition
    tool.pinned_rest = tool.rest
    tool.status = McpTool.Status.APPROVED
    tool.approved_at = now


@transaction.atomic
def mcp_server_approve(*, server: McpServer) -> McpServer:
    """Approve the server as discovered: pin every tool's current definition, and serve
    its prompts, resources and instructions from now on.

    Flagged tools are approved too (the admin has seen the flags); the audit event names
    them.
    """
    if server.last_discovered_at is None and not server.is_rest:
        raise ValidationError("Nothing to approve yet: the server has not been discovered.")
    now = timezone.now()
    tools = list(server.tools.exclude(status=McpTool.Status.REMOVED))
    for tool in tools:
        _pin(tool, now)
        tool.save(update_fields=_PINNED_FIELDS)
    server.approved_at = now
    server.save(update_fields=["approved_at", "updated_at"])
    audit.record(
        "mcp_server.approve",
        server,
        tools=[tool.name for tool in tools],
        flagged=[tool.name for tool in tools if tool.flags],
    )
    product_refresh_search_document(product=server.product)
    gateway_changed()
    return server


@transaction.atomic
def mcp_tool_approve(*, tool: McpTool) -> McpTool:
    """Pin one tool's discovered definition: a new tool starts being served, a changed
    one is served as the server now describes it."""
    if tool.status == McpTool.Status.REMOVED:
        raise ValidationError(f"{tool.name} is gone from the server: there is nothing to pin.")
    _pin(tool, timezone.now())
    tool.save(update_fields=_PINNED_FIELDS)
    audit.record("mcp_tool.approve", tool, server=tool.server_id, flagged=bool(tool.flags))
    product_refresh_search_document(product=tool.server.product)
    gateway_changed()
    return tool


# REST-to-MCP ------------------------------------------------------------------------------

OPENAPI_FETCH_SECONDS = 15.0


@dataclass(frozen=True)
class OpenApiImportResult:
    """What an import did, by tool name, and what it could not import (``warnings``).
    ``notes`` are what the admin should know besides (the document's server, say)."""

    added: list[str]
    held: list[str]
    removed: list[str]
    unchanged: int
    warnings: list[str]
    notes: list[str]
    server_url: str


def openapi_fetch(*, url: str) -> dict[str, Any]:
    """The OpenAPI document at ``url``, parsed, for :func:`rest_server_import_openapi`.

    ``url`` passes the egress policy, and the connection goes to an address that was
    checked (so a name cannot point elsewhere by the time it is used); redirects are not
    followed (they would lead somewhere unchecked), and at most ``MAX_DOCUMENT_BYTES``
    are read, each attempt within ``OPENAPI_FETCH_SECONDS``. Raises ``ValidationError``
    with a sentence for the admin.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter the http:// or https:// URL of the OpenAPI document.")
    if parts.username or parts.password:
        raise ValidationError("Leave credentials out of the URL: the document is fetched as is.")
    try:
        addresses = egress_policy().resolve_url(url)
    except EgressError as exc:
        raise ValidationError(f"Not fetched: {exc}") from None
    origin = parts.hostname + (f":{parts.port}" if parts.port else "")
    timeout = httpx.Timeout(OPENAPI_FETCH_SECONDS, connect=min(5.0, OPENAPI_FETCH_SECONDS))
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        # Like a browser, the next address when one refuses (localhost: ::1, then 127.0.0.1).
        for attempt, address in enumerate(addresses[:3], start=1):
            try:
                body = _fetch_from(client, parts, address, origin)
                break
            except httpx.ConnectError as exc:
                if attempt == min(len(addresses), 3):
                    raise ValidationError(
                        f"Could not fetch the document from {origin}: {_why(exc)}."
                    ) from None
            except httpx.TimeoutException:
                raise ValidationError(
                    f"{origin} did not send the document within {OPENAPI_FETCH_SECONDS:g} seconds."
                ) from None
            except httpx.HTTPError as exc:
                raise ValidationError(
                    f"Could not fetch the document from {origin}: {_why(exc)}."
                ) from None
    try:
        return load_document(body)
    except OpenApiError as exc:
        raise ValidationError(str(exc)) from None


def _fetch_from(client: httpx.Client, parts: SplitResult, address: str, origin: str) -> bytes:
    """GET the document of ``parts`` from ``address`` (one its host resolved to)."""
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    headers = {
        "Host": parts.netloc,
        "Accept": "application/json, application/yaml;q=0.9, */*;q=0.5",
        "User-Agent": "portico-openapi-import",
    }
    # TLS still checks the certificate against the host name, not the address.
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
        if response.is_redirect:
            target = urlsplit(response.headers.get("location", "")).hostname or origin
            raise ValidationError(
                f"{origin} answered with a redirect (HTTP {response.status_code}, to {target}), "
                "which is not followed: import from the URL it points to, if you trust it."
            )
        if response.status_code != 200:
            raise ValidationError(
                f"{origin} answered HTTP {response.status_code} instead of the document."
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValidationError(
                    f"The document is larger than {MAX_DOCUMENT_BYTES >> 20} MiB, which is as "
                    "much as Portico imports."
                )
    return bytes(body)


def _why(exc: httpx.HTTPError) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused (is the service running, and is the port right?)"
    if "certificate" in text or "ssl" in text:
        return "the TLS handshake failed (certificate?)"
    return f"network error ({type(exc).__name__})"


@transaction.atomic
def rest_server_import_openapi(
    *, server: McpServer, document: Mapping[str, Any], source_url: str = ""
) -> OpenApiImportResult:
    """Import the operations of an OpenAPI ``document`` as ``server``'s tools.

    The admin importing is the reviewer: a tool that is new here is pinned and served
    at once (injection markers are still flagged). Tools already here follow the
    pinning rules of discovery (:func:`_apply_listing`): one whose definition or REST
    call differs is held as ``changed`` while the pinned one keeps being served, and
    one the document no longer has is ``removed``. A document of which nothing can be
    imported changes nothing. ``source_url`` is where it came from (empty: uploaded);
    a relative server URL in the document is resolved against it.
    """
    if not server.is_rest:
        raise ValidationError(
            "Only the server of a REST service (an upstream of vendor 'REST service') takes "
            "OpenAPI documents; an MCP server's tools are discovered."
        )
    upstream = server.upstream
    try:
        found = tools_from_openapi(
            document, credential=CredentialPlace.of(upstream.options, upstream.has_secret)
        )
    except OpenApiError as exc:
        raise ValidationError(str(exc)) from None
    if not found.tools:
        why = "; ".join(found.warnings[:3]) or "it has no operations"
        raise ValidationError(f"Nothing was imported: no operation could become a tool ({why}).")
    McpServer.objects.select_for_update().filter(pk=server.pk).values_list("pk").get()
    server.refresh_from_db()
    before = _served_state(server)
    now = timezone.now()
    listing = [(tool.definition, rest_call_to_json(tool.rest)) for tool in found.tools]
    listed = _apply_listing(server, listing, now=now, approve_new=True)
    server.server_name, server.server_version = found.title, found.version
    server.last_error = "\n".join(found.warnings)
    server.last_checked_at = server.last_discovered_at = now
    server.openapi_url = source_url
    server.save(
        update_fields=[
            "server_name",
            "server_version",
            "last_error",
            "last_checked_at",
            "last_discovered_at",
            "openapi_url",
            "updated_at",
        ]
    )
    audit.record(
        "mcp_server.openapi_import",
        server,
        source=source_url or "upload",
        added=listed.fresh,
        held=listed.held,
        removed=listed.gone,
    )
    server_url = urljoin(source_url, found.server_url) if source_url else found.server_url
    notes: list[str] = []
    base_url = server.upstream.base_url
    if server_url and server_url.rstrip("/") != base_url.rstrip("/"):
        notes.append(
            f"The document's server is {server_url}; the tools call the upstream's base URL, "
            f"{base_url}. Change the upstream if that is not where the API is."
        )
    if _served_state(server) != before:
        product_refresh_search_document(product=server.product)
        gateway_changed()
    return OpenApiImportResult(
        added=listed.fresh,
        held=listed.held,
        removed=listed.gone,
        unchanged=len(found.tools) - len(listed.fresh) - len(listed.held),
        warnings=found.warnings,
        notes=notes,
        server_url=server_url,
    )


@transaction.atomic
def rest_tool_save(
    *,
    server: McpServer,
    definition: dict[str, Any],
    rest: RestCall,
    tool: McpTool | None = None,
) -> McpTool:
    """Define a REST tool of ``server`` by hand (``tool`` None), or edit ``tool``.

    The admin writing it is its reviewer: it is pinned and served at once (markers are
    still flagged). Its name is ``definition["name"]`` and does not change on an edit,
    since apps' allow-lists name tools. Raises ``ValidationError`` for a tool that could
    not work (see ``catalog.openapi.rest_tool_problems``).
    """
    if not server.is_rest:
        raise ValidationError("Tools are defined by hand on a REST service's server only.")
    name = str(definition.get("name", ""))
    if tool is None:
        tool = McpTool(server=server, name=name)
    elif tool.server_id != server.pk or tool.name != name:
        raise ValidationError("A tool keeps its server and its name.")
    created = tool.pk is None
    now = timezone.now()
    call = rest_call_to_json(rest)
    pinned = (tool.pinned_definition, tool.pinned_rest)
    if not created and tool.pinned_definition is not None and pinned != (definition, call):
        tool.changed_at = now
    tool.discovered_definition, tool.rest = definition, call
    _pin(tool, now)
    tool.flags = [finding.as_json() for finding in scan_tool(definition)]
    tool.full_clean()
    tool.save()
    audit.record(
        "mcp_tool.define" if created else "mcp_tool.edit",
        tool,
        server=server.pk,
        flagged=bool(tool.flags),
    )
    product_refresh_search_document(product=server.product)
    gateway_changed()
    return tool


# Agents -----------------------------------------------------------------------------------

# An agent's targets in their order, with the upstream that says what each one is.
_TARGETS = Prefetch(
    "targets",
    queryset=AgentTarget.objects.select_related("upstream").order_by("position", "pk"),
)


@transaction.atomic
def agent_create(
    *,
    product: Product,
    affinity: str = Agent.Affinity.NONE,
    requests_per_minute: int | None = None,
    health_check_seconds: float = 30.0,
    skills: Sequence[Mapping[str, Any]] = (),
) -> Agent:
    """Make ``product`` (of kind agent) an agent; its targets come with
    :func:`agent_target_add`. ``skills`` are those of the card made for REST agents."""
    agent = Agent(
        product=product,
        affinity=affinity,
        requests_per_minute=requests_per_minute,
        health_check_seconds=health_check_seconds,
        skills=[dict(skill) for skill in skills],
    )
    agent.full_clean()
    agent.save()
    audit.record("agent.create", agent, product=product.pk)
    product_refresh_search_document(product=product)
    gateway_changed()
    return agent


@transaction.atomic
def agent_target_add(
    *,
    agent: Agent,
    upstream: Upstream,
    name: str = "",
    weight: int = 1,
    position: int | None = None,
    rest: Mapping[str, Any] | None = None,
) -> AgentTarget:
    """Add a version of ``agent`` (last, unless ``position``); an A2A agent's card is
    fetched (a REST agent probed) after commit, and the gateway learns it then."""
    if position is None:
        position = AgentTarget.objects.filter(agent=agent).count()
    target = AgentTarget(
        agent=agent,
        upstream=upstream,
        name=name,
        weight=weight,
        position=position,
        rest=None if rest is None else dict(rest),
    )
    target.full_clean()
    target.save()
    audit.record("agent.target_add", agent, target_id=target.pk, upstream=upstream.pk)
    gateway_changed()
    agents_schedule_refresh(agents=[agent])
    return target


def agents_schedule_refresh(*, agents: Iterable[Agent]) -> None:
    """Refresh ``agents`` (:func:`agent_refresh`) in the background once the current
    transaction commits."""
    from catalog.tasks import agent_refresh_task

    for pk in dict.fromkeys(agent.pk for agent in agents):
        transaction.on_commit(partial(agent_refresh_task.delay, pk))


def agent_target_refresh(*, target: AgentTarget) -> None:
    """Check one target now and record what was found: its health, and for an A2A
    agent its card (see ``catalog.agent_cards``).

    A card that cannot be fetched or used (unreachable, refused, not JSON, not a card,
    no JSON-RPC interface in a version Portico speaks, over 256 KiB...) makes the target
    unhealthy with the reason in ``last_error``; the card fetched before stays, and
    keeps being served: an agent down for a while must not lose its card. Never raises
    for a bad agent. Blocks for up to the upstream's timeout (at most 30 seconds), in
    no transaction: nothing is held while waiting on an agent.
    """
    # Imported here: the A2A SDK takes a while to import, which only this should pay.
    from catalog.agent_cards import AgentEndpoint, CardError, fetch_card, probe

    upstream = target.upstream
    endpoint = AgentEndpoint(
        url=upstream.base_url,
        options=dict(upstream.options),
        secret=decrypt_secret(upstream.secret_ciphertext) if upstream.has_secret else None,
        egress=egress_policy(),
    )
    now = timezone.now()
    values: dict[str, Any] = {"last_checked_at": now}
    try:
        if target.is_rest:
            probe(endpoint, seconds=upstream.timeout_seconds)
        else:
            fetched = fetch_card(endpoint, seconds=upstream.timeout_seconds)
            values.update(
                card=fetched.card,
                interface_url=fetched.interface_url,
                protocol_version=fetched.protocol_version,
                streaming=fetched.streaming,
                card_fetched_at=now,
            )
    except CardError as exc:
        values.update(health=AgentTarget.Health.UNHEALTHY, last_error=str(exc))
    except Exception as exc:  # a bug here must not stop the other targets' checks
        logger.exception("Checking agent target %s failed", target.pk)
        values.update(
            health=AgentTarget.Health.UNHEALTHY,
            last_error=f"The check failed unexpectedly ({type(exc).__name__}); see the logs.",
        )
    else:
        values.update(health=AgentTarget.Health.HEALTHY, last_error="")
    for name, value in values.items():
        setattr(target, name, value)
    # An update, not a save: a target deleted meanwhile stays deleted.
    AgentTarget.objects.filter(pk=target.pk).update(**values)


def agent_refresh(*, agent: Agent) -> None:
    """Check every target of ``agent`` (:func:`agent_target_refresh`), then publish a
    revision if what the gateway serves changed (a card, an interface), and refresh the
    product's search document with the card's skills."""
    before = _agent_served_state(agent)
    for target in AgentTarget.objects.filter(agent=agent).select_related("upstream"):
        agent_target_refresh(target=target)
    if _agent_served_state(agent) != before:
        with transaction.atomic():
            product_refresh_search_document(product=agent.product)
            gateway_changed()


def _agent_served_state(agent: Agent) -> tuple[Any, ...]:
    """What of ``agent`` a refresh may change and the gateway serves, from the database."""
    targets = list(
        AgentTarget.objects.filter(agent=agent)
        .select_related("upstream")
        .order_by("position", "pk")
    )
    return (
        served_card(agent, targets),
        [(t.pk, t.interface_url, t.protocol_version, t.streaming) for t in targets],
    )
