"""Celery tasks for the catalog: thin, taking ids."""

from __future__ import annotations

from celery import shared_task

from catalog import services
from catalog.models import Agent, McpServer, Product
from gateway.schema import REST_VENDOR


@shared_task(name="catalog.mcp_server_discover")
def mcp_server_discover_task(server_id: int) -> None:
    """List what an MCP server offers and apply the pinning rules (catalog.services)."""
    server = McpServer.objects.select_related("upstream", "product").filter(pk=server_id).first()
    # Deleted since it was queued, or a REST service's (imported, never discovered).
    if server is not None and not server.is_rest:
        services.mcp_server_discover(server=server)


@shared_task(name="catalog.mcp_servers_refresh")
def mcp_servers_refresh_task() -> int:
    """Beat's periodic look at every hosted MCP server that may be served, one task each,
    so a slow or unreachable server delays no other. A changed tool is caught here.
    (A REST service's tools change only when an admin imports or edits them.)"""
    ids = list(
        McpServer.objects.exclude(product__status=Product.Status.RETIRED)
        .exclude(upstream__vendor=REST_VENDOR)
        .values_list("pk", flat=True)
    )
    for pk in ids:
        mcp_server_discover_task.delay(pk)
    return len(ids)


@shared_task(name="catalog.agent_refresh")
def agent_refresh_task(agent_id: int) -> None:
    """Fetch an agent's cards and probe its REST targets (catalog.services)."""
    agent = Agent.objects.select_related("product").filter(pk=agent_id).first()
    if agent is not None:  # deleted since it was queued
        services.agent_refresh(agent=agent)


@shared_task(name="catalog.agents_refresh")
def agents_refresh_task() -> int:
    """Beat's periodic look at every agent that may be served, one task each, so a slow
    or unreachable agent delays no other. A changed card is served from then on."""
    ids = list(
        Agent.objects.exclude(product__status=Product.Status.RETIRED).values_list("pk", flat=True)
    )
    for pk in ids:
        agent_refresh_task.delay(pk)
    return len(ids)
