"""The playground's MCP tab in a real browser, against the real processes and the demo
MCP server of ``make run`` (devstack/demo_mcp.py): from a product page's "Try in the
playground" to a tool's result, and the live list of tools."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from catalog import services as catalog_services
from catalog.models import McpServer, Upstream
from consumers import services as consumer_services
from devstack.portico import Ports, start_demo_mcp
from devstack.procs import free_port
from portal.models import Membership
from tests.conftest import make_catalog
from tests.e2e.conftest import UPSTREAM_KEY, E2EStack, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long and private passphrase 42"
DEMO_MCP_KEY = "demo-mcp-e2e-" + "k" * 24


@pytest.fixture(scope="module")
def demo_mcp(e2e_stack: E2EStack) -> Iterator[str]:
    """The demo MCP server on a free port, behind a backend credential."""
    ports = Ports(demo_mcp=free_port())
    start_demo_mcp(e2e_stack.stack, ports, require_key=DEMO_MCP_KEY)
    try:
        yield ports.demo_mcp_url
    finally:
        e2e_stack.stack.services.pop("demo-mcp").stop()


def sign_in(page: Page, portal_url: str, email: str) -> None:
    page.goto(f"{portal_url}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form button[type=submit]").last.click()
    expect(page).not_to_have_url(re.compile(r"/accounts/login/"))


def test_a_developer_calls_a_demo_tool_from_the_product_page(
    e2e_stack: E2EStack, demo_mcp: str, page: Page, artifacts: Path
):
    catalog = make_catalog(base_url=e2e_stack.mock_llm_url, slug="mcp-e2e", secret=UPSTREAM_KEY)
    upstream = catalog_services.upstream_create(
        name="demo-mcp-e2e",
        vendor=Upstream.Vendor.MCP,
        base_url=demo_mcp,
        secret=DEMO_MCP_KEY,
        options={"auth": "bearer"},
        timeout_seconds=10,
    )
    product = catalog_services.product_create(name="Demo Tools", slug="demo-tools-e2e", kind="mcp")
    plan = catalog_services.plan_create(product=product, name="Free", requests_per_minute=600)
    catalog_services.product_publish(product=product, portals=[catalog.portal])
    # The Celery worker discovers the server once it is created, as in production.
    server = catalog_services.mcp_server_create(product=product, upstream=upstream)
    eventually(
        lambda: McpServer.objects.filter(pk=server.pk, last_discovered_at__isnull=False).exists(),
        "the worker to discover the demo MCP server",
    )
    server.refresh_from_db()
    assert server.last_error == ""
    catalog_services.mcp_server_approve(server=server)

    developer = User.objects.create_user("lin", "lin@example.com", PASSWORD)
    EmailAddress.objects.create(user=developer, email=developer.email, verified=True, primary=True)
    Membership.objects.create(portal=catalog.portal, user=developer, status="approved")
    app = consumer_services.consumer_create(owner=developer, name="Lin's app")
    subscription = consumer_services.subscription_create(consumer=app, product=product, plan=plan)
    consumer_services.subscription_approve(subscription=subscription)

    portal_url = e2e_stack.ports.portal_url
    sign_in(page, portal_url, developer.email)
    page.goto(f"{portal_url}/products/{product.slug}/")
    page.get_by_role("link", name="Try in the playground").click()
    expect(page).to_have_url(re.compile(r"/playground/mcp/\?product=demo-tools-e2e$"))
    tools = page.locator("#mcp-tools")
    expect(tools).to_contain_text("get_weather")
    expect(tools).to_contain_text("convert_currency")

    # Picking a tool swaps in its form (htmx) and puts the choice in the address.
    tools.get_by_role("link", name="get_weather").click()
    expect(page).to_have_url(re.compile(r"tool=get_weather"))
    page.locator("#mcp-tool input[name=arg0]").fill("Lisbon")
    page.get_by_role("button", name="Call get_weather").click()
    # The first call waits for the new Playground key to reach the gateway.
    result = page.locator("#mcp-result")
    expect(result).to_contain_text("structuredContent", timeout=30_000)
    expect(result.locator(".badge")).to_have_text("ok")
    expect(page.locator("#mcp-structured")).to_contain_text('"city": "Lisbon"')
    expect(page.locator("#mcp-request-id")).not_to_be_empty()
    expect(page.locator("#mcp-latency")).to_contain_text(" ms")
    page.screenshot(path=artifacts / "09-mcp-playground.png", full_page=True)

    page.get_by_role("button", name="List tools (live)").click()
    live = page.locator("#mcp-live-tools")
    expect(live).to_contain_text("convert_currency")
    expect(live).to_contain_text("get_weather")

    # A refused call is explained in place: htmx swaps in the 400 answer too.
    page.locator("#mcp-tool details.mcp-raw summary").click()
    page.locator("#mcp-tool textarea[name=raw]").fill("[1, 2]")
    page.get_by_role("button", name="Call get_weather").click()
    expect(result).to_contain_text("The raw arguments must be a JSON object")
