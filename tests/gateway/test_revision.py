"""Validation of revisions and deltas: what must never be applied, and what must."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from gateway.revision import (
    RevisionError,
    apply_delta,
    build,
    decode_delta,
    decode_revision,
    encode,
)
from gateway.schema import (
    Consumer,
    Credential,
    Delta,
    ModelRoute,
    Plan,
    Product,
    Revision,
    Subscription,
    Target,
    Upstream,
)
from gateway.secrets import GatewayKeys

KEYS = GatewayKeys.from_secret("unit-test-gateway-secret-" + "x" * 16)
OTHER_KEYS = GatewayKeys.from_secret("another-install-secret-" + "y" * 16)
KEY_HASH = hashlib.sha256(b"portico_unit_test_key").hexdigest()
OTHER_HASH = hashlib.sha256(b"portico_other_key").hexdigest()


def revision(**changes: object) -> Revision:
    doc = Revision(
        schema=1,
        revision=5,
        created_at="2026-11-24T12:00:00Z",
        upstreams={
            "openai": Upstream(
                vendor="openai", base_url="https://api.openai.com/v1", secret=KEYS.seal("sk-1")
            )
        },
        products={
            "chat": Product(
                id=1,
                slug="chat",
                kind="model",
                models={"gpt-x": ModelRoute(upstream="openai", upstream_model="gpt-4o")},
            )
        },
        consumers={
            "7": Consumer(id=7, subscriptions={"chat": Subscription(id=1, plan=Plan(1, "Free"))})
        },
        credentials={KEY_HASH: Credential(id=70, consumer=7)},
    )
    return msgspec.structs.replace(doc, **changes)


def delta(base: int = 5, **changes: object) -> Delta:
    return msgspec.structs.replace(
        Delta(schema=1, base=base, revision=base + 1, created_at="2026-11-24T12:00:01Z"),
        **changes,
    )


def test_valid_revision_opens_secrets_and_indexes_models() -> None:
    applied = build(decode_revision(encode(revision())), KEYS)
    assert applied.number == 5
    route = applied.models["gpt-x"]
    assert [t.model for t in route.targets] == ["gpt-4o"]
    assert [e.credential for e in route.targets[0].endpoints] == ["sk-1"]
    assert route.product.slug == "chat"


def test_routes_index_every_target_and_the_whole_credential_pool() -> None:
    upstreams = {
        "openai": Upstream(
            vendor="openai",
            base_url="https://api.openai.com/v1",
            secret=KEYS.seal("sk-1"),
            secrets=[KEYS.seal("sk-2"), KEYS.seal("sk-3")],
            name="OpenAI",
        ),
        "claude": Upstream(
            vendor="anthropic", base_url="https://api.anthropic.com/v1", secret=KEYS.seal("a-1")
        ),
    }
    routes = {
        "smart": ModelRoute(
            upstream="openai",
            upstream_model="gpt-4o",
            weight=3,
            targets=[Target(upstream="claude", upstream_model="claude-x", weight=1)],
            fallbacks=["big"],
        ),
        "big": ModelRoute(upstream="claude", upstream_model="claude-big", context_window=200_000),
    }
    doc = revision(
        upstreams=upstreams,
        products={"chat": Product(id=1, slug="chat", kind="model", models=routes)},
    )
    applied = build(decode_revision(encode(doc)), KEYS)
    smart = applied.models["smart"]
    assert [(t.label, t.weight) for t in smart.targets] == [
        ("OpenAI/gpt-4o", 3),
        ("claude/claude-x", 1),
    ]
    assert [e.credential for e in smart.targets[0].endpoints] == ["sk-1", "sk-2", "sk-3"]
    assert len(set(smart.targets[0].credential_keys)) == 3
    assert smart.targets[1].adapter.vendor == "anthropic"
    assert smart.fallbacks == ("big",)
    assert "sk-2" not in repr(smart)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (ModelRoute(upstream="openai", upstream_model="m", fallbacks=["nowhere"]), "falls back"),
        (ModelRoute(upstream="openai", upstream_model="m", fallbacks=["gpt-x"]), "falls back"),
        (
            ModelRoute(upstream="openai", upstream_model="m", targets=[Target("ghost", "m")]),
            "unknown upstream 'ghost'",
        ),
    ],
)
def test_inconsistent_routes_are_rejected(route: ModelRoute, message: str) -> None:
    doc = revision(
        products={"chat": Product(id=1, slug="chat", kind="model", models={"gpt-x": route})}
    )
    with pytest.raises(RevisionError, match=message):
        build(doc, KEYS)


def test_unknown_vendor_is_rejected() -> None:
    upstream = Upstream(vendor="nobody", base_url="https://example.com", secret=KEYS.seal("s"))
    with pytest.raises(RevisionError, match="unknown vendor 'nobody'"):
        build(revision(upstreams={"openai": upstream}), KEYS)


def test_unknown_schema_version_is_rejected_on_decode_and_on_build() -> None:
    raw = encode(revision()).replace(b'"schema":1', b'"schema":2')
    with pytest.raises(RevisionError, match="invalid revision"):
        decode_revision(raw)
    with pytest.raises(RevisionError, match="unsupported schema 2"):
        build(revision(schema=2), KEYS)


def test_revision_that_is_not_json_is_rejected() -> None:
    with pytest.raises(RevisionError, match="not valid JSON"):
        decode_revision(b"{not json")


def test_unknown_fields_are_rejected_rather_than_ignored() -> None:
    raw = encode(revision())[:-1] + b',"surprise":true}'
    with pytest.raises(RevisionError, match="surprise"):
        decode_revision(raw)


def test_model_routed_to_an_unknown_upstream_is_rejected() -> None:
    products = {
        "chat": Product(
            id=1,
            slug="chat",
            kind="model",
            models={"gpt-x": ModelRoute(upstream="nowhere", upstream_model="gpt-4o")},
        )
    }
    with pytest.raises(RevisionError, match="unknown upstream 'nowhere'"):
        build(revision(products=products), KEYS)


def test_model_served_by_two_products_is_rejected() -> None:
    route = ModelRoute(upstream="openai", upstream_model="gpt-4o")
    products = {
        "chat": Product(id=1, slug="chat", kind="model", models={"gpt-x": route}),
        "also": Product(id=2, slug="also", kind="model", models={"gpt-x": route}),
    }
    with pytest.raises(RevisionError, match="routed by both"):
        build(revision(products=products), KEYS)


def test_secret_sealed_with_another_installs_key_is_rejected() -> None:
    upstreams = {
        "openai": Upstream(
            vendor="openai", base_url="https://api.openai.com/v1", secret=OTHER_KEYS.seal("sk-1")
        )
    }
    with pytest.raises(RevisionError, match="upstream openai: sealed secret could not be opened"):
        build(revision(upstreams=upstreams), KEYS)


def test_credential_of_an_unknown_consumer_is_rejected() -> None:
    credentials = {KEY_HASH: Credential(id=70, consumer=99)}
    with pytest.raises(RevisionError, match="unknown consumer 99"):
        build(revision(credentials=credentials), KEYS)


def test_credential_keyed_by_something_other_than_a_sha256_is_rejected() -> None:
    credentials = {"portico_plaintext_key": Credential(id=70, consumer=7)}
    with pytest.raises(RevisionError, match="not a SHA-256"):
        build(revision(credentials=credentials), KEYS)


def test_delta_on_another_base_is_rejected() -> None:
    applied = build(revision(), KEYS)
    with pytest.raises(RevisionError, match="based on 4, applied is 5"):
        apply_delta(applied, delta(base=4))


def test_delta_revokes_and_adds_credentials_and_keeps_everything_else() -> None:
    applied = build(revision(), KEYS)
    result = apply_delta(
        applied,
        delta(
            credentials_remove=[KEY_HASH],
            credentials_upsert={OTHER_HASH: Credential(id=71, consumer=7)},
        ),
    )
    assert result.number == 6
    assert KEY_HASH not in result.credentials
    assert result.credentials[OTHER_HASH].id == 71
    assert result.models is applied.models
    assert result.doc.products == applied.doc.products
    assert applied.number == 5


def test_rejected_delta_changes_nothing() -> None:
    applied = build(revision(), KEYS)
    bad = delta(
        credentials_remove=[KEY_HASH],
        credentials_upsert={
            OTHER_HASH: Credential(id=71, consumer=7),
            "f" * 64: Credential(id=72, consumer=8),
        },
    )
    with pytest.raises(RevisionError, match="unknown consumer 8"):
        apply_delta(applied, bad)
    assert dict(applied.credentials) == {KEY_HASH: Credential(id=70, consumer=7)}


def test_delta_adding_a_credential_of_an_unknown_consumer_is_rejected() -> None:
    applied = build(revision(), KEYS)
    with pytest.raises(RevisionError, match="unknown consumer 8"):
        apply_delta(applied, delta(credentials_upsert={OTHER_HASH: Credential(id=71, consumer=8)}))


def test_delta_decodes_from_the_wire() -> None:
    decoded = decode_delta(encode(delta(credentials_remove=[KEY_HASH])))
    assert decoded.credentials_remove == [KEY_HASH]
    with pytest.raises(RevisionError, match="invalid delta"):
        decode_delta(b'{"schema":1}')


def test_reprs_never_show_upstream_or_gateway_secrets() -> None:
    applied = build(revision(), KEYS)
    assert "sk-1" not in repr(applied.models["gpt-x"])
    assert KEYS.auth_token not in repr(KEYS)
    assert repr(KEYS.seal_key) not in repr(KEYS)
