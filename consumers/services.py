"""Writes for consumers, credentials, subscriptions and usage records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from catalog.models import Plan, Product
from consumers.models import Consumer, Credential, Subscription, UsageRecord
from consumers.tasks import subscription_notify_task
from gateway import keys, schema
from gatewaysync.services import gateway_changed
from portal import audit
from portal.models import Membership, Portal


@transaction.atomic
def consumer_create(*, owner: User, name: str, portal: Portal | None = None) -> Consumer:
    if Consumer.objects.filter(owner=owner, name=name).exists():
        raise ValidationError("You already have an app with that name.")
    consumer = Consumer(owner=owner, name=name, portal=portal)
    consumer.full_clean()
    consumer.save()
    audit.record("consumer.create", consumer)
    return consumer


@transaction.atomic
def consumer_rename(*, consumer: Consumer, name: str) -> Consumer:
    if Consumer.objects.filter(owner=consumer.owner, name=name).exclude(pk=consumer.pk).exists():
        raise ValidationError("You already have an app with that name.")
    consumer.name = name
    consumer.full_clean()
    consumer.save(update_fields=["name"])
    return consumer


@transaction.atomic
def consumer_delete(*, consumer: Consumer) -> None:
    """Delete an app with its keys and subscriptions; the gateway stops honouring them.

    Usage records keep their numbers (they are history, not access).
    """
    audit.record("consumer.delete", consumer, credentials=consumer.credentials.count())
    consumer.delete()
    gateway_changed()


@transaction.atomic
def consumer_set_status(*, consumer: Consumer, status: Consumer.Status) -> Consumer:
    consumer.status = status
    consumer.save(update_fields=["status"])
    gateway_changed()
    return consumer


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """A new credential and its key. The key exists only here, once."""

    credential: Credential
    key: str


@transaction.atomic
def credential_create(
    *, consumer: Consumer, name: str, expires_at: datetime | None = None
) -> IssuedCredential:
    """Generate a key server-side; store only its hash and display prefix."""
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    key = keys.generate_key()
    credential = Credential(
        consumer=consumer,
        name=name,
        key_hash=keys.hash_key(key),
        display_prefix=keys.display_prefix(key),
        expires_at=expires_at,
    )
    credential.full_clean(exclude=["key_hash", "display_prefix"])
    credential.save()
    audit.record("credential.create", credential, consumer=consumer.pk)
    gateway_changed()
    return IssuedCredential(credential=credential, key=key)


@transaction.atomic
def credential_rotate(*, credential: Credential, grace_seconds: int) -> IssuedCredential:
    """Issue a replacement key; the old one works ``grace_seconds`` longer, then never.

    With no grace the old key is revoked at once. The old key's expiry only ever moves
    earlier, so a rotation cannot extend a key's life.
    """
    if credential.revoked_at is not None or not credential.is_active:
        raise ValidationError("Only a working key can be rotated.")
    if grace_seconds < 0:
        raise ValidationError("The grace period cannot be negative.")
    issued = credential_create(
        consumer=credential.consumer, name=credential.name, expires_at=credential.expires_at
    )
    if grace_seconds == 0:
        credential_revoke(credential=credential)
    else:
        ends = timezone.now() + timedelta(seconds=grace_seconds)
        if credential.expires_at is None or ends < credential.expires_at:
            credential.expires_at = ends
            credential.save(update_fields=["expires_at"])
            gateway_changed()
        audit.record(
            "credential.rotate",
            credential,
            replacement=issued.credential.pk,
            grace_seconds=grace_seconds,
        )
    return issued


@transaction.atomic
def credential_revoke(*, credential: Credential) -> Credential:
    """Revoke a key; the gateways learn it through a delta revision."""
    if credential.revoked_at is None:
        credential.revoked_at = timezone.now()
        credential.save(update_fields=["revoked_at"])
        audit.record("credential.revoke", credential)
        gateway_changed()
    return credential


@transaction.atomic
def subscription_create(*, consumer: Consumer, product: Product, plan: Plan) -> Subscription:
    if plan.product_id != product.pk:
        raise ValidationError({"plan": "That plan belongs to another product."})
    if Subscription.objects.filter(
        consumer=consumer, product=product, status__in=Subscription.LIVE
    ).exists():
        raise ValidationError("This app already has a live subscription to that product.")
    subscription = Subscription.objects.create(consumer=consumer, product=product, plan=plan)
    audit.record("subscription.create", subscription, plan=plan.pk)
    return subscription


def _approval_mode(product: Product, portal: Portal | None) -> str:
    if product.subscription_approval:
        return product.subscription_approval
    return portal.subscription_approval if portal is not None else Portal.Approval.MANUAL


@transaction.atomic
def subscription_request(
    *, consumer: Consumer, product: Product, plan: Plan, portal: Portal | None
) -> Subscription:
    """A developer asks for access: approved at once or left pending, per the rules.

    The product decides (automatic or by an admin); a product that does not say
    follows its portal's default. Only developers approved on the portal may ask.
    """
    owner = consumer.owner
    if not owner.is_staff and not (
        portal is not None
        and Membership.objects.filter(
            portal=portal, user=owner, status=Membership.Status.APPROVED
        ).exists()
    ):
        raise ValidationError("Your developer account is not approved on this portal yet.")
    if portal is not None and not product.portals.filter(pk=portal.pk).exists():
        raise ValidationError("That product is not offered on this portal.")
    subscription = subscription_create(consumer=consumer, product=product, plan=plan)
    if _approval_mode(product, portal) == Portal.Approval.AUTOMATIC:
        subscription = _decide(subscription, Subscription.Status.APPROVED, "")
    return subscription


@transaction.atomic
def subscription_cancel(*, subscription: Subscription) -> Subscription:
    """The developer ends a subscription; its app loses access at the gateway."""
    if subscription.status not in Subscription.LIVE:
        raise ValidationError(f"This subscription has already ended ({subscription.status}).")
    return _decide(subscription, Subscription.Status.CANCELLED, "")


def _decide(subscription: Subscription, status: Subscription.Status, reason: str) -> Subscription:
    subscription.status = status
    subscription.decision_reason = reason
    subscription.decided_at = timezone.now()
    subscription.save(update_fields=["status", "decision_reason", "decided_at"])
    audit.record(f"subscription.{status}", subscription, reason=reason)
    gateway_changed()
    transaction.on_commit(lambda: subscription_notify_task.delay(subscription.pk))
    return subscription


@transaction.atomic
def subscription_approve(*, subscription: Subscription) -> Subscription:
    if subscription.status != Subscription.Status.PENDING:
        raise ValidationError(
            f"Only pending subscriptions can be approved ({subscription.status})."
        )
    return _decide(subscription, Subscription.Status.APPROVED, "")


@transaction.atomic
def subscription_reject(*, subscription: Subscription, reason: str) -> Subscription:
    if subscription.status != Subscription.Status.PENDING:
        raise ValidationError(
            f"Only pending subscriptions can be rejected ({subscription.status})."
        )
    return _decide(subscription, Subscription.Status.REJECTED, reason)


@transaction.atomic
def subscription_revoke(*, subscription: Subscription, reason: str = "") -> Subscription:
    if subscription.status not in Subscription.LIVE:
        raise ValidationError(f"This subscription has already ended ({subscription.status}).")
    return _decide(subscription, Subscription.Status.REVOKED, reason)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@transaction.atomic
def usage_records_ingest(*, events: Iterable[schema.UsageEvent]) -> int:
    """Store usage events idempotently; returns how many were new.

    The event id is unique in the table, so a batch delivered twice (a gateway retry,
    a Redis entry claimed again after a worker died) inserts nothing the second time.
    """
    batch = list(events)
    if not batch:
        return 0
    ids = [e.id for e in batch]
    existing = set(UsageRecord.objects.filter(event_id__in=ids).values_list("event_id", flat=True))
    fresh = {e.id: e for e in batch if e.id not in existing}
    UsageRecord.objects.bulk_create(
        [
            UsageRecord(
                event_id=e.id,
                request_id=e.request_id,
                ts=_dt(e.ts),
                gateway=e.gateway[:200],
                route=e.route[:64],
                consumer_id=e.consumer,
                credential_id=e.credential,
                product_id=e.product,
                model=(e.model or "")[:200],
                status=e.status,
                latency_ms=e.latency_ms,
                prompt_tokens=e.prompt_tokens,
                completion_tokens=e.completion_tokens,
                stream=e.stream,
            )
            for e in fresh.values()
        ],
        ignore_conflicts=True,  # a concurrent ingest of the same event is not an error
        batch_size=1000,
    )
    _touch_last_used(fresh.values())
    return len(fresh)


def _touch_last_used(events: Iterable[schema.UsageEvent]) -> None:
    latest: dict[int, float] = {}
    for event in events:
        if event.credential is not None:
            latest[event.credential] = max(latest.get(event.credential, 0.0), event.ts)
    if not latest:
        return
    current = dict(Credential.objects.filter(pk__in=latest).values_list("pk", "last_used_at"))
    for pk, ts in latest.items():
        when = _dt(ts)
        seen = current.get(pk, when)
        if pk in current and (seen is None or seen < when):
            Credential.objects.filter(pk=pk).update(last_used_at=when)
