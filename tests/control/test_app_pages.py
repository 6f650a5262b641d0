"""The developer's apps, keys and subscriptions in the browser (Django test client)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from catalog import services as catalog_services
from consumers import services
from consumers.models import Consumer, Credential, Subscription
from gateway.keys import KEY_PREFIX, hash_key
from portal.models import Membership, Portal
from tests.conftest import make_subscribed_app


@pytest.fixture
def member(owner, catalog):
    Membership.objects.create(portal=catalog.portal, user=owner, status="approved")
    return owner


@pytest.fixture
def as_owner(client, member):
    client.force_login(member)
    return client


@pytest.fixture
def world(member, catalog, outsider):
    """The owner's app with a key and a subscription, and an outsider's app."""
    app = make_subscribed_app(owner=member, catalog=catalog)
    issued = services.credential_create(consumer=app, name="k")
    Consumer.objects.create(owner=outsider, name="theirs")
    return {
        "app": app,
        "credential": issued.credential,
        "subscription": app.subscriptions.get(),
    }


def urls(world) -> list[tuple[str, str]]:
    """(method, url) of every page that reaches one of a developer's objects."""
    app, credential, sub = world["app"], world["credential"], world["subscription"]
    return [
        ("get", reverse("portal:app", args=[app.pk])),
        ("post", reverse("portal:app_rename", args=[app.pk])),
        ("post", reverse("portal:key_create", args=[app.pk])),
        ("post", reverse("portal:key_rotate", args=[credential.pk])),
        ("post", reverse("portal:key_revoke", args=[credential.pk])),
        ("post", reverse("portal:subscription_cancel", args=[sub.pk])),
        ("post", reverse("portal:app_delete", args=[app.pk])),
    ]


def test_anonymous_visitors_are_sent_to_sign_in(client, world):
    for method, url in [*urls(world), ("get", reverse("portal:apps"))]:
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("account_login")), url


def test_another_developer_gets_404_and_changes_nothing(client, world, outsider):
    client.force_login(outsider)
    for method, url in urls(world):
        response = getattr(client, method)(url, {"name": "pwned", "grace_seconds": "0"})
        assert response.status_code == 404, url
    credential = Credential.objects.get(pk=world["credential"].pk)
    assert credential.revoked_at is None
    assert Consumer.objects.get(pk=world["app"].pk).name == world["app"].name
    assert Subscription.objects.get(pk=world["subscription"].pk).status == "approved"
    assert credential.consumer.credentials.count() == 1


@pytest.mark.parametrize("persona", ["member", "staff"])
def test_owner_and_admin_reach_the_app(request, client, world, persona):
    client.force_login(request.getfixturevalue(persona))
    response = client.get(reverse("portal:app", args=[world["app"].pk]))
    assert response.status_code == 200
    assert world["credential"].display_prefix in response.content.decode()


def test_app_list_shows_only_own_apps(as_owner, world):
    page = as_owner.get(reverse("portal:apps")).content.decode()
    assert world["app"].name in page
    assert "theirs" not in page


def test_key_is_shown_once_and_never_again(as_owner, world):
    app = world["app"]
    response = as_owner.post(reverse("portal:key_create", args=[app.pk]), {"name": "ci"})
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    page = response.content.decode()
    key = page.split('id="new-key">', 1)[1].split("<", 1)[0]
    assert key.startswith(KEY_PREFIX)
    assert Credential.objects.filter(key_hash=hash_key(key), consumer=app).exists()
    for url in (reverse("portal:app", args=[app.pk]), reverse("portal:apps")):
        assert key not in as_owner.get(url).content.decode()


def test_creating_an_app_ignores_fields_it_does_not_name(as_owner, member, outsider):
    response = as_owner.post(
        reverse("portal:apps"),
        {"name": "mine", "status": "suspended", "owner": outsider.pk, "portal": 999},
    )
    assert response.status_code == 302
    app = Consumer.objects.get(name="mine")
    assert (app.owner, app.status) == (member, "active")


