"""Credential-only changes publish incrementally, from the change journal.

What must hold: a revision built from a delta has exactly the content a full compile
of the same state has; every journal entry is published exactly once, also when
publishes race; anything but a credential change still compiles the whole state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.utils import timezone

from catalog import services as catalog_services
from consumers import services
from consumers.models import Consumer
from gateway import revision as gw_revision
from gateway.keys import hash_key
from gatewaysync import compiler
from gatewaysync import services as sync_services
from gatewaysync.models import GatewayInstance, PendingChange, Revision
from tests.conftest import make_catalog, make_subscribed_app, run_in_thread
from tests.control.test_delivery import gateway, models_status  # noqa: F401

KEEP = 100


def publish(**kwargs: bool) -> Revision | None:
    return sync_services.revision_publish(keep=KEEP, **kwargs)


def document(rev: Revision) -> gw_revision.AppliedRevision:
    """Decode and validate exactly as a gateway does."""
    rev.refresh_from_db()
    assert rev.document is not None
    return gw_revision.build(
        gw_revision.decode_revision(bytes(rev.document)), compiler.gateway_keys()
    )


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave as with a million keys: incremental revisions start as a delta alone."""
    monkeypatch.setattr(sync_services, "MATERIALIZE_INLINE_MAX", -1)


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts full compiles."""
    calls: list[int] = []
    real = compiler.compile_state

    def counting() -> compiler.CompiledState:
        calls.append(1)
        return real()

    monkeypatch.setattr(compiler, "compile_state", counting)
    return calls


def assert_same_as_a_full_compile(rev: Revision) -> None:
    doc = document(rev).doc
    state = compiler.compile_state()
    assert rev.content_hash == state.content_hash
    assert doc.credentials == state.credentials
    assert doc.consumers == state.consumers
    assert doc.products == state.products
    assert doc.upstreams.keys() == state.upstreams.keys()


@pytest.mark.parametrize("materialize", ["inline", "deferred"])
def test_incremental_revision_has_exactly_the_content_of_a_full_compile(
    request, owner, subscription, compiles, materialize
):
    if materialize == "deferred":
        request.getfixturevalue("deferred")
    app = subscription.consumer
    keys = [services.credential_create(consumer=app, name=f"k{i}") for i in range(5)]
    first = publish()
    assert first is not None
    compiles.clear()

    services.credential_revoke(credential=keys[0].credential)
    services.credential_rotate(credential=keys[1].credential, grace_seconds=3600)
    services.credential_rotate(credential=keys[2].credential, grace_seconds=0)
    expiring = services.credential_create(
        consumer=app, name="soon", expires_at=timezone.now() + timedelta(days=1)
    )
    rev = publish()

    assert rev is not None
    assert compiles == []  # built from the journalled rows alone
    assert rev.number == first.number + 1
    assert rev.delta is not None
    if materialize == "deferred":
        assert rev.document is None
        assert rev.content_hash == ""
        assert sync_services.revision_materialize() == rev
    assert_same_as_a_full_compile(rev)
    # What a gateway holding the first revision makes of the delta is that same content.
    patched = gw_revision.apply_delta(document(first), gw_revision.decode_delta(bytes(rev.delta)))
    assert patched.doc.credentials == compiler.compile_state().credentials
    assert hash_key(keys[0].key) not in patched.doc.credentials
    assert hash_key(expiring.key) in patched.doc.credentials
    # A full compile of the same state finds nothing to publish: the hashes agree.
    assert publish(full=True) is None
    assert not PendingChange.objects.exists()


def test_chain_of_deferred_revisions_materializes_to_a_full_compile(subscription, deferred):
    keys = [
        services.credential_create(consumer=subscription.consumer, name=f"k{i}") for i in range(4)
    ]
    assert publish() is not None
    for issued in keys[:3]:
        services.credential_revoke(credential=issued.credential)
        assert publish() is not None
    services.credential_create(consumer=subscription.consumer, name="new")
    latest = publish()
    assert latest is not None
    assert Revision.objects.filter(document__isnull=True).count() == 4
    assert sync_services.revision_materialize() == latest
    assert_same_as_a_full_compile(latest)
    assert sync_services.revision_materialize() is None  # already done


def test_full_compile_after_deferred_deltas_compares_with_their_content(
    subscription, deferred, compiles
):
    keys = [
        services.credential_create(consumer=subscription.consumer, name=f"k{i}") for i in range(3)
    ]
    publish()
    services.credential_revoke(credential=keys[0].credential)
    rev = publish()
    assert rev is not None
    compiles.clear()
    # Nothing changed since: the full compile materializes the delta-only revision to
    # learn its hash, and publishes nothing.
    assert publish(full=True) is None
    assert compiles == [1]
    rev.refresh_from_db()
    assert rev.document is not None


def test_non_credential_change_compiles_the_whole_state(subscription, catalog, compiles):
    issued = services.credential_create(consumer=subscription.consumer, name="k")
    assert publish() is not None
    compiles.clear()

    services.credential_revoke(credential=issued.credential)
    catalog_services.product_retire(product=catalog.product)
    rev = publish()

    assert rev is not None
    assert compiles == [1]
    assert rev.delta is None  # products changed: no delta can say that
    doc = document(rev).doc
    assert "chat" not in doc.products
    assert hash_key(issued.key) not in doc.credentials
    assert not PendingChange.objects.exists()


def test_key_of_a_consumer_the_gateways_do_not_know_falls_back_to_a_full_compile(
    owner, subscription, catalog, compiles
):
    assert publish() is not None
    compiles.clear()
    # Made behind the services' back, so no journal entry announced the consumer.
    stray = Consumer.objects.create(owner=owner, name="stray")
    issued = services.credential_create(consumer=stray, name="k")
    rev = publish()
    assert rev is not None
    assert compiles == [1]
    doc = document(rev).doc
    assert str(stray.pk) in doc.consumers
    assert hash_key(issued.key) in doc.credentials


def test_key_change_the_gateways_cannot_see_publishes_nothing(owner, subscription, compiles):
    suspended = services.consumer_create(owner=owner, name="suspended")
    services.consumer_set_status(consumer=suspended, status=Consumer.Status.SUSPENDED)
    assert publish() is not None
    compiles.clear()
    services.credential_create(consumer=suspended, name="k")
    assert publish() is None
    assert compiles == []
    assert not PendingChange.objects.exists()


def test_publish_task_finds_nothing_to_do_once_the_journal_is_consumed(subscription, compiles):
    services.credential_create(consumer=subscription.consumer, name="k")
    assert publish() is not None
    compiles.clear()
    assert publish(pending_only=True) is None
    assert compiles == []  # an empty journal costs a query, not a compile


def test_journal_entry_rolls_back_with_its_change(subscription):
    from django.db import transaction

    issued = services.credential_create(consumer=subscription.consumer, name="k")
    publish()

    def revoke_then_fail() -> None:
        with transaction.atomic():
            services.credential_revoke(credential=issued.credential)
            raise RuntimeError("the caller failed after the revoke")

    with pytest.raises(RuntimeError):
        revoke_then_fail()
    assert not PendingChange.objects.exists()


@pytest.fixture
def racing_world(transactional_db, owner) -> list[services.IssuedCredential]:
    app = make_subscribed_app(owner=owner, catalog=make_catalog())
    keys = [services.credential_create(consumer=app, name=f"k{i}") for i in range(24)]
    assert publish() is not None
    return keys


@pytest.mark.parametrize("materialize", ["inline", "deferred"])
def test_journal_is_published_exactly_once_under_concurrent_publishes(
    request, racing_world, materialize
):
    if materialize == "deferred":
        request.getfixturevalue("deferred")
    keys = racing_world
    start = Revision.objects.order_by("-number").values_list("number", flat=True).first()
    assert start is not None
    app = keys[0].credential.consumer
    created: list[services.IssuedCredential] = []
    writers_done = threading.Event()
    errors: list[BaseException] = []

    def revoke(part: list[services.IssuedCredential]) -> Callable[[], None]:
        def run() -> None:
            for issued in part:
                services.credential_revoke(credential=issued.credential)

        return run

    def create() -> None:
        for i in range(8):
            created.append(services.credential_create(consumer=app, name=f"new{i}"))

    def publisher() -> None:
        while not writers_done.is_set():
            publish(pending_only=True)
        publish(pending_only=True)

    writers = [
        run_in_thread(revoke(keys[0:8]), errors),
        run_in_thread(revoke(keys[8:16]), errors),
        run_in_thread(create, errors),
    ]
    publishers = [run_in_thread(publisher, errors) for _ in range(3)]
    for thread in writers + publishers:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    for thread in publishers:
        thread.join()
    assert errors == []
    publish(pending_only=True)  # whatever the last publisher's snapshot missed

    assert not PendingChange.objects.exists()
    revisions = list(Revision.objects.filter(number__gt=start).order_by("number"))
    assert [r.number for r in revisions] == list(range(start + 1, start + 1 + len(revisions)))
    removed: list[str] = []
    upserted: list[str] = []
    for rev in revisions:
        assert rev.delta is not None
        delta = gw_revision.decode_delta(bytes(rev.delta))
        assert delta.base == rev.number - 1
        removed += delta.credentials_remove
        upserted += list(delta.credentials_upsert)
    revoked = {hash_key(k.key) for k in keys[:16]}
    new = {hash_key(k.key) for k in created}
    if materialize == "inline":
        # Deltas computed against the document carry each change exactly once.
        assert sorted(removed) == sorted(revoked)
        assert sorted(upserted) == sorted(new)
    else:
        assert set(removed) == revoked
        assert set(upserted) == new
    sync_services.revision_materialize()
    assert_same_as_a_full_compile(revisions[-1])


def test_new_gateway_gets_the_newest_document_then_the_deltas_after_it(
    gateway,  # noqa: F811
    owner,
    deferred,
):
    from gatewaysync import delivery

    _stack, ports, admin_url = gateway
    app = make_subscribed_app(owner=owner, catalog=make_catalog())
    keys = [services.credential_create(consumer=app, name=f"k{i}") for i in range(3)]
    publish()
    services.credential_revoke(credential=keys[0].credential)
    publish()
    services.credential_revoke(credential=keys[1].credential)
    latest = publish()
    assert latest is not None
    assert latest.document is None
    instance = GatewayInstance.objects.create(
        instance_id="gw-new", admin_url=admin_url, last_seen_at=timezone.now()
    )
    delivery.deliver_latest()
    instance.refresh_from_db()
    assert instance.last_delivery_error == ""
    assert instance.applied_revision == latest.number
    assert [models_status(ports, k.key) for k in keys] == [401, 401, 200]


def test_a_full_publish_compiles_outside_the_lock_and_rechecks_inside(
    owner, subscription, monkeypatch
):
    """The periodic full compile runs before the publish lock; a key revoked while it
    ran makes the publish compile again under the lock, so the revocation is not lost."""
    issued = services.credential_create(consumer=subscription.consumer, name="k")
    publish(full=True)
    key_hash = issued.credential.key_hash
    assert key_hash in compiler.compile_state().credentials
    real = compiler.compile_state

    def compile_then_a_revocation_lands() -> compiler.CompiledState:
        state = real()
        if issued.credential.revoked_at is None:  # revoked while the slow compile runs
            services.credential_revoke(credential=issued.credential)
        return state

    monkeypatch.setattr(compiler, "compile_state", compile_then_a_revocation_lands)
    publish(full=True)
    monkeypatch.setattr(compiler, "compile_state", real)
    assert not PendingChange.objects.exists()
    latest = Revision.objects.order_by("-number").first()
    assert latest is not None
    assert key_hash not in document(latest).doc.credentials
    assert_same_as_a_full_compile(latest)


def test_the_periodic_compile_defers_to_changes_that_land_while_it_runs(
    owner, subscription, monkeypatch
):
    """The reconcile's compile never holds the publish lock: a key revoked while it runs
    is published as a delta at once, and the full compile is left for the next round."""
    issued = services.credential_create(consumer=subscription.consumer, name="k")
    publish(full=True)
    real = compiler.compile_state

    def compile_then_a_revocation_lands() -> compiler.CompiledState:
        state = real()
        if issued.credential.revoked_at is None:
            services.credential_revoke(credential=issued.credential)
        return state

    monkeypatch.setattr(compiler, "compile_state", compile_then_a_revocation_lands)
    assert sync_services.revision_reconcile_compile(keep=KEEP) is False
    monkeypatch.setattr(compiler, "compile_state", real)
    assert not PendingChange.objects.exists()
    latest = Revision.objects.order_by("-number").first()
    assert latest is not None
    assert issued.credential.key_hash not in document(latest).doc.credentials
    # Once quiet, the next round's compile goes through and finds nothing new.
    assert sync_services.revision_reconcile_compile(keep=KEEP) is True
    assert Revision.objects.order_by("-number").first() == latest


def test_heavy_work_runs_in_one_process_at_a_time(transactional_db):
    held = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        with sync_services.heavy_work_slot("reconcile") as mine:
            assert mine
            held.set()
            release.wait(10)

    holder = run_in_thread(hold, errors)
    holder.start()
    assert held.wait(10)
    seen: list[bool] = []

    def try_it() -> None:
        with sync_services.heavy_work_slot("reconcile") as mine:
            seen.append(mine)

    other = run_in_thread(try_it, errors)
    other.start()
    other.join(10)
    release.set()
    holder.join(10)
    assert not errors
    assert seen == [False]
    with sync_services.heavy_work_slot("reconcile") as mine:
        assert mine  # free again once the holder is done
