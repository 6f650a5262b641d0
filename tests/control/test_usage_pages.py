"""The usage dashboards: the series, totals and breakdowns, who sees what, CSV and htmx."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import AsyncRequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from consumers import services as consumer_services
from consumers import usage
from consumers.models import Consumer, UsageHourly, UsageRecord
from gateway import schema
from portal.usage_views import CSV_CHUNK_LINES, CSV_HEADER, usage_csv
from tests.conftest import Catalog, make_catalog, make_subscribed_app

USAGE = reverse("portal:usage")
USAGE_CSV = reverse("portal:usage_csv")

# Half past an hour, so "an hour ago" is unambiguously the previous hourly bucket. Close to
# the real clock: sessions and logins made during the test stay valid.
NOW = (timezone.now() - timedelta(hours=1)).replace(minute=30, second=0, microsecond=0)
HOUR = NOW.replace(minute=0)  # the start of the current hourly bucket
TODAY = NOW.replace(hour=0, minute=0)  # the start of the current daily bucket

_event_ids = itertools.count()


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch):
    # The dashboards cut time at "now"; a test straddling an hour must not move a bucket.
    monkeypatch.setattr(timezone, "now", lambda: NOW)


def record(
    app: Consumer | int | None,
    ts: datetime,
    *,
    product_id: int | None = None,
    model: str = "chat-model",
    status: int = 200,
    latency_ms: float = 100.0,
    prompt_tokens: int | None = 10,
    completion_tokens: int | None = 20,
    credential_id: int | None = None,
) -> UsageRecord:
    return UsageRecord(
        event_id=f"evt-{next(_event_ids):08d}",
        request_id=f"req-{next(_event_ids):08d}",
        ts=ts,
        consumer_id=app.pk if isinstance(app, Consumer) else app,
        credential_id=credential_id,
        product_id=product_id,
        model=model,
        status=status,
        latency_ms=latency_ms,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


def event(r: UsageRecord) -> schema.UsageEvent:
    """What a gateway would have reported for the call ``r`` records."""
    return schema.UsageEvent(
        id=r.event_id,
        request_id=r.request_id,
        ts=r.ts.timestamp(),
        status=r.status,
        latency_ms=r.latency_ms,
        consumer=r.consumer_id,
        credential=r.credential_id,
        product=r.product_id,
        model=r.model or None,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
    )


def save(*records: UsageRecord) -> None:
    """Store the calls the way gateways' reports are stored: through the ingest service,
    which keeps the rollups the dashboards read."""
    consumer_services.usage_records_ingest(events=[event(r) for r in records])


class World:
    """Alice (the owner) has two apps on two products; Mallory (another developer) has one."""

    def __init__(self, owner, outsider, catalog: Catalog) -> None:
        self.chat = catalog
        self.embed = make_catalog(slug="embed")
        self.app = make_subscribed_app(owner=owner, catalog=self.chat, name="alpha")
        self.other_app = make_subscribed_app(owner=owner, catalog=self.embed, name="beta")
        self.theirs = make_subscribed_app(owner=outsider, catalog=self.chat, name="mallory-bot")


@pytest.fixture
def world(owner, outsider, catalog) -> World:
    return World(owner, outsider, catalog)


@pytest.fixture
def as_owner(client, owner):
    client.force_login(owner)
    return client


def csv_rows(response) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def page_chart_data(response) -> dict:
    """The JSON the page hands its charts, read back out of the HTML."""
    match = re.search(
        r'<script id="usage-data" type="application/json">(.*?)</script>',
        response.content.decode(),
        re.S,
    )
    assert match, "the page embeds no chart data"
    return json.loads(match.group(1))


# The selectors


def test_hourly_series_counts_calls_and_errors_and_fills_empty_hours_with_zeros(world):
    p = world.chat.product.pk
    save(
        record(world.app, HOUR + timedelta(minutes=5), product_id=p),
        record(world.app, HOUR + timedelta(minutes=10), product_id=p, status=500),
        record(world.app, HOUR - timedelta(hours=3), product_id=p, status=404),
        record(world.app, HOUR - timedelta(hours=3), product_id=p, status=399),
        # Just outside the 24 hourly buckets, and in the future beyond the last one.
        record(world.app, HOUR - timedelta(hours=23, seconds=1), product_id=p),
        record(world.app, HOUR + timedelta(hours=1), product_id=p),
    )
    scope = usage.usage_for_user(user=world.app.owner)
    report = usage.usage_report(scope=scope, window=usage.WINDOWS["24h"], now=NOW)

    assert len(report.buckets) == 24
    assert report.buckets[0].start == HOUR - timedelta(hours=23)
    assert report.buckets[-1].start == HOUR
    by_start = {b.start: b.stats for b in report.buckets}
    assert (by_start[HOUR].requests, by_start[HOUR].errors) == (2, 1)
    three_ago = by_start[HOUR - timedelta(hours=3)]
    assert (three_ago.requests, three_ago.errors) == (2, 1)
    empty = [b for b in report.buckets if b.start not in (HOUR, HOUR - timedelta(hours=3))]
    assert len(empty) == 22
    assert all(b.stats == usage.UsageStats() for b in empty)
    assert (report.totals.requests, report.totals.errors) == (4, 2)
    assert report.totals.error_rate == 50.0
    data = report.chart_data()
    assert data["requests"] == [0] * 20 + [2, 0, 0, 2]
    assert data["errors"] == [0] * 20 + [1, 0, 0, 1]
    assert data["t"][-1] == int(HOUR.timestamp())
    assert data["latency_avg_ms"][:20] == [None] * 20


def test_daily_windows_have_one_bucket_per_day_ending_today(world):
    save(
        record(world.app, TODAY + timedelta(minutes=1)),
        record(world.app, TODAY - timedelta(days=6) + timedelta(hours=23)),
        record(world.app, TODAY - timedelta(days=6) - timedelta(seconds=1)),  # 8th day back
        record(world.app, TODAY - timedelta(days=29)),
    )
    scope = usage.usage_for_user(user=world.app.owner)
    week = usage.usage_report(scope=scope, window=usage.WINDOWS["7d"], now=NOW)
    month = usage.usage_report(scope=scope, window=usage.WINDOWS["30d"], now=NOW)

    assert [b.start for b in week.buckets] == [TODAY - timedelta(days=d) for d in range(6, -1, -1)]
    assert [b.stats.requests for b in week.buckets] == [1, 0, 0, 0, 0, 0, 1]
    assert len(month.buckets) == 30
    assert month.buckets[0].start == TODAY - timedelta(days=29)
    assert month.totals.requests == 4
    assert sum(month.chart_data()["requests"]) == 4


def test_tokens_are_summed_and_latency_is_averaged_and_maxed(world):
    save(
        record(world.app, HOUR, prompt_tokens=7, completion_tokens=70, latency_ms=100),
        record(world.app, HOUR, prompt_tokens=5, completion_tokens=None, latency_ms=300),
        # A call refused before it reached a model: no tokens at all.
        record(world.app, HOUR, prompt_tokens=None, completion_tokens=None, latency_ms=2),
    )
    report = usage.usage_report(
        scope=usage.usage_for_user(user=world.app.owner),
        window=usage.WINDOWS["24h"],
        now=NOW,
    )
    totals = report.totals
    assert (totals.prompt_tokens, totals.completion_tokens, totals.total_tokens) == (12, 70, 82)
    assert totals.latency_avg_ms == pytest.approx(134.0)
    assert totals.latency_max_ms == 300
    assert report.buckets[-1].stats == totals
    assert report.chart_data()["latency_max_ms"][-1] == 300.0


def test_breakdown_is_per_product_and_model_and_names_deleted_products_by_id(world):
    chat, embed = world.chat.product, world.embed.product
    save(
        *[record(world.app, HOUR, product_id=chat.pk, model="chat-model") for _ in range(3)],
        record(world.app, HOUR, product_id=chat.pk, model="chat-mini", status=429),
        record(world.other_app, HOUR, product_id=embed.pk, model="embed-model"),
        record(world.app, HOUR, product_id=999_999, model="gone-model"),
    )
    report = usage.usage_report(
        scope=usage.usage_for_user(user=world.app.owner),
        window=usage.WINDOWS["24h"],
        now=NOW,
    )
    rows = [(r.product_name, r.model, r.stats.requests, r.stats.errors) for r in report.breakdown]
    assert rows[0] == ("Chat", "chat-model", 3, 0)
    assert sorted(rows[1:]) == [
        ("Chat", "chat-mini", 1, 1),
        ("Embed", "embed-model", 1, 0),
        ("product #999999", "gone-model", 1, 0),
    ]


@pytest.mark.parametrize("window", ["24h", "30d"])
def test_beyond_the_busiest_pairs_the_rest_is_one_row_with_its_sums_and_slowest_call(world, window):
    # Pair i (product 100 + i) has i + 1 calls: pairs 5..29 are shown, 0..4 summed.
    pairs = usage.BREAKDOWN_ROWS + 5
    save(
        *[
            record(
                world.app,
                HOUR,
                product_id=100 + i,
                status=500 if n == 0 else 200,
                latency_ms=4000.0
                if (i, n) == (pairs - 1, 0)
                else 5000.0
                if (i, n) == (3, 0)
                else 10,
            )
            for i in range(pairs)
            for n in range(i + 1)
        ]
    )
    report = usage.usage_report(
        scope=usage.usage_for_user(user=world.app.owner), window=usage.WINDOWS[window], now=NOW
    )
    *shown, rest = report.breakdown
    assert [row.product_id for row in shown] == [100 + i for i in range(pairs - 1, 4, -1)]
    assert shown[0].stats.latency_max_ms == 4000.0
    assert rest.product_name == "5 more product and model pairs (see the CSV)"
    assert (rest.stats.requests, rest.stats.errors) == (1 + 2 + 3 + 4 + 5, 5)
    assert rest.stats.latency_max_ms == 5000.0
    assert rest.stats.latency_sum_ms == 5000.0 + 14 * 10


def test_the_report_takes_three_queries_whatever_the_window(world, django_assert_num_queries):
    save(*[record(world.app, NOW - timedelta(hours=h), product_id=h % 3) for h in range(200)])
    scope = usage.usage_for_user(user=world.app.owner)
    for window in usage.WINDOWS.values():
        with django_assert_num_queries(3):
            usage.usage_report(scope=scope, window=window, now=NOW)


# The page: who sees what


def test_anonymous_visitors_are_sent_to_sign_in(client, world):
    save(record(world.app, HOUR))
    for url in (USAGE, USAGE_CSV, f"{USAGE}?app={world.app.pk}"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("account_login")), url


def test_the_owner_sees_their_apps_calls_and_never_another_developers(as_owner, world):
    chat = world.chat.product.pk
    save(
        record(world.app, HOUR, product_id=chat, prompt_tokens=1, completion_tokens=2),
        record(world.other_app, HOUR - timedelta(days=1), product_id=world.embed.product.pk),
        # Mallory's calls, on the same product, in the same hour, with a distinctive model.
        *[
            record(world.theirs, HOUR, product_id=chat, model="mallory-model", status=500)
            for _ in range(5)
        ],
    )
    response = as_owner.get(USAGE)

    assert response.status_code == 200
    report = response.context["report"]
    assert report.window == usage.DEFAULT_WINDOW
    assert (report.totals.requests, report.totals.errors) == (2, 0)
    assert (report.totals.prompt_tokens, report.totals.completion_tokens) == (11, 22)
    assert {row.model for row in report.breakdown} == {"chat-model"}
    assert sum(page_chart_data(response)["requests"]) == 2
    assert sum(page_chart_data(response)["errors"]) == 0
    # The filters' choices, as (pk, label) pairs.
    assert list(response.context["apps"]) == [(world.app.pk, "alpha"), (world.other_app.pk, "beta")]
    assert list(response.context["products"]) == [
        (world.chat.product.pk, "Chat"),
        (world.embed.product.pk, "Embed"),
    ]
    html = response.content.decode()
    assert "mallory" not in html
    assert "Chat" in html
    assert "Embed" in html


def test_another_developer_asking_for_someone_elses_app_gets_404(client, outsider, world):
    save(record(world.app, HOUR))
    client.force_login(outsider)
    for url in (USAGE, USAGE_CSV):
        assert client.get(url, {"app": world.app.pk}).status_code == 404, url
        assert client.get(url, {"app": "not-a-number"}).status_code == 404, url
        assert client.get(url, {"app": world.theirs.pk}).status_code == 200, url


def test_staff_see_every_developers_apps(client, staff, world):
    save(record(world.app, HOUR), record(world.theirs, HOUR), record(world.theirs, HOUR))
    client.force_login(staff)
    response = client.get(USAGE)
    assert response.context["report"].totals.requests == 3
    assert {pk for pk, _ in response.context["apps"]} == {
        world.app.pk,
        world.other_app.pk,
        world.theirs.pk,
    }
    assert "mallory-bot (mallory)" in response.content.decode()
    narrowed = client.get(USAGE, {"app": world.theirs.pk})
    assert narrowed.context["report"].totals.requests == 2


# The page: filters, rendering, htmx


def test_filtering_by_app_and_by_product(as_owner, world):
    chat, embed = world.chat.product.pk, world.embed.product.pk
    save(
        record(world.app, HOUR, product_id=chat),
        record(world.app, HOUR, product_id=embed, model="embed-model"),
        record(world.other_app, HOUR, product_id=embed, model="embed-model"),
        record(world.other_app, HOUR, product_id=embed, model="embed-model"),
    )

    def total(**params) -> int:
        response = as_owner.get(USAGE, params)
        assert response.status_code == 200
        return response.context["report"].totals.requests

    assert total() == 4
    assert total(app=world.app.pk) == 2
    assert total(app=world.other_app.pk) == 2
    assert total(product=chat) == 1
    assert total(product=embed) == 3
    assert total(app=world.other_app.pk, product=chat) == 0
    assert total(app=world.app.pk, product=embed) == 1
    # Mallory's product filter applied to Alice's records shows Alice's calls only.
    assert total(product="not-a-number") == 4


def test_an_unknown_window_shows_the_default_and_each_window_its_buckets(as_owner, world):
    save(record(world.app, HOUR))
    for param, buckets in (("24h", 24), ("7d", 7), ("30d", 30), ("1y", 7), ("", 7)):
        response = as_owner.get(USAGE, {"window": param})
        assert response.status_code == 200
        assert len(response.context["report"].buckets) == buckets, param
        assert len(page_chart_data(response)["t"]) == buckets, param


def test_the_page_shows_totals_charts_and_tables(as_owner, world):
    save(
        *[
            record(world.app, HOUR, product_id=world.chat.product.pk, latency_ms=1500)
            for _ in range(1234)
        ],
        record(world.app, HOUR, product_id=world.chat.product.pk, status=503, latency_ms=2500),
    )
    response = as_owner.get(USAGE, {"window": "24h"})
    html = response.content.decode()
    assert "1,235" in html  # requests, as a big number
    assert "0.1% of requests" in html
    assert "12,350" in html  # prompt tokens
    assert 'data-chart="requests"' in html
    assert 'data-chart="tokens"' in html
    assert 'data-chart="latency"' in html
    assert "average and the maximum" in html
    assert "vendor/uplot/uPlot.iife.min.js" in html
    assert "<code>chat-model</code>" in html
    assert page_chart_data(response) == response.context["report"].chart_data()
    assert page_chart_data(response)["latency_max_ms"][-1] == 2500.0
    assert response.context["report"].totals.latency_avg_ms == pytest.approx(1500.81, abs=0.01)


def test_with_no_calls_at_all_the_page_points_to_the_quick_start(as_owner, world):
    response = as_owner.get(USAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert "No calls yet — make your first call with the quick start on a product page" in html
    assert 'id="usage-data"' not in html


def test_with_calls_elsewhere_an_empty_filter_says_nothing_matches(as_owner, world):
    save(record(world.app, HOUR - timedelta(days=10)))
    html = as_owner.get(USAGE, {"window": "7d"}).content.decode()
    assert "No calls match these filters" in html
    assert "No calls yet" not in html


def test_htmx_requests_get_only_the_dashboard_fragment(as_owner, world):
    save(record(world.app, HOUR))
    response = as_owner.get(USAGE, {"window": "24h"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert 'name="window"' not in html  # the filter form stays on the page
    assert 'class="usage-totals"' in html
    assert page_chart_data(response)["requests"][-1] == 1
    assert "HX-Request" in response["Vary"]

    full = as_owner.get(USAGE, {"window": "24h"})
    assert "<html" in full.content.decode()
    assert 'hx-target="#dashboard"' in full.content.decode()
    assert 'hx-push-url="true"' in full.content.decode()

    restore = as_owner.get(
        USAGE, headers={"HX-Request": "true", "HX-History-Restore-Request": "true"}
    )
    assert "<html" in restore.content.decode()


# CSV


def test_csv_has_one_row_per_bucket_app_product_and_model_and_no_key_material(
    as_owner, owner, world
):
    issued = consumer_services.credential_create(consumer=world.app, name="laptop")
    key = issued.credential
    chat, embed = world.chat.product.pk, world.embed.product.pk
    save(
        record(world.app, HOUR + timedelta(minutes=1), product_id=chat, credential_id=key.pk),
        record(world.app, HOUR + timedelta(minutes=2), product_id=chat, status=502, latency_ms=300),
        record(world.app, HOUR - timedelta(hours=2), product_id=embed, model="embed-model"),
        record(world.theirs, HOUR, product_id=chat, model="mallory-model"),
    )
    response = as_owner.get(USAGE_CSV, {"window": "24h"})

    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="portico-usage-24h.csv"'
    body = b"".join(response.streaming_content).decode()
    assert body.splitlines()[0] == ",".join(CSV_HEADER)
    rows = list(csv.DictReader(io.StringIO(body)))
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    assert rows == [
        {
            "bucket_start": (HOUR - timedelta(hours=2)).astimezone(UTC).strftime(stamp),
            "app_id": str(world.app.pk),
            "app": "alpha",
            "product_id": str(embed),
            "product": "Embed",
            "model": "embed-model",
            "requests": "1",
            "errors": "0",
            "prompt_tokens": "10",
            "completion_tokens": "20",
            "latency_avg_ms": "100.0",
            "latency_max_ms": "100.0",
        },
        {
            "bucket_start": HOUR.astimezone(UTC).strftime(stamp),
            "app_id": str(world.app.pk),
            "app": "alpha",
            "product_id": str(chat),
            "product": "Chat",
            "model": "chat-model",
            "requests": "2",
            "errors": "1",
            "prompt_tokens": "20",
            "completion_tokens": "40",
            "latency_avg_ms": "200.0",
            "latency_max_ms": "300.0",
        },
    ]
    for secret in (issued.key, key.key_hash, key.display_prefix):
        assert secret not in body
    assert "mallory" not in body


def test_csv_follows_the_filters(as_owner, world):
    chat, embed = world.chat.product.pk, world.embed.product.pk
    save(
        record(world.app, HOUR, product_id=chat),
        record(world.other_app, HOUR, product_id=embed),
        record(world.other_app, TODAY - timedelta(days=20), product_id=embed),
    )
    assert [r["app"] for r in csv_rows(as_owner.get(USAGE_CSV, {"app": world.app.pk}))] == ["alpha"]
    assert [r["product"] for r in csv_rows(as_owner.get(USAGE_CSV, {"product": embed}))] == [
        "Embed"
    ]
    month = as_owner.get(USAGE_CSV, {"window": "30d", "product": embed})
    assert month["Content-Disposition"] == 'attachment; filename="portico-usage-30d.csv"'
    assert [r["bucket_start"][:10] for r in csv_rows(month)] == [
        (TODAY - timedelta(days=20)).strftime("%Y-%m-%d"),
        TODAY.strftime("%Y-%m-%d"),
    ]


def test_csv_cells_cannot_become_spreadsheet_formulas(as_owner, world):
    Consumer.objects.filter(pk=world.app.pk).update(name="=HYPERLINK(1)")
    save(record(world.app, HOUR, model="+cmd"))
    (row,) = csv_rows(as_owner.get(USAGE_CSV))
    assert row["app"] == "'=HYPERLINK(1)"
    assert row["model"] == "'+cmd"


def test_staff_csv_names_apps_that_were_deleted_by_id(client, staff, world):
    save(record(world.theirs, HOUR), record(None, HOUR, product_id=None, model=""))
    gone = world.theirs.pk
    world.theirs.delete()
    client.force_login(staff)
    rows = csv_rows(client.get(USAGE_CSV))
    assert sorted((r["app"], r["product"]) for r in rows) == [
        ("(no app)", "(no product)"),
        (f"deleted app #{gone}", "(no product)"),
    ]


# Deleted apps: their calls were made and paid for, so they stay their owner's


@pytest.mark.parametrize("window", ["24h", "7d", "30d"])
def test_a_deleted_apps_calls_stay_on_its_owners_totals_breakdown_and_csv(
    client, owner, outsider, staff, world, window
):
    chat, embed = world.chat.product.pk, world.embed.product.pk
    save(
        record(world.app, HOUR, product_id=chat),
        *[record(world.other_app, HOUR, product_id=embed, model="embed-model") for _ in range(3)],
        record(world.theirs, HOUR, product_id=chat, model="mallory-model"),
    )
    gone = world.other_app.pk
    consumer_services.consumer_delete(consumer=world.other_app)

    client.force_login(owner)
    report = client.get(USAGE, {"window": window}).context["report"]
    assert report.totals.requests == 4
    assert {(r.product_name, r.model, r.stats.requests) for r in report.breakdown} == {
        ("Chat", "chat-model", 1),
        ("Embed", "embed-model", 3),
    }
    rows = csv_rows(client.get(USAGE_CSV, {"window": window}))
    assert sorted((r["app_id"], r["app"], r["requests"]) for r in rows) == sorted(
        [(str(world.app.pk), "alpha", "1"), (str(gone), f"deleted app #{gone}", "3")]
    )
    # Still nobody else's: not the other developer's, and staff see them as they did.
    client.force_login(outsider)
    assert client.get(USAGE, {"window": window}).context["report"].totals.requests == 1
    assert "deleted app" not in b"".join(client.get(USAGE_CSV).streaming_content).decode()
    client.force_login(staff)
    assert client.get(USAGE, {"window": window}).context["report"].totals.requests == 5


def test_calls_reported_after_their_app_was_deleted_have_no_owner_to_count_for(
    client, owner, staff, world
):
    # The owner is stamped at ingest: a gateway's late report of a deleted app's call
    # finds no app, hence no owner. Staff still see the call.
    late = record(world.other_app, HOUR, product_id=world.embed.product.pk)
    consumer_services.consumer_delete(consumer=world.other_app)
    save(late)
    assert UsageRecord.objects.get(event_id=late.event_id).owner_id is None
    client.force_login(owner)
    assert client.get(USAGE).context["report"].is_empty
    client.force_login(staff)
    assert client.get(USAGE).context["report"].totals.requests == 1


def test_an_app_handed_to_another_developer_leaves_its_earlier_calls_with_the_first(
    client, owner, outsider, staff, world
):
    save(record(world.app, TODAY), record(world.app, TODAY))  # the same day as HOUR
    Consumer.objects.filter(pk=world.app.pk).update(owner=outsider)
    save(record(world.app, HOUR))
    for user, window, calls in [
        (owner, "24h", 2),
        (owner, "7d", 2),
        (outsider, "24h", 1),
        (outsider, "30d", 1),
    ]:
        client.force_login(user)
        assert client.get(USAGE, {"window": window}).context["report"].totals.requests == calls
    # The app is the outsider's now: its filter is theirs, and shows only their calls.
    assert client.get(USAGE, {"app": world.app.pk}).context["report"].totals.requests == 1
    client.force_login(owner)
    assert client.get(USAGE, {"app": world.app.pk}).status_code == 404
    # Staff see the app's day as one line, whoever owned it when.
    client.force_login(staff)
    rows = csv_rows(client.get(USAGE_CSV, {"window": "7d"}))
    assert [(r["app"], r["requests"]) for r in rows] == [("alpha", "3")]


# Streaming the CSV


def test_a_long_csv_is_sent_in_several_chunks_and_adds_up(as_owner, world):
    apps = [world.app] + [
        Consumer.objects.create(owner=world.app.owner, name=f"app-{i}") for i in range(3)
    ]
    # Every call its own app, model and hour: 2,000 lines.
    save(
        *[
            record(apps[i % 4], HOUR - timedelta(hours=i // 100), model=f"model-{i // 4 % 25}")
            for i in range(2000)
        ]
    )
    response = as_owner.get(USAGE_CSV, {"window": "24h"})
    chunks = list(response.streaming_content)
    assert len(chunks) > 2
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == 2000 > CSV_CHUNK_LINES
    assert sum(int(r["requests"]) for r in rows) == 2000
    assert [r["bucket_start"] for r in rows] == sorted(r["bucket_start"] for r in rows)


def test_a_download_stopped_halfway_ends_its_read_at_once(as_owner, world):
    save(
        *[record(world.app, HOUR - timedelta(hours=i // 100), model=f"m-{i}") for i in range(2000)]
    )
    depth = len(connection.savepoint_ids)
    response = as_owner.get(USAGE_CSV, {"window": "24h"})
    assert next(iter(response.streaming_content)).startswith(b"bucket_start,")
    assert len(connection.savepoint_ids) == depth + 1  # the rows are being read
    response.close()  # what a server does when the client goes away
    assert len(connection.savepoint_ids) == depth


def test_under_asgi_the_csv_streams_without_reading_it_all_first(as_owner, owner, world):
    # Django reads a synchronous iterator to its end before sending a byte over ASGI,
    # with a warning (an error in these tests): the view hands ASGI an async one, whose
    # chunks are made in the request's thread (here the test's, by async_to_sync).
    save(*[record(world.app, HOUR - timedelta(hours=i % 24)) for i in range(50)])
    request = AsyncRequestFactory().get(USAGE_CSV, {"window": "24h"})
    request.user = owner
    response = usage_csv(request)  # type: ignore[arg-type]  # an ASGIRequest with a user
    assert response.is_async

    async def body() -> bytes:
        return b"".join([chunk async for chunk in response])

    streamed = async_to_sync(body)().decode()
    assert streamed == b"".join(as_owner.get(USAGE_CSV, {"window": "24h"})).decode()
    assert sum(int(r["requests"]) for r in csv.DictReader(io.StringIO(streamed))) == 50


# Query counts


@pytest.mark.parametrize("persona", ["owner", "staff"])
def test_the_page_and_csv_take_the_same_queries_for_10_or_2000_records(
    client, world, persona, request
):
    client.force_login(request.getfixturevalue(persona))
    chat, embed = world.chat.product.pk, world.embed.product.pk

    def spread(n: int) -> list[UsageRecord]:
        # Over every hour of 30 days, both products, several models, some errors.
        return [
            record(
                world.app if i % 2 else world.other_app,
                NOW - timedelta(minutes=(i * 37) % (30 * 24 * 60)),
                product_id=chat if i % 3 else embed,
                model=f"model-{i % 4}",
                status=500 if i % 7 == 0 else 200,
            )
            for i in range(n)
        ]

    def queries(url: str, params: dict[str, object]) -> int:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url, params)
            if response.streaming:
                b"".join(response.streaming_content)
        assert response.status_code == 200
        return len(captured)

    cases = [
        (USAGE, {"window": "24h"}),
        (USAGE, {"window": "30d"}),
        (USAGE, {"window": "7d", "app": world.app.pk, "product": chat}),
        (USAGE_CSV, {"window": "24h"}),
        (USAGE_CSV, {"window": "30d"}),
    ]
    save(*spread(10))
    few = [queries(url, params) for url, params in cases]
    UsageRecord.objects.all().delete()
    UsageHourly.objects.all().delete()
    save(*spread(2000))
    many = [queries(url, params) for url, params in cases]

    assert few == many
    # More buckets (30 days against 24 hours) cost no more queries either.
    assert few[0] == few[1]
    assert few[3] == few[4]
    assert UsageRecord.objects.count() == 2000
