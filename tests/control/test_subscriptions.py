import pytest
from django.core.exceptions import ValidationError

from catalog import services as catalog_services
from consumers import services
from consumers.models import Subscription


def test_subscription_starts_pending_and_is_approved(consumer, catalog):
    sub = services.subscription_create(
        consumer=consumer, product=catalog.product, plan=catalog.plan
    )
    assert sub.status == Subscription.Status.PENDING
    services.subscription_approve(subscription=sub)
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.APPROVED
    assert sub.decided_at is not None


def test_rejection_keeps_the_reason(consumer, catalog):
    sub = services.subscription_create(
        consumer=consumer, product=catalog.product, plan=catalog.plan
    )
    services.subscription_reject(subscription=sub, reason="Tell us about your use case.")
    sub.refresh_from_db()
    assert sub.status == Subscription.Status.REJECTED
    assert sub.decision_reason == "Tell us about your use case."


def test_only_one_live_subscription_per_product(subscription, consumer, catalog):
    with pytest.raises(ValidationError):
        services.subscription_create(consumer=consumer, product=catalog.product, plan=catalog.plan)
    services.subscription_revoke(subscription=subscription)
    again = services.subscription_create(
        consumer=consumer, product=catalog.product, plan=catalog.plan
    )
    assert again.status == Subscription.Status.PENDING


def test_plan_of_another_product_is_refused(consumer, catalog):
    other = catalog_services.product_create(name="Other", slug="other", kind="model")
    with pytest.raises(ValidationError):
        services.subscription_create(consumer=consumer, product=other, plan=catalog.plan)
    assert not Subscription.objects.exists()


def test_ended_subscription_cannot_be_approved(subscription):
    services.subscription_revoke(subscription=subscription)
    with pytest.raises(ValidationError):
        services.subscription_approve(subscription=subscription)
