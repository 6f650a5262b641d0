"""The Django admin: every model reachable, secrets write-only, lists without N+1."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.models import Upstream
from consumers import services
from gatewaysync.models import GatewayInstance

MODELS = [
    "portal_portal",
    "portal_membership",
    "catalog_product",
    "catalog_upstream",
    "catalog_plan",
    "catalog_modelroute",
    "catalog_mcpserver",
    "catalog_mcptool",
    "consumers_consumer",
    "consumers_credential",
    "consumers_subscription",
    "consumers_usagerecord",
    "gatewaysync_revision",
    "gatewaysync_gatewayinstance",
]


@pytest.fixture
def admin_client_(client, staff):
    client.force_login(staff)
    return client


def empty_inline(prefix: str, initial: int = 0) -> dict[str, str]:
    """The management form of an inline formset that submits no rows."""
    return {
        f"{prefix}-TOTAL_FORMS": str(initial),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_an_admin_list(admin_client_, subscription, model):
    response = admin_client_.get(reverse(f"admin:{model}_changelist"))
    assert response.status_code == 200


def test_admin_needs_staff(client, owner):
    client.force_login(owner)
    response = client.get(reverse("admin:catalog_upstream_changelist"))
    assert response.status_code == 302


def test_upstream_secret_is_write_only(admin_client_, catalog):
    url = reverse("admin:catalog_upstream_change", args=[catalog.upstream.pk])
    page = admin_client_.get(url).content.decode()
    assert "sk-upstream-" not in page
    response = admin_client_.post(
        url,
        {
            "name": catalog.upstream.name,
            "vendor": "openai",
            "base_url": catalog.upstream.base_url,
            "timeout_seconds": "30",
            "secret": "sk-rotated-canary-0001",
            **empty_inline("pool_credentials"),
        },
    )
    assert response.status_code == 302
    upstream = Upstream.objects.get(pk=catalog.upstream.pk)
    assert "sk-rotated-canary" not in upstream.secret_ciphertext
    from catalog.crypto import decrypt_secret

    assert decrypt_secret(upstream.secret_ciphertext) == "sk-rotated-canary-0001"
    assert "sk-rotated-canary" not in admin_client_.get(url).content.decode()


def test_credential_page_never_shows_the_key(admin_client_, consumer):
    issued = services.credential_create(consumer=consumer, name="k")
    for url in (
        reverse("admin:consumers_credential_changelist"),
        reverse("admin:consumers_credential_change", args=[issued.credential.pk]),
        reverse("admin:consumers_consumer_change", args=[consumer.pk]),
    ):
        page = admin_client_.get(url).content.decode()
        assert issued.key not in page
        assert issued.credential.key_hash not in page


def test_revoke_action_revokes(admin_client_, consumer):
    issued = services.credential_create(consumer=consumer, name="k")
    admin_client_.post(
        reverse("admin:consumers_credential_changelist"),
        {"action": "revoke", "_selected_action": [issued.credential.pk]},
    )
    issued.credential.refresh_from_db()
    assert issued.credential.revoked_at is not None


def test_gateway_instance_list_shows_lag_without_a_query_per_row(admin_client_, db):
    now = timezone.now()
    for i in range(3):
        GatewayInstance.objects.create(
            instance_id=f"gw-{i}",
            admin_url="http://127.0.0.1:1",
            applied_revision=i,
            last_seen_at=now,
        )
    url = reverse("admin:gatewaysync_gatewayinstance_changelist")
    with CaptureQueriesContext(connection) as few:
        admin_client_.get(url)
    for i in range(3, 30):
        GatewayInstance.objects.create(
            instance_id=f"gw-{i}",
            admin_url="http://127.0.0.1:1",
            applied_revision=i,
            last_seen_at=now,
        )
    with CaptureQueriesContext(connection) as many:
        response = admin_client_.get(url)
    assert response.status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries)
    assert "Lag (revisions)" in response.content.decode()
