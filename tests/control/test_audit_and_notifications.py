"""The audit log of access changes, admin rejection with a reason, and decision emails."""

from __future__ import annotations

import pytest
from django.core import mail
from django.test import RequestFactory
from django.urls import reverse

from consumers import notifications, services
from consumers.models import Subscription
from portal.audit import acting_for
from portal.models import AuditEvent


def test_access_changes_are_audited_with_actor_and_address(owner, consumer, catalog):
    request = RequestFactory().post("/", REMOTE_ADDR="203.0.113.7")
    request.user = owner
    with acting_for(request):
        issued = services.credential_create(consumer=consumer, name="k")
        services.credential_revoke(credential=issued.credential)
        sub = services.subscription_create(
            consumer=consumer, product=catalog.product, plan=catalog.plan
        )
        services.subscription_cancel(subscription=sub)
    events = list(AuditEvent.objects.order_by("pk"))
    assert [e.action for e in events][-4:] == [
        "credential.create",
        "credential.revoke",
        "subscription.create",
        "subscription.cancelled",
    ]
    for event in events[-4:]:
        assert event.actor == owner
        assert event.ip_address == "203.0.113.7"
    assert events[-3].target_id == str(issued.credential.pk)
    # The audit log names keys by their display prefix, never the key.
    assert all(issued.key not in e.target_label + str(e.detail) for e in events)


def test_work_outside_a_request_is_audited_as_system(consumer):
    services.credential_create(consumer=consumer, name="k")
    event = AuditEvent.objects.get(action="credential.create")
    assert (event.actor, event.actor_label, event.ip_address) == (None, "system", None)


def test_portal_actions_are_audited_through_the_middleware(client, owner, consumer):
    client.force_login(owner)
    client.post(reverse("portal:key_create", args=[consumer.pk]), {"name": "web"})
    event = AuditEvent.objects.get(action="credential.create")
    assert event.actor == owner
    assert event.ip_address == "127.0.0.1"


def test_admin_rejects_with_a_reason_the_developer_reads(client, staff, consumer, catalog):
    sub = services.subscription_create(
        consumer=consumer, product=catalog.product, plan=catalog.plan
    )
    client.force_login(staff)
    url = reverse("admin:consumers_subscription_changelist")
    ask = client.post(url, {"action": "reject", "_selected_action": [sub.pk]})
    assert ask.status_code == 200
    assert b"reason" in ask.content
    sub.refresh_from_db()
    assert sub.status == "pending"  # nothing happens until the reason is given
    client.post(
        url,
        {
            "action": "reject",
            "_selected_action": [sub.pk],
            "apply": "Reject",
            "reason": "Tell us what you will build.",
        },
    )
    sub.refresh_from_db()
    assert (sub.status, sub.decision_reason) == ("rejected", "Tell us what you will build.")
    assert AuditEvent.objects.get(action="subscription.rejected").actor == staff


@pytest.fixture
def eager_celery():
    """Run queued tasks inline, in this process, so their effects can be asserted."""
    from config.celery import app as celery_app

    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


def test_decisions_are_emailed_once_committed(
    consumer, catalog, django_capture_on_commit_callbacks, eager_celery
):
    sub = services.subscription_create(
        consumer=consumer, product=catalog.product, plan=catalog.plan
    )
    with django_capture_on_commit_callbacks(execute=False) as pending:
        services.subscription_reject(subscription=sub, reason="Not yet.")
    assert mail.outbox == []  # nothing leaves before the decision is committed
    for callback in pending:
        callback()
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == [consumer.owner.email]
    assert "Not approved" in message.subject
    assert "Not yet." in message.body


def test_a_developers_own_cancellation_sends_no_email(subscription):
    services.subscription_cancel(subscription=subscription)
    assert not notifications.subscription_decided(subscription_id=subscription.pk)
    assert Subscription.objects.get(pk=subscription.pk).status == "cancelled"
    assert mail.outbox == []
