"""The hourly usage rollups: each call counted exactly once, whatever the deliveries; the
dashboards' numbers are the raw records' numbers; the backfill migration fills them.

The truth everywhere is computed here, in Python, from the raw ``UsageRecord`` rows read
back from the database, independently of the code under test. Latencies are multiples of
0.5 ms so float sums are exact in any order and can be compared with ``==``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from consumers import usage
from consumers.models import (
    Consumer,
    UsageDaily,
    UsageHourly,
    UsageOwnerDays,
    UsageOwnerHourly,
    UsageRecord,
)
from consumers.services import usage_hourly_rebuild, usage_records_ingest
from gateway import schema
from tests.conftest import Catalog, make_catalog, make_subscribed_app, run_in_thread

Key = tuple[datetime, int, int, int, str]
DayKey = tuple[datetime, int, int, int, str]
Sums = tuple[int, int, int, int, float, float]


def random_events(
    rnd: random.Random, n: int, *, apps: list[int], products: list[int], now: datetime
) -> list[schema.UsageEvent]:
    """``n`` calls over the last 30 days, some without app, product, model or tokens."""
    events = []
    for i in range(n):
        ts = now - timedelta(seconds=rnd.uniform(0, 30 * 86400))
        events.append(
            schema.UsageEvent(
                id=f"evt-{rnd.getrandbits(64):016x}-{i}",
                request_id=f"req-{i}",
                ts=ts.timestamp(),
                status=rnd.choice([200, 200, 200, 201, 400, 429, 500, 503]),
                latency_ms=rnd.randint(1, 4000) / 2,
                consumer=rnd.choice([*apps, None]) if rnd.random() < 0.1 else rnd.choice(apps),
                product=None if rnd.random() < 0.05 else rnd.choice(products),
                model=rnd.choice([None, "", "small", "large"]),
                prompt_tokens=None if rnd.random() < 0.1 else rnd.randint(0, 5000),
                completion_tokens=None if rnd.random() < 0.1 else rnd.randint(0, 2000),
            )
        )
    return events


def _sum_into(truth: dict[Any, list[Any]], key: Any, r: UsageRecord) -> None:
    row = truth.setdefault(key, [0, 0, 0, 0, 0.0, r.latency_ms])
    row[0] += 1
    row[1] += r.status >= 400
    row[2] += r.prompt_tokens or 0
    row[3] += r.completion_tokens or 0
    row[4] += r.latency_ms
    row[5] = max(row[5], r.latency_ms)


def raw_truth() -> dict[Key, Sums]:
    """The raw records summed per hour, app, owner, product and model (0 for "none")."""
    truth: dict[Any, list[Any]] = {}
    for r in UsageRecord.objects.all():
        hour = r.ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        key = (hour, r.consumer_id or 0, r.owner_id or 0, r.product_id or 0, r.model)
        _sum_into(truth, key, r)
    return {key: tuple(row) for key, row in truth.items()}


def raw_daily_truth() -> dict[Key, Sums]:
    """The raw records summed per day, app, owner, product and model (0 for "none")."""
    truth: dict[Any, list[Any]] = {}
    for r in UsageRecord.objects.all():
        day = r.ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        key = (day, r.consumer_id or 0, r.owner_id or 0, r.product_id or 0, r.model)
        _sum_into(truth, key, r)
    return {key: tuple(row) for key, row in truth.items()}


def raw_days_truth() -> dict[DayKey, Sums]:
    """The raw records summed per day and per ISO week (a Monday), owner, product and
    model (0 for "none")."""
    truth: dict[Any, list[Any]] = {}
    for r in UsageRecord.objects.all():
        day = r.ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        monday = day - timedelta(days=day.weekday())
        pair = (r.owner_id or 0, r.product_id or 0, r.model)
        _sum_into(truth, (day, 1, *pair), r)
        _sum_into(truth, (monday, 7, *pair), r)
    return {key: tuple(row) for key, row in truth.items()}


def _sums(row: UsageHourly | UsageDaily | UsageOwnerHourly | UsageOwnerDays) -> Sums:
    return (
        row.requests,
        row.errors,
        row.prompt_tokens,
        row.completion_tokens,
        row.latency_sum_ms,
        row.latency_max_ms,
    )


def raw_owner_hourly_truth() -> dict[tuple[datetime, int], Sums]:
    """The raw records summed per hour and owner (0 for "none")."""
    truth: dict[Any, list[Any]] = {}
    for r in UsageRecord.objects.all():
        hour = r.ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        _sum_into(truth, (hour, r.owner_id or 0), r)
    return {key: tuple(row) for key, row in truth.items()}


def rollups() -> dict[Key, Sums]:
    return {
        (h.hour.astimezone(UTC), h.consumer_id, h.owner_id, h.product_id, h.model): _sums(h)
        for h in UsageHourly.objects.all()
    }


def daily_rollups() -> dict[Key, Sums]:
    return {
        (d.day.astimezone(UTC), d.consumer_id, d.owner_id, d.product_id, d.model): _sums(d)
        for d in UsageDaily.objects.all()
    }


def days_rollups() -> dict[DayKey, Sums]:
    return {
        (d.start.astimezone(UTC), d.days, d.owner_id, d.product_id, d.model): _sums(d)
        for d in UsageOwnerDays.objects.all()
    }


def owner_hourly_rollups() -> dict[tuple[datetime, int], Sums]:
    return {(o.hour.astimezone(UTC), o.owner_id): _sums(o) for o in UsageOwnerHourly.objects.all()}


def assert_rollups_are_the_raw_records() -> None:
    assert rollups() == raw_truth()
    # Float sums in another order are exact here: latencies are multiples of 0.5 ms.
    assert daily_rollups() == raw_daily_truth()
    assert owner_hourly_rollups() == raw_owner_hourly_truth()
    assert days_rollups() == raw_days_truth()


def test_rollups_equal_the_raw_records_after_random_batches_and_redeliveries(
    owner: User, outsider: User
):
    rnd = random.Random(7)
    now = timezone.now()
    # Apps of two owners, and one that is gone (its calls have no owner).
    apps = [
        Consumer.objects.create(owner=owner, name="alpha").pk,
        Consumer.objects.create(owner=owner, name="beta").pk,
        Consumer.objects.create(owner=outsider, name="mallory-bot").pk,
        999_999,
    ]
    events = random_events(rnd, 600, apps=apps, products=[1, 2], now=now)
    delivered: set[str] = set()
    for _ in range(25):
        # A batch mixes new events, events already stored, and repeats within itself.
        batch = rnd.sample(events, rnd.randint(1, 80))
        batch += rnd.sample(batch, min(len(batch), 5))
        rnd.shuffle(batch)
        new = {e.id for e in batch} - delivered
        assert usage_records_ingest(events=batch) == len(new)
        delivered |= new
        assert_rollups_are_the_raw_records()
    # Every event once more, in one batch: nothing changes.
    before = rollups()
    assert usage_records_ingest(events=events) == len(events) - len(delivered)
    assert UsageRecord.objects.count() == len(events)
    assert sum(row[0] for row in rollups().values()) == len(events)
    assert usage_records_ingest(events=events) == 0
    assert_rollups_are_the_raw_records()
    assert set(before) <= set(rollups())


def test_a_redelivered_event_with_other_numbers_is_not_counted_again(db):
    first = schema.UsageEvent(
        id="evt-twice-0001",
        request_id="r",
        ts=1e9,
        status=200,
        latency_ms=10.0,
        consumer=1,
        prompt_tokens=5,
    )
    again = schema.UsageEvent(
        id="evt-twice-0001",
        request_id="r",
        ts=1e9,
        status=500,
        latency_ms=99.0,
        consumer=1,
        prompt_tokens=50,
    )
    assert usage_records_ingest(events=[first, again]) == 1
    assert usage_records_ingest(events=[again]) == 0
    (row,) = UsageHourly.objects.all()
    assert (row.requests, row.errors, row.prompt_tokens, row.latency_max_ms) == (1, 0, 5, 10.0)


def test_an_ingest_takes_the_same_queries_for_ten_or_five_hundred_events(db):
    # Per batch: the apps' owners, the insert, the two rollup upserts, the keys' last-used
    # lookup and an update per key used; no query per event or per rollup row.
    rnd = random.Random(13)
    now = timezone.now()
    counts = []
    for n in (10, 500):
        events = random_events(rnd, n, apps=[1, 2, 3], products=[1, 2], now=now)
        with CaptureQueriesContext(connection) as captured:
            assert usage_records_ingest(events=events) == n
        counts.append(len(captured))
    assert counts[0] == counts[1]


def test_concurrent_ingests_of_overlapping_batches_count_each_event_once(transactional_db):
    rnd = random.Random(11)
    events = random_events(rnd, 400, apps=[1, 2], products=[1], now=timezone.now())
    stored: list[int] = []
    errors: list[BaseException] = []

    def worker(seed: int) -> Callable[[], None]:
        # Each worker delivers most events, in its own order and batches, like gateways
        # retrying and stream consumers reclaiming entries at the same time.
        mine = random.Random(seed).sample(events, 300)

        def run() -> None:
            for at in range(0, len(mine), 50):
                stored.append(usage_records_ingest(events=mine[at : at + 50]))

        return run

    threads = [run_in_thread(worker(seed), errors) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    distinct = UsageRecord.objects.count()
    assert sum(stored) == distinct  # each insert reported by exactly one ingest
    assert sum(row[0] for row in rollups().values()) == distinct
    assert_rollups_are_the_raw_records()


# The dashboards read the rollups and show the raw records' numbers.


def _truth_report(
    window: usage.Window, now: datetime, app_ids: set[int], product_id: int | None = None
) -> tuple[list[tuple[int, int, int, int]], dict[tuple[int | None, str], int]]:
    """Per bucket (requests, errors, prompt, completion) and per (product, model) requests
    of the raw records of ``app_ids`` in ``window``."""
    starts = usage.bucket_starts(window=window, now=now)
    end = starts[-1] + window.step
    series = {s: [0, 0, 0, 0] for s in starts}
    pairs: dict[tuple[int | None, str], int] = {}
    for r in UsageRecord.objects.filter(consumer_id__in=app_ids):
        ts = r.ts.astimezone(UTC)
        if not starts[0] <= ts < end or (product_id is not None and r.product_id != product_id):
            continue
        bucket = max(s for s in starts if s <= ts)
        row = series[bucket]
        row[0] += 1
        row[1] += r.status >= 400
        row[2] += r.prompt_tokens or 0
        row[3] += r.completion_tokens or 0
        pairs[(r.product_id, r.model)] = pairs.get((r.product_id, r.model), 0) + 1
    return [tuple(series[s]) for s in starts], pairs  # type: ignore[misc]


@pytest.fixture
def busy(owner: User, outsider: User, catalog: Catalog) -> tuple[Consumer, Consumer, int, int]:
    embed = make_catalog(slug="embed")
    mine = make_subscribed_app(owner=owner, catalog=catalog, name="alpha")
    also_mine = make_subscribed_app(owner=owner, catalog=embed, name="beta")
    theirs = make_subscribed_app(owner=outsider, catalog=catalog, name="mallory-bot")
    products = [catalog.product.pk, embed.product.pk]
    rnd = random.Random(3)
    events = random_events(
        rnd, 800, apps=[mine.pk, also_mine.pk, theirs.pk], products=products, now=timezone.now()
    )
    for at in range(0, len(events), 100):
        usage_records_ingest(events=events[at : at + 150])  # overlapping batches
    return mine, also_mine, products[0], theirs.pk


@pytest.mark.parametrize("window_key", ["24h", "7d", "30d"])
def test_the_page_shows_the_numbers_of_the_raw_records(client: Client, owner, busy, window_key):
    mine, also_mine, chat, _ = busy
    client.force_login(owner)
    now = timezone.now()
    window = usage.WINDOWS[window_key]
    for params, apps, product in [
        ({}, {mine.pk, also_mine.pk}, None),
        ({"app": mine.pk}, {mine.pk}, None),
        ({"product": chat}, {mine.pk, also_mine.pk}, chat),
    ]:
        response = client.get(reverse("portal:usage"), {"window": window_key, **params})
        report = response.context["report"]
        series, pairs = _truth_report(window, now, apps, product)
        assert [
            (b.stats.requests, b.stats.errors, b.stats.prompt_tokens, b.stats.completion_tokens)
            for b in report.buckets
        ] == series
        shown = {(row.product_id, row.model): row.stats.requests for row in report.breakdown}
        assert shown == pairs
        data = response.context["chart_data"]
        assert data["requests"] == [s[0] for s in series]
        assert data["errors"] == [s[1] for s in series]


@pytest.mark.parametrize("days_later", range(7))
def test_a_windows_breakdown_adds_its_whole_weeks_and_the_days_around_them_exactly(
    owner: User, days_later: int
):
    # Each weekday for "now": the 30-day window starts and ends at every place in a week.
    app = Consumer.objects.create(owner=owner, name="alpha")
    now = timezone.now() + timedelta(days=days_later)
    usage_records_ingest(
        events=random_events(
            random.Random(days_later), 400, apps=[app.pk], products=[1, 2], now=now
        )
    )
    for window in (usage.WINDOWS["7d"], usage.WINDOWS["30d"]):
        report = usage.usage_report(scope=usage.usage_for_user(user=owner), window=window, now=now)
        series, pairs = _truth_report(window, now, {app.pk})
        assert {
            (row.product_id, row.model): row.stats.requests for row in report.breakdown
        } == pairs
        assert report.totals.requests == sum(s[0] for s in series)


def test_the_page_latency_is_the_raw_records_average_and_maximum(client: Client, owner, busy):
    mine, also_mine, _, _ = busy
    client.force_login(owner)
    start = usage.bucket_starts(window=usage.WINDOWS["30d"], now=timezone.now())[0]
    raw = [
        r.latency_ms
        for r in UsageRecord.objects.filter(consumer_id__in=[mine.pk, also_mine.pk], ts__gte=start)
    ]
    totals = client.get(reverse("portal:usage"), {"window": "30d"}).context["report"].totals
    assert totals.requests == len(raw)
    assert totals.latency_sum_ms == sum(raw)
    assert totals.latency_max_ms == max(raw)


def test_the_csv_rows_add_up_to_the_raw_records(client: Client, staff, busy):
    client.force_login(staff)
    response = client.get(reverse("portal:usage_csv"), {"window": "30d"})
    body = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    lines = body.splitlines()[1:]
    start = usage.bucket_starts(window=usage.WINDOWS["30d"], now=timezone.now())[0]
    assert sum(int(line.split(",")[6]) for line in lines) == (
        UsageRecord.objects.filter(ts__gte=start).count()
    )


# Filling the rollups from raw records: the migration and the rebuild service.


def test_rebuild_recomputes_rollups_of_records_stored_without_ingest(db):
    rnd = random.Random(5)
    now = timezone.now()
    usage_records_ingest(events=random_events(rnd, 200, apps=[1, 2], products=[1], now=now))
    # A bulk load that bypassed the ingest service, and a damaged rollup row. The
    # records' owner (an app since deleted) is what the rebuilt rollups must keep.
    UsageRecord.objects.bulk_create(
        UsageRecord(
            event_id=f"bulk-{i:04d}",
            request_id="r",
            ts=now - timedelta(hours=i),
            consumer_id=3,
            owner_id=42,
            product_id=None,
            status=200,
            latency_ms=1.5,
        )
        for i in range(50)
    )
    UsageHourly.objects.filter(pk=UsageHourly.objects.order_by("pk").values("pk")[:1]).update(
        requests=999
    )
    assert rollups() != raw_truth()
    usage_hourly_rebuild()
    assert_rollups_are_the_raw_records()
    assert UsageOwnerDays.objects.filter(owner_id=42).exists()
    # From a point in time: older hours are left as they are.
    UsageRecord.objects.filter(event_id="bulk-0000").delete()
    usage_hourly_rebuild(since=now - timedelta(minutes=1))
    assert_rollups_are_the_raw_records()
    # Ingests after a rebuild add to the rebuilt rows (the same hours, the same keys).
    usage_records_ingest(events=random_events(rnd, 200, apps=[1, 2, 3], products=[1], now=now))
    assert_rollups_are_the_raw_records()


def test_the_backfill_migrations_fill_rollups_and_owners_from_existing_records(
    transactional_db, owner: User, outsider: User
):
    executor = MigrationExecutor(connection)
    before = [("consumers", "0004_usage_hourly")]
    executor.migrate(before)
    # The models as they were then: the records had no owner yet.
    old = executor.loader.project_state(before).apps
    OldConsumer = old.get_model("consumers", "Consumer")
    OldUsageRecord = old.get_model("consumers", "UsageRecord")
    OldUsageHourly = old.get_model("consumers", "UsageHourly")
    OldUsageHourly.objects.all().delete()  # as if 0004 had just created the table
    mine = OldConsumer.objects.create(owner_id=owner.pk, name="alpha").pk
    theirs = OldConsumer.objects.create(owner_id=outsider.pk, name="mallory-bot").pk
    gone = theirs + 1000  # deleted before the migration: nobody's any more
    rnd = random.Random(9)
    now = timezone.now()
    OldUsageRecord.objects.bulk_create(
        OldUsageRecord(
            event_id=f"old-{i:05d}",
            request_id="r",
            ts=now - timedelta(seconds=rnd.uniform(0, 40 * 86400)),  # more than one pass
            consumer_id=rnd.choice([mine, theirs, gone, None]),
            product_id=rnd.choice([1, None]),
            model=rnd.choice(["", "m"]),
            status=rnd.choice([200, 404, 500]),
            latency_ms=rnd.randint(1, 999) / 2,
            prompt_tokens=rnd.choice([None, 3]),
            completion_tokens=rnd.choice([None, 4]),
        )
        for i in range(500)
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    # Every app's leaves: going back to 0004 also unapplied the apps that depend on
    # later consumers migrations (oauth), and the tests after this one need them.
    executor.migrate(executor.loader.graph.leaf_nodes())

    owners = dict(UsageRecord.objects.values_list("consumer_id", "owner_id").distinct())
    assert owners == {mine: owner.pk, theirs: outsider.pk, gone: None, None: None}
    assert_rollups_are_the_raw_records()
    assert sum(row[0] for row in rollups().values()) == 500
    month = usage.usage_report(scope=usage.usage_for_user(user=owner), window=usage.WINDOWS["30d"])
    start = month.start
    assert (
        month.totals.requests == UsageRecord.objects.filter(consumer_id=mine, ts__gte=start).count()
    )
    # Ingests after the backfill add to the backfilled rows.
    usage_records_ingest(
        events=[
            schema.UsageEvent(
                id=f"new-{i:05d}",
                request_id="r",
                ts=r.ts.timestamp(),
                status=200,
                latency_ms=1.0,
                consumer=r.consumer_id,
                product=r.product_id,
                model=r.model,
            )
            for i, r in enumerate(UsageRecord.objects.order_by("event_id")[:100])
        ]
    )
    assert_rollups_are_the_raw_records()
    assert sum(row[0] for row in rollups().values()) == 600
