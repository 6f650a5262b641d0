"""An MCP client that speaks only OAuth connects, with the official ``mcp`` SDK's
``OAuthClientProvider``, against the real processes: the gateway answers 401 and
publishes its protected resource metadata, the SDK discovers the portal as the
authorization server, registers itself, sends the developer to the consent page, swaps
the code for tokens and calls the tools. The developer (driven over HTTP with the
allauth session, as a browser would) signs in and approves; disconnecting the client
on the portal then stops its token at the gateway.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import httpx2
import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

from catalog import services as catalog_services
from catalog.models import Product, Upstream
from consumers import services as consumer_services
from devstack.portico import Ports, start_demo_mcp
from devstack.procs import free_port
from oauth.models import OAuthGrant
from portal.models import Membership
from tests.conftest import make_catalog
from tests.e2e.conftest import E2EStack, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long and private passphrase 42"
# Never listened on: the redirect handler below plays the browser and stops at it.
CALLBACK = "http://127.0.0.1:1/callback"


@pytest.fixture(scope="module")
def oauth_stack(e2e_stack: E2EStack) -> Iterator[E2EStack]:
    """The shared stack (whose portal is the OAuth issuer) with a demo MCP server."""
    assert e2e_stack.env["PORTICO_PORTAL_URL"] == e2e_stack.ports.portal_url
    ports = Ports(demo_mcp=free_port())
    service = start_demo_mcp(e2e_stack.stack, ports)
    e2e_stack.env["DEMO_MCP_URL"] = ports.demo_mcp_url
    try:
        yield e2e_stack
    finally:
        service.stop()
        e2e_stack.stack.services.pop(service.name, None)


class MemoryStorage:
    """The SDK's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def _form_fields(page: str) -> dict[str, str]:
    """The hidden inputs of the consent form, and the first app offered."""
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }
    app = re.search(r'<input type="radio" name="consumer" value="(\d+)"', page)
    assert app is not None, "the consent page offers no app"
    fields["consumer"] = app.group(1)
    return fields


class Developer:
    """A developer at the portal in a browser-like HTTP client (session and CSRF
    cookies), who signs in and answers consent pages."""

    def __init__(self, portal_url: str, email: str) -> None:
        self.portal_url = portal_url
        self.email = email
        self.http = httpx.Client(base_url=portal_url, timeout=30)
        self.consent_pages: list[str] = []

    def __enter__(self) -> Developer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _csrf(self, page: httpx.Response) -> str:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert token is not None, page.text
        return token.group(1)

    def sign_in(self) -> None:
        page = self.http.get("/accounts/login/")
        response = self.http.post(
            "/accounts/login/",
            data={
                "login": self.email,
                "password": PASSWORD,
                "csrfmiddlewaretoken": self._csrf(page),
            },
        )
        assert response.status_code == 302, response.text

    def approve(self, authorization_url: str) -> AuthorizationCodeResult:
        assert authorization_url.startswith(self.portal_url + "/oauth/authorize?")
        page = self.http.get(authorization_url)
        if page.status_code == 302:  # not signed in yet: the portal asks first
            assert "/accounts/login/" in page.headers["location"]
            self.sign_in()
            page = self.http.get(authorization_url)
        assert page.status_code == 200, page.text
        self.consent_pages.append(page.text)
        answer = self.http.post(
            "/oauth/authorize/decide",
            data={
                **_form_fields(page.text),
                "decision": "approve",
                "csrfmiddlewaretoken": self._csrf(page),
            },
        )
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert location.startswith(CALLBACK + "?")
        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        return AuthorizationCodeResult(
            code=query["code"], state=query.get("state"), iss=query.get("iss")
        )

    def disconnect(self, grant: OAuthGrant) -> None:
        page = self.http.get("/tokens/")
        response = self.http.post(
            f"/oauth/grants/{grant.pk}/revoke/", data={"csrfmiddlewaretoken": self._csrf(page)}
        )
        assert response.status_code == 302


