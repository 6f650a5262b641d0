"""Read-only usage aggregates for the dashboards: series over time, totals, breakdowns.

The dashboards and the CSV read the hourly rollups (:class:`UsageHourly`, kept by
``usage_records_ingest`` in the transaction of the raw insert), not the raw records: an
hour of an app's calls to one product and model is one row however many calls it holds.
Every window starts and ends on a whole UTC hour, so hours add up exactly into its
buckets and the numbers are those the raw records give. Everything is aggregated by the
database, in a fixed number of queries whatever the number of rows or buckets; Python
only fills the buckets that had no calls with zeros, so a chart's time axis has no holes.

Latency is summarised as average and maximum, not percentiles: SQLite has no percentile
aggregate, and the dashboards must show the same numbers on SQLite and PostgreSQL. The
average is kept as a sum (divided by the request count at the end) so buckets add up
exactly into totals.

Which calls a viewer may see is decided once, in :func:`usage_for_user` (the rollups) and
:func:`usage_records_for_user` (the same filter on the raw records); the other functions
only aggregate the queryset they are given.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import F, Max, QuerySet, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from catalog.models import Product
from consumers.models import Consumer, Subscription, UsageHourly, UsageRecord

_Usage = TypeVar("_Usage", UsageRecord, UsageHourly)

BucketUnit = Literal["hour", "day"]


@dataclass(frozen=True)
class Window:
    """A span of time the dashboards show, cut into ``buckets`` buckets of one ``unit``."""

    key: str
    label: str
    unit: BucketUnit
    buckets: int

    @property
    def step(self) -> timedelta:
        return timedelta(hours=1) if self.unit == "hour" else timedelta(days=1)


WINDOWS: dict[str, Window] = {
    window.key: window
    for window in (
        Window("24h", "Last 24 hours", "hour", 24),
        Window("7d", "Last 7 days", "day", 7),
        Window("30d", "Last 30 days", "day", 30),
    )
}
DEFAULT_WINDOW = WINDOWS["7d"]


def window_for(key: str | None) -> Window:
    """The window named ``key``; anything else (missing, misspelt) is the default."""
    return WINDOWS.get(key or "", DEFAULT_WINDOW)


def bucket_starts(*, window: Window, now: datetime) -> list[datetime]:
    """The UTC start of each bucket of ``window``, oldest first; the last one holds ``now``.

    Buckets are aligned to whole hours or days (UTC) so they match what ``TruncHour`` and
    ``TruncDay`` give back, and the current, partial bucket is the last one.
    """
    now = now.astimezone(UTC)
    if window.unit == "hour":
        current = now.replace(minute=0, second=0, microsecond=0)
    else:
        current = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [current - window.step * i for i in range(window.buckets - 1, -1, -1)]


@dataclass(frozen=True)
class UsageStats:
    """What a set of calls adds up to."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum_ms: float = 0.0
    latency_max_ms: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def latency_avg_ms(self) -> float | None:
        """None, not 0, with no calls: a call-less hour was not an instant one."""
        return self.latency_sum_ms / self.requests if self.requests else None

    @property
    def error_rate(self) -> float | None:
        """Errors as a percentage of requests; None with no calls."""
        return 100.0 * self.errors / self.requests if self.requests else None

    def __add__(self, other: UsageStats) -> UsageStats:
        maxima = [m for m in (self.latency_max_ms, other.latency_max_ms) if m is not None]
        return UsageStats(
            requests=self.requests + other.requests,
            errors=self.errors + other.errors,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            latency_sum_ms=self.latency_sum_ms + other.latency_sum_ms,
            latency_max_ms=max(maxima) if maxima else None,
        )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> UsageStats:
        """Stats from a row annotated with :func:`_aggregates` (SUM of nothing is NULL)."""
        return cls(
            requests=row["requests"] or 0,
            errors=row["errors"] or 0,
            prompt_tokens=row["prompt_tokens"] or 0,
            completion_tokens=row["completion_tokens"] or 0,
            latency_sum_ms=row["latency_sum_ms"] or 0.0,
            latency_max_ms=row["latency_max_ms"],
        )


