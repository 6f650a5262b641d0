"""Writes for consumers, credentials, subscriptions and usage records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, Field, Max, Min, Model, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from catalog.models import Plan, Product
from consumers.models import Consumer, Credential, Subscription, UsageHourly, UsageRecord
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
    gateway_changed(credentials=[credential])
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
            gateway_changed(credentials=[credential])
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
        gateway_changed(credentials=[credential])
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


# Records per INSERT: 14 parameters each stays far below SQLite's 32,766 variables and
# PostgreSQL's 65,535.
_INGEST_CHUNK = 500

_RECORD_FIELDS = (
    "event_id",
    "request_id",
    "ts",
    "gateway",
    "route",
    "consumer_id",
    "credential_id",
    "product_id",
    "model",
    "status",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "stream",
)

_HOURLY_KEY = ("hour", "consumer_id", "product_id", "model")
_HOURLY_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_sum_ms")


@transaction.atomic
def usage_records_ingest(*, events: Iterable[schema.UsageEvent]) -> int:
    """Store usage events idempotently and add them to the hourly rollups; returns how
    many were new.

    The event id is unique in the table, so a batch delivered twice (a gateway retry, a
    Redis entry claimed again after a worker died) inserts nothing the second time.
    :class:`UsageHourly` is updated in the same transaction from exactly the records
    this call inserted: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` names them on
    SQLite and PostgreSQL alike, also when a concurrent ingest of the same events won
    the race (which then counts them itself). A pre-check of existing ids could not
    tell that, and ``bulk_create(ignore_conflicts=True)`` does not say what it skipped.
    """
    fresh: dict[str, UsageRecord] = {}
    for event in events:
        # The first delivery of an id within a batch wins, as it would across batches.
        if event.id not in fresh:
            fresh[event.id] = _usage_record(event)
    if not fresh:
        return 0
    # Every ingest inserts in event-id order and upserts rollups in key order, so
    # concurrent ones take their row locks in the same order and cannot deadlock.
    records = [fresh[event_id] for event_id in sorted(fresh)]
    new_ids = _usage_records_insert_new(records)
    inserted = [record for record in records if record.event_id in new_ids]
    _usage_hourly_add(inserted)
    _touch_last_used(inserted)
    return len(inserted)


def _usage_record(event: schema.UsageEvent) -> UsageRecord:
    return UsageRecord(
        event_id=event.id,
        request_id=event.request_id,
        ts=_dt(event.ts),
        gateway=event.gateway[:200],
        route=event.route[:64],
        consumer_id=event.consumer,
        credential_id=event.credential,
        product_id=event.product,
        model=(event.model or "")[:200],
        status=event.status,
        latency_ms=event.latency_ms,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        stream=event.stream,
    )


def _fields(model: type[Model], names: Iterable[str]) -> list[Field[Any, Any]]:
    return [cast("Field[Any, Any]", model._meta.get_field(name)) for name in names]


def _usage_records_insert_new(records: list[UsageRecord]) -> set[str]:
    """Insert ``records`` whose event id is not stored yet; the event ids inserted."""
    meta = UsageRecord._meta
    fields = _fields(UsageRecord, _RECORD_FIELDS)
    qn = connection.ops.quote_name
    columns = ", ".join(qn(field.column) for field in fields)
    event_id = qn(_fields(UsageRecord, ["event_id"])[0].column)
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    inserted: set[str] = set()
    with connection.cursor() as cursor:
        for at in range(0, len(records), _INGEST_CHUNK):
            chunk = records[at : at + _INGEST_CHUNK]
            # Identifiers come from the model, every value is a parameter.
            cursor.execute(
                f"INSERT INTO {qn(meta.db_table)} ({columns}) "  # noqa: S608
                f"VALUES {', '.join([placeholders] * len(chunk))} "
                f"ON CONFLICT ({event_id}) DO NOTHING RETURNING {event_id}",
                [
                    field.get_db_prep_save(getattr(record, field.attname), connection)
                    for record in chunk
                    for field in fields
                ],
            )
            inserted.update(row[0] for row in cursor.fetchall())
    return inserted


def _hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _usage_hourly_add(records: Iterable[UsageRecord]) -> None:
    """Add ``records`` to their hours' rollup rows, creating the rows that are missing.

    Raw SQL because the upsert must add: ``bulk_create(update_conflicts=True)`` would
    overwrite a row's counts with this batch's. The same statement runs on SQLite
    (3.24+) and PostgreSQL; the maximum is a CASE since they spell "greatest"
    differently.
    """
    sums: dict[tuple[datetime, int, int, str], list[float]] = {}
    for record in records:
        key = (_hour(record.ts), record.consumer_id or 0, record.product_id or 0, record.model)
        row = sums.setdefault(key, [0, 0, 0, 0, 0.0, record.latency_ms])
        row[0] += 1
        row[1] += 1 if record.status >= 400 else 0
        row[2] += record.prompt_tokens or 0
        row[3] += record.completion_tokens or 0
        row[4] += record.latency_ms
        row[5] = max(row[5], record.latency_ms)
    if not sums:
        return
    meta = UsageHourly._meta
    qn = connection.ops.quote_name
    table = qn(meta.db_table)
    names = (*_HOURLY_KEY, *_HOURLY_SUMS, "latency_max_ms")
    fields = _fields(UsageHourly, names)
    columns = [qn(field.column) for field in fields]
    additions = [f"{qn(name)} = {table}.{qn(name)} + excluded.{qn(name)}" for name in _HOURLY_SUMS]
    maximum = qn("latency_max_ms")
    additions.append(
        f"{maximum} = CASE WHEN excluded.{maximum} > {table}.{maximum} "
        f"THEN excluded.{maximum} ELSE {table}.{maximum} END"
    )
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    keys = sorted(sums)
    with connection.cursor() as cursor:
        for at in range(0, len(keys), _INGEST_CHUNK):
            chunk = keys[at : at + _INGEST_CHUNK]
            params: list[Any] = []
            for key in chunk:
                for field, value in zip(fields, (*key, *sums[key]), strict=True):
                    params.append(field.get_db_prep_save(value, connection))
            # Identifiers come from the model, every value is a parameter.
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
                f"VALUES {', '.join([placeholders] * len(chunk))} "
                f"ON CONFLICT ({', '.join(columns[: len(_HOURLY_KEY)])}) "
                f"DO UPDATE SET {', '.join(additions)}",
                params,
            )


@transaction.atomic
def usage_hourly_rebuild(*, since: datetime | None = None) -> int:
    """Recompute the hourly rollups from the raw records, from the hour holding
    ``since`` (default: all of them); returns how many rollup rows it wrote.

    The repair and seeding path: for records written without
    :func:`usage_records_ingest` (bulk loads, benchmarks, an old release still
    ingesting while the migration ran). Ingests wait for it to finish (a table lock on
    PostgreSQL, the write lock on SQLite), so none is counted twice or lost.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # SHARE conflicts with the ROW EXCLUSIVE lock an ingest's INSERT takes first.
            table = connection.ops.quote_name(UsageRecord._meta.db_table)
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
    hourly = UsageHourly.objects.all()
    records = UsageRecord.objects.order_by()
    if since is not None:
        hourly = hourly.filter(hour__gte=_hour(since))
        records = records.filter(ts__gte=_hour(since))
    hourly.delete()
    return _usage_hourly_build(records=records, rollup=UsageHourly)


def _usage_hourly_build(*, records: Any, rollup: Any, days_per_pass: int = 7) -> int:
    """Insert the hourly sums of the ``records`` queryset into the empty ``rollup`` model
    a few days at a time (the memory of one pass is bounded by the rollup rows of those
    days). Takes the models as arguments so the data migration can pass its historical
    ones."""
    bounds = records.aggregate(first=Min("ts"), last=Max("ts"))
    if bounds["first"] is None:
        return 0
    written = 0
    start = _hour(bounds["first"])
    while start <= bounds["last"]:
        end = start + timedelta(days=days_per_pass)
        rows = (
            records.filter(ts__gte=start, ts__lt=end)
            .annotate(
                bucket=TruncHour("ts", tzinfo=UTC),
                app=Coalesce("consumer_id", Value(0)),
                product=Coalesce("product_id", Value(0)),
            )
            .values("bucket", "app", "product", "model")
            .annotate(
                n=Count("pk"),
                n_errors=Count("pk", filter=Q(status__gte=400)),
                prompt=Coalesce(Sum("prompt_tokens"), Value(0)),
                completion=Coalesce(Sum("completion_tokens"), Value(0)),
                latency_sum=Sum("latency_ms"),
                latency_max=Max("latency_ms"),
            )
            .order_by()
        )
        batch = [
            rollup(
                hour=row["bucket"],
                consumer_id=row["app"],
                product_id=row["product"],
                model=row["model"],
                requests=row["n"],
                errors=row["n_errors"],
                prompt_tokens=row["prompt"],
                completion_tokens=row["completion"],
                latency_sum_ms=row["latency_sum"],
                latency_max_ms=row["latency_max"],
            )
            for row in rows
        ]
        rollup.objects.bulk_create(batch, batch_size=1000)
        written += len(batch)
        start = end
    return written


def _touch_last_used(records: Iterable[UsageRecord]) -> None:
    latest: dict[int, datetime] = {}
    for record in records:
        if record.credential_id is not None:
            seen = latest.get(record.credential_id)
            latest[record.credential_id] = record.ts if seen is None else max(seen, record.ts)
    if not latest:
        return
    current = dict(Credential.objects.filter(pk__in=latest).values_list("pk", "last_used_at"))
    for pk, when in latest.items():
        seen = current.get(pk, when)
        if pk in current and (seen is None or seen < when):
            Credential.objects.filter(pk=pk).update(last_used_at=when)
