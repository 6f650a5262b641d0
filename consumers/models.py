"""Consumers (developers' apps), their credentials and subscriptions, and usage records."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


def validate_tool_names(value: object) -> None:
    if value is not None and (
        not isinstance(value, list) or not all(isinstance(name, str) and name for name in value)
    ):
        raise ValidationError("Allowed tools are a list of tool names.")


class Consumer(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="consumers"
    )
    # The portal the app was created on: the owner's standing there governs its keys.
    portal = models.ForeignKey(
        "portal.Portal", on_delete=models.PROTECT, null=True, blank=True, related_name="consumers"
    )
    name = models.CharField(max_length=120)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="consumer_unique_name")
        ]

    def __str__(self) -> str:
        return self.name


class Credential(models.Model):
    """An API key. Only its SHA-256 and a short display prefix are ever stored."""

    consumer = models.ForeignKey(Consumer, on_delete=models.CASCADE, related_name="credentials")
    name = models.CharField(max_length=120)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    display_prefix = models.CharField(max_length=16, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix}…)"

    @property
    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > timezone.now()


class Subscription(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        SUSPENDED = "suspended", "Suspended"
        CANCELLED = "cancelled", "Cancelled"
        REVOKED = "revoked", "Revoked"

    LIVE = (Status.PENDING, Status.APPROVED, Status.SUSPENDED)

    consumer = models.ForeignKey(Consumer, on_delete=models.CASCADE, related_name="subscriptions")
    product = models.ForeignKey(
        "catalog.Product", on_delete=models.CASCADE, related_name="subscriptions"
    )
    plan = models.ForeignKey("catalog.Plan", on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    decision_reason = models.TextField(blank=True)
    # MCP products: the only tools this subscription may list and call; None: all of them.
    # Set by admins (consumers.services.subscription_set_allowed_tools).
    allowed_tools = models.JSONField(
        null=True,
        blank=True,
        default=None,
        validators=[validate_tool_names],
        help_text="MCP products only: the tools this app may use. Empty: every tool.",
    )
    # An admin's limit for this one app on this product, on top of its plan's.
    requests_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="A limit for this app alone, on top of the plan's. Empty: the plan's only.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One live subscription per consumer and product; ended ones stay as history.
            models.UniqueConstraint(
                fields=["consumer", "product"],
                condition=models.Q(status__in=["pending", "approved", "suspended"]),
                name="subscription_one_live",
            )
        ]
        indexes = [
            # The products a developer's apps subscribed to (the usage page's filter) from
            # the index alone: with only the consumer index, PostgreSQL preferred scanning
            # every subscription to looking up a thousand apps.
            models.Index(fields=["consumer", "product"], name="subscription_consumer_product"),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} → {self.product} ({self.status})"


class UsageRecord(models.Model):
    """One gateway call. Ids are kept as plain numbers so a record outlives what it names.

    ``owner_id`` is the owner of the app when the call was stored (NULL without an app,
    or when the app was already gone): deleting an app removes its access, not the
    calls its owner made with it, so their dashboards keep counting them.
    """

    event_id = models.CharField(max_length=64, unique=True)
    request_id = models.CharField(max_length=64)
    ts = models.DateTimeField()
    gateway = models.CharField(max_length=200, blank=True)
    route = models.CharField(max_length=64, blank=True)
    consumer_id = models.BigIntegerField(null=True)
    owner_id = models.BigIntegerField(null=True)
    credential_id = models.BigIntegerField(null=True)
    product_id = models.BigIntegerField(null=True)
    model = models.CharField(max_length=200, blank=True)
    status = models.PositiveSmallIntegerField()
    latency_ms = models.FloatField()
    prompt_tokens = models.PositiveIntegerField(null=True)
    completion_tokens = models.PositiveIntegerField(null=True)
    stream = models.BooleanField(default=False)
    target = models.CharField(max_length=300, blank=True)  # "<upstream>/<model>"
    cached = models.BooleanField(default=False)  # answered from the response cache
    tokens_estimated = models.BooleanField(default=False)  # counted by the gateway

    class Meta:
        ordering = ["-ts"]
        indexes = [
            models.Index(fields=["consumer_id", "ts"], name="usage_consumer_ts"),
            models.Index(fields=["product_id", "ts"], name="usage_product_ts"),
            # Staff's unfiltered dashboards select by time alone.
            models.Index(fields=["ts"], name="usage_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.status}"


# The columns of UsageSums, which the rollups' covering indexes include.
ROLLUP_SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "latency_sum_ms",
    "latency_max_ms",
)


class UsageSums(models.Model):
    """What every usage rollup row sums of its calls.

    Latency is kept as a sum and a maximum, which is all the dashboards show (average
    and slowest call); sums and maxima of hours add up exactly into days and windows.
    """

    requests = models.BigIntegerField()
    errors = models.BigIntegerField()
    prompt_tokens = models.BigIntegerField()
    completion_tokens = models.BigIntegerField()
    latency_sum_ms = models.FloatField()
    latency_max_ms = models.FloatField()

    class Meta:
        abstract = True


class _PerApp(UsageSums):
    """The key of a rollup row of one app's calls, but for its period: the app, the owner
    it had when the calls were made, the product and the model ("none" is 0)."""

    consumer_id = models.BigIntegerField()
    owner_id = models.BigIntegerField(default=0)
    product_id = models.BigIntegerField()
    model = models.CharField(max_length=200, blank=True)

    class Meta:
        abstract = True


class UsageHourly(_PerApp):
    """The calls of one hour (UTC) by one app of one owner to one product and model, summed.

    Maintained by ``consumers.services.usage_records_ingest`` in the transaction that
    inserts the raw records, from exactly the records it inserted, so every call is
    counted once; the dashboards read these rows instead of aggregating raw records.
    :class:`UsageRecord` stays the per-call truth (the CSV of calls, audits, rebuilds).

    ``consumer_id``, ``owner_id`` and ``product_id`` are 0 for a call without an app, a
    known owner or a product (NULL in the raw record): a unique constraint treats NULLs
    as distinct, so the additive upsert (``ON CONFLICT ... DO UPDATE``) could not find
    such rows again. Real ids start at 1. The owner is part of the key so an app handed
    to another developer leaves its earlier calls with the one who made them.
    """

    hour = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "consumer_id", "owner_id", "product_id", "model"],
                name="usage_hourly_key",
            )
        ]
        indexes = [
            # Covering (on PostgreSQL): one app's dashboard reads its rows in the window
            # from the index alone, without visiting the table.
            models.Index(
                fields=["consumer_id", "hour"],
                name="usage_hourly_consumer",
                include=["owner_id", "product_id", "model", *ROLLUP_SUMS],
            ),
            # Covering too: all of a developer's apps, deleted ones included (the 24-hour
            # dashboard and CSV), in one range of the index, in the CSV's order.
            models.Index(
                fields=["owner_id", "hour", "consumer_id", "product_id", "model"],
                name="usage_hourly_owner",
                include=ROLLUP_SUMS,
            ),
            models.Index(fields=["product_id", "hour"], name="usage_hourly_product"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h app {self.consumer_id}: {self.requests} calls"


class UsageDaily(_PerApp):
    """The calls of one day (UTC) by one app of one owner to one product and model: the
    hours of :class:`UsageHourly` folded into days, kept next to it in the same
    transaction by the same additive upsert, for the 7- and 30-day CSV: it streams
    these rows as they are, in the order of their index, where summing 24 hourly rows
    for each of its lines had to be done, and sorted, before its first line could go.
    Its "none" is 0, as in UsageHourly.
    """

    day = models.DateTimeField()  # the UTC midnight that starts it

    class Meta:
        constraints = [
            # The upsert's key, and the index a developer's CSV streams from, in its own
            # order: one index to keep up at ingest. (Not covering: SQLite would then
            # not have the constraint the upsert names.)
            models.UniqueConstraint(
                fields=["owner_id", "day", "consumer_id", "product_id", "model"],
                name="usage_daily_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.day:%Y-%m-%d} app {self.consumer_id}: {self.requests} calls"


class UsageOwnerHourly(UsageSums):
    """The calls of one hour (UTC) by all the apps of one owner, to every product, summed.

    The series (the charts and the per-bucket table) of a dashboard of all of a
    developer's apps and products: one row per hour, however many apps, products and
    models the hour's calls went to. With the product and model in the key it would be
    no smaller than :class:`UsageHourly` for a developer whose thousand apps call a
    few thousand products. Kept next to UsageHourly, in the same transaction and by the
    same additive upsert. ``owner_id`` is 0 for "none", as in UsageHourly.
    """

    hour = models.DateTimeField()
    owner_id = models.BigIntegerField()

    class Meta:
        constraints = [
            # The upsert's key; a developer's hours are one range of it.
            models.UniqueConstraint(fields=["owner_id", "hour"], name="usage_owner_hourly_key")
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h owner {self.owner_id}: {self.requests} calls"


class UsageOwnerDays(UsageSums):
    """The calls of one day, or one week, by all the apps of one owner to one product
    and model, summed: ``days`` (1 or 7) days from ``start``, a UTC midnight (a Monday
    for a week). Every call is in one row of each span.

    The breakdown by product and model of the 7- and 30-day dashboards of all of a
    developer's apps (and their series for one product). A developer with a thousand
    apps has a row per app and hour in :class:`UsageHourly`, and summing those for 30
    days was most of the page's time: here the apps are summed and the hours folded into
    days, and a month is its whole weeks plus the days at its ends, a few rows per
    product and model instead of thirty. Kept next to UsageHourly, in the same
    transaction and by the same additive upsert. ``owner_id`` and ``product_id`` are 0
    for "none", as in UsageHourly.
    """

    DAY = 1
    WEEK = 7

    start = models.DateTimeField()
    days = models.PositiveSmallIntegerField()
    owner_id = models.BigIntegerField()
    product_id = models.BigIntegerField()
    model = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["start", "days", "owner_id", "product_id", "model"],
                name="usage_owner_days_key",
            ),
            models.CheckConstraint(
                condition=models.Q(days__in=[1, 7]), name="usage_owner_days_span"
            ),
        ]
        indexes = [
            # Covering (on PostgreSQL): a developer's weeks, or days, in a window are one
            # range of it each, read from the index alone. It is worth its upkeep: the
            # dashboards read these rows on every view.
            models.Index(
                fields=["owner_id", "days", "start"],
                name="usage_owner_days_owner",
                include=["product_id", "model", *ROLLUP_SUMS],
            ),
        ]

    def __str__(self) -> str:
        span = "day" if self.days == self.DAY else "week"
        return f"{span} of {self.start:%Y-%m-%d} owner {self.owner_id}: {self.requests} calls"
