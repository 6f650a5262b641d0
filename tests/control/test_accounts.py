"""Sign-up, email verification, sign-in throttling and portal membership (allauth)."""

from __future__ import annotations

import re

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from django.core import mail
from django.core.cache import cache
from django.urls import reverse

from portal.models import Membership, Portal

PASSWORD = "correct horse battery staple 9"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()  # allauth keeps its rate-limit counters in the cache
    yield
    cache.clear()


@pytest.fixture
def portal(db):
    return Portal.objects.create(name="Main", slug="main", is_default=True)


def sign_up(client, email="dev@example.com"):
    return client.post(
        reverse("account_signup"), {"email": email, "password1": PASSWORD, "password2": PASSWORD}
    )


def test_sign_up_verifies_email_before_first_use(client, portal):
    response = sign_up(client)
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    user = User.objects.get(email="dev@example.com")
    assert client.get(reverse("portal:apps")).status_code == 302  # not signed in yet
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^\s]+/accounts/confirm-email/[^\s/]+/", str(mail.outbox[0].body))
    assert link is not None
    path = "/" + link.group(0).split("/", 3)[3]
    confirmed = client.post(path)
    assert confirmed.status_code == 302
    assert client.get(reverse("portal:apps")).status_code == 200
    assert EmailAddress.objects.get(user=user).verified


def test_unverified_account_cannot_sign_in(client, portal):
    sign_up(client)
    client.logout()
    response = client.post(
        reverse("account_login"), {"login": "dev@example.com", "password": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    assert client.get(reverse("portal:apps")).status_code == 302


@pytest.mark.parametrize(("rule", "status"), [("automatic", "approved"), ("manual", "pending")])
def test_sign_up_joins_the_portal_under_its_rule(client, portal, rule, status):
    Portal.objects.filter(pk=portal.pk).update(developer_approval=rule)
    sign_up(client)
    membership = Membership.objects.get(user__email="dev@example.com")
    assert (membership.portal, membership.status) == (portal, status)


def test_sign_up_can_be_switched_off_per_portal(client, portal):
    Portal.objects.filter(pk=portal.pk).update(signup_enabled=False)
    response = sign_up(client)
    assert not User.objects.filter(email="dev@example.com").exists()
    assert response.status_code == 200
    assert "closed" in response.content.decode().lower()


def test_failed_sign_ins_are_throttled(client, portal):
    user = User.objects.create_user("dev", "dev@example.com", PASSWORD)
    EmailAddress.objects.create(user=user, email="dev@example.com", verified=True, primary=True)
    url = reverse("account_login")
    for _ in range(5):
        client.post(url, {"login": "dev@example.com", "password": "wrong"})
    blocked = client.post(url, {"login": "dev@example.com", "password": PASSWORD})
    assert blocked.status_code in (200, 429)
    assert "too many failed login attempts" in blocked.content.decode().lower()
    assert client.get(reverse("portal:apps")).status_code == 302


def test_staff_flags_cannot_be_set_at_sign_up(client, portal):
    client.post(
        reverse("account_signup"),
        {
            "email": "dev@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "is_staff": "on",
            "is_superuser": "on",
            "username": "root",
        },
    )
    user = User.objects.get(email="dev@example.com")
    assert not user.is_staff
    assert not user.is_superuser
    assert user.username != "root"