def _aggregates() -> dict[str, Any]:
    """Sums (and the maximum) of rollup rows: they add up like the calls they hold."""
    return {
        "requests": Sum("requests"),
        "errors": Sum("errors"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "latency_sum_ms": Sum("latency_sum_ms"),
        "latency_max_ms": Max("latency_max_ms"),
    }


def _trunc(window: Window) -> F | TruncDay:
    if window.unit == "hour":
        return F("hour")  # already the start of its hour
    # An explicit UTC keeps buckets identical whatever time zone is active for the request.
    return TruncDay("hour", tzinfo=UTC)


def _none_if_zero(pk: int) -> int | None:
    # The rollups write "no app" and "no product" as 0 (see UsageHourly).
    return pk or None


@dataclass(frozen=True)
class Bucket:
    start: datetime
    stats: UsageStats


@dataclass(frozen=True)
class BreakdownRow:
    """The calls of one product and model in the window."""

    product_id: int | None
    product_name: str
    model: str
    stats: UsageStats


# The breakdown table shows the busiest product and model pairs, and the rest summed in
# one row: a developer calling thousands of products gets a readable table and a page
# that renders in the same time whatever that number (the CSV has every pair).
BREAKDOWN_ROWS = 25


@dataclass(frozen=True)
class UsageReport:
    """A window's calls: per bucket (every bucket, zeros included), in total, and per
    product and model (busiest first; beyond ``BREAKDOWN_ROWS`` pairs, the rest in one
    last row, ``product_id`` None and ``model`` empty, named after how many pairs it
    sums)."""

    window: Window
    start: datetime
    end: datetime
    buckets: list[Bucket]
    breakdown: list[BreakdownRow]
    totals: UsageStats = field(init=False)

    def __post_init__(self) -> None:
        # Totals from the buckets, not another query: they cannot disagree with the chart.
        totals = UsageStats()
        for bucket in self.buckets:
            totals += bucket.stats
        object.__setattr__(self, "totals", totals)

    @property
    def is_empty(self) -> bool:
        return self.totals.requests == 0

    def chart_data(self) -> dict[str, Any]:
        """The series as plain lists for ``json_script``: times in Unix seconds (UTC).

        Latency is null in buckets without calls, so the chart shows a gap there rather
        than a false zero; the counts are zero-filled.
        """
        stats = [bucket.stats for bucket in self.buckets]
        return {
            "unit": self.window.unit,
            "t": [int(bucket.start.timestamp()) for bucket in self.buckets],
            "requests": [s.requests for s in stats],
            "errors": [s.errors for s in stats],
            "prompt_tokens": [s.prompt_tokens for s in stats],
            "completion_tokens": [s.completion_tokens for s in stats],
            "latency_avg_ms": [_round(s.latency_avg_ms) for s in stats],
            "latency_max_ms": [_round(s.latency_max_ms) for s in stats],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def usage_records_for_user(
    *,
    user: User | AnonymousUser,
    consumer: Consumer | None = None,
    product_id: int | None = None,
) -> QuerySet[UsageRecord]:
    """The calls ``user`` may see: those of their own apps (staff: every call), optionally
    narrowed to one app and/or one product.

    The ownership filter applies even when ``consumer`` is given, so an app that slipped
    past the caller's access check still shows nothing of someone else's.
    """
    return _visible(UsageRecord, user=user, consumer=consumer, product_id=product_id)


def usage_for_user(
    *,
    user: User | AnonymousUser,
    consumer: Consumer | None = None,
    product_id: int | None = None,
) -> QuerySet[UsageHourly]:
    """The hourly rollups of the calls ``user`` may see: the same rule as
    :func:`usage_records_for_user`, on :class:`UsageHourly`."""
    return _visible(UsageHourly, user=user, consumer=consumer, product_id=product_id)


def _visible(
    model: type[_Usage],
    *,
    user: User | AnonymousUser,
    consumer: Consumer | None,
    product_id: int | None,
) -> QuerySet[_Usage]:
    if not user.is_authenticated:
        return model.objects.none()
    # No ordering: a default ordering has no place in grouped queries.
    rows = model.objects.order_by()
    if not user.is_staff:
        # A subquery, not a list of ids: one query however many apps the user has.
        rows = rows.filter(consumer_id__in=Consumer.objects.filter(owner=user).values("pk"))
    if consumer is not None:
        rows = rows.filter(consumer_id=consumer.pk)
    if product_id is not None:
        rows = rows.filter(product_id=product_id)
    return rows


def usage_apps_for_user(*, user: User | AnonymousUser) -> QuerySet[Consumer]:
    """The apps whose usage ``user`` may filter by: their own (staff: all)."""
    if not user.is_authenticated:
        return Consumer.objects.none()
    if user.is_staff:
        return Consumer.objects.select_related("owner").order_by("name", "owner__username")
    return Consumer.objects.filter(owner=user).order_by("name")


def usage_products_for_user(*, user: User | AnonymousUser) -> QuerySet[Product]:
    """The products worth offering as a filter: those the user's apps ever subscribed to
    (staff: all products)."""
    if not user.is_authenticated:
        return Product.objects.none()
    if user.is_staff:
        return Product.objects.order_by("name")
    # A semi-join, not a join with DISTINCT: DISTINCT over every column of thousands of
    # subscribed products cost more than the rest of the page.
    subscribed = Subscription.objects.filter(consumer__owner=user).values("product_id")
    return Product.objects.filter(pk__in=subscribed).order_by("name")


def usage_report(
    *, rollups: QuerySet[UsageHourly], window: Window, now: datetime | None = None
) -> UsageReport:
    """Aggregate ``rollups`` over ``window`` ending at ``now``: three queries in all (the
    series, the breakdown, the names of the products it shows)."""
    starts = bucket_starts(window=window, now=now or timezone.now())
    start, end = starts[0], starts[-1] + window.step
    in_window = rollups.filter(hour__gte=start, hour__lt=end)

    per_bucket = {
        row["bucket"]: UsageStats.from_row(row)
        for row in in_window.annotate(bucket=_trunc(window))
        .values("bucket")
        .annotate(**_aggregates())
        .order_by("bucket")
    }
    buckets = [Bucket(start=s, stats=per_bucket.get(s, UsageStats())) for s in starts]

    rows = list(
        in_window.values("product_id", "model")
        .annotate(**_aggregates())
        .order_by("-requests", "product_id", "model")
    )
    shown, rest = rows[:BREAKDOWN_ROWS], rows[BREAKDOWN_ROWS:]
    names = product_names(row["product_id"] for row in shown)
    breakdown = [
        BreakdownRow(
            product_id=_none_if_zero(row["product_id"]),
            product_name=_product_label(_none_if_zero(row["product_id"]), names),
            model=row["model"],
            stats=UsageStats.from_row(row),
        )
        for row in shown
    ]
    if rest:
        others = UsageStats()
        for row in rest:
            others += UsageStats.from_row(row)
        breakdown.append(
            BreakdownRow(
                product_id=None,
                product_name=f"{len(rest):,} more product and model pairs (see the CSV)",
                model="",
                stats=others,
            )
        )
    return UsageReport(window=window, start=start, end=end, buckets=buckets, breakdown=breakdown)


@dataclass(frozen=True)
class UsageCsvRow:
    """One bucket's calls of one app to one product and model."""

    bucket_start: datetime
    app_id: int | None
    app_name: str
    product_id: int | None
    product_name: str
    model: str
    stats: UsageStats


def usage_csv_rows(
    *, rollups: QuerySet[UsageHourly], window: Window, now: datetime | None = None
) -> list[UsageCsvRow]:
    """The bucketed series of ``rollups`` split by app, product and model, oldest first.

    Only combinations with calls get a row: zero-filling every combination of app,
    product and model would bury the data. Fully evaluated here (three queries) so a
    streaming response touches no database while it streams.
    """
    starts = bucket_starts(window=window, now=now or timezone.now())
    start, end = starts[0], starts[-1] + window.step
    rows = list(
        rollups.filter(hour__gte=start, hour__lt=end)
        .annotate(bucket=_trunc(window))
        .values("bucket", "consumer_id", "product_id", "model")
        .annotate(**_aggregates())
        .order_by("bucket", "consumer_id", "product_id", "model")
    )
    for row in rows:
        row["consumer_id"] = _none_if_zero(row["consumer_id"])
        row["product_id"] = _none_if_zero(row["product_id"])
    products = product_names(row["product_id"] for row in rows)
    apps = _app_names(row["consumer_id"] for row in rows)
    return [
        UsageCsvRow(
            bucket_start=row["bucket"],
            app_id=row["consumer_id"],
            app_name=_app_label(row["consumer_id"], apps),
            product_id=row["product_id"],
            product_name=_product_label(row["product_id"], products),
            model=row["model"],
            stats=UsageStats.from_row(row),
        )
        for row in rows
    ]


def product_names(ids: Iterable[int | None]) -> dict[int, str]:
    """Names of the products with these ids that still exist, in one query."""
    wanted = {pk for pk in ids if pk is not None}
    if not wanted:
        return {}
    return dict(Product.objects.filter(pk__in=wanted).values_list("pk", "name"))


def product_label(pk: int) -> str:
    """The name of product ``pk``, or ``product #<pk>`` if it no longer exists."""
    return _product_label(pk, product_names([pk]))


def _app_names(ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {pk for pk in ids if pk is not None}
    if not wanted:
        return {}
    return dict(Consumer.objects.filter(pk__in=wanted).values_list("pk", "name"))


def _product_label(pk: int | None, names: dict[int, str]) -> str:
    # Records outlive products: a deleted one is still counted, under its old id.
    if pk is None:
        return "(no product)"
    return names.get(pk, f"product #{pk}")


def _app_label(pk: int | None, names: dict[int, str]) -> str:
    if pk is None:
        return "(no app)"
    return names.get(pk, f"app #{pk}")
