"""Writes for consumers, credentials, subscriptions and usage records."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models import Count, F, Field, Max, Min, Model, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDay, TruncHour, TruncWeek
from django.utils import timezone

from catalog.models import McpTool, Plan, Product
from consumers.models import (
    ROLLUP_SUMS,
    Consumer,
    Credential,
    Subscription,
    UsageDaily,
    UsageHourly,
    UsageOwnerDays,
    UsageOwnerHourly,
    UsageRecord,
)
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

    Usage records and rollups keep their numbers and owner (they are history, not
    access): the app's calls stay on its owner's dashboards and CSV.
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


@transaction.atomic
def subscription_set_allowed_tools(
    *, subscription: Subscription, tools: Iterable[str] | None
) -> Subscription:
    """Restrict an MCP subscription to ``tools`` (``None``: every tool of the product).

    The names must be tools the product's server has listed (any status: an allow-list
    may name a tool before it is approved); each is kept once, sorted.
    """
    names = None if tools is None else sorted(set(tools))
    if names is not None:
        problems = allowed_tools_errors(product=subscription.product, names=names)
        if problems:
            raise ValidationError({"allowed_tools": problems})
    subscription.allowed_tools = names
    subscription.save(update_fields=["allowed_tools"])
    audit.record("subscription.allowed_tools", subscription, tools=names)
    gateway_changed()
    return subscription


@transaction.atomic
def subscription_set_requests_per_minute(
    *, subscription: Subscription, requests_per_minute: int | None
) -> Subscription:
    """Limit this one app's calls to the product, on top of its plan's limit (``None``:
    the plan's only). The gateway enforces it from the next revision."""
    if requests_per_minute is not None and requests_per_minute < 1:
        raise ValidationError(
            {"requests_per_minute": "A limit is at least 1 request a minute (empty: none)."}
        )
    subscription.requests_per_minute = requests_per_minute
    subscription.save(update_fields=["requests_per_minute"])
    audit.record(
        "subscription.requests_per_minute", subscription, requests_per_minute=requests_per_minute
    )
    gateway_changed()
    return subscription


def allowed_tools_errors(*, product: Product, names: Iterable[str]) -> list[str]:
    """Why ``names`` cannot be an allow-list of ``product``'s tools (empty: they can)."""
    if product.kind != Product.Kind.MCP:
        return ["Only subscriptions to MCP products have tools to allow."]
    names = list(names)
    known = set(McpTool.objects.filter(server__product=product).values_list("name", flat=True))
    unknown = [name for name in names if name not in known]
    if not unknown:
        return []
    listed = ", ".join(sorted(known)) or "none yet"
    return [f"{product.name} has no tool named {', '.join(unknown)} (its tools: {listed})."]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


# Records per INSERT: 17 parameters each stays far below SQLite's 32,766 variables and
# PostgreSQL's 65,535.
_INGEST_CHUNK = 500

_RECORD_FIELDS = (
    "event_id",
    "request_id",
    "ts",
    "gateway",
    "route",
    "consumer_id",
    "owner_id",
    "credential_id",
    "product_id",
    "model",
    "status",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "stream",
    "target",
    "cached",
    "tokens_estimated",
)

# The sums of a rollup row that add up; the maximum latency is the one that does not.
_ADDITIVE_SUMS = tuple(name for name in ROLLUP_SUMS if name != "latency_max_ms")


@transaction.atomic
def usage_records_ingest(*, events: Iterable[schema.UsageEvent]) -> int:
    """Store usage events idempotently and add them to the rollups; returns how many were
    new.

    The event id is unique in the table, so a batch delivered twice (a gateway retry, a
    Redis entry claimed again after a worker died) inserts nothing the second time.
    :class:`UsageHourly` and the rollups made from it are updated in the same
    transaction from exactly the records this call inserted: ``INSERT ... ON CONFLICT
    DO NOTHING RETURNING`` names them on SQLite and PostgreSQL alike, also when a
    concurrent ingest of the same events won the race (which then counts them itself).
    A pre-check of existing ids could not tell that, and
    ``bulk_create(ignore_conflicts=True)`` does not say what it skipped.

    Each record is stamped with its app's owner now, so the calls stay on the owner's
    dashboards after the app is deleted.
    """
    unique: dict[str, schema.UsageEvent] = {}
    for event in events:
        # The first delivery of an id within a batch wins, as it would across batches.
        unique.setdefault(event.id, event)
    if not unique:
        return 0
    owners = _owners_of(event.consumer for event in unique.values())
    # Every ingest inserts in event-id order and upserts rollups in key order, so
    # concurrent ones take their row locks in the same order and cannot deadlock.
    records = [_usage_record(unique[event_id], owners) for event_id in sorted(unique)]
    new_ids = _usage_records_insert_new(records)
    inserted = [record for record in records if record.event_id in new_ids]
    _usage_rollups_add(inserted)
    _touch_last_used(inserted)
    return len(inserted)


def _owners_of(consumer_ids: Iterable[int | None]) -> dict[int, int]:
    """The owner of each of these apps that still exists, in one query."""
    wanted = {pk for pk in consumer_ids if pk is not None}
    if not wanted:
        return {}
    return dict(Consumer.objects.filter(pk__in=wanted).values_list("pk", "owner_id"))


def _usage_record(event: schema.UsageEvent, owners: dict[int, int]) -> UsageRecord:
    return UsageRecord(
        event_id=event.id,
        request_id=event.request_id,
        ts=_dt(event.ts),
        gateway=event.gateway[:200],
        route=event.route[:64],
        consumer_id=event.consumer,
        owner_id=None if event.consumer is None else owners.get(event.consumer),
        credential_id=event.credential,
        product_id=event.product,
        model=(event.model or "")[:200],
        status=event.status,
        latency_ms=event.latency_ms,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        stream=event.stream,
        target=event.target,
        cached=event.cached,
        tokens_estimated=event.estimated,
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
    db = connections[DEFAULT_DB_ALIAS]  # not the proxy: asked for once per value
    with db.cursor() as cursor:
        for at in range(0, len(records), _INGEST_CHUNK):
            chunk = records[at : at + _INGEST_CHUNK]
            # Identifiers come from the model, every value is a parameter.
            cursor.execute(
                f"INSERT INTO {qn(meta.db_table)} ({columns}) "  # noqa: S608
                f"VALUES {', '.join([placeholders] * len(chunk))} "
                f"ON CONFLICT ({event_id}) DO NOTHING RETURNING {event_id}",
                [
                    field.get_db_prep_save(getattr(record, field.attname), db)
                    for record in chunk
                    for field in fields
                ],
            )
            inserted.update(row[0] for row in cursor.fetchall())
    return inserted


def _hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _day(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


# A rollup's key: the period its row starts, then the ids and model it is per. "None" is 0.
_RollupKey = tuple[Any, ...]


@dataclass(frozen=True)
class _CoarserRollup:
    """A rollup whose rows sum the hourly rows (see consumers.models) per period start
    (``period``, a column holding ``start_of`` the call's time, ``bucket`` in SQL) and
    ``keys``, with ``fixed`` columns set alike on all of them."""

    model: type[Model]
    period: str
    start_of: Callable[[datetime], datetime]
    bucket: Callable[[], Any]
    keys: tuple[str, ...]
    fixed: tuple[tuple[str, int], ...] = ()

    @property
    def key_names(self) -> tuple[str, ...]:
        return (self.period, *(name for name, _ in self.fixed), *self.keys)

    def key_of(self, record: UsageRecord) -> _RollupKey:
        # The rollups write "none" as 0 (see UsageHourly); a model name is text.
        ids = (
            getattr(record, name) if name == "model" else getattr(record, name) or 0
            for name in self.keys
        )
        return (self.start_of(record.ts), *(value for _, value in self.fixed), *ids)


def _week(ts: datetime) -> datetime:
    day = _day(ts)
    return day - timedelta(days=day.weekday())  # the Monday that starts its ISO week


def _in_days() -> TruncDay:
    return TruncDay("hour", tzinfo=UTC)


_PAIR = ("owner_id", "product_id", "model")
_COARSER_ROLLUPS = (
    _CoarserRollup(UsageDaily, "day", _day, _in_days, ("consumer_id", *_PAIR)),
    _CoarserRollup(UsageOwnerHourly, "hour", _hour, lambda: F("hour"), ("owner_id",)),
    _CoarserRollup(UsageOwnerDays, "start", _day, _in_days, _PAIR, (("days", UsageOwnerDays.DAY),)),
    _CoarserRollup(
        UsageOwnerDays,
        "start",
        _week,
        lambda: TruncWeek("hour", tzinfo=UTC),
        _PAIR,
        (("days", UsageOwnerDays.WEEK),),
    ),
)


def _usage_rollups_add(records: list[UsageRecord]) -> None:
    """Add ``records`` to their rows of every rollup (see consumers.models)."""
    _rollup_add(
        UsageHourly,
        ("hour", "consumer_id", "owner_id", "product_id", "model"),
        records,
        lambda r: (_hour(r.ts), r.consumer_id or 0, r.owner_id or 0, r.product_id or 0, r.model),
    )
    for rollup in _COARSER_ROLLUPS:
        _rollup_add(rollup.model, rollup.key_names, records, rollup.key_of)


def _rollup_add(
    rollup: type[Model],
    key_names: tuple[str, ...],
    records: list[UsageRecord],
    key_of: Callable[[UsageRecord], _RollupKey],
) -> None:
    """Add ``records`` to the ``rollup`` rows their ``key_of`` names, creating the rows
    that are missing.

    Raw SQL because the upsert must add: ``bulk_create(update_conflicts=True)`` would
    overwrite a row's counts with this batch's. The same statement runs on SQLite
    (3.24+) and PostgreSQL; the maximum is a CASE since they spell "greatest"
    differently.
    """
    sums: dict[_RollupKey, list[float]] = {}
    for record in records:
        row = sums.setdefault(key_of(record), [0, 0, 0, 0, 0.0, record.latency_ms])
        row[0] += 1
        row[1] += 1 if record.status >= 400 else 0
        row[2] += record.prompt_tokens or 0
        row[3] += record.completion_tokens or 0
        row[4] += record.latency_ms
        row[5] = max(row[5], record.latency_ms)
    if not sums:
        return
    qn = connection.ops.quote_name
    table = qn(rollup._meta.db_table)
    fields = _fields(rollup, (*key_names, *_ADDITIVE_SUMS, "latency_max_ms"))
    columns = [qn(field.column) for field in fields]
    additions = [
        f"{qn(name)} = {table}.{qn(name)} + excluded.{qn(name)}" for name in _ADDITIVE_SUMS
    ]
    maximum = qn("latency_max_ms")
    additions.append(
        f"{maximum} = CASE WHEN excluded.{maximum} > {table}.{maximum} "
        f"THEN excluded.{maximum} ELSE {table}.{maximum} END"
    )
    placeholders = "(" + ", ".join(["%s"] * len(fields)) + ")"
    keys = sorted(sums)
    # The connection itself, not the proxy: it is asked for once per value below.
    db = connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        for at in range(0, len(keys), _INGEST_CHUNK):
            chunk = keys[at : at + _INGEST_CHUNK]
            params: list[Any] = []
            for key in chunk:
                for field, value in zip(fields, (*key, *sums[key]), strict=True):
                    params.append(field.get_db_prep_save(value, db))
            # Identifiers come from the model, every value is a parameter.
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608
                f"VALUES {', '.join([placeholders] * len(chunk))} "
                f"ON CONFLICT ({', '.join(columns[: len(key_names)])}) "
                f"DO UPDATE SET {', '.join(additions)}",
                params,
            )


@transaction.atomic
def usage_hourly_rebuild(*, since: datetime | None = None) -> int:
    """Recompute the rollups from the raw records, from the hour holding ``since``
    (default: all of them); returns how many hourly rows per app it wrote.

    The repair and seeding path: for records written without
    :func:`usage_records_ingest` (bulk loads, benchmarks, an old release still
    ingesting while a migration ran). Ingests wait for it to finish (a table lock on
    PostgreSQL, the write lock on SQLite), so none is counted twice or lost. The other
    rollups are summed again from the hourly ones, from the start of the day (or week)
    holding ``since``.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # SHARE conflicts with the ROW EXCLUSIVE lock an ingest's INSERT takes first.
            table = connection.ops.quote_name(UsageRecord._meta.db_table)
            cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")
    records = UsageRecord.objects.order_by()
    hourly = UsageHourly.objects.order_by()
    if since is not None:
        records = records.filter(ts__gte=_hour(since))
        hourly = hourly.filter(hour__gte=_hour(since))
    hourly.delete()
    written = _usage_hourly_build(records=records, rollup=UsageHourly)
    for rollup in _COARSER_ROLLUPS:
        rows = rollup.model._default_manager.filter(**dict(rollup.fixed))
        of_hours = UsageHourly.objects.order_by()
        if since is not None:
            # Whole periods: the hours of since's day (week) before since were kept, not
            # rebuilt, and are summed again with the rest.
            start = rollup.start_of(since)
            rows = rows.filter(**{f"{rollup.period}__gte": start})
            of_hours = of_hours.filter(hour__gte=start)
        rows.delete()
        _usage_coarser_build(hourly=of_hours, rollup=rollup)
    return written


def _usage_hourly_build(*, records: Any, rollup: Any, days_per_pass: int = 7) -> int:
    """Insert the hourly sums of the ``records`` queryset into the empty ``rollup`` model
    a few days at a time (the memory of one pass is bounded by the rollup rows of those
    days). Takes the models as arguments so the data migration can pass its historical
    ones."""

    def rows(start: datetime, end: datetime) -> Iterable[Any]:
        sums = (
            records.filter(ts__gte=start, ts__lt=end)
            .annotate(
                bucket=TruncHour("ts", tzinfo=UTC),
                app=Coalesce("consumer_id", Value(0)),
                owner=Coalesce("owner_id", Value(0)),
                product=Coalesce("product_id", Value(0)),
            )
            .values("bucket", "app", "owner", "product", "model")
            .annotate(
                sum_requests=Count("pk"),
                sum_errors=Count("pk", filter=Q(status__gte=400)),
                sum_prompt_tokens=Coalesce(Sum("prompt_tokens"), Value(0)),
                sum_completion_tokens=Coalesce(Sum("completion_tokens"), Value(0)),
                sum_latency_sum_ms=Sum("latency_ms"),
                sum_latency_max_ms=Max("latency_ms"),
            )
            .order_by()
        )
        return (
            rollup(
                hour=row["bucket"],
                consumer_id=row["app"],
                owner_id=row["owner"],
                product_id=row["product"],
                model=row["model"],
                **_sums_from(row),
            )
            for row in sums
        )

    bounds = records.aggregate(first=Min("ts"), last=Max("ts"))
    return _build_in_passes(rollup, rows, bounds["first"], bounds["last"], days_per_pass)


def _usage_coarser_build(*, hourly: Any, rollup: _CoarserRollup, days_per_pass: int = 7) -> int:
    """Insert the sums of the ``hourly`` rollup rows into ``rollup``, which has no rows
    for their periods, a few days at a time (whole weeks: no week is split)."""

    def rows(start: datetime, end: datetime) -> Iterable[Any]:
        sums = (
            hourly.filter(hour__gte=start, hour__lt=end)
            .annotate(bucket=rollup.bucket())
            .values("bucket", *rollup.keys)
            .annotate(
                **{f"sum_{name}": Sum(name) for name in _ADDITIVE_SUMS},
                sum_latency_max_ms=Max("latency_max_ms"),
            )
            .order_by()
        )
        return (
            rollup.model(
                **{rollup.period: row["bucket"]},
                **dict(rollup.fixed),
                **{name: row[name] for name in rollup.keys},
                **_sums_from(row),
            )
            for row in sums
        )

    bounds = hourly.aggregate(first=Min("hour"), last=Max("hour"))
    first = None if bounds["first"] is None else rollup.start_of(bounds["first"])
    return _build_in_passes(rollup.model, rows, first, bounds["last"], days_per_pass)


def _sums_from(row: dict[str, Any]) -> dict[str, Any]:
    """A rollup row's sums from a row annotated ``sum_<column>`` (an annotation may not
    take the name of a column of its model)."""
    return {name: row[f"sum_{name}"] for name in ROLLUP_SUMS}


def _build_in_passes(
    rollup: Any,
    rows: Callable[[datetime, datetime], Iterable[Any]],
    first: datetime | None,
    last: datetime | None,
    days_per_pass: int,
) -> int:
    """Insert ``rows(start, end)`` for consecutive spans of ``days_per_pass`` days from
    ``first`` (a period start) through ``last``: memory is bounded by one span's rows."""
    if first is None or last is None:
        return 0
    written = 0
    start = _hour(first)
    while start <= last:
        end = start + timedelta(days=days_per_pass)
        batch = list(rows(start, end))
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
