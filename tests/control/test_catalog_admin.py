"""The catalog admin for multi-vendor routing: credential pools, vendor options, model
routes with further targets and fallbacks.

What must hold: secrets go in and never come out (no page shows them, encrypted at
rest); what an admin saves is validated with messages that say what to do; every save
the gateway depends on publishes a revision, and that revision is one the gateway
accepts.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.urls import reverse

from catalog import services
from catalog.crypto import decrypt_secret
from catalog.models import ModelRoute, RouteTarget, Upstream, UpstreamCredential
from gateway import revision as gw_revision
from gatewaysync import compiler
from gatewaysync import services as sync_services
from gatewaysync.models import PendingChange
from portal.models import AuditEvent
from tests.conftest import Catalog
from tests.control.test_admin import empty_inline

MAIN_SECRET = "sk-upstream-" + "x" * 24  # make_catalog's
POOL_CANARY = "sk-pool-canary-" + "q" * 20
AWS_SECRET = "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture
def admin_client_(client, staff):
    client.force_login(staff)
    return client


def full_compiles_requested() -> int:
    return PendingChange.objects.filter(credential_id__isnull=True).count()


def accepted_revision() -> gw_revision.AppliedRevision:
    """Publish now and build the result as a gateway would."""
    rev = sync_services.revision_publish(keep=5)
    assert rev is not None
    return gw_revision.build(
        gw_revision.decode_revision(bytes(rev.document or b"")), compiler.gateway_keys()
    )


def upstream_form(upstream: Upstream, **changes: Any) -> dict[str, Any]:
    data = {
        "name": upstream.name,
        "vendor": upstream.vendor,
        "base_url": upstream.base_url,
        "timeout_seconds": str(upstream.timeout_seconds),
        "options_api_version": upstream.options.get("api_version", ""),
        "options_region": upstream.options.get("region", ""),
        **empty_inline("pool_credentials"),
    }
    data.update(changes)
    return data


def pool_rows(*rows: dict[str, str], initial: int = 0) -> dict[str, str]:
    data = empty_inline("pool_credentials", initial)
    data["pool_credentials-TOTAL_FORMS"] = str(len(rows))
    for i, row in enumerate(rows):
        data.update({f"pool_credentials-{i}-{key}": value for key, value in row.items()})
    return data


def route_form(catalog: Catalog, *targets: dict[str, str], **changes: Any) -> dict[str, Any]:
    data = {
        "product": str(catalog.product.pk),
        "name": "routed",
        "kind": "chat",
        "upstream": str(catalog.upstream.pk),
        "upstream_model": "primary",
        "weight": "2",
        "strategy": "weighted",
        "fallbacks": "",
        "context_window": "",
        "first_token_seconds": "",
        "max_output_tokens": "",
        "input_price_per_mtok": "",
        "output_price_per_mtok": "",
        **empty_inline("extra_targets"),
    }
    data["extra_targets-TOTAL_FORMS"] = str(len(targets))
    for i, target in enumerate(targets):
        data.update({f"extra_targets-{i}-{key}": value for key, value in target.items()})
    data.update(changes)
    return data


def assert_no_secret_in(client, urls: list[str], secrets: list[str]) -> None:
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        for secret in secrets:
            assert secret not in page, url


# Credential pools ------------------------------------------------------------------------


def test_pool_credentials_are_write_only(admin_client_, catalog):
    url = reverse("admin:catalog_upstream_change", args=[catalog.upstream.pk])
    requested = full_compiles_requested()
    response = admin_client_.post(
        url,
        upstream_form(
            catalog.upstream,
            **pool_rows({"label": "team b", "secret": POOL_CANARY, "enabled": "on"}),
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert full_compiles_requested() > requested
    credential = UpstreamCredential.objects.get(upstream=catalog.upstream)
    assert POOL_CANARY not in credential.secret_ciphertext
    assert decrypt_secret(credential.secret_ciphertext) == POOL_CANARY
    assert AuditEvent.objects.filter(action="upstream.pool_add").exists()

    route = ModelRoute.objects.get(product=catalog.product)
    assert_no_secret_in(
        admin_client_,
        [
            url,
            reverse("admin:catalog_upstream_changelist"),
            reverse("admin:catalog_product_change", args=[catalog.product.pk]),
            reverse("admin:catalog_modelroute_change", args=[route.pk]),
            reverse("admin:catalog_modelroute_changelist"),
            reverse("admin:catalog_upstream_history", args=[catalog.upstream.pk]),
            reverse("admin:catalog_upstream_delete", args=[catalog.upstream.pk]),
            reverse("admin:portal_auditevent_changelist"),
        ],
        [MAIN_SECRET, POOL_CANARY],
    )
    assert all(POOL_CANARY not in entry.change_message for entry in LogEntry.objects.all())
    # The page flags that a secret is set, and renders no value into the password input.
    page = admin_client_.get(url).content.decode()
    assert 'name="pool_credentials-0-secret"' in page
    assert 'type="password" name="pool_credentials-0-secret"' in page

    live = accepted_revision()
    [target] = live.models["chat-model"].targets
    assert [e.credential for e in target.endpoints] == [MAIN_SECRET, POOL_CANARY]


def test_pool_credential_secret_is_replaced_only_when_one_is_typed(admin_client_, catalog):
    credential = services.upstream_credential_add(
        upstream=catalog.upstream, label="team b", secret=POOL_CANARY
    )
    url = reverse("admin:catalog_upstream_change", args=[catalog.upstream.pk])
    row = {"id": str(credential.pk), "upstream": str(catalog.upstream.pk), "label": "team c"}
    response = admin_client_.post(url, upstream_form(catalog.upstream, **pool_rows(row, initial=1)))
    assert response.status_code == 302, response.content.decode()[:2000]
    credential.refresh_from_db()
    assert (credential.label, credential.enabled) == ("team c", False)  # unchecked: disabled
    assert decrypt_secret(credential.secret_ciphertext) == POOL_CANARY

    row.update({"secret": "sk-pool-rotated-" + "r" * 20, "enabled": "on"})
    response = admin_client_.post(url, upstream_form(catalog.upstream, **pool_rows(row, initial=1)))
    assert response.status_code == 302
    credential.refresh_from_db()
    assert credential.enabled
    assert decrypt_secret(credential.secret_ciphertext) == "sk-pool-rotated-" + "r" * 20

    row["DELETE"] = "on"
    response = admin_client_.post(url, upstream_form(catalog.upstream, **pool_rows(row, initial=1)))
    assert response.status_code == 302
    assert not UpstreamCredential.objects.exists()
    assert AuditEvent.objects.filter(action="upstream.pool_remove").exists()


def test_a_new_pool_credential_needs_its_secret(admin_client_, catalog):
    url = reverse("admin:catalog_upstream_change", args=[catalog.upstream.pk])
    response = admin_client_.post(
        url, upstream_form(catalog.upstream, **pool_rows({"label": "no secret", "enabled": "on"}))
    )
    assert response.status_code == 200
    assert "A pool credential needs its secret." in response.content.decode()
    assert not UpstreamCredential.objects.exists()


# Vendors: options and secret shapes -----------------------------------------------------------


def test_azure_upstream_is_added_with_its_api_version(admin_client_, db):
    response = admin_client_.post(
        reverse("admin:catalog_upstream_add"),
        {
            "name": "azure-east",
            "vendor": "azure_openai",
            "base_url": "https://east.openai.azure.com",
            "timeout_seconds": "60",
            "secret": "azure-key-" + "k" * 20,
            "options_api_version": "2024-10-21",
            "options_region": "",
            **empty_inline("pool_credentials"),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    upstream = Upstream.objects.get(name="azure-east")
    assert upstream.options == {"api_version": "2024-10-21"}
    page = admin_client_.get(reverse("admin:catalog_upstream_change", args=[upstream.pk]))
    body = page.content.decode()
    assert "API version (Azure OpenAI)" in body
    assert 'value="2024-10-21"' in body
    assert "azure-key-" not in body


def test_vendor_options_errors_are_shown_on_the_form(admin_client_, catalog):
    url = reverse("admin:catalog_upstream_change", args=[catalog.upstream.pk])
    response = admin_client_.post(url, upstream_form(catalog.upstream, options_region="us-east-1"))
    assert response.status_code == 200
    assert "OpenAI takes no region option; remove it." in response.content.decode()
    response = admin_client_.post(
        url,
        upstream_form(
            catalog.upstream,
            vendor="bedrock",
            base_url="https://bedrock.internal.example",
            secret=AWS_SECRET,
        ),
    )
    assert response.status_code == 200
    assert "AWS Bedrock needs a region" in response.content.decode()
    catalog.upstream.refresh_from_db()
    assert (catalog.upstream.vendor, catalog.upstream.options) == ("openai", {})


def test_bedrock_secrets_must_be_aws_credentials(admin_client_, catalog):
    url = reverse("admin:catalog_upstream_change", args=[catalog.upstream.pk])
    bedrock = {
        "vendor": "bedrock",
        "base_url": "https://bedrock-runtime.us-east-1.amazonaws.com",
    }
    # Switching the vendor: the stored key was an OpenAI one, so it must be typed anew.
    response = admin_client_.post(url, upstream_form(catalog.upstream, **bedrock))
    assert response.status_code == 200
    assert "the stored secret was set for another vendor" in response.content.decode()
    response = admin_client_.post(
        url, upstream_form(catalog.upstream, secret="sk-not-aws-" + "n" * 20, **bedrock)
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "An AWS Bedrock secret is" in body
    assert "sk-not-aws-" not in body  # neither quoted by the message nor rendered back
    response = admin_client_.post(
        url,
        upstream_form(
            catalog.upstream,
            secret=AWS_SECRET,
            **bedrock,
            **pool_rows({"label": "second", "secret": "plain-api-key", "enabled": "on"}),
        ),
    )
    assert response.status_code == 200
    assert "An AWS Bedrock secret is" in response.content.decode()
    response = admin_client_.post(
        url,
        upstream_form(
            catalog.upstream,
            secret=AWS_SECRET,
            **bedrock,
            **pool_rows({"label": "second", "secret": AWS_SECRET + ":token", "enabled": "on"}),
        ),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    catalog.upstream.refresh_from_db()
    assert catalog.upstream.vendor == "bedrock"
    assert decrypt_secret(catalog.upstream.secret_ciphertext) == AWS_SECRET


# Model routes ----------------------------------------------------------------------------------


def test_route_with_targets_and_a_fallback_added_in_the_admin_is_served(admin_client_, catalog):
    azure = services.upstream_create(
        name="azure-east",
        vendor="azure_openai",
        base_url="https://east.openai.azure.com",
        secret="azure-key-" + "k" * 20,
    )
    requested = full_compiles_requested()
    response = admin_client_.post(
        reverse("admin:catalog_modelroute_add"),
        route_form(
            catalog,
            {
                "upstream": str(azure.pk),
                "upstream_model": "deployment-a",
                "weight": "1",
                "position": "1",
            },
            {
                "upstream": str(catalog.upstream.pk),
                "upstream_model": "spare",
                "weight": "0",
                "position": "2",
            },
            fallbacks="chat-model",
            strategy="lowest_latency",
            context_window="32000",
            first_token_seconds="4",
            input_price_per_mtok="0.5",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert full_compiles_requested() > requested
    route = ModelRoute.objects.get(name="routed")
    assert list(route.extra_targets.values_list("upstream_model", "weight")) == [
        ("deployment-a", 1),
        ("spare", 0),
    ]
    live = accepted_revision()
    served = live.models["routed"]
    assert [t.label for t in served.targets] == [
        "upstream-chat/primary",
        "azure-east/deployment-a",
        "upstream-chat/spare",
    ]
    assert served.fallbacks == ("chat-model",)
    assert served.spec.strategy == "lowest_latency"
    # And it is searchable by its name, as routes added on the product's page are.
    catalog.product.refresh_from_db()
    assert "routed" in catalog.product.search_document


def test_route_form_says_what_is_wrong_with_fallbacks_and_targets(admin_client_, catalog):
    services.model_route_create(
        product=catalog.product,
        name="embedder",
        upstream=catalog.upstream,
        upstream_model="e",
        kind="embeddings",
    )
    response = admin_client_.post(
        reverse("admin:catalog_modelroute_add"),
        route_form(
            catalog,
            {
                "upstream": str(catalog.upstream.pk),
                "upstream_model": "primary",
                "weight": "1",
                "position": "1",
            },
            fallbacks="embedder, nowhere",
        ),
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert (
        "&#x27;embedder&#x27; serves embeddings; a chat model falls back only to chat models."
        in body
    )
    assert "&#x27;nowhere&#x27; is not another model of this product." in body
    assert "This is the first target already" in body
    assert not ModelRoute.objects.filter(name="routed").exists()


def test_renaming_or_deleting_a_route_keeps_fallbacks_valid(admin_client_, catalog):
    large = services.model_route_create(
        product=catalog.product, name="chat-large", upstream=catalog.upstream, upstream_model="l"
    )
    route = ModelRoute.objects.get(name="chat-model")
    services.model_route_set_fallbacks(route=route, fallbacks=["chat-large"])
    change = reverse("admin:catalog_modelroute_change", args=[large.pk])
    data = route_form(catalog, name="chat-xl", upstream_model="l")
    response = admin_client_.post(change, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    route.refresh_from_db()
    assert route.fallbacks == ["chat-xl"]

    response = admin_client_.post(
        reverse("admin:catalog_modelroute_delete", args=[large.pk]), {"post": "yes"}, follow=True
    )
    assert response.status_code == 200
    assert (
        "Removed the fallback chat-xl from chat-model: no other chat model of this product "
        "has that name now."
    ) in response.content.decode()
    route.refresh_from_db()
    assert route.fallbacks == []
    assert accepted_revision().models["chat-model"].fallbacks == ()


def test_product_page_lists_routes_compactly_with_a_link_to_each(admin_client_, catalog):
    route = ModelRoute.objects.get(name="chat-model")
    RouteTarget.objects.create(route=route, upstream=catalog.upstream, upstream_model="b")
    page = admin_client_.get(reverse("admin:catalog_product_change", args=[catalog.product.pk]))
    body = page.content.decode()
    assert "Chat · 2 targets, weighted random" in body
    assert reverse("admin:catalog_modelroute_change", args=[route.pk]) in body


def test_plan_token_quota_is_edited_in_the_admin(admin_client_, catalog):
    url = reverse("admin:catalog_plan_change", args=[catalog.plan.pk])
    data = {
        "product": str(catalog.product.pk),
        "name": "Free",
        "requests_per_minute": "60",
        "tokens_per_minute": "",
        "tokens_per_day": "",
        "token_quota": "1000000",
    }
    requested = full_compiles_requested()
    assert admin_client_.post(url, data).status_code == 302
    assert full_compiles_requested() > requested
    catalog.plan.refresh_from_db()
    assert catalog.plan.token_quota == 1_000_000
    response = admin_client_.post(url, {**data, "token_quota": "0"})
    assert response.status_code == 200
    catalog.plan.refresh_from_db()
    assert catalog.plan.token_quota == 1_000_000
