"""Consumers (developers' apps), their credentials and subscriptions, and usage records."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


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

    def __str__(self) -> str:
        return f"{self.consumer} → {self.product} ({self.status})"


class UsageRecord(models.Model):
    """One gateway call. Ids are kept as plain numbers so a record outlives what it names."""

    event_id = models.CharField(max_length=64, unique=True)
    request_id = models.CharField(max_length=64)
    ts = models.DateTimeField()
    gateway = models.CharField(max_length=200, blank=True)
    route = models.CharField(max_length=64, blank=True)
    consumer_id = models.BigIntegerField(null=True)
    credential_id = models.BigIntegerField(null=True)
    product_id = models.BigIntegerField(null=True)
    model = models.CharField(max_length=200, blank=True)
    status = models.PositiveSmallIntegerField()
    latency_ms = models.FloatField()
    prompt_tokens = models.PositiveIntegerField(null=True)
    completion_tokens = models.PositiveIntegerField(null=True)
    stream = models.BooleanField(default=False)

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


class UsageHourly(models.Model):
    """The calls of one hour (UTC) by one app to one product and model, summed.

    Maintained by ``consumers.services.usage_records_ingest`` in the transaction that
    inserts the raw records, from exactly the records it inserted, so every call is
    counted once; the dashboards read these rows instead of aggregating raw records.
    :class:`UsageRecord` stays the per-call truth (the CSV of calls, audits, rebuilds).

    ``consumer_id`` and ``product_id`` are 0 for a call without an app or product (NULL
    in the raw record): a unique constraint treats NULLs as distinct, so the additive
    upsert (``ON CONFLICT ... DO UPDATE``) could not find such rows again. Real ids
    start at 1.

    Latency is kept as a sum and a maximum, which is all the dashboards show (average
    and slowest call); sums and maxima of hours add up exactly into days and windows.
    """

    hour = models.DateTimeField()
    consumer_id = models.BigIntegerField()
    product_id = models.BigIntegerField()
    model = models.CharField(max_length=200, blank=True)
    requests = models.BigIntegerField()
    errors = models.BigIntegerField()
    prompt_tokens = models.BigIntegerField()
    completion_tokens = models.BigIntegerField()
    latency_sum_ms = models.FloatField()
    latency_max_ms = models.FloatField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "consumer_id", "product_id", "model"], name="usage_hourly_key"
            )
        ]
        indexes = [
            # Covering (on PostgreSQL): a developer's dashboard reads every row of their
            # apps in the window from the index alone, without visiting the table.
            models.Index(
                fields=["consumer_id", "hour"],
                name="usage_hourly_consumer",
                include=[
                    "product_id",
                    "model",
                    "requests",
                    "errors",
                    "prompt_tokens",
                    "completion_tokens",
                    "latency_sum_ms",
                    "latency_max_ms",
                ],
            ),
            models.Index(fields=["product_id", "hour"], name="usage_hourly_product"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h app {self.consumer_id}: {self.requests} calls"
