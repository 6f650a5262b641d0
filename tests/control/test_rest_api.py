"""The REST API (/api/v1/): the access matrix, secrets shown once, mass assignment,
personal access tokens, errors, query counts and the OpenAPI schema."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, include, path, resolve
from django.utils import timezone

from catalog import services as catalog_services
from catalog.models import Product
from config import api_urls
from config import urls as root_urls
from consumers import services
from consumers.models import Consumer, Credential, Subscription
from gateway import keys
from gatewaysync.compiler import compile_state
from gatewaysync.models import GatewayInstance
from portal import services as portal_services
from portal.authentication import FAILURES_ALLOWED
from portal.models import Membership, PersonalAccessToken, Portal
from tests.conftest import make_catalog

# The two include lines config/urls.py gets for the REST API, in front of the project's
# own routes, so these tests run whether or not the lead has added them there yet.
urlpatterns = [
    path("api/v1/", include(("config.api_urls", "api"))),
    path("api/", include((api_urls.schema_urlpatterns, "api-docs"))),
    *root_urls.urlpatterns,
]

pytestmark = pytest.mark.urls(__name__)

API = "/api/v1"
PERSONAS = ["anonymous", "owner", "outsider", "staff"]


@pytest.fixture(autouse=True)
def _fresh_cache():
    # The failed-token counter lives in the cache, which outlives a test's transaction.
    cache.clear()
    yield
    cache.clear()


def client_for(request, persona: str) -> Client:
    client = Client()
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    return client


def call(client: Client, method: str, url: str, body: Any = None, **extra: Any):
    if method == "get":
        return client.get(url, **extra)
    return getattr(client, method)(
        url, data=body if body is not None else {}, content_type="application/json", **extra
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------
# The access matrix: every endpoint by {anonymous, owner, another developer, staff}.

A = 401  # anonymous: not authenticated
PUBLIC = (200, 200, 200, 200)
OWN = {"get": (A, 200, 404, 200), "post": (A, 200, 404, 200)}
STAFF_ONLY = (A, 403, 403, 200)

# (name, method, url, body, expected status for anonymous, owner, outsider, staff)
ENDPOINTS: list[tuple[str, str, str, Any, tuple[int, int, int, int]]] = [
    ("product-list", "get", "/products/", None, PUBLIC),
    ("product-detail", "get", "/products/chat/", None, PUBLIC),
    ("product-publish", "post", "/products/chat/publish/", None, STAFF_ONLY),
    ("product-retire", "post", "/products/chat/retire/", None, STAFF_ONLY),
    ("app-list", "get", "/apps/", None, (A, 200, 200, 200)),
    ("app-create", "post", "/apps/", {"name": "new-app"}, (A, 201, 201, 201)),
    ("app-detail", "get", "/apps/{app}/", None, (A, 200, 404, 200)),
    ("app-rename", "patch", "/apps/{app}/", {"name": "renamed"}, (A, 200, 404, 200)),
    ("app-delete", "delete", "/apps/{app}/", None, (A, 204, 404, 204)),
    ("key-list", "get", "/apps/{app}/keys/", None, (A, 200, 404, 200)),
    ("key-create", "post", "/apps/{app}/keys/", {"name": "ci"}, (A, 201, 404, 201)),
    ("key-revoke", "post", "/keys/{key}/revoke/", None, (A, 200, 404, 200)),
    ("key-rotate", "post", "/keys/{key}/rotate/", {"grace_seconds": 0}, (A, 201, 404, 201)),
    ("subscription-list", "get", "/apps/{app}/subscriptions/", None, (A, 200, 404, 200)),
    (
        "subscription-create",
        "post",
        "/apps/{app}/subscriptions/",
        {"product": "extra", "plan": "{extra_plan}"},
        (A, 201, 404, 201),
    ),
    ("subscription-cancel", "post", "/subscriptions/{sub}/cancel/", None, (A, 200, 404, 200)),
    ("token-list", "get", "/tokens/", None, (A, 200, 200, 200)),
    ("token-create", "post", "/tokens/", {"name": "ci"}, (A, 201, 201, 201)),
    # Tokens are personal: staff revoke other people's in the admin, not here.
    ("token-revoke", "post", "/tokens/{token}/revoke/", None, (A, 200, 404, 404)),
    ("review-list", "get", "/subscriptions/?status=pending", None, STAFF_ONLY),
    ("review-approve", "post", "/subscriptions/{pending}/approve/", None, STAFF_ONLY),
    (
        "review-reject",
        "post",
        "/subscriptions/{pending}/reject/",
        {"reason": "Tell us more."},
        STAFF_ONLY,
    ),
]


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return ids[value[1:-1]]
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize(
    ("method", "url", "body", "expected"),
    [pytest.param(*spec[1:], id=spec[0]) for spec in ENDPOINTS],
)
def test_access_matrix(request, world, persona, method, url, body, expected):
    ids = world.ids()
    response = call(client_for(request, persona), method, API + _fill(url, ids), _fill(body, ids))
    assert response.status_code == expected[PERSONAS.index(persona)], response.content
    if response.status_code != 204:
        assert response["Content-Type"] == "application/json"
        response.json()
    if response.status_code == 401:
        # A script is told what to send.
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "detail" in response.json()


def test_matrix_covers_every_route_and_method():
    ids = dict.fromkeys(["app", "key", "sub", "pending", "token", "extra_plan"], 1)
    covered = {
        (resolve(API + _fill(url, ids).split("?")[0]).url_name, method)
        for _, method, url, _, _ in ENDPOINTS
    }
    routes = {
        (route.name, method)
        for route in api_urls.urlpatterns
        if isinstance(route, URLPattern)
        for method in ("get", "post", "patch", "delete")
        if hasattr(route.callback.view_class, method)  # type: ignore[attr-defined]
    }
    assert covered == routes


def test_refused_requests_change_nothing(client, world, outsider):
    client.force_login(outsider)
    ids = world.ids()
    for _name, method, url, body, _ in ENDPOINTS:
        if method != "get":
            call(client, method, API + _fill(url, ids), _fill(body, ids))
    world.app.refresh_from_db()
    world.key.refresh_from_db()
    world.subscription.refresh_from_db()
    world.pending.refresh_from_db()
    world.token.refresh_from_db()
    world.catalog.product.refresh_from_db()
    assert world.app.name == "alice-app"
    assert world.key.revoked_at is None
    assert world.app.credentials.count() == 1
    assert world.subscription.status == Subscription.Status.APPROVED
    assert world.pending.status == Subscription.Status.PENDING
    assert not world.app.subscriptions.filter(product=world.extra_product).exists()
    assert world.token.revoked_at is None
    assert world.catalog.product.status == Product.Status.PUBLISHED


def test_app_list_shows_only_own_apps(client, world, outsider):
    client.force_login(outsider)
    body = client.get(f"{API}/apps/").json()
    assert [app["name"] for app in body["results"]] == ["mallory-app"]
    assert body["count"] == 1


def test_staff_sees_only_own_apps_in_the_list(client, world, staff):
    client.force_login(staff)
    assert client.get(f"{API}/apps/").json()["results"] == []


# ---------------------------------------------------------------------------------------
# Keys and tokens are shown once.

KEY_FIELDS = frozenset(
    {
        "id",
        "app",
        "name",
        "display_prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "is_active",
    }
)
TOKEN_FIELDS = frozenset(
    {"id", "name", "display_prefix", "created_at", "expires_at", "last_used_at", "revoked_at"}
)


def test_a_new_key_is_returned_once_and_never_listed(client, world, owner):
    client.force_login(owner)
    response = client.post(
        f"{API}/apps/{world.app.pk}/keys/", {"name": "ci"}, content_type="application/json"
    )
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    created = response.json()
    key = created["key"]
    assert keys.is_well_formed(key)
    assert key.startswith(created["display_prefix"])
    assert Credential.objects.get(pk=created["id"]).key_hash == keys.hash_key(key)
    for url in (f"/apps/{world.app.pk}/keys/", f"/apps/{world.app.pk}/", "/apps/"):
        listed = client.get(API + url)
        assert listed.status_code == 200
        assert key not in listed.content.decode()
        assert '"key"' not in listed.content.decode()
    listed_keys = client.get(f"{API}/apps/{world.app.pk}/keys/").json()["results"]
    assert sorted(k["name"] for k in listed_keys) == ["ci", "k"]
    # Exactly these fields: no key, no hash.
    assert {frozenset(k) for k in listed_keys} == {KEY_FIELDS}
    assert keys.hash_key(key) not in json.dumps(listed_keys)


def test_rotation_returns_the_new_key_once_and_keeps_the_old_for_the_grace(client, world, owner):
    client.force_login(owner)
    response = client.post(
        f"{API}/keys/{world.key.pk}/rotate/",
        {"grace_seconds": 3600},
        content_type="application/json",
    )
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert keys.is_well_formed(body["key"])
    assert body["replaced"]["id"] == world.key.pk
    assert "key" not in body["replaced"]
    world.key.refresh_from_db()
    assert world.key.revoked_at is None
    assert world.key.expires_at is not None
    assert world.key.expires_at <= timezone.now() + timedelta(seconds=3601)


def test_rotation_needs_a_valid_grace(client, world, owner):
    client.force_login(owner)
    for body in ({}, {"grace_seconds": -1}, {"grace_seconds": "soon"}):
        response = client.post(
            f"{API}/keys/{world.key.pk}/rotate/", body, content_type="application/json"
        )
        assert response.status_code == 400
        assert "grace_seconds" in response.json()
    assert world.app.credentials.count() == 1


def test_a_new_token_is_returned_once_and_stored_as_a_hash(client, world, owner):
    client.force_login(owner)
    response = client.post(f"{API}/tokens/", {"name": "ci"}, content_type="application/json")
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    created = response.json()
    token = created["token"]
    assert token.startswith("portico_pat_")
    assert portal_services.access_token_is_well_formed(token)
    row = PersonalAccessToken.objects.get(pk=created["id"])
    assert row.user == owner
    assert row.token_hash == portal_services.access_token_hash(token)
    assert token.startswith(row.display_prefix)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM portal_personalaccesstoken")
        for record in cursor.fetchall():
            assert all(token not in str(value) for value in record)
    listed = client.get(f"{API}/tokens/")
    assert token not in listed.content.decode()
    assert '"token"' not in listed.content.decode()
    assert sorted(t["name"] for t in listed.json()["results"]) == ["ci", "laptop"]
    assert {frozenset(t) for t in listed.json()["results"]} == {TOKEN_FIELDS}
    assert row.token_hash not in listed.content.decode()


def test_tokens_are_unique_and_well_formed(owner):
    made = {portal_services.access_token_create(user=owner, name=f"t{i}")[1] for i in range(20)}
    assert len(made) == 20
    one = next(iter(made))
    assert not portal_services.access_token_is_well_formed(
        one[:-1] + ("0" if one[-1] != "0" else "1")
    )


def test_token_list_shows_only_own_tokens(client, world, outsider):
    client.force_login(outsider)
    assert client.get(f"{API}/tokens/").json()["results"] == []


# ---------------------------------------------------------------------------------------
# Mass assignment: the input serializers name their fields; nothing else is written.


def test_creating_an_app_ignores_owner_status_and_staff_flags(client, world, owner, outsider):
    client.force_login(owner)
    response = client.post(
        f"{API}/apps/",
        {
            "name": "sneaky",
            "owner": outsider.pk,
            "status": "suspended",
            "id": 9999,
            "portal": None,
            "is_staff": True,
            "is_superuser": True,
        },
        content_type="application/json",
    )
    assert response.status_code == 201
    app = Consumer.objects.get(name="sneaky")
    assert app.owner == owner
    assert app.status == Consumer.Status.ACTIVE
    assert app.pk != 9999
    assert app.portal == world.catalog.portal
    owner.refresh_from_db()
    assert not owner.is_staff
    assert not owner.is_superuser


def test_patching_an_app_changes_only_its_name(client, world, owner, outsider):
    client.force_login(owner)
    response = client.patch(
        f"{API}/apps/{world.app.pk}/",
        {"status": "suspended", "owner": outsider.pk, "created_at": "2000-01-01T00:00:00Z"},
        content_type="application/json",
    )
    assert response.status_code == 200
    world.app.refresh_from_db()
    assert world.app.owner == owner
    assert world.app.status == Consumer.Status.ACTIVE
    assert world.app.name == "alice-app"
    assert world.app.created_at.year > 2000


def test_creating_a_key_ignores_hash_prefix_revocation_and_app(client, world, owner, outsider):
    theirs = Consumer.objects.get(owner=outsider)
    client.force_login(owner)
    response = client.post(
        f"{API}/apps/{world.app.pk}/keys/",
        {
            "name": "ci",
            "key_hash": "0" * 64,
            "display_prefix": "portico_FAKE",
            "revoked_at": "2000-01-01T00:00:00Z",
            "last_used_at": "2000-01-01T00:00:00Z",
            "consumer": theirs.pk,
            "app": theirs.pk,
        },
        content_type="application/json",
    )
    assert response.status_code == 201
    key = response.json()["key"]
    credential = Credential.objects.get(pk=response.json()["id"])
    assert credential.key_hash == keys.hash_key(key)
    assert credential.display_prefix == keys.display_prefix(key)
    assert credential.revoked_at is None
    assert credential.last_used_at is None
    assert credential.consumer == world.app
    assert not theirs.credentials.exists()


def test_subscribing_ignores_status_and_plan_limits(client, world, owner):
    review = make_catalog(slug="gated").product
    review.subscription_approval = "manual"
    review.save(update_fields=["subscription_approval"])
    plan = review.plans.get()
    client.force_login(owner)
    response = client.post(
        f"{API}/apps/{world.app.pk}/subscriptions/",
        {
            "product": "gated",
            "plan": plan.pk,
            "status": "approved",
            "decision_reason": "self-approved",
            "requests_per_minute": 1_000_000,
            "tokens_per_day": 1_000_000,
            "consumer": 1,
        },
        content_type="application/json",
    )
    assert response.status_code == 201
    sub = Subscription.objects.get(pk=response.json()["id"])
    assert sub.status == Subscription.Status.PENDING
    assert sub.decision_reason == ""
    assert sub.consumer == world.app
    plan.refresh_from_db()
    assert plan.requests_per_minute == 60
    assert plan.tokens_per_day is None


def test_creating_a_token_ignores_user_hash_and_staff_flags(client, world, owner, outsider):
    client.force_login(owner)
    response = client.post(
        f"{API}/tokens/",
        {
            "name": "ci",
            "user": outsider.pk,
            "token_hash": "0" * 64,
            "revoked_at": "2000-01-01T00:00:00Z",
            "is_staff": True,
        },
        content_type="application/json",
    )
    assert response.status_code == 201
    row = PersonalAccessToken.objects.get(pk=response.json()["id"])
    assert row.user == owner
    assert row.revoked_at is None
    assert row.token_hash == portal_services.access_token_hash(response.json()["token"])
    owner.refresh_from_db()
    assert not owner.is_staff


# ---------------------------------------------------------------------------------------
# Flows and errors


def test_subscription_is_approved_at_once_or_left_for_review(client, world, owner, staff):
    client.force_login(owner)
    auto = client.post(
        f"{API}/apps/{world.app.pk}/subscriptions/",
        {"product": "extra", "plan": world.extra_plan.pk},
        content_type="application/json",
    )
    assert auto.status_code == 201
    assert auto.json()["status"] == "approved"
    assert auto.json()["product"] == "extra"

    staff_client = Client()
    staff_client.force_login(staff)
    queue = staff_client.get(f"{API}/subscriptions/?status=pending").json()
    assert [s["id"] for s in queue["results"]] == [world.pending.pk]
    assert queue["results"][0]["developer"] == owner.get_username()
    approved = staff_client.post(f"{API}/subscriptions/{world.pending.pk}/approve/")
    assert approved.status_code == 200
    assert approved.json()["status"] == "approved"
    again = staff_client.post(f"{API}/subscriptions/{world.pending.pk}/approve/")
    assert again.status_code == 400
    assert "Only pending subscriptions" in again.json()["non_field_errors"][0]


def test_rejection_needs_a_reason_and_keeps_it(client, world, staff):
    client.force_login(staff)
    url = f"{API}/subscriptions/{world.pending.pk}/reject/"
    for body in ({}, {"reason": ""}, {"reason": "   "}):
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 400
        assert "reason" in response.json()
    world.pending.refresh_from_db()
    assert world.pending.status == Subscription.Status.PENDING
    response = client.post(url, {"reason": "Tell us more."}, content_type="application/json")
    assert response.status_code == 200
    world.pending.refresh_from_db()
    assert world.pending.status == Subscription.Status.REJECTED
    assert world.pending.decision_reason == "Tell us more."


def test_review_list_filters_by_status_and_refuses_unknown_ones(client, world, staff):
    client.force_login(staff)
    everything = client.get(f"{API}/subscriptions/").json()
    assert {s["id"] for s in everything["results"]} == {world.subscription.pk, world.pending.pk}
    assert client.get(f"{API}/subscriptions/?status=bogus").status_code == 400


def test_service_errors_are_400s_with_their_messages(client, world, owner):
    client.force_login(owner)
    duplicate = client.post(f"{API}/apps/", {"name": "alice-app"}, content_type="application/json")
    assert duplicate.status_code == 400
    assert duplicate.json() == {"non_field_errors": ["You already have an app with that name."]}
    past = client.post(
        f"{API}/apps/{world.app.pk}/keys/",
        {"name": "old", "expires_at": "2000-01-01T00:00:00Z"},
        content_type="application/json",
    )
    assert past.status_code == 400
    assert past.json() == {"expires_at": ["The expiry must be in the future."]}
    cancel = client.post(f"{API}/subscriptions/{world.subscription.pk}/cancel/")
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelled"
    again = client.post(f"{API}/subscriptions/{world.subscription.pk}/cancel/")
    assert again.status_code == 400
    assert "already ended" in again.json()["non_field_errors"][0]


def test_subscribing_needs_a_product_of_this_portal_and_one_of_its_plans(client, world, owner):
    draft = catalog_services.product_create(name="Draft", slug="draft", kind="model")
    draft_plan = catalog_services.plan_create(product=draft, name="Free")
    elsewhere = make_catalog(slug="elsewhere")
    other_portal = Portal.objects.create(name="Other", slug="other")
    elsewhere.product.portals.set([other_portal])
    client.force_login(owner)
    url = f"{API}/apps/{world.app.pk}/subscriptions/"
    cases = [
        ({"product": "draft", "plan": draft_plan.pk}, "product"),
        ({"product": "elsewhere", "plan": elsewhere.plan.pk}, "product"),
        ({"product": "nope", "plan": 1}, "product"),
        ({"product": "extra", "plan": world.catalog.plan.pk}, "plan"),
        ({"product": "extra"}, "plan"),
    ]
    for body, field in cases:
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 400, body
        assert field in response.json(), body
    assert world.app.subscriptions.count() == 2


def test_a_developer_not_approved_on_the_portal_cannot_subscribe(client, world, owner):
    Membership.objects.filter(user=owner).update(status=Membership.Status.PENDING)
    client.force_login(owner)
    response = client.post(
        f"{API}/apps/{world.app.pk}/subscriptions/",
        {"product": "extra", "plan": world.extra_plan.pk},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "not approved" in response.json()["non_field_errors"][0]


def test_delete_removes_the_app_and_its_keys(client, world, owner):
    client.force_login(owner)
    assert client.delete(f"{API}/apps/{world.app.pk}/").status_code == 204
    assert not Consumer.objects.filter(pk=world.app.pk).exists()
    assert not Credential.objects.filter(pk=world.key.pk).exists()
    assert client.get(f"{API}/apps/{world.app.pk}/").status_code == 404


def test_staff_publish_and_retire(client, world, staff):
    draft = catalog_services.product_create(name="Draft", slug="draft", kind="model")
    client.force_login(staff)
    response = client.post(f"{API}/products/draft/publish/")
    assert response.status_code == 200
    assert response.json()["status"] == "published"
    draft.refresh_from_db()
    assert list(draft.portals.all()) == [world.catalog.portal]
    assert Client().get(f"{API}/products/draft/").status_code == 200
    response = client.post(f"{API}/products/draft/retire/")
    assert response.json()["status"] == "retired"
    assert Client().get(f"{API}/products/draft/").status_code == 404
    assert client.post(f"{API}/products/nope/publish/").status_code == 404


def test_session_requests_need_the_csrf_token(world, owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post(f"{API}/apps/", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Consumer.objects.filter(name="x").exists()


# ---------------------------------------------------------------------------------------
# Catalog


def test_catalog_lists_published_products_of_this_portal_paginated(client, world):
    catalog_services.product_create(name="Draft", slug="draft", kind="model")
    elsewhere = make_catalog(slug="elsewhere")
    elsewhere.product.portals.set([Portal.objects.create(name="Other", slug="other")])
    body = client.get(f"{API}/products/").json()
    assert [p["slug"] for p in body["results"]] == ["chat", "extra", "review"]
    assert body["count"] == 3
    assert body["results"][0]["models"] == ["chat-model"]
    page = client.get(f"{API}/products/?limit=1&offset=1").json()
    assert [p["slug"] for p in page["results"]] == ["extra"]
    assert page["next"] is not None
    assert page["previous"] is not None


def test_catalog_search_and_kind_filter(client, world):
    catalog_services.product_create(
        name="Tools", slug="tools", kind="mcp", status=Product.Status.PUBLISHED
    ).portals.add(world.catalog.portal)
    assert [p["slug"] for p in client.get(f"{API}/products/?q=extra").json()["results"]] == [
        "extra"
    ]
    assert [p["slug"] for p in client.get(f"{API}/products/?q=review-model").json()["results"]] == [
        "review"
    ]
    assert [p["slug"] for p in client.get(f"{API}/products/?kind=mcp").json()["results"]] == [
        "tools"
    ]
    bad = client.get(f"{API}/products/?kind=spaceship")
    assert bad.status_code == 400
    assert "kind" in bad.json()


def test_product_detail_has_plans_and_model_names(client, world):
    body = client.get(f"{API}/products/chat/").json()
    assert body["models"] == ["chat-model"]
    assert body["plans"] == [
        {
            "id": world.catalog.plan.pk,
            "name": "Free",
            "requests_per_minute": 60,
            "tokens_per_minute": None,
            "tokens_per_day": None,
            "token_quota": None,
        }
    ]
    catalog_services.product_create(name="Draft", slug="draft", kind="model")
    assert client.get(f"{API}/products/draft/").status_code == 404


# ---------------------------------------------------------------------------------------
# Personal access tokens authenticate the REST API, and nothing else.


def test_a_token_authenticates_the_api_without_csrf(world, owner):
    client = Client(enforce_csrf_checks=True)
    headers = bearer(world.token_plaintext)
    listed = client.get(f"{API}/apps/", headers=headers)
    assert listed.status_code == 200
    assert [a["name"] for a in listed.json()["results"]] == ["alice-app"]
    created = client.post(
        f"{API}/apps/", {"name": "from-ci"}, content_type="application/json", headers=headers
    )
    assert created.status_code == 201
    assert Consumer.objects.get(name="from-ci").owner == owner
    assert client.get(f"{API}/apps/{world.app.pk}/", headers=headers).status_code == 200


def test_a_token_reaches_only_its_owners_objects(world, outsider):
    _, theirs = portal_services.access_token_create(user=outsider, name="m")
    assert Client().get(f"{API}/apps/{world.app.pk}/", headers=bearer(theirs)).status_code == 404
    assert Client().get(f"{API}/subscriptions/", headers=bearer(theirs)).status_code == 403


def test_a_staff_token_reaches_the_admin_endpoints(world, staff):
    _, token = portal_services.access_token_create(user=staff, name="ops")
    response = Client().get(f"{API}/subscriptions/?status=pending", headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_a_token_cannot_manage_tokens(world):
    client = Client()
    headers = bearer(world.token_plaintext)
    for method, url in (
        ("get", "/tokens/"),
        ("post", "/tokens/"),
        ("post", f"/tokens/{world.token.pk}/revoke/"),
    ):
        response = call(client, method, API + url, {"name": "more"}, headers=headers)
        assert response.status_code == 403, url
        assert "browser session" in response.json()["detail"]
    assert PersonalAccessToken.objects.count() == 1
    world.token.refresh_from_db()
    assert world.token.revoked_at is None


def _assert_refused(token: str) -> None:
    response = Client().get(f"{API}/apps/", headers=bearer(token))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "detail" in response.json()


def test_a_revoked_token_is_refused(client, world, owner):
    headers = bearer(world.token_plaintext)
    assert Client().get(f"{API}/apps/", headers=headers).status_code == 200
    client.force_login(owner)
    assert client.post(f"{API}/tokens/{world.token.pk}/revoke/").status_code == 200
    _assert_refused(world.token_plaintext)


def test_an_expired_token_is_refused(world):
    PersonalAccessToken.objects.filter(pk=world.token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    _assert_refused(world.token_plaintext)


def test_a_token_expiry_in_the_past_is_refused_at_creation(client, world, owner):
    client.force_login(owner)
    response = client.post(
        f"{API}/tokens/",
        {"name": "old", "expires_at": "2000-01-01T00:00:00Z"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "expires_at" in response.json()


def test_a_token_of_a_deactivated_user_is_refused(world, owner):
    User.objects.filter(pk=owner.pk).update(is_active=False)
    _assert_refused(world.token_plaintext)


@pytest.mark.parametrize(
    "presented",
    [
        "portico_pat_" + "A" * 46,  # wrong checksum
        "not-a-token",
        "portico_pat_",
    ],
)
def test_malformed_tokens_are_refused(world, presented):
    _assert_refused(presented)


def test_an_unknown_well_formed_token_is_refused(world, staff):
    token, plaintext = portal_services.access_token_create(user=staff, name="gone")
    token.delete()
    _assert_refused(plaintext)


def test_a_gateway_api_key_is_refused_with_a_hint(world):
    key = services.credential_create(consumer=world.app, name="gw").key
    response = Client().get(f"{API}/apps/", headers=bearer(key))
    assert response.status_code == 401
    assert "personal access token" in response.json()["detail"]


def test_a_bad_token_is_refused_even_with_a_session(client, world, owner):
    client.force_login(owner)
    response = client.get(f"{API}/apps/", headers=bearer("portico_pat_" + "A" * 46))
    assert response.status_code == 401


def test_last_used_is_written_at_most_once_a_minute(world):
    headers = bearer(world.token_plaintext)
    assert Client().get(f"{API}/apps/", headers=headers).status_code == 200
    world.token.refresh_from_db()
    first = world.token.last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as ctx:
        Client().get(f"{API}/apps/", headers=headers)
    # Not even a conditional UPDATE: a read of the API stays a read.
    assert not [q for q in ctx.captured_queries if q["sql"].startswith("UPDATE")]
    world.token.refresh_from_db()
    assert world.token.last_used_at == first
    earlier = timezone.now() - timedelta(minutes=2)
    PersonalAccessToken.objects.filter(pk=world.token.pk).update(last_used_at=earlier)
    Client().get(f"{API}/apps/", headers=headers)
    world.token.refresh_from_db()
    assert world.token.last_used_at is not None
    assert world.token.last_used_at > earlier + timedelta(minutes=1)


def test_failed_token_checks_are_throttled_per_address(world):
    bad = bearer("portico_pat_" + "A" * 46)
    for _ in range(FAILURES_ALLOWED):
        assert Client().get(f"{API}/apps/", headers=bad).status_code == 401
    assert Client().get(f"{API}/apps/", headers=bad).status_code == 429
    # Even a good token waits: the address is cooling down.
    assert Client().get(f"{API}/apps/", headers=bearer(world.token_plaintext)).status_code == 429
    other = Client(REMOTE_ADDR="10.9.9.9")
    assert other.get(f"{API}/apps/", headers=bearer(world.token_plaintext)).status_code == 200


@pytest.mark.parametrize("endpoint", ["/api/v1/gateway/heartbeat", "/api/v1/gateway/usage"])
def test_a_token_is_refused_by_the_gateway_endpoints(world, staff, endpoint):
    _, token = portal_services.access_token_create(user=staff, name="ops")
    beat = {
        "instance_id": "gw-pat",
        "admin_url": "http://127.0.0.1:18081",
        "applied_revision": None,
        "version": "0.1.0",
        "pid": 1,
        "started_at": time.time(),
    }
    response = Client().post(endpoint, beat, content_type="application/json", headers=bearer(token))
    assert response.status_code in (401, 403)
    assert not GatewayInstance.objects.filter(instance_id="gw-pat").exists()


def test_a_token_is_never_a_gateway_key(world):
    assert not keys.is_well_formed(world.token_plaintext)
    state = compile_state()
    assert keys.hash_key(world.token_plaintext) not in state.credentials
    assert world.token.token_hash not in state.credentials


def test_a_token_does_not_open_the_admin(world, staff):
    _, token = portal_services.access_token_create(user=staff, name="ops")
    response = Client().get("/admin/", headers=bearer(token))
    assert response.status_code == 302
    assert "/login/" in response["Location"]
    response = Client().get("/admin/portal/personalaccesstoken/", headers=bearer(token))
    assert response.status_code in (302, 404)


# ---------------------------------------------------------------------------------------
# Query counts: lists do not grow with their rows.


def _queries(client: Client, url: str, **extra: Any) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, **extra)
    assert response.status_code == 200
    return len(ctx.captured_queries)


def test_lists_take_a_fixed_number_of_queries(world, owner, staff):
    owner_client = Client()
    owner_client.force_login(owner)
    staff_client = Client()
    staff_client.force_login(staff)
    urls = [
        (Client(), f"{API}/products/"),
        (owner_client, f"{API}/apps/"),
        (owner_client, f"{API}/apps/{world.app.pk}/keys/"),
        (owner_client, f"{API}/apps/{world.app.pk}/subscriptions/"),
        (owner_client, f"{API}/tokens/"),
        (staff_client, f"{API}/subscriptions/"),
    ]
    before = [_queries(client, url) for client, url in urls]
    for i in range(4):
        extra = make_catalog(slug=f"more{i}")
        app = services.consumer_create(owner=owner, name=f"more-{i}")
        services.credential_create(consumer=world.app, name=f"more-{i}")
        services.subscription_create(consumer=world.app, product=extra.product, plan=extra.plan)
        services.subscription_create(consumer=app, product=extra.product, plan=extra.plan)
        portal_services.access_token_create(user=owner, name=f"more-{i}")
    after = [_queries(client, url) for client, url in urls]
    assert after == before


# ---------------------------------------------------------------------------------------
# The OpenAPI schema and the docs


def test_the_openapi_schema_renders_and_is_valid(client, db):
    from drf_spectacular.validation import validate_schema

    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)
    paths = set(schema["paths"])
    for expected in (
        "/api/v1/products/",
        "/api/v1/products/{slug}/",
        "/api/v1/apps/",
        "/api/v1/apps/{id}/",
        "/api/v1/apps/{id}/keys/",
        "/api/v1/keys/{id}/rotate/",
        "/api/v1/apps/{id}/subscriptions/",
        "/api/v1/subscriptions/",
        "/api/v1/subscriptions/{id}/reject/",
        "/api/v1/tokens/",
        "/api/v1/tokens/{id}/revoke/",
    ):
        assert expected in paths
    assert len(paths) == len(api_urls.urlpatterns)
    # The gateways' own endpoints are not part of the public API.
    assert not any("gateway" in p for p in paths)
    schemes = schema["components"]["securitySchemes"]
    assert schemes["personalAccessToken"]["scheme"] == "bearer"
    # The input serializers, hence the documented request bodies, name only their fields.
    app_input = schema["components"]["schemas"]["AppListInput"]
    assert set(app_input["properties"]) == {"name"}


def test_the_schema_generates_without_warnings_from_the_whole_url_conf(db, tmp_path):
    # What CI would run: the project's URL conf, gateways' endpoints left out by the hook.
    out = tmp_path / "schema.json"
    call_command(
        "spectacular",
        "--fail-on-warn",
        "--validate",
        "--format=openapi-json",
        f"--urlconf={__name__}",
        f"--file={out}",
    )
    paths = json.loads(out.read_text())["paths"]
    assert len(paths) == len(api_urls.urlpatterns)
    assert not any("gateway" in p for p in paths)


def test_the_docs_page_lists_the_operations_from_local_assets(client, db):
    response = client.get("/api/docs/")
    assert response.status_code == 200
    body = response.json()
    assert body["schema"].endswith("/api/schema/")
    operations = {(o["method"], o["path"]) for o in body["operations"]}
    assert ("POST", "/api/v1/apps/{id}/keys/") in operations
    assert ("GET", "/api/v1/products/") in operations
    html = client.get("/api/docs/", HTTP_ACCEPT="text/html")
    assert html.status_code == 200
    assert html["Content-Type"].startswith("text/html")
    page = html.content.decode()
    assets = re.findall(r'<script[^>]*\ssrc="([^"]+)"', page) + re.findall(
        r'<link[^>]*\shref="([^"]+)"', page
    )
    assert any(asset.startswith("/static/rest_framework/") for asset in assets)
    # Nothing is loaded from another host: every script and stylesheet is ours.
    assert all(asset.startswith("/") and not asset.startswith("//") for asset in assets)
