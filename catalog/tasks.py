"""Celery tasks for the catalog: thin, taking ids."""

from __future__ import annotations

from celery import shared_task

from catalog import services
from catalog.models import McpServer, Product
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
