"""Read-only usage aggregates for the dashboards: series over time, totals, breakdowns.

The dashboards and the CSV read the rollups kept by ``usage_records_ingest`` in the
transaction of the raw insert, never the raw records (see consumers.models): an hour or
a day of an app's calls to one product and model (:class:`UsageHourly`,
:class:`UsageDaily`), an hour of all of a developer's calls (:class:`UsageOwnerHourly`),
a day or a week of all of a developer's calls to one product and model
(:class:`UsageOwnerDays`) is one row however many calls it holds. Each read takes the
coarsest one that still tells its buckets apart. Every window starts and ends on a whole
UTC hour (the 7- and 30-day ones on a whole UTC day), so the rows add up exactly into
its buckets and the numbers are those the raw records give. Everything is aggregated by
the database, in a fixed number of queries whatever the number of rows or buckets;
Python only fills the buckets that had no calls with zeros, so a chart's time axis has
no holes.

Latency is summarised as average and maximum, not percentiles: SQLite has no percentile
aggregate, and the dashboards must show the same numbers on SQLite and PostgreSQL. The
average is kept as a sum (divided by the request count at the end) so buckets add up
exactly into totals.

Which calls a viewer may see is decided once, in :meth:`UsageScope.rows`: the calls of
the apps they owned when the calls were made, including apps deleted since (their usage
was made and paid for: it stays on the owner's totals and CSV); staff see every call.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.db.models import BigIntegerField, CharField, Count, F, Func, Max, Q, QuerySet, Sum
from django.db.models.expressions import RowRange
from django.db.models.expressions import Window as Over
from django.db.models.functions import Cast, TruncDay
from django.utils import timezone

from catalog.models import Product
from consumers.models import (
    ROLLUP_SUMS,
    Consumer,
    Subscription,
    UsageDaily,
    UsageHourly,
    UsageOwnerDays,
    UsageOwnerHourly,
    UsageRecord,
)

# The raw records or one of the rollups: every one has the owner_id the access rule needs.
UsageModel = (
    type[UsageRecord]
    | type[UsageHourly]
    | type[UsageDaily]
    | type[UsageOwnerHourly]
    | type[UsageOwnerDays]
)

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
        "requests": _int_sum("requests"),
        "errors": _int_sum("errors"),
        "prompt_tokens": _int_sum("prompt_tokens"),
        "completion_tokens": _int_sum("completion_tokens"),
        "latency_sum_ms": Sum("latency_sum_ms"),
        "latency_max_ms": Max("latency_max_ms"),
    }


def _int_sum(name: str) -> Cast:
    # PostgreSQL sums BIGINTs into a NUMERIC, which is read as a Decimal and converted
    # to an int, value by value: a breakdown of thousands of pairs paid for it.
    return Cast(Sum(name), BigIntegerField())


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


@dataclass(frozen=True)
class UsageScope:
    """The calls a viewer asks for: all those they may see, maybe narrowed to one app
    and/or one product. Made by :func:`usage_for_user`; :meth:`rows` applies the rule."""

    user: User | AnonymousUser
    consumer: Consumer | None = None
    product_id: int | None = None

    def rows(self, model: UsageModel) -> QuerySet[Any]:
        """The rows of ``model`` (raw records or a rollup) in this scope that the viewer
        may see: the calls of apps they owned when the calls were made, deleted apps
        included (staff: every call).

        The ownership filter applies even when ``consumer`` is given, so an app that
        slipped past the caller's access check still shows nothing of someone else's.
        """
        if not self.user.is_authenticated:
            return model._default_manager.none()
        # No ordering: a default ordering has no place in grouped queries.
        rows: QuerySet[Any] = model._default_manager.order_by()
        if not self.user.is_staff:
            rows = rows.filter(owner_id=self.user.pk)
        if self.consumer is not None:
            if model in (UsageOwnerHourly, UsageOwnerDays):
                raise ValueError(f"{model.__name__} sums all of an owner's apps.")
            rows = rows.filter(consumer_id=self.consumer.pk)
        if self.product_id is not None:
            if model is UsageOwnerHourly:
                raise ValueError("UsageOwnerHourly sums all products.")
            rows = rows.filter(product_id=self.product_id)
        return rows


def usage_for_user(
    *,
    user: User | AnonymousUser,
    consumer: Consumer | None = None,
    product_id: int | None = None,
) -> UsageScope:
    """The calls ``user`` may see (their apps', staff: everyone's), optionally narrowed to
    one app and/or one product, for :func:`usage_report` and :func:`usage_csv_rows`."""
    return UsageScope(user=user, consumer=consumer, product_id=product_id)


def usage_has_calls(*, scope: UsageScope) -> bool:
    """Whether there was ever a call in ``scope``."""
    return scope.rows(UsageHourly).exists()


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


def _series_rows(
    scope: UsageScope, window: Window, start: datetime, end: datetime
) -> QuerySet[Any]:
    """The rollup rows of ``scope`` in [start, end) to sum per bucket, each with its
    ``bucket``: from the coarsest rollup that still tells the buckets apart.

    A developer with a thousand apps calling a few thousand products has a thousand rows
    an hour in UsageHourly: summing them for a month took longer than the page may. The
    per-owner rollups have them summed over apps (UsageOwnerDays), and over products
    and models too (UsageOwnerHourly).
    """
    if scope.consumer is None and scope.product_id is None:
        hours = scope.rows(UsageOwnerHourly).filter(hour__gte=start, hour__lt=end)
        return hours.annotate(bucket=_trunc(window))
    if scope.consumer is not None or window.unit == "hour":
        hours = scope.rows(UsageHourly).filter(hour__gte=start, hour__lt=end)
        return hours.annotate(bucket=_trunc(window))
    days = scope.rows(UsageOwnerDays).filter(
        days=UsageOwnerDays.DAY, start__gte=start, start__lt=end
    )
    return days.annotate(bucket=F("start"))


def _pair_rows(scope: UsageScope, window: Window, start: datetime, end: datetime) -> QuerySet[Any]:
    """The rollup rows of ``scope`` that cover [start, end) once, to sum per product and
    model: for all apps over whole days, the whole weeks in it and the days around them
    (a month is then about a tenth of its daily rows); else hours."""
    if scope.consumer is not None or window.unit == "hour":
        return scope.rows(UsageHourly).filter(hour__gte=start, hour__lt=end)
    days = scope.rows(UsageOwnerDays)
    first_week = start + timedelta(days=-start.weekday() % 7)  # the first Monday in it
    weeks = max(0, (end - first_week).days // 7)
    if not weeks:
        return days.filter(days=UsageOwnerDays.DAY, start__gte=start, start__lt=end)
    after_weeks = first_week + timedelta(days=7 * weeks)
    return days.filter(
        Q(days=UsageOwnerDays.WEEK, start__gte=first_week, start__lt=after_weeks)
        | Q(days=UsageOwnerDays.DAY, start__gte=start, start__lt=first_week)
        | Q(days=UsageOwnerDays.DAY, start__gte=after_weeks, start__lt=end)
    )


def usage_report(*, scope: UsageScope, window: Window, now: datetime | None = None) -> UsageReport:
    """Aggregate the calls in ``scope`` over ``window`` ending at ``now``: three queries in
    all (the series, the breakdown, the names of the products it shows)."""
    starts = bucket_starts(window=window, now=now or timezone.now())
    start, end = starts[0], starts[-1] + window.step

    per_bucket = {
        row["bucket"]: UsageStats.from_row(row)
        for row in _series_rows(scope, window, start, end)
        .values("bucket")
        .annotate(**_aggregates())
        .order_by("bucket")
    }
    buckets = [Bucket(start=s, stats=per_bucket.get(s, UsageStats())) for s in starts]

    top = list(_busiest_pairs(_pair_rows(scope, window, start, end)))
    shown = top[:BREAKDOWN_ROWS]
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
    if len(top) > BREAKDOWN_ROWS:
        # The rest is what the window's totals hold beyond the pairs shown.
        rest = top[BREAKDOWN_ROWS]
        totals, listed = UsageStats(), UsageStats()
        for stats in per_bucket.values():
            totals += stats
        for row in breakdown:
            listed += row.stats
        breakdown.append(
            BreakdownRow(
                product_id=None,
                product_name=(f"{rest['rest_pairs']:,} more product and model pairs (see the CSV)"),
                model="",
                stats=UsageStats(
                    requests=totals.requests - listed.requests,
                    errors=totals.errors - listed.errors,
                    prompt_tokens=totals.prompt_tokens - listed.prompt_tokens,
                    completion_tokens=totals.completion_tokens - listed.completion_tokens,
                    latency_sum_ms=totals.latency_sum_ms - listed.latency_sum_ms,
                    latency_max_ms=rest["rest_latency_max_ms"],
                ),
            )
        )
    return UsageReport(window=window, start=start, end=end, buckets=buckets, breakdown=breakdown)


class _MaxOfAggregate(Func):
    """``MAX`` of a grouped query's own aggregate as a window function
    (``MAX(MAX(x)) OVER (...)``), which Django's ``Max`` refuses to build."""

    function = "MAX"
    window_compatible = True


