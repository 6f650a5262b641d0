"""Personal access tokens in the browser: created once, listed by prefix, revocable."""

from __future__ import annotations

from django.urls import reverse

from portal import services
from portal.models import PersonalAccessToken


def created_token(response) -> str:
    return response.content.decode().split('id="new-token">', 1)[1].split("<", 1)[0]


def test_anonymous_visitors_are_sent_to_sign_in(client, db):
    for method, url in (
        ("get", reverse("portal:tokens")),
        ("post", reverse("portal:tokens")),
        ("post", reverse("portal:token_revoke", args=[1])),
    ):
        response = getattr(client, method)(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("account_login"))


def test_token_is_shown_once_and_works_for_the_api(client, owner, outsider):
    client.force_login(owner)
    response = client.post(reverse("portal:tokens"), {"name": "ci", "user": outsider.pk})
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    token = created_token(response)
    row = PersonalAccessToken.objects.get()
    assert row.user == owner  # the form names no owner field
    assert services.access_token_is_well_formed(token)
    listing = client.get(reverse("portal:tokens")).content.decode()
    assert row.display_prefix in listing
    assert token not in listing
    client.logout()
    api = client.get("/api/v1/apps/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.status_code == 200


def test_revoked_token_is_refused(client, owner):
    token, plaintext = services.access_token_create(user=owner, name="old")
    client.force_login(owner)
    client.post(reverse("portal:token_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is not None
    client.logout()
    assert client.get("/api/v1/apps/", HTTP_AUTHORIZATION=f"Bearer {plaintext}").status_code == 401


def test_another_developers_token_cannot_be_revoked(client, owner, outsider):
    token, _ = services.access_token_create(user=owner, name="mine")
    client.force_login(outsider)
    response = client.post(reverse("portal:token_revoke", args=[token.pk]))
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    assert "mine" not in client.get(reverse("portal:tokens")).content.decode()
