"""Compiling and publishing revisions: what goes in, what stays out, deltas."""

import time

import msgspec
from django.db import transaction

from catalog import services as catalog_services
from consumers import services
from consumers.models import Consumer
from gateway import revision as gw_revision
from gateway.keys import hash_key
from gatewaysync import services as sync_services
from gatewaysync.compiler import gateway_keys
from gatewaysync.models import Revision


def publish() -> Revision | None:
    return sync_services.revision_publish(keep=5)


def applied(rev: Revision) -> gw_revision.AppliedRevision:
    """Decode and validate exactly as a gateway does."""
    return gw_revision.build(
        gw_revision.decode_revision(bytes(rev.document or b"")), gateway_keys()
    )


def test_revision_holds_what_the_gateway_needs_and_validates(subscription, catalog):
    issued = services.credential_create(consumer=subscription.consumer, name="k")
    rev = publish()
    assert rev is not None
    # A new database numbers from the current time, so it cannot reuse a number that
    # an emptied or replaced one already gave a gateway.
    assert abs(rev.number - time.time()) < 60
    live = applied(rev)
    route = live.models["chat-model"]
    assert route.product.slug == "chat"
    [target] = route.targets
    assert [e.credential for e in target.endpoints] == ["sk-upstream-" + "x" * 24]
    assert target.label == "upstream-chat/mock"
    credential = live.doc.credentials[hash_key(issued.key)]
    assert credential.consumer == subscription.consumer_id
    consumer = live.doc.consumers[str(subscription.consumer_id)]
    assert consumer.subscriptions["chat"].plan.requests_per_minute == 60


def test_secrets_are_sealed_in_the_document(subscription):
    issued = services.credential_create(consumer=subscription.consumer, name="k")
    rev = publish()
    assert rev is not None
    document = bytes(rev.document or b"")
    assert b"sk-upstream-" not in document
    assert issued.key.encode() not in document


def test_unchanged_state_makes_no_new_revision(subscription):
    assert publish() is not None
    assert publish() is None
    assert Revision.objects.count() == 1


def test_unusable_things_are_left_out(owner, catalog, subscription):
    revoked = services.credential_create(consumer=subscription.consumer, name="revoked")
    services.credential_revoke(credential=revoked.credential)
    suspended = services.consumer_create(owner=owner, name="suspended")
    services.credential_create(consumer=suspended, name="s")
    services.consumer_set_status(consumer=suspended, status=Consumer.Status.SUSPENDED)
    pending_app = services.consumer_create(owner=owner, name="pending")
    services.subscription_create(consumer=pending_app, product=catalog.product, plan=catalog.plan)
    draft = catalog_services.product_create(name="Draft", slug="draft", kind="model")
    rev = publish()
    assert rev is not None
    doc = applied(rev).doc
    assert hash_key(revoked.key) not in doc.credentials
    assert str(suspended.pk) not in doc.consumers
    assert doc.consumers[str(pending_app.pk)].subscriptions == {}
    assert draft.slug not in doc.products


def test_retired_product_drops_out_with_its_subscriptions(subscription, catalog):
    publish()
    catalog_services.product_retire(product=catalog.product)
    rev = publish()
    assert rev is not None
    doc = applied(rev).doc
    assert "chat" not in doc.products
    assert doc.consumers[str(subscription.consumer_id)].subscriptions == {}
    assert rev.delta is None


def test_key_revocation_is_published_as_a_delta(subscription):
    keep = services.credential_create(consumer=subscription.consumer, name="keep")
    gone = services.credential_create(consumer=subscription.consumer, name="gone")
    first = publish()
    assert first is not None
    services.credential_revoke(credential=gone.credential)
    second = publish()
    assert second is not None
    assert second.delta is not None
    delta = gw_revision.decode_delta(bytes(second.delta))
    assert delta.base == first.number
    assert delta.revision == second.number
    assert delta.credentials_remove == [hash_key(gone.key)]
    assert delta.credentials_upsert == {}
    # Applying the delta gives exactly the full revision's credentials.
    patched = gw_revision.apply_delta(applied(first), delta)
    assert patched.doc.credentials == applied(second).doc.credentials
    assert hash_key(keep.key) in patched.doc.credentials


def test_new_key_travels_as_delta_upsert(subscription):
    publish()
    issued = services.credential_create(consumer=subscription.consumer, name="new")
    rev = publish()
    assert rev is not None
    assert rev.delta is not None
    delta = msgspec.json.decode(bytes(rev.delta))
    assert list(delta["credentials_upsert"]) == [hash_key(issued.key)]


def test_old_revisions_are_pruned(subscription):
    for i in range(8):
        services.credential_create(consumer=subscription.consumer, name=f"k{i}")
        publish()
    numbers = list(Revision.objects.values_list("number", flat=True))
    first = numbers[-1]
    assert numbers == [first + 4, first + 3, first + 2, first + 1, first]
    assert Revision.objects.count() == 5


def test_publish_is_scheduled_once_per_transaction(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        product = catalog_services.product_create(name="A", slug="a", kind="model")
        catalog_services.plan_create(product=product, name="Free")
        catalog_services.product_publish(product=product, portals=[])
    assert len(callbacks) == 1


def test_numbering_continues_above_what_a_gateway_already_applied(subscription):
    # As after restoring the database from a backup: a gateway reports a revision 40
    # numbers past anything this database issued.
    from django.utils import timezone

    from gatewaysync.models import GatewayInstance

    first = publish()
    assert first is not None
    GatewayInstance.objects.create(
        instance_id="gw",
        admin_url="http://127.0.0.1:1",
        applied_revision=first.number + 40,
        last_seen_at=timezone.now(),
    )
    rev = publish()
    assert rev is not None
    assert rev.number == first.number + 41
    assert rev.delta is None  # its predecessor is not the gateway's, so no delta fits


def test_suspending_a_developer_cuts_their_apps_keys(owner, catalog):
    from portal.models import Membership
    from portal.services import membership_set_status
    from tests.conftest import make_subscribed_app

    membership = Membership.objects.create(portal=catalog.portal, user=owner, status="approved")
    app = make_subscribed_app(owner=owner, catalog=catalog)
    app.portal = catalog.portal
    app.save(update_fields=["portal"])
    issued = services.credential_create(consumer=app, name="k")
    first = publish()
    assert first is not None
    assert hash_key(issued.key) in applied(first).doc.credentials
    membership_set_status(membership=membership, status=Membership.Status.SUSPENDED)
    rev = publish()
    assert rev is not None
    doc = applied(rev).doc
    assert hash_key(issued.key) not in doc.credentials
    assert str(app.pk) not in doc.consumers


def test_deactivated_user_loses_access(owner, subscription):
    issued = services.credential_create(consumer=subscription.consumer, name="k")
    publish()
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    rev = publish()
    assert rev is not None
    assert hash_key(issued.key) not in applied(rev).doc.credentials