def _busiest_pairs(rows: QuerySet[Any]) -> QuerySet[Any]:
    """``rows`` summed per product and model, the busiest first, cut after one more than
    ``BREAKDOWN_ROWS``. Each carries, for itself and every quieter pair, how many they
    are (``rest_pairs``) and their slowest call (``rest_latency_max_ms``): on the first
    pair not shown, those of the rest.

    A developer whose apps call thousands of products has thousands of pairs: reading
    them all to show 25 cost as much as summing them. The database counts them and
    keeps the maximum as it goes, from the quietest pair up; the rest's sums are the
    totals' less the pairs shown.
    """

    def from_the_quietest(expression: Any) -> Over:
        return Over(
            expression,
            order_by=[F("requests").asc(), F("product_id").desc(), F("model").desc()],
            frame=RowRange(start=None, end=0),
        )

    return (
        rows.values("product_id", "model")
        .annotate(**_aggregates())
        .annotate(
            rest_pairs=from_the_quietest(Count("*")),
            rest_latency_max_ms=from_the_quietest(_MaxOfAggregate(F("latency_max_ms"))),
        )
        .order_by("-requests", "product_id", "model")[: BREAKDOWN_ROWS + 1]
    )


class UsageCsvRow(NamedTuple):
    """One bucket's calls of one app to one product and model.

    A tuple, not a dataclass: the CSV of a month has a row per app, product, model and
    day, and each is made once and written at once.
    """

    bucket_start: datetime
    app_id: int | None
    app_name: str
    product_id: int | None
    product_name: str
    model: str
    stats: UsageStats


