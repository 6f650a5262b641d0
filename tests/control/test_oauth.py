"""The portal as the OAuth 2.1 authorization server of the gateway's MCP endpoints:
metadata, dynamic client registration, the consent page, the token and revocation
endpoints, the developer's connections, and what the revision tells the gateways.

Everything goes through the HTTP interface with Django's test client, as an MCP client
and a developer's browser would; access tokens are checked with the gateway's own
``gateway.access_tokens.verify``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog import services as catalog_services
from catalog.mcp_discovery import Discovery
from catalog.models import Product, Upstream
from consumers import services as consumer_services
from consumers.models import Consumer, Subscription
from gateway import access_tokens
from gateway.access_tokens import TokenError
from gatewaysync import compiler
from gatewaysync import services as sync_services
from gatewaysync.models import PendingChange
from oauth import services as oauth_services
from oauth.models import AuthorizationCode, OAuthClient, OAuthGrant, RefreshToken
from portal.models import AuditEvent, Membership
from tests.conftest import Catalog, make_catalog

PORTAL = "https://portal.example.test"
GATEWAY = "https://gateway.example.test"
REDIRECT = "http://127.0.0.1:33418/callback"
FORM = "application/x-www-form-urlencoded"
CALC = f"{GATEWAY}/mcp/calc"


@pytest.fixture(autouse=True)
def _public_urls(settings):
    settings.PORTICO_PORTAL_URL = PORTAL
    settings.PORTICO_GATEWAY_PUBLIC_URL = GATEWAY
    # Registration and failure counters live in the cache: each test starts afresh.
    cache.clear()
    yield
    cache.clear()


# A world with MCP products ----------------------------------------------------------------


def mcp_product(catalog: Catalog, slug: str, tools: dict[str, str]) -> Product:
    """A published MCP product whose server was discovered with ``tools`` (name →
    description) and approved, so they are served."""
    upstream = catalog_services.upstream_create(
        name=f"mcp-{slug}", vendor=Upstream.Vendor.MCP, base_url="http://127.0.0.1:9/mcp"
    )
    product = catalog_services.product_create(name=slug.title(), slug=slug, kind=Product.Kind.MCP)
    catalog_services.plan_create(product=product, name="Free", requests_per_minute=60)
    catalog_services.product_publish(product=product, portals=[catalog.portal])
    server = catalog_services.mcp_server_create(product=product, upstream=upstream)
    definitions = [
        {"name": name, "description": text, "inputSchema": {"type": "object"}}
        for name, text in tools.items()
    ]
    discovery = Discovery("2025-11-25", slug, "1", "", definitions, [], [], [], [])
    catalog_services.mcp_server_record_discovery(server=server, discovery=discovery)
    catalog_services.mcp_server_approve(server=server)
    return product


def subscribe(app: Consumer, product: Product) -> Subscription:
    sub = consumer_services.subscription_create(
        consumer=app, product=product, plan=product.plans.get()
    )
    return consumer_services.subscription_approve(subscription=sub)


@dataclass
class McpWorld:
    catalog: Catalog  # with the model product "chat"
    calc: Product  # tools add, echo
    notes: Product  # tool write
    app: Consumer  # the owner's, subscribed to calc and notes
    idle_app: Consumer  # the owner's, subscribed to nothing
    rival_app: Consumer  # the outsider's, subscribed to calc


@pytest.fixture
def world(owner: User, outsider: User) -> McpWorld:
    catalog = make_catalog()
    for user in (owner, outsider):
        Membership.objects.create(portal=catalog.portal, user=user, status="approved")
    calc = mcp_product(catalog, "calc", {"add": "Add two numbers.", "echo": "Echo the text."})
    notes = mcp_product(catalog, "notes", {"write": "Write a note."})
    app = consumer_services.consumer_create(owner=owner, name="alice-app")
    subscribe(app, calc)
    subscribe(app, notes)
    idle = consumer_services.consumer_create(owner=owner, name="alice-idle")
    rival = consumer_services.consumer_create(owner=outsider, name="mallory-app")
    subscribe(rival, calc)
    return McpWorld(catalog, calc, notes, app, idle, rival)


# The protocol, as a client speaks it -------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def register(client: Client, **metadata: Any) -> Any:
    body = {"client_name": "Test client", "redirect_uris": [REDIRECT], **metadata}
    return client.post(reverse("oauth:register"), json.dumps(body), content_type="application/json")


def registered(client: Client, **metadata: Any) -> str:
    response = register(client, **metadata)
    assert response.status_code == 201, response.content
    return response.json()["client_id"]


def auth_params(client_id: str, challenge: str, **overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "state": "state-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": CALC,
        "scope": "mcp",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def decide(client: Client, params: dict[str, str], consumer: Consumer, decision="approve") -> Any:
    return client.post(
        reverse("oauth:authorize_decide"),
        {**params, "consumer": str(consumer.pk), "decision": decision},
    )


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def token(client: Client, **data: str) -> Any:
    return client.post(reverse("oauth:token"), urlencode(data), content_type=FORM)


@dataclass
class Authorized:
    client_id: str
    verifier: str
    code: str
    params: dict[str, str]


def authorize(
    browser: Client, consumer: Consumer, *, client_id: str | None = None, **overrides: str
) -> Authorized:
    """Register (unless given a client), approve as ``consumer`` in ``browser`` (signed in
    as its owner), and return the code the client received."""
    client_id = client_id or registered(Client())
    verifier, challenge = pkce()
    params = auth_params(client_id, challenge, **overrides)
    page = browser.get(reverse("oauth:authorize"), params)
    assert page.status_code == 200, page.content.decode()
    response = decide(browser, params, consumer)
    assert response.status_code == 302
    assert response["Location"].startswith(REDIRECT + "?")
    got = query_of(response["Location"])
    assert got["state"] == params["state"]
    return Authorized(client_id, verifier, got["code"], params)


def exchange(auth: Authorized, **overrides: str) -> Any:
    data = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT,
        "client_id": auth.client_id,
        "code_verifier": auth.verifier,
        "resource": auth.params.get("resource", CALC),
        **overrides,
    }
    return token(Client(), **{k: v for k, v in data.items() if v is not None})


def refresh(client_id: str, refresh_token: str, **overrides: str) -> Any:
    data = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": client_id,
        **overrides,
    }
    return token(Client(), **data)


def verify(access: str, audience: str = CALC) -> access_tokens.AccessToken:
    return access_tokens.verify(
        compiler.gateway_keys().token_key, access, audience=audience, now=time.time()
    )


@pytest.fixture
def browser(owner: User) -> Client:
    client = Client()
    client.force_login(owner)
    return client


# Metadata ----------------------------------------------------------------------------------


def test_metadata_names_the_endpoints_and_what_they_support(client, db):
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == PORTAL
    assert meta["authorization_endpoint"] == f"{PORTAL}/oauth/authorize"
    assert meta["token_endpoint"] == f"{PORTAL}/oauth/token"
    assert meta["registration_endpoint"] == f"{PORTAL}/oauth/register"
    assert meta["revocation_endpoint"] == f"{PORTAL}/oauth/revoke"
    assert meta["response_types_supported"] == ["code"]
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["token_endpoint_auth_methods_supported"] == ["none"]
    assert meta["scopes_supported"] == ["mcp"]
    assert response["Access-Control-Allow-Origin"] == "*"


def test_browser_clients_may_call_the_protocol_endpoints_cross_origin(client, db):
    for url in ("/.well-known/oauth-authorization-server", "/oauth/token", "/oauth/register"):
        response = client.options(url, HTTP_ORIGIN="https://inspector.example")
        assert response.status_code == 204, url
        assert response["Access-Control-Allow-Origin"] == "*"
        assert "MCP-Protocol-Version" in response["Access-Control-Allow-Headers"]
        assert "Access-Control-Allow-Credentials" not in response


# Dynamic client registration ---------------------------------------------------------------


def test_registration_makes_a_public_client(client, db):
    response = register(
        client,
        client_name="Claude",
        token_endpoint_auth_method="client_secret_basic",
        grant_types=["authorization_code", "refresh_token"],
        scope="mcp",
        logo_uri="https://tracker.example/pixel.png",
    )
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    assert body["redirect_uris"] == [REDIRECT]
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["response_types"] == ["code"]
    row = OAuthClient.objects.get(client_id=body["client_id"])
    assert row.client_name == "Claude"
    assert row.registered_from == "127.0.0.1"
    assert len(body["client_id"]) >= 32


@pytest.mark.parametrize(
    "uri",
    [
        "http://example.com/callback",  # plain http off the machine
        "http://127.0.0.1.example.com/cb",
        "javascript:alert(1)",
        "myapp://callback",
        "https://app.example/cb#fragment",
        "https://user:pw@app.example/cb",
        "https:///nohost",
        "https://app.example/cb with space",
        "",
        42,
    ],
)
def test_registration_refuses_unsafe_redirect_uris(client, db, uri):
    response = register(client, redirect_uris=[REDIRECT, uri])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_redirect_uri"
    assert not OAuthClient.objects.exists()


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example/oauth/callback?x=1",
        "http://localhost:5173/cb",
        "http://127.0.0.1/cb",
        "http://[::1]:8123/cb",
    ],
)
def test_registration_accepts_https_and_loopback_http(client, db, uri):
    assert register(client, redirect_uris=[uri]).status_code == 201


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": [f"https://a.example/{i}" for i in range(11)]}, "invalid_redirect_uri"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"grant_types": ["refresh_token"]}, "invalid_client_metadata"),
        ({"response_types": ["token"]}, "invalid_client_metadata"),
        ({"scope": "admin"}, "invalid_client_metadata"),
        ({"client_name": "x" * 121}, "invalid_client_metadata"),
        ({"client_name": "x" * 20_000}, "invalid_client_metadata"),
    ],
)
def test_registration_validates_its_metadata(client, db, metadata, error):
    response = register(client, **metadata)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["error_description"]


def test_registration_of_something_else_than_a_json_object_is_refused(client, db):
    for body in ("not json", "[1, 2]"):
        response = client.post("/oauth/register", body, content_type="application/json")
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_client_metadata"


def test_registrations_are_capped_per_address(client, db):
    for _ in range(20):
        assert register(client).status_code == 201
    refused = register(client)
    assert refused.status_code == 429
    assert OAuthClient.objects.count() == 20
    # Another address is not held back by this one.
    other = Client(REMOTE_ADDR="10.0.0.2")
    assert register(other).status_code == 201


def test_client_names_lose_control_characters(client, db):
    client_id = registered(client, client_name="Evil\u202e\u0007 name\n")
    assert OAuthClient.objects.get(client_id=client_id).client_name == "Evil name"


# The whole flow ----------------------------------------------------------------------------


def test_authorize_consent_token_refresh_revoke(world, browser, owner, caplog):
    caplog.set_level(logging.DEBUG)
    client_id = registered(Client(), client_name="Claude Desktop")
    verifier, challenge = pkce()
    params = auth_params(client_id, challenge)

    page = browser.get(reverse("oauth:authorize"), params)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Claude Desktop" in text
    assert "Calc" in text
    for tool in ("add", "Add two numbers.", "echo", "Echo the text."):
        assert tool in text
    assert "write" not in text  # another product's tool
    assert "127.0.0.1:33418" in text  # where the developer will be sent

    response = decide(browser, params, world.app)
    assert response.status_code == 302
    assert response["Cache-Control"] == "no-store"
    back = query_of(response["Location"])
    assert back["state"] == "state-123"
    assert back["iss"] == PORTAL  # RFC 9207: whose answer this is
    code = back["code"]
    assert code.startswith("portico_oac_")

    tokens = exchange(Authorized(client_id, verifier, code, params))
    assert tokens.status_code == 200, tokens.content
    assert tokens["Cache-Control"] == "no-store"
    body = tokens.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == access_tokens.ACCESS_TOKEN_SECONDS
    assert body["scope"] == "mcp"
    granted = verify(body["access_token"])
    grant = OAuthGrant.objects.get()
    assert (granted.consumer, granted.grant, granted.audience) == (world.app.pk, grant.pk, CALC)
    assert granted.client_id == client_id
    assert grant.user == owner
    assert grant.product == world.calc
    assert grant.used_at is not None

    # Refresh: a new pair, and the old refresh token is spent.
    renewed = refresh(client_id, body["refresh_token"], resource=CALC)
    assert renewed.status_code == 200, renewed.content
    second = renewed.json()
    assert second["refresh_token"] != body["refresh_token"]
    assert verify(second["access_token"]).grant == grant.pk

    # The client disconnects itself (RFC 7009).
    revoked = Client().post(
        reverse("oauth:revoke"),
        urlencode({"token": second["refresh_token"], "client_id": client_id}),
        content_type=FORM,
    )
    assert revoked.status_code == 200
    grant.refresh_from_db()
    assert grant.revoked_at is not None
    assert refresh(client_id, second["refresh_token"]).json()["error"] == "invalid_grant"
    assert grant.pk in compiler.compile_state().oauth.revoked_grants  # type: ignore[union-attr]

    # No secret reached the logs or the database in plaintext.
    stored = json.dumps(
        [
            list(AuthorizationCode.objects.values()),
            list(RefreshToken.objects.values()),
            list(AuditEvent.objects.values("detail", "target_label")),
        ],
        default=str,
    )
    for secret in (
        code,
        verifier,
        body["refresh_token"],
        body["access_token"],
        second["refresh_token"],
        second["access_token"],
    ):
        assert secret not in caplog.text
        assert secret not in stored
    assert {"oauth_grant.approve", "oauth_grant.revoke"} <= set(
        AuditEvent.objects.values_list("action", flat=True)
    )


def test_a_trailing_slash_on_the_resource_names_the_same_endpoint(world, browser):
    auth = authorize(browser, world.app, resource=CALC + "/")
    response = exchange(auth, resource=CALC)
    assert response.status_code == 200
    assert verify(response.json()["access_token"], CALC).consumer == world.app.pk


def test_the_aggregate_endpoint_lists_every_subscribed_product_and_its_tools(world, browser):
    client_id = registered(Client())
    _, challenge = pkce()
    params = auth_params(client_id, challenge, resource=f"{GATEWAY}/mcp")
    text = browser.get(reverse("oauth:authorize"), params).content.decode()
    for expected in ("every MCP server", "Calc", "add", "echo", "Notes", "write"):
        assert expected in text
    auth = authorize(browser, world.app, client_id=client_id, resource=f"{GATEWAY}/mcp")
    response = exchange(auth)
    assert verify(response.json()["access_token"], f"{GATEWAY}/mcp").consumer == world.app.pk
    assert OAuthGrant.objects.get().product is None


def test_the_token_verifies_for_its_endpoint_only(world, browser):
    access = exchange(authorize(browser, world.app)).json()["access_token"]
    assert verify(access, CALC).consumer == world.app.pk
    for other in (f"{GATEWAY}/mcp/notes", f"{GATEWAY}/mcp", "https://elsewhere.example/mcp/calc"):
        with pytest.raises(TokenError):
            verify(access, other)
    with pytest.raises(TokenError):
        access_tokens.verify(b"k" * 32, access, audience=CALC, now=time.time())


def test_deny_returns_access_denied_with_the_state(world, browser):
    client_id = registered(Client())
    _, challenge = pkce()
    params = auth_params(client_id, challenge)
    response = decide(browser, params, world.app, decision="deny")
    assert response.status_code == 302
    back = query_of(response["Location"])
    assert back["error"] == "access_denied"
    assert back["state"] == "state-123"
    assert back["iss"] == PORTAL
    assert "code" not in back
    assert not OAuthGrant.objects.exists()


# The consent page --------------------------------------------------------------------------


def test_anonymous_visitors_sign_in_first_and_come_back(world, client):
    params = auth_params(registered(Client()), pkce()[1])
    response = client.get(reverse("oauth:authorize"), params)
    assert response.status_code == 302
    login = urlsplit(response["Location"])
    assert login.path == reverse("account_login")
    back = parse_qs(login.query)["next"][0]
    assert back.startswith(reverse("oauth:authorize") + "?")
    assert query_of(back) == params
    decided = client.post(reverse("oauth:authorize_decide"), {**params, "decision": "approve"})
    assert decided.status_code == 302
    assert urlsplit(decided["Location"]).path == reverse("account_login")
    assert not OAuthGrant.objects.exists()


def test_the_consent_page_cannot_be_framed_or_cached(world, browser):
    params = auth_params(registered(Client()), pkce()[1])
    page = browser.get(reverse("oauth:authorize"), params)
    assert page["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in page["Content-Security-Policy"]
    assert page["Cache-Control"] == "no-store"


def test_the_decision_needs_the_csrf_token(world, owner):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    params = auth_params(registered(Client()), pkce()[1])
    response = decide(browser, params, world.app)
    assert response.status_code == 403
    assert not OAuthGrant.objects.exists()


def test_consent_offers_only_the_developers_own_subscribed_apps(world, browser, outsider):
    params = auth_params(registered(Client()), pkce()[1])
    text = browser.get(reverse("oauth:authorize"), params).content.decode()
    assert "alice-app" in text
    assert "alice-idle" not in text  # not subscribed
    assert "mallory-app" not in text  # someone else's

    for other in (world.idle_app, world.rival_app):
        response = decide(browser, params, other)
        assert response.status_code == 400
        assert "Choose one of your apps" in response.content.decode()
    assert not OAuthGrant.objects.exists()


def test_consent_leaves_out_suspended_apps_and_unapproved_subscriptions(world, browser):
    consumer_services.consumer_set_status(consumer=world.app, status=Consumer.Status.SUSPENDED)
    params = auth_params(registered(Client()), pkce()[1])
    text = browser.get(reverse("oauth:authorize"), params).content.decode()
    assert "alice-app" not in text
    assert "None of your apps can connect" in text


def test_without_a_subscribed_app_the_page_says_how_to_get_one(world, outsider):
    browser = Client()
    browser.force_login(outsider)
    params = auth_params(registered(Client()), pkce()[1], resource=f"{GATEWAY}/mcp/notes")
    page = browser.get(reverse("oauth:authorize"), params)
    text = page.content.decode()
    assert "None of your apps can connect" in text
    assert reverse("portal:product", args=["notes"]) in text
    # Denying still tells the client.
    response = decide(browser, params, world.rival_app, decision="deny")
    assert query_of(response["Location"])["error"] == "access_denied"


def test_a_subscriptions_allow_list_narrows_the_tools_shown(world, browser):
    sub = Subscription.objects.get(consumer=world.app, product=world.calc)
    consumer_services.subscription_set_allowed_tools(subscription=sub, tools=["echo"])
    params = auth_params(registered(Client()), pkce()[1])
    text = browser.get(reverse("oauth:authorize"), params).content.decode()
    assert "<code>echo</code>" in text
    assert "<code>add</code>" not in text
    assert "as your subscription allows" in text


def test_tool_descriptions_are_shown_as_text(world, browser):
    mcp = mcp_product(world.catalog, "html", {"x": "<script>alert(1)</script>"})
    subscribe(world.app, mcp)
    params = auth_params(registered(Client()), pkce()[1], resource=f"{GATEWAY}/mcp/html")
    text = browser.get(reverse("oauth:authorize"), params).content.decode()
    assert "<script>alert(1)" not in text
    assert "&lt;script&gt;alert(1)" in text


def test_consent_page_queries_do_not_grow_with_apps(world, browser, owner):
    params = auth_params(registered(Client()), pkce()[1], resource=f"{GATEWAY}/mcp")
    url = reverse("oauth:authorize")
    with CaptureQueriesContext(connection) as few:
        browser.get(url, params)
    for i in range(5):
        app = consumer_services.consumer_create(owner=owner, name=f"more-{i}")
        subscribe(app, world.calc)
        subscribe(app, world.notes)
    with CaptureQueriesContext(connection) as many:
        text = browser.get(url, params).content.decode()
    assert "more-4" in text
    assert len(many) == len(few)


# Errors at the authorization endpoint ------------------------------------------------------


def test_an_unknown_client_or_redirect_uri_is_shown_never_redirected(world, browser):
    client_id = registered(Client())
    challenge = pkce()[1]
    for params in (
        auth_params("no-such-client", challenge),
        auth_params(client_id, challenge, redirect_uri="https://evil.example/cb"),
        auth_params(client_id, challenge, redirect_uri=REDIRECT + "/"),
        auth_params(client_id, challenge, redirect_uri=None),
    ):
        response = browser.get(reverse("oauth:authorize"), params)
        assert response.status_code == 400
        text = response.content.decode()
        assert "evil.example" not in text
        assert "cannot go ahead" in text
        response = decide(browser, params, world.app)
        assert response.status_code == 400
    assert not OAuthGrant.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"scope": "mcp admin"}, "invalid_scope"),
        ({"resource": None}, "invalid_target"),
        ({"resource": f"{GATEWAY}/mcp/nope"}, "invalid_target"),  # no such product
        ({"resource": f"{GATEWAY}/mcp/chat"}, "invalid_target"),  # a model product
        ({"resource": f"{GATEWAY}/mcp/draft"}, "invalid_target"),  # not published
        ({"resource": "https://evil.example/mcp/calc"}, "invalid_target"),  # another host
        ({"resource": "http://gateway.example.test/mcp/calc"}, "invalid_target"),
        ({"resource": f"{GATEWAY}/mcp/calc?x=1"}, "invalid_target"),
        ({"resource": f"{GATEWAY}/mcp/calc#f"}, "invalid_target"),
        ({"resource": f"{GATEWAY}/v1/chat/completions"}, "invalid_target"),
        ({"resource": f"{GATEWAY}/mcp/calc/extra"}, "invalid_target"),
    ],
)
def test_bad_requests_of_a_known_client_offer_the_error_to_take_back(
    world, browser, overrides, error
):
    catalog_services.product_create(name="Draft", slug="draft", kind=Product.Kind.MCP)
    params = auth_params(registered(Client()), pkce()[1], **overrides)
    response = browser.get(reverse("oauth:authorize"), params)
    # Not an automatic redirect: anyone may register a client with any https redirect
    # URI, so the developer is shown the error and a link back.
    assert response.status_code == 400
    links = [
        part.split('"', 1)[0].replace("&amp;", "&")
        for part in response.content.decode().split('href="')[1:]
    ]
    back = next(url for url in links if url.startswith(REDIRECT))
    assert query_of(back)["error"] == error
    assert query_of(back)["state"] == "state-123"
    assert "error_description" in query_of(back)
    assert decide(browser, params, world.app).status_code == 400
    assert not OAuthGrant.objects.exists()


def test_repeated_parameters_are_refused(world, browser):
    params = auth_params(registered(Client()), pkce()[1])
    query = urlencode(params) + "&resource=" + f"{GATEWAY}/mcp/notes"
    response = browser.get(reverse("oauth:authorize") + "?" + query)
    assert response.status_code == 400
    assert "resource parameter is repeated" in response.content.decode()


# The token endpoint ------------------------------------------------------------------------


def test_a_wrong_code_verifier_is_refused_and_uses_the_code_up(world, browser):
    auth = authorize(browser, world.app)
    response = exchange(auth, code_verifier=pkce()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "PKCE" in response.json()["error_description"]
    # The right verifier is too late now: the code is spent.
    assert exchange(auth).json()["error"] == "invalid_grant"


@pytest.mark.parametrize("verifier", ["", "short", "x" * 129, "bad verifier " * 4])
def test_malformed_verifiers_are_refused(world, browser, verifier):
    auth = authorize(browser, world.app)
    response = exchange(auth, code_verifier=verifier)
    assert response.status_code == 400
    assert response.json()["error"] in {"invalid_grant", "invalid_request"}


def test_the_redirect_uri_must_match_the_authorization_requests(world, browser):
    auth = authorize(browser, world.app)
    response = exchange(auth, redirect_uri="http://127.0.0.1:33418/other")
    assert response.json()["error"] == "invalid_grant"
    assert "redirect_uri" in response.json()["error_description"]


def test_the_resource_must_match_the_grants(world, browser):
    auth = authorize(browser, world.app)
    response = exchange(auth, resource=f"{GATEWAY}/mcp/notes")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_a_code_for_another_client_is_refused(world, browser):
    auth = authorize(browser, world.app)
    other = registered(Client())
    assert exchange(auth, client_id=other).json()["error"] == "invalid_grant"
    # ...and it did not burn the code for its real client.
    assert exchange(auth).status_code == 200


def test_an_expired_code_is_refused(world, browser):
    auth = authorize(browser, world.app)
    AuthorizationCode.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert exchange(auth).json()["error"] == "invalid_grant"


def test_a_reused_code_revokes_the_grant_and_its_tokens(world, browser):
    auth = authorize(browser, world.app)
    first = exchange(auth).json()
    PendingChange.objects.all().delete()
    again = exchange(auth)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    grant = OAuthGrant.objects.get()
    assert grant.revoked_at is not None
    assert "code used twice" in grant.revoked_reason
    assert refresh(auth.client_id, first["refresh_token"]).json()["error"] == "invalid_grant"
    # The gateways learn it in the next revision.
    assert PendingChange.objects.exists()
    assert grant.pk in compiler.compile_state().oauth.revoked_grants  # type: ignore[union-attr]


def test_a_reused_refresh_token_revokes_the_grant(world, browser):
    auth = authorize(browser, world.app)
    first = exchange(auth).json()
    second = refresh(auth.client_id, first["refresh_token"]).json()
    # An attacker (or a confused client) presents the spent token: everything stops,
    # including the token the legitimate holder got in the meantime.
    replay = refresh(auth.client_id, first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert OAuthGrant.objects.get().revoked_at is not None
    assert refresh(auth.client_id, second["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_keeps_the_resource_and_scope_it_was_granted(world, browser):
    auth = authorize(browser, world.app)
    first = exchange(auth).json()
    wider = refresh(auth.client_id, first["refresh_token"], scope="mcp admin")
    assert wider.json()["error"] == "invalid_scope"
    auth = authorize(browser, world.app)
    first = exchange(auth).json()
    other = refresh(auth.client_id, first["refresh_token"], resource=f"{GATEWAY}/mcp/notes")
    assert other.json()["error"] == "invalid_target"


def test_refresh_stops_when_the_app_is_suspended(world, browser):
    auth = authorize(browser, world.app)
    first = exchange(auth).json()
    consumer_services.consumer_set_status(consumer=world.app, status=Consumer.Status.SUSPENDED)
    response = refresh(auth.client_id, first["refresh_token"])
    assert response.json()["error"] == "invalid_grant"
    assert "suspended" in response.json()["error_description"]


def test_refresh_stops_when_the_product_is_retired(world, browser):
    auth = authorize(browser, world.app)
    first = exchange(auth).json()
    catalog_services.product_retire(product=world.calc)
    response = refresh(auth.client_id, first["refresh_token"])
    assert response.json()["error"] == "invalid_grant"
    assert "no longer published" in response.json()["error_description"]


def test_an_expired_refresh_token_is_refused(world, browser):
    auth = authorize(browser, world.app)
    first = exchange(auth).json()
    RefreshToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert refresh(auth.client_id, first["refresh_token"]).json()["error"] == "invalid_grant"


def test_token_requests_must_be_form_posts_without_secrets_in_the_url(world, browser):
    auth = authorize(browser, world.app)
    data = {
        "grant_type": "authorization_code",
        "code": auth.code,
        "redirect_uri": REDIRECT,
        "client_id": auth.client_id,
        "code_verifier": auth.verifier,
    }
    in_url = Client().post(reverse("oauth:token") + "?" + urlencode(data))
    assert in_url.status_code == 400
    assert in_url.json()["error"] == "invalid_request"
    as_json = Client().post(reverse("oauth:token"), data, content_type="application/json")
    assert as_json.json()["error"] == "invalid_request"
    assert Client().get(reverse("oauth:token"), data).status_code == 405
    # None of those used the code up.
    assert exchange(auth).status_code == 200


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        ({"grant_type": "authorization_code", "client_id": "nope"}, 401, "invalid_client"),
        ({"grant_type": "password", "client_id": "{client}"}, 400, "unsupported_grant_type"),
        (
            {"grant_type": "client_credentials", "client_id": "{client}"},
            400,
            "unsupported_grant_type",
        ),
        ({"grant_type": "authorization_code", "client_id": "{client}"}, 400, "invalid_request"),
        ({"grant_type": "refresh_token", "client_id": "{client}"}, 400, "invalid_request"),
        (
            {
                "grant_type": "refresh_token",
                "client_id": "{client}",
                "refresh_token": "portico_ort_x",
            },
            400,
            "invalid_grant",
        ),
    ],
)
def test_token_endpoint_errors_follow_rfc_6749(db, data, status, error):
    client_id = registered(Client())
    response = token(Client(), **{k: v.format(client=client_id) for k, v in data.items()})
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["error_description"]
    assert response["Cache-Control"] == "no-store"


def test_client_secrets_are_not_accepted(db):
    client_id = registered(Client())
    basic = base64.b64encode(f"{client_id}:secret".encode()).decode()
    response = Client().post(
        reverse("oauth:token"),
        urlencode({"grant_type": "refresh_token", "refresh_token": "x", "client_id": client_id}),
        content_type=FORM,
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response["WWW-Authenticate"].startswith("Basic")


def test_failed_token_requests_are_throttled_per_address(db):
    client_id = registered(Client())
    bad = {"grant_type": "refresh_token", "client_id": client_id, "refresh_token": "guess"}
    for _ in range(30):
        assert token(Client(), **bad).status_code == 400
    assert token(Client(), **bad).status_code == 429
    other = Client(REMOTE_ADDR="10.0.0.9")
    response = other.post(reverse("oauth:token"), urlencode(bad), content_type=FORM)
    assert response.status_code == 400


def test_errors_never_echo_the_secrets_presented(world, browser):
    auth = authorize(browser, world.app)
    wrong = pkce()[0]
    for response in (
        exchange(auth, code_verifier=wrong),
        exchange(auth),
        refresh(auth.client_id, "portico_ort_" + "s" * 46),
    ):
        for secret in (auth.code, auth.verifier, wrong, "portico_ort_" + "s" * 46):
            assert secret not in response.content.decode()


# Revocation (RFC 7009) ---------------------------------------------------------------------


def test_revoking_an_access_token_revokes_its_grant(world, browser):
    auth = authorize(browser, world.app)
    tokens = exchange(auth).json()
    response = Client().post(
        reverse("oauth:revoke"),
        urlencode({"token": tokens["access_token"], "client_id": auth.client_id}),
        content_type=FORM,
    )
    assert response.status_code == 200
    assert OAuthGrant.objects.get().revoked_at is not None


def test_revocation_by_another_client_or_of_nonsense_changes_nothing(world, browser):
    auth = authorize(browser, world.app)
    tokens = exchange(auth).json()
    other = registered(Client())
    for value in (tokens["refresh_token"], tokens["access_token"], "nonsense"):
        response = Client().post(
            reverse("oauth:revoke"),
            urlencode({"token": value, "client_id": other}),
            content_type=FORM,
        )
        assert response.status_code == 200
    assert OAuthGrant.objects.get().revoked_at is None
    unknown = Client().post(
        reverse("oauth:revoke"),
        urlencode({"token": tokens["refresh_token"], "client_id": "nope"}),
        content_type=FORM,
    )
    assert unknown.status_code == 401


# The developer's connections ---------------------------------------------------------------


def connected(browser: Client, world: McpWorld) -> OAuthGrant:
    exchange(authorize(browser, world.app))
    return OAuthGrant.objects.get()


@pytest.mark.parametrize(
    ("persona", "expected"),
    [("anonymous", "login"), ("owner", "revoked"), ("outsider", 404), ("staff", "revoked")],
)
def test_only_the_owner_and_admins_can_disconnect_a_client(
    request, world, browser, persona, expected
):
    grant = connected(browser, world)
    client = Client()
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    response = client.post(reverse("oauth:grant_revoke", args=[grant.pk]))
    grant.refresh_from_db()
    if expected == "login":
        assert response.status_code == 302
        assert urlsplit(response["Location"]).path == reverse("account_login")
        assert grant.revoked_at is None
    elif expected == 404:
        assert response.status_code == 404
        assert grant.revoked_at is None
    else:
        assert response.status_code == 302
        assert response["Location"] == reverse("portal:tokens")
        assert grant.revoked_at is not None


def test_the_tokens_page_lists_my_connections_only(world, browser, outsider):
    grant = connected(browser, world)
    mine = browser.get(reverse("portal:tokens")).content.decode()
    assert "Test client" in mine
    assert reverse("oauth:grant_revoke", args=[grant.pk]) in mine
    assert "alice-app" in mine
    theirs = Client()
    theirs.force_login(outsider)
    page = theirs.get(reverse("portal:tokens")).content.decode()
    assert "Test client" not in page
    assert "No MCP clients connected" in page
    browser.post(reverse("oauth:grant_revoke", args=[grant.pk]))
    assert "No MCP clients connected" in browser.get(reverse("portal:tokens")).content.decode()


def test_the_tokens_page_queries_do_not_grow_with_connections(world, browser):
    connected(browser, world)
    with CaptureQueriesContext(connection) as few:
        browser.get(reverse("portal:tokens"))
    for _ in range(4):
        exchange(authorize(browser, world.app, resource=f"{GATEWAY}/mcp"))
    with CaptureQueriesContext(connection) as many:
        browser.get(reverse("portal:tokens"))
    assert len(many) == len(few)


def test_admins_see_and_revoke_grants(world, browser, admin_client):
    grant = connected(browser, world)
    changelist = reverse("admin:oauth_oauthgrant_changelist")
    assert "Test client" in admin_client.get(changelist).content.decode()
    assert admin_client.get(reverse("admin:oauth_oauthclient_changelist")).status_code == 200
    assert (
        admin_client.get(reverse("admin:oauth_oauthgrant_change", args=[grant.pk])).status_code
        == 200
    )
    response = admin_client.post(
        changelist, {"action": "revoke", "_selected_action": [str(grant.pk)]}
    )
    assert response.status_code == 302
    grant.refresh_from_db()
    assert grant.revoked_at is not None


# What the gateways learn -------------------------------------------------------------------


def test_the_revision_names_the_issuer_the_resources_and_recently_revoked_grants(world, browser):
    grant = connected(browser, world)
    doc = built_revision()
    assert doc.oauth is not None
    assert doc.oauth.issuer == PORTAL
    assert doc.oauth.resource_base == GATEWAY
    assert doc.oauth.revoked_grants == []

    PendingChange.objects.all().delete()
    oauth_services.grant_revoke(grant=grant, reason="test")
    assert PendingChange.objects.exists()  # a publish is scheduled, like a key revocation
    assert sync_services.revision_publish(keep=5, pending_only=True) is not None
    assert built_revision().oauth.revoked_grants == [grant.pk]

    # Once its last access token has expired, a revoked grant no longer travels.
    OAuthGrant.objects.filter(pk=grant.pk).update(revoked_at=timezone.now() - timedelta(hours=1))
    assert compiler.compile_state().oauth.revoked_grants == []  # type: ignore[union-attr]


def test_revoked_grants_that_never_issued_a_token_do_not_travel(world, browser):
    authorize(browser, world.app)
    grant = OAuthGrant.objects.get()
    oauth_services.grant_revoke(grant=grant, reason="test")
    assert compiler.compile_state().oauth.revoked_grants == []  # type: ignore[union-attr]


def test_a_document_hashes_as_its_compile_does_oauth_included(world, browser):
    grant = connected(browser, world)
    oauth_services.grant_revoke(grant=grant, reason="test")
    doc = built_revision()
    assert doc.oauth.revoked_grants == [grant.pk]
    assert compiler.document_content_hash(doc) == compiler.compile_state().content_hash
    # The revoked grant ageing out is a change: the periodic compile publishes it.
    OAuthGrant.objects.filter(pk=grant.pk).update(revoked_at=timezone.now() - timedelta(hours=1))
    assert compiler.document_content_hash(doc) != compiler.compile_state().content_hash
    assert not compiler.only_credentials_changed(doc, compiler.compile_state())


def test_key_deltas_keep_the_revisions_oauth(world, browser):
    grant = connected(browser, world)
    oauth_services.grant_revoke(grant=grant, reason="test")
    before = built_revision()
    consumer_services.credential_create(consumer=world.app, name="ci")
    published = sync_services.revision_publish(keep=5, pending_only=True)
    assert published is not None
    assert published.delta is not None  # a key change travels as a delta...
    after = sync_services.revision_document(published)
    assert after is not None
    assert after.revision > before.revision
    assert after.oauth == before.oauth  # ...on top of a document that keeps its oauth part


def built_revision() -> Any:
    from gateway.revision import decode_revision
    from gatewaysync.models import Revision

    sync_services.revision_publish(keep=5, full=True)
    latest = Revision.objects.order_by("-number").first()
    assert latest is not None
    assert latest.document
    return decode_revision(bytes(latest.document))


def test_unused_approvals_are_forgotten(world, browser):
    authorize(browser, world.app)
    OAuthGrant.objects.update(created_at=timezone.now() - timedelta(hours=2))
    authorize(browser, world.app)
    assert OAuthGrant.objects.count() == 1