def sdk_provider(
    endpoint: str, developer: Developer, storage: MemoryStorage
) -> OAuthClientProvider:
    """The official provider, its browser step played by ``developer``."""
    results: asyncio.Queue[AuthorizationCodeResult] = asyncio.Queue()

    async def redirect_handler(authorization_url: str) -> None:
        # The "browser" blocks; the SDK's event loop must not.
        await results.put(await asyncio.to_thread(developer.approve, authorization_url))

    async def callback_handler() -> AuthorizationCodeResult:
        return await results.get()

    return OAuthClientProvider(
        server_url=endpoint,
        client_metadata=OAuthClientMetadata(
            client_name="Portico e2e agent",
            redirect_uris=[AnyUrl(CALLBACK)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )


async def list_tools(endpoint: str, provider: OAuthClientProvider) -> list[str]:
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(endpoint, http_client=http)) as client,
    ):
        listed = await client.list_tools()
        return sorted(tool.name for tool in listed.tools)


def gateway_status(endpoint: str, access_token: str) -> int:
    """What the gateway answers an ``initialize`` with this bearer token."""
    response = httpx.post(
        endpoint,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "probe", "version": "1"},
            },
        },
        headers={
            "Authorization": f"Bearer {access_token}",
            "Accept": "application/json, text/event-stream",
        },
        timeout=10,
    )
    return response.status_code


def test_the_official_sdk_client_connects_over_oauth(oauth_stack: E2EStack):
    portal_url = oauth_stack.ports.portal_url
    gateway_url = oauth_stack.ports.gateway_url
    catalog = make_catalog(base_url=oauth_stack.mock_llm_url, slug="oauth-models")
    upstream = catalog_services.upstream_create(
        name="demo-mcp-oauth", vendor=Upstream.Vendor.MCP, base_url=oauth_stack.env["DEMO_MCP_URL"]
    )
    product = catalog_services.product_create(
        name="Travel tools", slug="travel", kind=Product.Kind.MCP
    )
    catalog_services.plan_create(product=product, name="Free", requests_per_minute=600)
    catalog_services.product_publish(product=product, portals=[catalog.portal])
    server = catalog_services.mcp_server_create(product=product, upstream=upstream)
    server = catalog_services.mcp_server_discover(server=server)
    catalog_services.mcp_server_approve(server=server)

    developer_user = User.objects.create_user("ines", "ines@example.com", PASSWORD)
    EmailAddress.objects.create(
        user=developer_user, email="ines@example.com", verified=True, primary=True
    )
    Membership.objects.create(portal=catalog.portal, user=developer_user, status="approved")
    app = consumer_services.consumer_create(owner=developer_user, name="Ines's agent")
    sub = consumer_services.subscription_create(
        consumer=app, product=product, plan=product.plans.get()
    )
    consumer_services.subscription_approve(subscription=sub)

    endpoint = f"{gateway_url}/mcp/travel"

    def gateway_knows_the_issuer() -> bool:
        metadata = httpx.get(
            f"{gateway_url}/.well-known/oauth-protected-resource/mcp/travel", timeout=5
        )
        return metadata.status_code == 200 and metadata.json().get("authorization_servers") == [
            portal_url
        ]

    eventually(gateway_knows_the_issuer, "the gateway to publish the product's OAuth metadata")

    with Developer(portal_url, "ines@example.com") as developer:
        storage = MemoryStorage()
        provider = sdk_provider(endpoint, developer, storage)
        tools = asyncio.run(list_tools(endpoint, provider))

        assert tools == ["convert_currency", "get_weather"]
        assert len(developer.consent_pages) == 1
        consent = developer.consent_pages[0]
        for expected in ("Portico e2e agent", "Travel tools", "get_weather", "Ines&#x27;s agent"):
            assert expected in consent
        grant = OAuthGrant.objects.select_related("client").get()
        assert grant.consumer == app
        assert grant.resource == endpoint
        assert grant.client.client_name == "Portico e2e agent"
        assert storage.tokens is not None
        access_token = storage.tokens.access_token
        assert gateway_status(endpoint, access_token) == 200
        # The token is for this endpoint only, not for the aggregate one.
        assert gateway_status(f"{gateway_url}/mcp", access_token) == 401

        # The developer disconnects the client on the portal: the token stops at the
        # gateway once the revision listing the revoked grant is applied.
        developer.disconnect(grant)
        eventually(
            lambda: gateway_status(endpoint, access_token) == 401,
            "the gateway to refuse the revoked grant's token",
        )