def usage_csv_rows(
    *, scope: UsageScope, window: Window, now: datetime | None = None
) -> Generator[UsageCsvRow]:
    """The bucketed series of ``scope`` split by app, product and model, oldest first
    (then by app, product and model id).

    Only combinations with calls get a row: zero-filling every combination of app,
    product and model would bury the data. A generator, for a streaming response, in
    three queries: the names of the apps and of the products, then the rows of the
    hourly or daily rollup (per app, as the file is) in the file's order, which is the
    order of their index: read in chunks as the file is written (a server-side cursor
    on PostgreSQL), not sorted first, so the first line goes out as soon as it is read
    and memory holds a chunk, not the file.
    """
    starts = bucket_starts(window=window, now=now or timezone.now())
    start, end = starts[0], starts[-1] + window.step
    rollup, period = (UsageHourly, "hour") if window.unit == "hour" else (UsageDaily, "day")
    in_window = scope.rows(rollup).filter(**{f"{period}__gte": start, f"{period}__lt": end})
    # Semi-joins, not lists of ids: the names of the apps and products the file
    # mentions, however many. The products from the fewer per-owner daily rows when
    # they cover the file (a product or two more than it needs cost nothing).
    apps = dict(
        Consumer.objects.filter(pk__in=in_window.values("consumer_id")).values_list("pk", "name")
    )
    mentioned = in_window
    if scope.consumer is None:
        mentioned = scope.rows(UsageOwnerDays).filter(
            days=UsageOwnerDays.DAY, start__gte=_day_start(start), start__lt=end
        )
    products = dict(
        Product.objects.filter(pk__in=mentioned.values("product_id")).values_list("pk", "name")
    )
    rows = (
        in_window.order_by(period, "consumer_id", "product_id", "model")
        .annotate(at=_HourText(period))
        .values_list("at", "consumer_id", "product_id", "model", *ROLLUP_SUMS)
    )
    # The period's text cut to its bucket's: "2026-11-24 13", or "2026-11-24".
    cut = 13 if window.unit == "hour" else 10
    bucket_of = {s.strftime("%Y-%m-%d %H")[:cut]: s for s in starts}
    key: tuple[str, int, int, str] | None = None
    sums: list[Any] = []
    # In a transaction, PostgreSQL's cursor hands rows over as it reads them; outside
    # one, it would read the whole window before handing over the first (WITH HOLD).
    with transaction.atomic():
        for at, app_id, product_id, model, *numbers in rows.iterator(CSV_CHUNK_ROWS):
            row_key = (at[:cut], app_id, product_id, model)
            if row_key == key:
                # The same app, product and model again in a bucket: staff's view of an
                # app that changed owners in it. The numbers are ROLLUP_SUMS, in order:
                # five sums, then the maximum latency.
                sums = [
                    *(a + b for a, b in zip(sums[:5], numbers[:5], strict=True)),
                    max(sums[5], numbers[5]),
                ]
                continue
            if key is not None:
                yield _csv_row(bucket_of[key[0]], *key[1:], sums, apps, products)
            key, sums = row_key, numbers
    if key is not None:
        yield _csv_row(bucket_of[key[0]], *key[1:], sums, apps, products)