def test_key_form_cannot_set_revocation_or_another_app(as_owner, world, outsider):
    theirs = Consumer.objects.get(owner=outsider)
    as_owner.post(
        reverse("portal:key_create", args=[world["app"].pk]),
        {"name": "x", "consumer": theirs.pk, "revoked_at": "2020-01-01T00:00", "key_hash": "0"},
    )
    created = Credential.objects.get(name="x")
    assert created.consumer == world["app"]
    assert created.revoked_at is None
    assert created.key_hash != "0"
    assert not theirs.credentials.exists()


def test_subscribing_with_another_developers_app_is_refused(as_owner, catalog, outsider):
    theirs = Consumer.objects.create(owner=outsider, name="theirs")
    as_owner.post(
        reverse("portal:subscribe", args=[catalog.product.slug]),
        {"app": theirs.pk, "plan": catalog.plan.pk},
    )
    assert not Subscription.objects.exists()


def test_subscribing_under_another_products_plan_is_refused(as_owner, member, catalog):
    other = catalog_services.product_create(name="Other", slug="other", kind="model")
    foreign_plan = catalog_services.plan_create(product=other, name="Gold", tokens_per_day=10**9)
    app = services.consumer_create(owner=member, name="a")
    as_owner.post(
        reverse("portal:subscribe", args=[catalog.product.slug]),
        {"app": app.pk, "plan": foreign_plan.pk},
    )
    assert not Subscription.objects.exists()


@pytest.mark.parametrize(
    ("product_rule", "portal_rule", "expected"),
    [
        ("", "automatic", "approved"),
        ("", "manual", "pending"),
        ("manual", "automatic", "pending"),
        ("automatic", "manual", "approved"),
    ],
)
def test_approval_follows_the_product_then_the_portal(
    as_owner, member, catalog, product_rule, portal_rule, expected
):
    Portal.objects.filter(pk=catalog.portal.pk).update(subscription_approval=portal_rule)
    catalog.product.subscription_approval = product_rule
    catalog.product.save(update_fields=["subscription_approval"])
    app = services.consumer_create(owner=member, name="a")
    as_owner.post(
        reverse("portal:subscribe", args=[catalog.product.slug]),
        {"app": app.pk, "plan": catalog.plan.pk},
    )
    assert Subscription.objects.get(consumer=app).status == expected


def test_pending_developer_can_sign_in_but_not_subscribe(client, owner, catalog):
    Membership.objects.create(portal=catalog.portal, user=owner, status="pending")
    client.force_login(owner)
    app = services.consumer_create(owner=owner, name="a")
    page = client.get(reverse("portal:product", args=[catalog.product.slug])).content.decode()
    assert "waiting for an administrator" in page
    client.post(
        reverse("portal:subscribe", args=[catalog.product.slug]),
        {"app": app.pk, "plan": catalog.plan.pk},
    )
    assert not Subscription.objects.exists()


def test_rotation_keeps_the_old_key_for_the_grace_period(as_owner, world):
    old = world["credential"]
    response = as_owner.post(reverse("portal:key_rotate", args=[old.pk]), {"grace_seconds": "3600"})
    assert response.status_code == 201
    old.refresh_from_db()
    assert old.revoked_at is None
    assert old.expires_at is not None
    assert world["app"].credentials.count() == 2


def test_rotation_without_grace_revokes_the_old_key(as_owner, world):
    old = world["credential"]
    as_owner.post(reverse("portal:key_rotate", args=[old.pk]), {"grace_seconds": "0"})
    old.refresh_from_db()
    assert old.revoked_at is not None


def test_cancel_and_delete(as_owner, world):
    sub = world["subscription"]
    as_owner.post(reverse("portal:subscription_cancel", args=[sub.pk]))
    sub.refresh_from_db()
    assert sub.status == "cancelled"
    as_owner.post(reverse("portal:app_delete", args=[world["app"].pk]))
    assert not Consumer.objects.filter(pk=world["app"].pk).exists()
    assert not Credential.objects.filter(pk=world["credential"].pk).exists()
