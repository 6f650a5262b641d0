"""Multi-vendor model routing on the control plane: what the catalog accepts and what the
compiler sends (credential pools, targets, fallbacks, vendor options, token quotas).

Every compiled revision here is also built the way a gateway builds it
(``gateway.revision.build``), so "accepted by the gateway" is checked, not assumed.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from catalog import services
from catalog.models import ModelRoute, Upstream, UpstreamCredential, validate_vendor_secret
from catalog.services import TargetSpec
from consumers import services as consumer_services
from gateway import revision as gw_revision
from gateway.providers import VENDORS
from gateway.schema import MCP_VENDOR, NON_MODEL_VENDORS
from gatewaysync import compiler
from gatewaysync import services as sync_services
from gatewaysync.models import Revision
from tests.conftest import Catalog, make_catalog

POOL_SECRETS = ["sk-pool-one-" + "a" * 20, "sk-pool-two-" + "b" * 20]
# Upstreams of these serve model routes; an MCP server's serves its MCP product.
MODEL_VENDORS = sorted(set(Upstream.Vendor.values) - NON_MODEL_VENDORS)
AWS_SECRET = "AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def publish() -> Revision | None:
    return sync_services.revision_publish(keep=5)


def built(rev: Revision) -> gw_revision.AppliedRevision:
    """Decode and validate exactly as a gateway does."""
    return gw_revision.build(
        gw_revision.decode_revision(bytes(rev.document or b"")), compiler.gateway_keys()
    )


def azure(name: str = "azure-east", **options: str) -> Upstream:
    return services.upstream_create(
        name=name,
        vendor=Upstream.Vendor.AZURE_OPENAI,
        base_url="https://east.openai.azure.com",
        secret="azure-key-" + "z" * 20,
        options=options or {"api_version": "2024-10-21"},
    )


@pytest.fixture
def routed(catalog: Catalog) -> Catalog:
    """``chat-model`` of ``catalog`` with a pool, a second target on Azure and a fallback;
        an embeddings model; a token quota on the plan; consumer affinity on ``chat-model`` and a
    five-minute response cache on the product."""
    for label, secret in zip(["one", "two"], POOL_SECRETS, strict=True):
        services.upstream_credential_add(upstream=catalog.upstream, label=label, secret=secret)
    services.model_route_create(
        product=catalog.product,
        name="chat-large",
        upstream=catalog.upstream,
        upstream_model="large",
        context_window=128_000,
    )
    route = ModelRoute.objects.get(name="chat-model")
    route.weight = 3
    route.strategy = ModelRoute.Strategy.LEAST_BUSY
    route.context_window = 8192
    route.first_token_seconds = 2.5
    route.consumer_affinity = True
    route.save()
    route.extra_targets.create(
        upstream=azure(), upstream_model="gpt-4o-mini-deployment", weight=1, position=1
    )
    services.model_route_set_fallbacks(route=route, fallbacks=["chat-large"])
    services.model_route_create(
        product=catalog.product,
        name="chat-embed",
        upstream=catalog.upstream,
        upstream_model="embed",
        kind=ModelRoute.Kind.EMBEDDINGS,
    )
    catalog.plan.token_quota = 5_000_000_000
    catalog.plan.save(update_fields=["token_quota"])
    catalog.product.response_cache_ttl_seconds = 300
    catalog.product.save(update_fields=["response_cache_ttl_seconds"])
    return catalog


# The compiled revision ---------------------------------------------------------------


def test_vendor_choices_are_the_gateways_vendors():
    assert set(MODEL_VENDORS) == set(VENDORS)
    assert set(Upstream.Vendor.values) & NON_MODEL_VENDORS == NON_MODEL_VENDORS  # mcp, rest


def test_a_model_route_cannot_go_to_an_mcp_server(catalog):
    server = services.upstream_create(
        name="tools", vendor=MCP_VENDOR, base_url="https://mcp.example.com/mcp"
    )
    with pytest.raises(ValidationError) as caught:
        services.model_route_create(
            product=catalog.product, name="mcp-model", upstream=server, upstream_model="x"
        )
    assert set(caught.value.message_dict) == {"upstream"}


def test_revision_carries_pools_targets_fallbacks_options_and_quota(routed, subscription):
    rev = publish()
    assert rev is not None
    live = built(rev)
    doc = live.doc
    upstream = doc.upstreams[str(routed.upstream.pk)]
    assert upstream.name == "upstream-chat"
    keys = compiler.gateway_keys()
    assert [keys.unseal(s) for s in upstream.secrets] == POOL_SECRETS
    azure_id = str(Upstream.objects.get(name="azure-east").pk)
    assert doc.upstreams[azure_id].options == {"api_version": "2024-10-21"}
    assert doc.upstreams[azure_id].vendor == "azure_openai"

    spec = doc.products["chat"].models["chat-model"]
    assert (spec.upstream, spec.upstream_model, spec.weight) == (
        str(routed.upstream.pk),
        "mock",
        3,
    )
    assert [(t.upstream, t.upstream_model, t.weight) for t in spec.targets] == [
        (azure_id, "gpt-4o-mini-deployment", 1)
    ]
    assert spec.strategy == "least_busy"
    assert spec.fallbacks == ["chat-large"]
    assert (spec.kind, spec.context_window, spec.first_token_seconds) == ("chat", 8192, 2.5)
    assert spec.affinity == "consumer"
    assert doc.products["chat"].models["chat-large"].affinity == "none"
    cache = doc.products["chat"].cache
    assert cache is not None
    assert (cache.ttl_seconds, cache.shared) == (300, False)
    assert doc.products["chat"].models["chat-embed"].kind == "embeddings"
    plan = doc.consumers[str(subscription.consumer_id)].subscriptions["chat"].plan
    assert plan.token_quota == 5_000_000_000

    # What the gateway made of it: the pool opened in order, both targets, the fallback.
    route = live.models["chat-model"]
    first, second = route.targets
    assert [e.credential for e in first.endpoints] == ["sk-upstream-" + "x" * 24, *POOL_SECRETS]
    assert second.label == "azure-east/gpt-4o-mini-deployment"
    assert second.endpoints[0].options == {"api_version": "2024-10-21"}
    assert route.fallbacks == ("chat-large",)


def test_pool_secrets_are_sealed_in_the_document(routed):
    rev = publish()
    assert rev is not None
    document = bytes(rev.document or b"")
    for secret in POOL_SECRETS:
        assert secret.encode() not in document


def test_disabled_and_secretless_pool_credentials_are_left_out(routed):
    one = UpstreamCredential.objects.get(label="one")
    services.upstream_credential_set_enabled(credential=one, enabled=False)
    UpstreamCredential.objects.create(upstream=routed.upstream, label="empty")
    state = compiler.compile_state()
    keys = compiler.gateway_keys()
    secrets = state.upstreams[str(routed.upstream.pk)].secrets
    assert [keys.unseal(s) for s in secrets] == [POOL_SECRETS[1]]


# (base URL, options, secret) where the defaults would not do.
VENDOR_UPSTREAMS: dict[str, tuple[str, dict[str, str], str]] = {
    "bedrock": ("https://bedrock-runtime.us-west-2.amazonaws.com", {}, AWS_SECRET),
    "azure_openai": ("https://east.openai.azure.com", {"api_version": "2024-10-21"}, "az-key"),
}


@pytest.mark.parametrize("vendor", MODEL_VENDORS)
def test_every_vendor_compiles_into_a_revision_the_gateway_accepts(catalog, vendor):
    base_url, options, secret = VENDOR_UPSTREAMS.get(
        vendor, ("https://api.example.com/v1", {}, "sk-vendor-key")
    )
    upstream = services.upstream_create(
        name=f"{vendor}-upstream", vendor=vendor, base_url=base_url, secret=secret, options=options
    )
    services.upstream_credential_add(upstream=upstream, label="second", secret=secret + "2")
    services.model_route_create(
        product=catalog.product,
        name=f"{vendor}-model",
        upstream=upstream,
        upstream_model="some-model",
        targets=[TargetSpec(upstream=catalog.upstream, upstream_model="mock")],
    )
    rev = publish()
    assert rev is not None
    [first, second] = built(rev).models[f"{vendor}-model"].targets
    assert [e.credential for e in first.endpoints] == [secret, secret + "2"]
    assert first.endpoints[0].options == options
    assert second.label == "upstream-chat/mock"


def test_upstream_used_only_by_a_further_target_is_compiled(catalog):
    elsewhere = azure("azure-only-extra")
    ModelRoute.objects.get(name="chat-model").extra_targets.create(
        upstream=elsewhere, upstream_model="deployment"
    )
    rev = publish()
    assert rev is not None
    assert str(elsewhere.pk) in built(rev).doc.upstreams


def test_stale_fallbacks_are_left_out_rather_than_failing_the_revision(routed):
    # As if a route had been deleted behind the admin's back (a raw query, a shell).
    ModelRoute.objects.filter(name="chat-model").update(fallbacks=["chat-large", "gone"])
    ModelRoute.objects.filter(name="chat-large").update(kind="embeddings")
    rev = publish()
    assert rev is not None
    assert built(rev).doc.products["chat"].models["chat-model"].fallbacks == []


# The content hash ----------------------------------------------------------------------


def test_content_hash_is_stable_while_nothing_changes(routed):
    assert compiler.compile_state().content_hash == compiler.compile_state().content_hash
    assert publish() is not None
    assert publish() is None


def test_a_new_pool_secret_changes_the_content_hash(routed):
    before = compiler.compile_state().content_hash
    two = UpstreamCredential.objects.get(label="two")
    services.upstream_credential_set_secret(credential=two, secret="sk-pool-rotated-" + "c" * 20)
    assert compiler.compile_state().content_hash != before


def test_the_same_pool_secret_set_again_keeps_the_content_hash(routed):
    before = compiler.compile_state().content_hash
    two = UpstreamCredential.objects.get(label="two")
    # A fresh envelope and a fresh seal, the same secret: nothing the gateway sees differs.
    services.upstream_credential_set_secret(credential=two, secret=POOL_SECRETS[1])
    two.label = "renamed"
    two.save(update_fields=["label"])
    assert compiler.compile_state().content_hash == before


def test_adding_removing_and_disabling_pool_credentials_change_the_content_hash(routed):
    hashes = {compiler.compile_state().content_hash}
    added = services.upstream_credential_add(
        upstream=routed.upstream, label="three", secret="sk-pool-three-" + "d" * 20
    )
    hashes.add(compiler.compile_state().content_hash)
    services.upstream_credential_set_enabled(credential=added, enabled=False)
    assert compiler.compile_state().content_hash in hashes  # as before it was added
    services.upstream_credential_remove(credential=UpstreamCredential.objects.get(label="one"))
    hashes.add(compiler.compile_state().content_hash)
    assert len(hashes) == 3


def test_stored_document_hashes_as_its_compile(routed, subscription):
    rev = publish()
    assert rev is not None
    doc = gw_revision.decode_revision(bytes(rev.document or b""))
    assert compiler.document_content_hash(doc) == rev.content_hash


def test_key_issued_beside_pools_still_travels_as_a_delta(routed, subscription):
    # Pools are sealed afresh on every compile: only opened secrets may be compared.
    assert publish() is not None
    consumer_services.credential_create(consumer=subscription.consumer, name="new")
    rev = publish()
    assert rev is not None
    assert rev.delta is not None


def test_a_pool_change_is_never_published_as_a_delta(routed, subscription):
    first = publish()
    assert first is not None
    two = UpstreamCredential.objects.get(label="two")
    services.upstream_credential_set_secret(credential=two, secret="sk-pool-rotated-" + "e" * 20)
    rev = publish()
    assert rev is not None
    assert rev.delta is None
    keys = compiler.gateway_keys()
    upstream = built(rev).doc.upstreams[str(routed.upstream.pk)]
    assert keys.unseal(upstream.secrets[1]) == "sk-pool-rotated-" + "e" * 20


def test_compile_takes_the_same_queries_however_many_routes_targets_and_pools(catalog):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            compiler.compile_state()
        return len(queries)

    few = count()
    for i in range(6):
        extra = make_catalog(slug=f"more-{i}")
        services.upstream_credential_add(
            upstream=extra.upstream, label="pool", secret=f"sk-pool-{i}-" + "p" * 20
        )
        target = azure(f"azure-{i}")
        services.upstream_credential_add(upstream=target, label="pool", secret="azure-pool-" * 3)
        route = ModelRoute.objects.get(name=f"more-{i}-model")
        route.extra_targets.create(upstream=target, upstream_model="d1", position=1)
        route.extra_targets.create(upstream=catalog.upstream, upstream_model="d2", position=2)
    assert count() == few


# Validation ----------------------------------------------------------------------------


def fallback_errors(route: ModelRoute, fallbacks: list[str]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        services.model_route_set_fallbacks(route=route, fallbacks=fallbacks)
    return caught.value.message_dict["fallbacks"]


def test_fallbacks_must_be_other_models_of_the_same_product_and_kind(routed):
    route = ModelRoute.objects.get(name="chat-model")
    other = make_catalog(slug="other")
    assert fallback_errors(route, ["nope"]) == ["'nope' is not another model of this product."]
    assert fallback_errors(route, ["other-model"]) == [
        "'other-model' is not another model of this product."
    ]
    assert other.product.pk != routed.product.pk
    assert fallback_errors(route, ["chat-model"]) == ["A model cannot fall back to itself."]
    assert fallback_errors(route, ["chat-large", "chat-large"]) == ["'chat-large' is listed twice."]
    assert fallback_errors(route, ["chat-embed"]) == [
        "'chat-embed' serves embeddings; a chat model falls back only to chat models."
    ]
    route.refresh_from_db()
    assert route.fallbacks == ["chat-large"]


def test_fallbacks_follow_renames_and_drop_deleted_models(routed):
    large = ModelRoute.objects.get(name="chat-large")
    large.name = "chat-xl"
    large.save(update_fields=["name"])
    assert (
        services.product_tidy_fallbacks(product=routed.product, renamed={"chat-large": "chat-xl"})
        == []
    )
    assert ModelRoute.objects.get(name="chat-model").fallbacks == ["chat-xl"]
    large.delete()
    notes = services.product_tidy_fallbacks(product=routed.product)
    assert notes == [
        "Removed the fallback chat-xl from chat-model: no other chat model of this product "
        "has that name now."
    ]
    assert ModelRoute.objects.get(name="chat-model").fallbacks == []


def option_errors(vendor: str, base_url: str, options: dict[str, str]) -> list[str]:
    upstream = Upstream(name="u", vendor=vendor, base_url=base_url, options=options)
    with pytest.raises(ValidationError) as caught:
        upstream.full_clean()
    return caught.value.message_dict["options"]


def valid_options(vendor: str, base_url: str, options: dict[str, str]) -> None:
    Upstream(name="u", vendor=vendor, base_url=base_url, options=options).full_clean()


def test_azure_takes_an_optional_api_version(db):
    valid_options("azure_openai", "https://x.openai.azure.com", {})
    valid_options("azure_openai", "https://x.openai.azure.com", {"api_version": "2024-10-21"})
    valid_options(
        "azure_openai", "https://x.openai.azure.com", {"api_version": "2025-04-01-preview"}
    )
    assert option_errors(
        "azure_openai", "https://x.openai.azure.com", {"api_version": "latest"}
    ) == [
        "The api_version is a date like 2024-10-21 (or 2025-04-01-preview). Leave it empty to "
        "use Azure's v1 API."
    ]
    assert option_errors("azure_openai", "https://x.openai.azure.com", {"region": "us-east-1"}) == [
        "Azure OpenAI takes only the api_version option, not region."
    ]


def test_bedrock_needs_a_region_unless_its_url_names_one(db):
    named = "https://bedrock-runtime.eu-central-1.amazonaws.com"
    valid_options("bedrock", named, {})
    valid_options("bedrock", named, {"region": "eu-central-1"})
    valid_options("bedrock", "https://bedrock.internal.example", {"region": "us-gov-west-1"})
    valid_options("bedrock", "https://vpce-0a1.bedrock-runtime.ap-south-1.vpce.amazonaws.com", {})
    assert option_errors("bedrock", "https://bedrock.internal.example", {}) == [
        "AWS Bedrock needs a region, e.g. us-east-1: set it here, or use a base URL that names "
        "it (https://bedrock-runtime.us-east-1.amazonaws.com)."
    ]
    assert option_errors("bedrock", named, {"region": "us-east-1"}) == [
        "The base URL is in eu-central-1 but the region says us-east-1; make them agree or "
        "leave the region empty."
    ]
    assert option_errors("bedrock", named, {"region": "Frankfurt"}) == [
        "'Frankfurt' is not an AWS region name like us-east-1."
    ]


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "gemini", "ollama", "dashscope"])
def test_other_vendors_take_no_options(db, vendor):
    valid_options(vendor, "https://api.example.com/v1", {})
    label = dict(Upstream.Vendor.choices)[vendor]
    assert option_errors(vendor, "https://api.example.com/v1", {"region": "us-east-1"}) == [
        f"{label} takes no region option; remove it."
    ]


def test_unknown_or_empty_options_are_refused(db):
    assert option_errors("azure_openai", "https://x.openai.azure.com", {"deployment": "d"}) == [
        "Unknown vendor option 'deployment': the options are api_version, region, auth, "
        "header, token_url, client_id, scope, param, username."
    ]
    assert option_errors("azure_openai", "https://x.openai.azure.com", {"api_version": " "}) == [
        "The api_version option must be 1 to 200 characters without surrounding spaces."
    ]


@pytest.mark.parametrize(
    "secret",
    [
        AWS_SECRET,
        AWS_SECRET.replace("AKIA", "ASIA") + ":FwoGZXIvYXdzE+token/==",
    ],
)
def test_bedrock_secret_is_an_aws_credential(secret):
    validate_vendor_secret("bedrock", secret)


@pytest.mark.parametrize(
    "secret",
    [
        "just-an-api-key",
        "AKIAIOSFODNN7EXAMPLE:",
        ":secret",
        "AKIAIOSFODNN7EXAMPLE:secret:",
        "akia-lower:secret",
        "AKIAIOSFODNN7EXAMPLE: spaced",
    ],
)
def test_bedrock_secret_of_another_shape_is_refused_without_quoting_it(db, secret):
    with pytest.raises(ValidationError) as caught:
        services.upstream_create(
            name="bedrock",
            vendor="bedrock",
            base_url="https://bedrock-runtime.us-east-1.amazonaws.com",
            secret=secret,
        )
    message = " ".join(caught.value.messages)
    assert "'<access key id>:<secret access key>'" in message
    assert secret not in message
    assert not Upstream.objects.filter(name="bedrock").exists()


def test_plan_token_quota_must_be_positive(catalog):
    with pytest.raises(ValidationError):
        services.plan_create(product=catalog.product, name="Zero", token_quota=0)


def test_weights_and_timeouts_stay_within_what_the_gateway_accepts(catalog):
    with pytest.raises(ValidationError) as caught:
        services.model_route_create(
            product=catalog.product,
            name="heavy",
            upstream=catalog.upstream,
            upstream_model="m",
            weight=1001,
            first_token_seconds=7200,
        )
    assert set(caught.value.message_dict) == {"weight", "first_token_seconds"}


# The demo ------------------------------------------------------------------------------


def test_demo_shows_targets_fallbacks_and_embeddings_and_seeds_once(db, settings, tmp_path):
    from portal.demo import DEMO_MODEL, seed_demo

    settings.VAR_DIR = tmp_path
    seed = seed_demo(mock_llm_url="http://127.0.0.1:9100/v1")
    again = seed_demo(mock_llm_url="http://127.0.0.1:9100/v1")
    assert seed.models[0] == again.models[0] == DEMO_MODEL  # what `make run` calls
    assert sorted(again.models) == ["demo-embedding", "demo-model", "demo-model-large"]
    assert ModelRoute.objects.count() == 3
    demo = ModelRoute.objects.get(name=DEMO_MODEL)
    assert demo.fallbacks == ["demo-model-large"]
    assert demo.input_price_per_mtok == Decimal("0.15")
    rev = publish()
    assert rev is not None
    live = built(rev)
    assert len(live.models[DEMO_MODEL].targets) == 2
    assert live.models["demo-embedding"].spec.kind == "embeddings"
    trial = live.doc.products["demo-chat"]
    assert set(trial.models) == set(again.models)
