"""Portal branding (logo, tagline, colour) and each portal's own sign-in methods."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

import pytest
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialApp
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory
from django.urls import reverse
from PIL import Image

from portal.adapters import SocialAccountAdapter
from portal.models import Portal, PortalDomain, PortalLogo

PASSWORD = "correct horse battery staple 9"
PARTNERS = "partners.example.test"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def main(db) -> Portal:
    return Portal.objects.create(name="Main", slug="main", is_default=True)


@pytest.fixture
def partners(db) -> Portal:
    portal = Portal.objects.create(name="Partners", slug="partners", primary_color="#aa3300")
    PortalDomain.objects.create(portal=portal, domain=PARTNERS)
    return portal


def image_bytes(fmt: str, size: tuple[int, int] = (40, 20), colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def admin_form(portal: Portal, **changes: object) -> dict[str, object]:
    """The portal admin's change form as a browser would post it."""
    data: dict[str, object] = {
        "name": portal.name,
        "slug": portal.slug,
        "tagline": portal.tagline,
        "primary_color": portal.primary_color,
        "developer_approval": portal.developer_approval,
        "subscription_approval": portal.subscription_approval,
        "signup_enabled": "on" if portal.signup_enabled else "",
        "password_login_enabled": "on" if portal.password_login_enabled else "",
        "domains-TOTAL_FORMS": "0",
        "domains-INITIAL_FORMS": "0",
        "domains-MIN_NUM_FORMS": "0",
        "domains-MAX_NUM_FORMS": "1000",
    }
    if portal.is_default:
        data["is_default"] = "on"
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


def change_url(portal: Portal) -> str:
    return reverse("admin:portal_portal_change", args=[portal.pk])


def test_admin_uploads_a_logo_that_every_page_of_that_portal_shows(client, staff, main, partners):
    client.force_login(staff)
    upload = SimpleUploadedFile("logo.jpg", image_bytes("JPEG", (2000, 1000)), "image/jpeg")
    response = client.post(
        change_url(partners), admin_form(partners, logo=upload, tagline="For our partners")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    partners.refresh_from_db()
    assert partners.logo_version
    assert partners.tagline == "For our partners"
    logo_url = reverse("portal:logo", args=[partners.slug, partners.logo_version])

    client.logout()
    page = client.get(reverse("portal:catalog"), HTTP_HOST=PARTNERS).content.decode()
    assert f'src="{logo_url}"' in page
    assert "For our partners" in page
    assert "--brand: #aa3300" in page
    other = client.get(reverse("portal:catalog")).content.decode()
    assert logo_url not in other
    assert "For our partners" not in other

    served = client.get(logo_url)
    assert served.status_code == 200
    assert served["Content-Type"] == "image/png"
    assert "immutable" in served["Cache-Control"]
    assert "sandbox" in served["Content-Security-Policy"]
    image = Image.open(io.BytesIO(served.content))
    # Re-encoded as PNG and scaled to fit 512 px, keeping the aspect ratio.
    assert (image.format, image.size) == ("PNG", (512, 256))


def test_a_logo_keeps_only_its_pixels(client, staff, partners):
    """A polyglot (an image with a script appended) is served without the script."""
    client.force_login(staff)
    payload = b"<script>alert(document.cookie)</script>"
    upload = SimpleUploadedFile("logo.png", image_bytes("PNG") + payload, "image/png")
    assert client.post(change_url(partners), admin_form(partners, logo=upload)).status_code == 302
    partners.refresh_from_db()
    served = client.get(reverse("portal:logo", args=[partners.slug, partners.logo_version]))
    assert payload not in served.content
    assert Image.open(io.BytesIO(served.content)).size == (40, 20)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("logo.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
        ("logo.png", b"not an image at all"),
        ("logo.tiff", image_bytes("TIFF")),
    ],
)
def test_only_raster_images_are_accepted_as_logos(client, staff, partners, name, content):
    client.force_login(staff)
    upload = SimpleUploadedFile(name, content, "image/png")
    response = client.post(change_url(partners), admin_form(partners, logo=upload))
    assert response.status_code == 200  # the form again, with the error
    assert "logo" in response.context["adminform"].form.errors
    partners.refresh_from_db()
    assert partners.logo_version == ""
    assert not PortalLogo.objects.exists()