def _day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


# Rows per fetch from the server-side cursor: few round trips, bounded memory.
CSV_CHUNK_ROWS = 2000


class _HourText(Func):
    """A timestamp's UTC hour as text, ``YYYY-MM-DD HH``, on SQLite and PostgreSQL alike.

    For rows read by the ten thousand: Django reads a PostgreSQL timestamp with a
    loader written in Python (a few microseconds a value), and the CSV only needs to
    tell its buckets apart.
    """

    output_field = CharField()
    template = "to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')"

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # SQLite stores the UTC time as text already: "2026-11-24 13:00:00".
        return self.as_sql(compiler, connection, template="substr(%(expressions)s, 1, 13)", **extra)


def _csv_row(
    bucket: datetime,
    app_pk: int,
    product_pk: int,
    model: str,
    numbers: list[Any],
    apps: dict[int, str],
    products: dict[int, str],
) -> UsageCsvRow:
    app_id, product_id = _none_if_zero(app_pk), _none_if_zero(product_pk)
    return UsageCsvRow(
        bucket_start=bucket,
        app_id=app_id,
        app_name=_app_label(app_id, apps),
        product_id=product_id,
        product_name=_product_label(product_id, products),
        model=model,
        stats=UsageStats(*numbers),  # its fields are ROLLUP_SUMS, in their order
    )


def product_names(ids: Iterable[int | None]) -> dict[int, str]:
    """Names of the products with these ids that still exist, in one query."""
    wanted = {pk for pk in ids if pk is not None}
    if not wanted:
        return {}
    return dict(Product.objects.filter(pk__in=wanted).values_list("pk", "name"))


def product_label(pk: int) -> str:
    """The name of product ``pk``, or ``product #<pk>`` if it no longer exists."""
    return _product_label(pk, product_names([pk]))


def _product_label(pk: int | None, names: dict[int, str]) -> str:
    # Records outlive products: a deleted one is still counted, under its old id.
    if pk is None:
        return "(no product)"
    return names.get(pk, f"product #{pk}")


def _app_label(pk: int | None, names: dict[int, str]) -> str:
    # Calls outlive apps: a deleted app's still count for its owner, under its old id.
    if pk is None:
        return "(no app)"
    return names.get(pk, f"deleted app #{pk}")
