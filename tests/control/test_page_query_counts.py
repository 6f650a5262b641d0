"""The developer pages take a fixed number of queries, and render a bounded amount, however
much data is behind them.

``bench/portal_pages.py`` measures these pages' time at 10,000 products and 100,000 apps;
these tests prove the other half of that target without timing anything: the query count
of every measured page is the same with a few rows as with ten times as many, and the
lists that could grow without bound (my apps, the subscribe panel, the usage breakdown)
are paginated or capped.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.template import Context, Template
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.models import Category, ModelRoute, Plan, Product
from consumers import usage
from consumers.models import Consumer, Credential, Subscription, UsageHourly
from consumers.selectors import PANEL_SUBSCRIPTIONS
from consumers.services import usage_records_ingest
from consumers.views import APPS_PAGE_SIZE
from gateway import schema
from portal.models import Membership
from tests.conftest import Catalog, make_subscribed_app

HX = {"HX-Request": "true"}
JSON = {"Accept": "application/json"}


def grow(
    catalog: Catalog, owner: User, app: Consumer, *, products: int, apps: int, tag: str
) -> None:
    """Add ``products`` published products (routes, plans, a category) and ``apps`` apps of
    ``owner`` (two keys, two subscriptions and some calls each), plus keys,
    subscriptions and calls of the measured ``app``: every list the pages show grows."""
    category, _ = Category.objects.get_or_create(slug="scale", defaults={"name": "Scale"})
    kinds = [Product.Kind.MODEL, Product.Kind.MCP, Product.Kind.AGENT]
    new = Product.objects.bulk_create(
        Product(
            name=f"Scale {tag} {i:03d}",
            slug=f"scale-{tag}-{i:03d}",
            kind=kinds[i % 3],
            status=Product.Status.PUBLISHED,
            description="A product of the scale tests.",
            category=category,
            tags=["scale", tag],
            search_document=f"scale {tag} {i:03d}\na product of the scale tests.\nscale",
        )
        for i in range(products)
    )
    Product.portals.through.objects.bulk_create(
        Product.portals.through(product_id=p.pk, portal_id=catalog.portal.pk) for p in new
    )
    ModelRoute.objects.bulk_create(
        ModelRoute(
            product=p, name=f"{p.slug}-{size}", upstream=catalog.upstream, upstream_model=size
        )
        for p in new
        for size in ("mini", "large")
    )
    plans = {
        plan.product_id: plan
        for plan in Plan.objects.bulk_create(Plan(product=p, name="Free") for p in new)
    }
    apps_made = Consumer.objects.bulk_create(
        Consumer(owner=owner, portal=catalog.portal, name=f"{tag}-app-{i:03d}") for i in range(apps)
    )
    now = timezone.now()

    def key(consumer: Consumer, n: int) -> Credential:
        digest = hashlib.sha256(f"{tag}/{consumer.pk}/{n}".encode()).hexdigest()
        return Credential(consumer=consumer, name=f"{tag}-{n}", key_hash=digest, display_prefix="p")

    Credential.objects.bulk_create(
        [key(a, n) for a in apps_made for n in range(2)] + [key(app, n) for n in range(products)]
    )
    subscriptions = [
        Subscription(consumer=a, product=product, plan=plan, status="approved")
        for i, a in enumerate(apps_made)
        for product, plan in (
            (catalog.product, catalog.plan),
            (new[i % len(new)], plans[new[i % len(new)].pk]),
        )
    ] + [Subscription(consumer=app, product=p, plan=plans[p.pk], status="approved") for p in new]
    Subscription.objects.bulk_create(subscriptions)
    # Through the ingest service, as gateways' reports are: it keeps the rollups too.
    usage_records_ingest(
        events=[
            schema.UsageEvent(
                id=f"{tag}-evt-{n:06d}",
                request_id=f"{tag}-{n}",
                ts=(now - timedelta(hours=n % 100)).timestamp(),
                consumer=sub.consumer_id,
                product=sub.product_id,
                model=f"model-{n % 3}",
                status=500 if n % 7 == 0 else 200,
                latency_ms=100.0,
                prompt_tokens=10,
                completion_tokens=20,
            )
            for n, sub in enumerate(subscriptions * 2)
        ]
    )


@pytest.fixture
def developer(owner: User, catalog: Catalog) -> User:
    Membership.objects.create(portal=catalog.portal, user=owner, status="approved")
    return owner


def measured_pages(catalog: Catalog, app: Consumer) -> list[tuple[str, dict[str, str]]]:
    """(URL, headers) of every page bench/portal_pages.py measures."""
    usage_url, csv_url = reverse("portal:usage"), reverse("portal:usage_csv")
    catalog_url = reverse("portal:catalog")
    return [
        (catalog_url, {}),
        (reverse("portal:catalog_kind", args=["models"]), {}),
        (reverse("portal:catalog_kind", args=["agents"]), {}),
        (f"{catalog_url}?q=scale", HX),
        (f"{catalog_url}?q=scale&category=scale", {}),
        (f"{catalog_url}?page=2", {}),
        (f"{catalog_url}?page=2", HX),
        (reverse("portal:product", args=[catalog.product.slug]), {}),
        (reverse("portal:apps"), {}),
        (reverse("portal:app", args=[app.pk]), {}),
        (f"{usage_url}?window=24h", {}),
        (usage_url, {}),
        (f"{usage_url}?window=30d", {}),
        (usage_url, HX),
        (f"{usage_url}?window=30d&app={app.pk}", {}),
        (f"{usage_url}?window=30d&product={catalog.product.pk}", {}),
        (f"{csv_url}?window=24h", {}),
        (f"{csv_url}?window=7d", {}),
        ("/api/v1/products/", JSON),
        ("/api/v1/products/?q=scale&kind=model", JSON),
        ("/api/v1/products/?offset=25&limit=10", JSON),
        ("/api/v1/apps/", JSON),
        (f"/api/v1/apps/{app.pk}/keys/", JSON),
        (f"/api/v1/apps/{app.pk}/subscriptions/", JSON),
    ]


def query_counts(client: Client, pages: list[tuple[str, dict[str, str]]]) -> dict[str, int]:
    counts = {}
    for url, headers in pages:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url, headers=headers)
            if response.streaming:
                b"".join(response.streaming_content)  # type: ignore[attr-defined]
        assert response.status_code == 200, url
        counts[f"{url} {'(htmx)' if headers is HX else ''}"] = len(captured)
    return counts


def test_every_measured_page_takes_the_same_queries_with_ten_times_the_data(
    client, developer, catalog
):
    app = make_subscribed_app(owner=developer, catalog=catalog, name="measured")
    client.force_login(developer)
    pages = measured_pages(catalog, app)
    # Enough products for a second catalog page from the start.
    grow(catalog, developer, app, products=30, apps=5, tag="few")
    few = query_counts(client, pages)
    grow(catalog, developer, app, products=300, apps=60, tag="many")
    many = query_counts(client, pages)
    assert many == few


def test_my_apps_is_paginated(client, developer, catalog):
    app = make_subscribed_app(owner=developer, catalog=catalog, name="measured")
    grow(catalog, developer, app, products=3, apps=APPS_PAGE_SIZE + 5, tag="x")
    client.force_login(developer)
    first = client.get(reverse("portal:apps")).content.decode()
    assert len(re.findall(r'href="/apps/\d+/"', first)) == APPS_PAGE_SIZE
    assert f"{APPS_PAGE_SIZE + 6} apps · page 1 of 2" in first
    assert 'href="?page=2"' in first
    second = client.get(reverse("portal:apps"), {"page": 2}).content.decode()
    assert len(re.findall(r'href="/apps/\d+/"', second)) == 6
    assert "x-app-054" in second  # by name: the last ones are on the last page


def test_the_subscribe_panel_lists_a_bounded_number_of_subscriptions(client, developer, catalog):
    app = make_subscribed_app(owner=developer, catalog=catalog, name="measured")
    grow(catalog, developer, app, products=3, apps=PANEL_SUBSCRIPTIONS + 5, tag="x")
    client.force_login(developer)
    page = client.get(reverse("portal:product", args=[catalog.product.slug])).content.decode()
    panel = page[page.index('id="subscribe"') :]
    assert panel.count("plan\n") == PANEL_SUBSCRIPTIONS
    assert "More of your apps are subscribed" in panel
    # ...while the form still offers every app.
    assert panel.count("<option value=") == PANEL_SUBSCRIPTIONS + 6 + 1  # apps + one plan


def test_the_usage_breakdown_shows_the_busiest_pairs_and_sums_the_rest(developer, catalog):
    app = make_subscribed_app(owner=developer, catalog=catalog, name="measured")
    grow(catalog, developer, app, products=40, apps=0, tag="x")
    scope = usage.usage_for_user(user=developer)
    report = usage.usage_report(scope=scope, window=usage.WINDOWS["30d"])
    shown, rest = report.breakdown[:-1], report.breakdown[-1]
    assert len(shown) == usage.BREAKDOWN_ROWS
    pairs = scope.rows(UsageHourly).values("product_id", "model").distinct().count()
    assert rest.product_id is None
    assert rest.product_name.startswith(f"{pairs - usage.BREAKDOWN_ROWS:,} more")
    # Nothing is lost: the rows add up to the totals.
    assert sum(row.stats.requests for row in report.breakdown) == report.totals.requests
    assert sum(row.stats.errors for row in report.breakdown) == report.totals.errors


def test_select_options_escape_and_select_by_value():
    template = Template("{% load select_options %}{% select_options choices selected %}")
    html = template.render(Context({"choices": [(1, "<b>one</b>"), (2, "two")], "selected": "2"}))
    assert html == (
        '<option value="1">&lt;b&gt;one&lt;/b&gt;</option><option value="2" selected>two</option>'
    )
    unselected = template.render(Context({"choices": [(1, "one")], "selected": None}))
    assert unselected == '<option value="1">one</option>'