def test_a_replaced_or_removed_logo_stops_being_served(client, staff, partners):
    client.force_login(staff)
    first = SimpleUploadedFile("a.png", image_bytes("PNG", colour="red"), "image/png")
    client.post(change_url(partners), admin_form(partners, logo=first))
    partners.refresh_from_db()
    old_url = reverse("portal:logo", args=[partners.slug, partners.logo_version])
    second = SimpleUploadedFile("b.png", image_bytes("PNG", colour="blue"), "image/png")
    client.post(change_url(partners), admin_form(partners, logo=second))
    partners.refresh_from_db()
    assert client.get(old_url).status_code == 404
    new_url = reverse("portal:logo", args=[partners.slug, partners.logo_version])
    assert client.get(new_url).status_code == 200

    client.post(change_url(partners), admin_form(partners, remove_logo="on"))
    partners.refresh_from_db()
    assert partners.logo_version == ""
    assert client.get(new_url).status_code == 404


# Sign-in methods


@pytest.fixture
def identity_provider() -> Iterator[str]:
    """A local OpenID provider's discovery document (all a sign-in start needs)."""

    class Discovery(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host, port = cast(tuple[str, int], self.server.server_address)
            base = f"http://{host}:{port}"
            body = json.dumps(
                {
                    "issuer": base,
                    "authorization_endpoint": f"{base}/authorize",
                    "token_endpoint": f"{base}/token",
                    "userinfo_endpoint": f"{base}/userinfo",
                    "jwks_uri": f"{base}/jwks",
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Discovery)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def acme_sso(partners, identity_provider) -> SocialApp:
    app = SocialApp.objects.create(
        provider="openid_connect",
        provider_id="acme-sso",
        name="Acme SSO",
        client_id="portico",
        secret="client-secret",
        settings={"server_url": identity_provider},
    )
    partners.social_apps.add(app)
    return app


def test_a_provider_is_offered_only_on_the_portals_that_enable_it(client, main, acme_sso):
    login = reverse("account_login")
    assert "Acme SSO" in client.get(login, HTTP_HOST=PARTNERS).content.decode()
    assert "Acme SSO" not in client.get(login).content.decode()
    # Starting it sends the browser to the provider, on that portal only.
    start = reverse("openid_connect_login", kwargs={"provider_id": "acme-sso"})
    started = client.post(start, HTTP_HOST=PARTNERS)
    assert started.status_code == 302
    assert started["Location"].startswith(f"{acme_sso.settings['server_url']}/authorize?")
    assert client.post(start).status_code == 404


def test_a_portal_can_take_providers_only(client, main, partners, acme_sso):
    Portal.objects.filter(pk=partners.pk).update(password_login_enabled=False)
    user = User.objects.create_user("dev", "dev@example.com", PASSWORD)
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    login = reverse("account_login")

    page = client.get(login, HTTP_HOST=PARTNERS).content.decode()
    assert 'name="password"' not in page
    assert "Acme SSO" in page
    refused = client.post(login, {"login": user.email, "password": PASSWORD}, HTTP_HOST=PARTNERS)
    assert refused.status_code == 200
    assert "_auth_user_id" not in client.session

    # The same account signs in with its password where passwords are on.
    assert 'name="password"' in client.get(login).content.decode()
    accepted = client.post(login, {"login": user.email, "password": PASSWORD})
    assert accepted.status_code == 302
    assert client.session["_auth_user_id"] == str(user.pk)


def test_an_admin_cannot_lock_everyone_out_of_a_portal(client, staff, partners):
    client.force_login(staff)
    response = client.post(change_url(partners), admin_form(partners, password_login_enabled=""))
    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors()
    partners.refresh_from_db()
    assert partners.password_login_enabled


def test_a_closed_portal_is_closed_to_first_social_sign_ins_too(partners, main):
    Portal.objects.filter(pk=partners.pk).update(signup_enabled=False)
    partners.refresh_from_db()
    adapter = SocialAccountAdapter()
    closed = RequestFactory().get("/", HTTP_HOST=PARTNERS)
    closed.portal = partners  # type: ignore[attr-defined]
    opened = RequestFactory().get("/")
    opened.portal = main  # type: ignore[attr-defined]
    assert adapter.is_open_for_signup(closed, sociallogin=None) is False
    assert adapter.is_open_for_signup(opened, sociallogin=None) is True
