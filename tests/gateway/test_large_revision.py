"""Large revisions are decoded in pieces: what must hold is that the result is exactly
what decoding the whole document gives, whatever its layout, and that a problem deep
inside is reported as it would be otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import orjson
import pytest

from gateway.revision import (
    AppliedRevision,
    Pacer,
    RevisionError,
    build,
    build_incrementally,
    decode_revision,
    encode,
    encode_incrementally,
    open_revision,
)
from gateway.schema import Consumer, Credential, Plan, Product, Revision, Subscription
from tests.gateway.conftest import ALICE, Gateway, World, sha256

KEYS = 20_000  # about 2.5 MB: well past the size decoded in one call


def large(world: World, number: int = 1, **changes: object) -> Revision:
    doc = world.revision(number=number)
    plan = Plan(id=3, name="Big")
    consumers = dict(doc.consumers)
    for i in range(1000, 1000 + KEYS // 10):
        subscriptions = {"chat": Subscription(id=i, plan=plan)}
        if i % 3 == 0:  # several subscriptions: cut points inside a consumer exist
            subscriptions["other"] = Subscription(id=i + 100_000, plan=plan)
        consumers[str(i)] = Consumer(id=i, subscriptions=subscriptions)
    credentials = dict(doc.credentials)
    for i in range(KEYS):
        credentials[hashlib.sha256(b"large-%d" % i).hexdigest()] = Credential(
            id=10_000 + i, consumer=1000 + i % (KEYS // 10), expires_at=None if i % 2 else 4e9
        )
    return msgspec.structs.replace(doc, consumers=consumers, credentials=credentials, **changes)


def incrementally(raw: bytes, world: World) -> AppliedRevision:
    async def go() -> AppliedRevision:
        return await build_incrementally(open_revision(raw), world.keys, Pacer())

    return asyncio.run(go())


def assert_same(applied: AppliedRevision, doc: Revision, world: World) -> None:
    """``applied`` holds exactly what decoding ``doc`` whole gives."""
    assert applied.number == doc.revision
    assert dict(applied.credentials) == doc.credentials
    assert applied.doc.consumers == doc.consumers
    assert applied.doc.products == doc.products
    assert applied.models.keys() == build(doc, world.keys).models.keys()


def test_large_compact_document_is_split_and_gives_the_whole_documents_content(
    world: World,
) -> None:
    doc = large(world)
    raw = encode(doc)
    incoming = open_revision(raw)
    assert incoming.spans is not None  # decoded in pieces, not in one call
    assert incoming.number == doc.revision
    assert_same(incrementally(raw, world), doc, world)


def test_large_document_in_another_layout_gives_the_same_content(world: World) -> None:
    doc = large(world)
    as_dict = msgspec.to_builtins(doc)
    # Indented, and with the credentials before the consumers.
    reordered = {k: as_dict[k] for k in ("schema", "revision", "created_at", "credentials")}
    reordered |= {k: v for k, v in as_dict.items() if k not in reordered}
    raw = orjson.dumps(reordered, option=orjson.OPT_INDENT_2)
    assert_same(incrementally(raw, world), doc, world)


def test_products_and_slugs_named_like_the_split_keys_do_not_confuse_it(world: World) -> None:
    doc = large(world)
    products = dict(doc.products)
    products["consumers"] = Product(id=9, slug="consumers", kind="model")
    products["credentials"] = Product(id=10, slug="credentials", kind="model")
    plan = Plan(id=4, name="credentials")
    consumers = dict(doc.consumers)
    consumers["5000"] = Consumer(
        id=5000,
        subscriptions={
            "consumers": Subscription(id=1, plan=plan),
            "credentials": Subscription(id=2, plan=plan),
        },
    )
    doc = msgspec.structs.replace(doc, products=products, consumers=consumers)
    assert_same(incrementally(encode(doc), world), doc, world)


def test_problem_deep_in_a_large_document_is_reported_and_nothing_applies(
    world: World,
) -> None:
    doc = large(world)
    credentials = dict(doc.credentials)
    credentials[sha256("portico_orphan")] = Credential(id=99_999, consumer=424_242)
    with pytest.raises(RevisionError, match="unknown consumer 424242"):
        incrementally(encode(msgspec.structs.replace(doc, credentials=credentials)), world)

    bad_hash = {**doc.credentials, "portico_plaintext_key": Credential(id=1, consumer=ALICE)}
    with pytest.raises(RevisionError, match="not a SHA-256"):
        incrementally(encode(msgspec.structs.replace(doc, credentials=bad_hash)), world)

    raw = encode(doc).replace(b'"consumer":1000,', b'"consumer":0,', 1)
    with pytest.raises(RevisionError, match=r"invalid revision: .*>= 1.*\$\.credentials"):
        incrementally(raw, world)

    with pytest.raises(RevisionError, match="not valid JSON"):
        incrementally(encode(doc)[:-5000] + b"}}", world)


def test_snapshot_written_in_pieces_is_the_same_document(world: World) -> None:
    doc = large(world)
    applied = incrementally(encode(doc), world)

    async def pieces() -> list[bytes]:
        return await encode_incrementally(applied, Pacer())

    written = b"".join(asyncio.run(pieces()))
    again = decode_revision(written)
    assert again.credentials == doc.credentials
    assert again.consumers == doc.consumers
    assert open_revision(written).spans is not None  # reloads in pieces too


@pytest.mark.e2e
def test_large_revision_push_is_applied_and_served(gw: Gateway, world: World) -> None:
    number = gw.admin("GET", "/status").json()["applied"] + 1
    world.next_number()
    response = gw.push(large(world, number=number))
    assert response.status_code == 200, response.text
    assert response.json() == {"applied": number}
    assert gw.chat(world.alice_key).status_code == 200
    assert gw.chat(world.expired_key).status_code == 401
    assert gw.chat("portico_not_a_known_key_" + "x" * 24).status_code == 401
