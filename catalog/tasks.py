"""Celery tasks for the catalog: thin, taking ids."""

from __future__ import annotations

from celery import shared_task

from catalog import services
from catalog.models import McpServer, Product


@shared_task(name="catalog.mcp_server_discover")
def mcp_server_discover_task(server_id: int) -> None:
    """List what an MCP server offers and apply the pinning rules (catalog.services)."""
    server = McpServer.objects.select_related("upstream", "product").filter(pk=server_id).first()
    if server is not None:  # deleted since it was queued
        services.mcp_server_discover(server=server)


@shared_task(name="catalog.mcp_servers_refresh")
def mcp_servers_refresh_task() -> int:
    """Beat's periodic look at every MCP server that may be served, one task each, so a
    slow or unreachable server delays no other. A changed tool is caught here."""
    ids = list(
        McpServer.objects.exclude(product__status=Product.Status.RETIRED).values_list(
            "pk", flat=True
        )
    )
    for pk in ids:
        mcp_server_discover_task.delay(pk)
    return len(ids)
