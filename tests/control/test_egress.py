"""The egress policy (gateway/egress.py) and where the control plane applies it: admin-set
URLs reach public addresses only, unless PORTICO_EGRESS_ALLOW allows a network or host;
checked when an upstream is saved, before MCP discovery connects, and when an OpenAPI
document is fetched (which follows no redirect, and reads a bounded answer in bounded
time).

Addresses are tested as literals and through ``localhost`` (resolved from /etc/hosts),
so nothing here needs DNS or the internet; servers are real, on local ports.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from catalog import services
from catalog.models import Upstream
from devstack.fakes._asgi import Receive, Scope, Send, respond
from gateway.egress import EgressError, EgressPolicy, HostNotFound, is_public
from tests.control.test_rest_mcp import document, rest_product, rest_upstream, serving

LOOPBACK = ["127.0.0.0/8", "::1"]


@pytest.fixture
def closed(settings: Any) -> None:
    """The default policy: public addresses only."""
    settings.PORTICO_EGRESS_ALLOW = []


# The policy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.8.8",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104 (an address to refuse, not one to bind)
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%2",
        "fd00:ec2::254",  # cloud metadata, IPv6
        "ff02::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001:db8::1",  # documentation
    ],
)
def test_addresses_that_are_not_public_are_refused(address):
    assert not EgressPolicy().allows("service.example", address)
    with pytest.raises(EgressError, match="Portico connects only to public addresses"):
        EgressPolicy().check_addresses("service.example", [address])


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2a00:1450::1"]
)
def test_public_addresses_are_allowed(address):
    assert is_public(ipaddress.ip_address(address))
    assert EgressPolicy().allows("service.example", address)


def test_allowed_networks_cover_their_addresses_in_either_form():
    policy = EgressPolicy.parse(["10.0.0.0/8", "fd00::/8", "192.168.1.7"])
    assert policy.allows("db", "10.20.30.40")
    assert policy.allows("db", "::ffff:10.20.30.40")
    assert policy.allows("db", "fd12::1")
    assert policy.allows("db", "192.168.1.7")
    assert not policy.allows("db", "192.168.1.8")
    assert not policy.allows("db", "127.0.0.1")
    assert not policy.allows("db", "169.254.169.254")


def test_allowed_host_names_may_resolve_anywhere():
    policy = EgressPolicy.parse(["billing.internal", ".corp.example", "LOCALHOST."])
    assert policy.allows("billing.internal", "10.0.0.5")
    assert policy.allows("Billing.Internal.", "10.0.0.5")
    assert not policy.allows("other.internal", "10.0.0.5")
    assert not policy.allows("xbilling.internal", "10.0.0.5")
    assert policy.allows("api.corp.example", "10.0.0.6")
    assert policy.allows("corp.example", "10.0.0.6")
    assert not policy.allows("evilcorp.example", "10.0.0.6")
    assert policy.allows("localhost", "127.0.0.1")


def test_the_environment_variable_is_read_strictly():
    assert EgressPolicy.from_env({}) == EgressPolicy()
    policy = EgressPolicy.from_env({"PORTICO_EGRESS_ALLOW": " 10.0.0.0/8 , , api.internal "})
    assert policy.allows("x", "10.1.1.1")
    assert policy.allows("api.internal", "192.168.0.1")
    for bad in ("not a host!", "10.0.0.0/33", "*", "1.2.3"):
        with pytest.raises(ValueError, match=r"PORTICO_EGRESS_ALLOW: .* is neither a network"):
            EgressPolicy.from_env({"PORTICO_EGRESS_ALLOW": bad})


def test_a_malformed_allow_list_stops_the_control_plane_at_start(tmp_path):
    env = {
        **os.environ,
        "PORTICO_EGRESS_ALLOW": "10.0.0.0/8,not a host!",
        "PORTICO_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "ConfigurationError: PORTICO_EGRESS_ALLOW: 'not a host!' is neither" in done.stderr


def test_urls_are_checked_by_the_addresses_their_host_resolves_to():
    closed = EgressPolicy()
    with pytest.raises(EgressError) as caught:
        closed.check_url("http://127.0.0.1:9/v1?key=secret-in-query")
    assert str(caught.value) == (
        "127.0.0.1 is a loopback address: Portico connects only to public addresses. If this "
        "service is meant to be on your network, add its host or network to "
        "PORTICO_EGRESS_ALLOW."
    )
    with pytest.raises(EgressError, match=r"localhost resolves to .*, which is a loopback"):
        closed.check_url("http://localhost:8080/")
    with pytest.raises(EgressError, match="link-local address"):
        closed.check_url("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(EgressError, match="is a loopback address"):
        closed.check_url("http://[::ffff:127.0.0.1]:80/")
    with pytest.raises(EgressError, match="Only http:// and https://"):
        closed.check_url("file:///etc/passwd")
    with pytest.raises(EgressError, match="names no host"):
        closed.check_url("http:///path")
    with pytest.raises(EgressError, match="malformed"):
        closed.check_url("http://127.0.0.1:99999/")
    with pytest.raises(HostNotFound, match="does not resolve"):
        closed.check_url("https://no-such-host.invalid/")
    assert closed.resolve_url("http://8.8.8.8/") == ["8.8.8.8"]
    EgressPolicy.parse(["localhost"]).check_url("http://localhost:8080/")
    assert set(EgressPolicy.parse(LOOPBACK).resolve_url("http://localhost/")) <= {
        "127.0.0.1",
        "::1",
    }


def test_the_async_check_resolves_on_the_event_loop():
    async def check(policy: EgressPolicy, url: str) -> list[str]:
        return await policy.resolve_url_async(url)

    with pytest.raises(EgressError, match="loopback"):
        asyncio.run(check(EgressPolicy(), "http://localhost:9/"))
    with pytest.raises(HostNotFound):
        asyncio.run(check(EgressPolicy(), "http://no-such-host.invalid/"))
    assert "127.0.0.1" in asyncio.run(check(EgressPolicy.parse(["localhost"]), "http://localhost/"))


# At save ------------------------------------------------------------------------------------------


def test_an_upstream_pointing_inside_is_refused_at_save(db, closed):
    with pytest.raises(ValidationError) as caught:
        services.upstream_create(name="inside", base_url="http://127.0.0.1:9/v1")
    assert caught.value.message_dict["base_url"] == [
        "127.0.0.1 is a loopback address: Portico connects only to public addresses. If this "
        "service is meant to be on your network, add its host or network to "
        "PORTICO_EGRESS_ALLOW."
    ]
    with pytest.raises(ValidationError, match="link-local"):
        services.upstream_create(name="metadata", base_url="http://169.254.169.254/")
    with pytest.raises(ValidationError) as caught:
        services.upstream_create(
            name="tokens",
            vendor=Upstream.Vendor.MCP,
            base_url="https://93.184.215.14/mcp",
            secret="client-secret-" + "s" * 20,
            options={"auth": "oauth2", "client_id": "c", "token_url": "http://10.1.2.3/token"},
        )
    assert caught.value.message_dict["options"] == [
        "The token_url: 10.1.2.3 is a private address: Portico connects only to public "
        "addresses. If this service is meant to be on your network, add its host or network "
        "to PORTICO_EGRESS_ALLOW."
    ]
    assert not Upstream.objects.exists()


def test_a_name_that_does_not_resolve_yet_may_be_saved(db, closed):
    # Nothing can be said about it now; every connection checks the address it uses.
    upstream = services.upstream_create(name="later", base_url="https://api.no-such-host.invalid")
    assert upstream.pk is not None


def test_an_allowed_network_or_host_may_be_saved(db, settings):
    settings.PORTICO_EGRESS_ALLOW = ["10.0.0.0/8", "localhost"]
    services.upstream_create(name="vpc", base_url="http://10.2.3.4:8000/v1")
    services.upstream_create(name="local", base_url="http://localhost:8000/v1")
    with pytest.raises(ValidationError, match="loopback"):
        services.upstream_create(name="loopback", base_url="http://127.0.0.1:8000/v1")


def test_the_upstream_admin_says_why_an_address_is_refused(admin_client, closed):
    data = {
        "name": "inside",
        "vendor": "openai",
        "base_url": "http://192.168.0.10/v1",
        "timeout_seconds": "30",
        "pool_credentials-TOTAL_FORMS": "0",
        "pool_credentials-INITIAL_FORMS": "0",
        "pool_credentials-MIN_NUM_FORMS": "0",
        "pool_credentials-MAX_NUM_FORMS": "1000",
    }
    response = admin_client.post(reverse("admin:catalog_upstream_add"), data)
    assert response.status_code == 200
    assert "192.168.0.10 is a private address" in response.content.decode()
    assert not Upstream.objects.exists()


# At connect ---------------------------------------------------------------------------------------


class Recorder:
    """An ASGI app that records each request's path and headers and answers with
    ``answer(path)``: ``(status, headers, body)``."""

    def __init__(self, answer: Callable[[str], tuple[int, list[tuple[bytes, bytes]], bytes]]):
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["path"], headers))
        status, extra, body = self.answer(scope["path"])
        await respond(send, status, body, extra)


def openapi_answer(path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return 200, [(b"content-type", b"application/json")], json.dumps(document()).encode()


def test_discovery_does_not_connect_where_the_policy_refuses(catalog, settings):
    recorder = Recorder(openapi_answer)
    with serving(recorder) as url:
        upstream = services.upstream_create(
            name="inside", vendor=Upstream.Vendor.MCP, base_url=f"{url}/mcp", timeout_seconds=5
        )
        server = rest_product(catalog, upstream, slug="inside")
        settings.PORTICO_EGRESS_ALLOW = []  # tightened after the upstream was saved
        server = services.mcp_server_discover(server=server)
    assert server.last_error.startswith("Not connected: 127.0.0.1 is a loopback address")
    assert server.last_discovered_at is None
    assert recorder.requests == []


def test_an_openapi_fetch_does_not_connect_where_the_policy_refuses(db, settings):
    recorder = Recorder(openapi_answer)
    with serving(recorder) as url:
        assert services.openapi_fetch(url=f"{url}/openapi.json")["openapi"] == "3.1.0"
        settings.PORTICO_EGRESS_ALLOW = []
        with pytest.raises(
            ValidationError, match=r"Not fetched: 127\.0\.0\.1 is a loopback address"
        ):
            services.openapi_fetch(url=f"{url}/openapi.json")
    assert len(recorder.requests) == 1


def test_an_openapi_fetch_connects_to_the_checked_address_of_an_allowed_name(db, settings):
    settings.PORTICO_EGRESS_ALLOW = ["localhost"]
    recorder = Recorder(openapi_answer)
    with serving(recorder) as url:
        port = url.rsplit(":", 1)[1]
        document_ = services.openapi_fetch(url=f"http://localhost:{port}/openapi.json")
    assert document_["info"]["title"] == "Portico demo notes and inventory"
    [(path, headers)] = recorder.requests
    assert path == "/openapi.json"
    assert headers["host"] == f"localhost:{port}"


def test_an_openapi_fetch_follows_no_redirect(db):
    target = Recorder(openapi_answer)
    with serving(target) as elsewhere:
        moved = Recorder(
            lambda path: (302, [(b"location", f"{elsewhere}/openapi.json".encode())], b"")
        )
        with serving(moved) as url, pytest.raises(ValidationError) as caught:
            services.openapi_fetch(url=f"{url}/openapi.json")
    port = url.rsplit(":", 1)[1]
    assert caught.value.messages == [
        f"127.0.0.1:{port} answered with a redirect (HTTP 302, to 127.0.0.1), which is not "
        "followed: import from the URL it points to, if you trust it."
    ]
    assert target.requests == []


def test_an_openapi_fetch_reads_a_bounded_answer_in_bounded_time(db, monkeypatch):
    huge = Recorder(lambda path: (200, [], b"x" * (5 * 1024 * 1024 + 1)))
    with serving(huge) as url, pytest.raises(ValidationError, match="larger than 5 MiB"):
        services.openapi_fetch(url=f"{url}/openapi.json")

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(3)
            await respond(send, 200, b"{}", [])

    monkeypatch.setattr(services, "OPENAPI_FETCH_SECONDS", 0.5)
    with serving(slow) as url, pytest.raises(ValidationError, match=r"within 0\.5 seconds"):
        services.openapi_fetch(url=f"{url}/openapi.json")

    gone = Recorder(lambda path: (404, [], b"no"))
    with serving(gone) as url, pytest.raises(ValidationError, match="answered HTTP 404"):
        services.openapi_fetch(url=f"{url}/openapi.json")
    with pytest.raises(ValidationError, match="Leave credentials out of the URL"):
        services.openapi_fetch(url="http://user:pass@127.0.0.1:9/openapi.json")


def test_the_import_page_refuses_a_url_pointing_inside(admin_client, catalog, closed):
    server = rest_product(catalog, rest_upstream("https://93.184.215.14"))
    url = reverse("admin:catalog_mcpserver_import_openapi", args=[server.pk])
    response = admin_client.post(url, {"url": "http://169.254.169.254/latest/meta-data"})
    assert "Not fetched: 169.254.169.254 is a link-local address" in response.content.decode()
