"""``python -m bench.portal_pages``: server time and query count of the developer pages at scale.

Method. A dedicated database is created for the run (Django's test-database machinery,
under its own name, dropped at the end unless ``--keep``): PostgreSQL when
``DATABASE_URL`` is set, else the embedded SQLite in this benchmark's own var dir
(``var/bench-pages`` by default). **The PostgreSQL figure is the one that matters**:
production runs on PostgreSQL; the SQLite figure only shows that the embedded default
stays usable.

It is seeded with ``bulk_create`` (the first product through the test suite's
``make_catalog``, the rest in bulk, search documents through the catalog service):

- ``--products`` published products on one portal, spread over the three kinds and 24
  categories, with tags, two plans each and two model routes per model product;
- ``--consumers`` apps (consumers). One developer owns a large share of them (1,000
  apps, each with three keys, one of them revoked, and three subscriptions); the rest
  belong to developers with ten apps each, one key and one subscription per app;
- ``--usage-records`` usage records over the last 30 days, 80 % of them from the big
  developer's apps, so the usage page and its CSV have data to aggregate.

Then each page is requested in-process with Django's test ``Client`` (the whole
middleware stack, no network), signed in as the big developer (the worst case: every
list of "my apps" is at its longest). After three warm-up requests, whose queries are
counted with ``CaptureQueriesContext`` (the count must be the same each time), the
page is requested ``--samples`` times, timed with ``perf_counter`` from the request to
the last byte of the body (streamed bodies are consumed inside the timing, chunk by
chunk, and the time of the first chunk is taken too). The table gives p50, p95
(nearest rank) and max in milliseconds. The target for pages is p95 ≤ 100 ms with a
query count that does not depend on the amount of data
(tests/control/test_page_query_counts.py proves the latter). The CSV downloads are
streamed, and their size grows with the data: their target is the first byte (p95 ≤
100 ms, when the browser starts the download); the time to the last byte is reported.

``run(products, consumers, samples)`` returns the Markdown section; ``__main__`` prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from bench.common import cpu_times, percentile, setup_django

if TYPE_CHECKING:
    from django.test import Client

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR_DIR = ROOT / "var" / "bench-pages"
TARGET_P95_MS = 100.0
WARMUP = 3
BIG_DEVELOPER_APPS = 1_000
APPS_PER_DEVELOPER = 10
# Names of the dedicated databases: never the ones of `make run` or of the test suite.
PG_DB_NAME = "portico_bench_pages"
SQLITE_DB_FILE = "bench_pages.sqlite3"


def _words(text: str) -> list[str]:
    return text.split()


ADJECTIVES = _words(
    "swift quiet bright vector deep open lucid rapid nimble solid clear prime vivid "
    "keen agile sharp calm bold tiny grand"
)
NOUNS = _words(
    "chat vision speech translate summarize embed search code review agent planner "
    "router guard extract classify rank tutor scribe forecast ledger"
)
WORDS = _words(
    "fast accurate multilingual retrieval reasoning streaming tools images audio "
    "documents compliance finance health legal support sales devops security "
    "analytics weather maps travel retail gaming education science research"
)
CATEGORY_NAMES = _words(
    "Chat Embeddings Vision Speech Translation Code Search Moderation Agents Data "
    "Finance Health Legal Support Sales DevOps Security Analytics Maps Travel Retail "
    "Gaming Education Science"
)


@dataclass(frozen=True)
class Page:
    label: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Measurement:
    page: Page
    status: int
    queries: int
    queries_stable: bool
    p50_ms: float
    p95_ms: float
    max_ms: float
    size_bytes: int
    # Streamed responses: the time of their first chunk (None: not streamed).
    first_p50_ms: float | None = None
    first_p95_ms: float | None = None
    # The machine's CPU time the hypervisor gave to other guests while timing.
    steal_pct: float = 0.0

    @property
    def ok(self) -> bool:
        # A streamed download is held to its first byte; a page to its last.
        held_to = self.p95_ms if self.first_p95_ms is None else self.first_p95_ms
        return self.status == 200 and self.queries_stable and held_to <= TARGET_P95_MS


@contextmanager
def _dedicated_database(*, keep: bool) -> Iterator[str]:
    """Create (migrate) the benchmark's own database; drop it afterwards unless ``keep``."""
    from django.conf import settings
    from django.db import connection

    settings_dict = connection.settings_dict
    if connection.vendor == "sqlite":
        test_name = str(Path(settings.VAR_DIR) / SQLITE_DB_FILE)
    else:
        test_name = PG_DB_NAME
    settings_dict.setdefault("TEST", {})["NAME"] = test_name
    old_name = settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield test_name
    finally:
        if keep:
            connection.close()
        else:
            connection.creation.destroy_test_db(old_name, verbosity=0)


# ---------------------------------------------------------------------------------------
# Seeding


@dataclass
class Seeded:
    products: int
    published_by_kind: dict[str, int]
    developers: int
    consumers: int
    credentials: int
    subscriptions: int
    usage_records: int
    big_developer_id: int
    big_app_id: int
    seconds: float


def _key_hash(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def _batched(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def seed(*, products: int, consumers: int, usage_records: int, rnd: random.Random) -> Seeded:
    """Fill the (empty, migrated) database; see the module docstring for the shape."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.utils import timezone

    from catalog import services as catalog_services
    from catalog.models import Category, ModelRoute, Plan, Product
    from consumers.models import Consumer, Credential, Subscription, UsageRecord
    from consumers.services import usage_hourly_rebuild
    from portal.models import Membership
    from tests.conftest import make_catalog

    started = time.perf_counter()
    # The gateway is not part of this benchmark: no revision compiles while seeding.
    with (
        mock.patch("catalog.services.gateway_changed"),
        mock.patch("consumers.services.gateway_changed"),
        transaction.atomic(),
    ):
        catalog = make_catalog()
        portal, upstream = catalog.portal, catalog.upstream
        categories = Category.objects.bulk_create(
            Category(name=name, slug=name.lower()) for name in CATEGORY_NAMES
        )

        kinds = [Product.Kind.MODEL] * 3 + [Product.Kind.MCP, Product.Kind.AGENT]
        new_products = []
        for i in range(1, products):
            name = f"{rnd.choice(ADJECTIVES).title()} {rnd.choice(NOUNS).title()} {i:05d}"
            words = " ".join(rnd.sample(WORDS, 8))
            new_products.append(
                Product(
                    name=name,
                    slug=f"p{i:05d}",
                    kind=kinds[i % len(kinds)],
                    status=Product.Status.PUBLISHED,
                    description=f"{name} for {words}.",
                    category=categories[i % len(categories)],
                    tags=rnd.sample(WORDS, 3),
                )
            )
        Product.objects.bulk_create(new_products, batch_size=2000)
        Through = Product.portals.through
        Through.objects.bulk_create(
            (Through(product_id=p.pk, portal_id=portal.pk) for p in new_products),
            batch_size=5000,
        )
        ModelRoute.objects.bulk_create(
            (
                ModelRoute(
                    product=p, name=f"{p.slug}-{size}", upstream=upstream, upstream_model=size
                )
                for p in new_products
                if p.kind == Product.Kind.MODEL
                for size in ("mini", "large")
            ),
            batch_size=5000,
        )
        plans = Plan.objects.bulk_create(
            (
                Plan(product=p, name=name, requests_per_minute=rpm)
                for p in new_products
                for name, rpm in (("Free", 60), ("Pro", 6000))
            ),
            batch_size=5000,
        )
        catalog_services.products_refresh_search_documents(products=new_products)

        all_products = [catalog.product, *new_products]
        free_plan = {catalog.product.pk: catalog.plan.pk}
        free_plan.update({plan.product_id: plan.pk for plan in plans if plan.name == "Free"})
        model_of = {p.pk: f"{p.slug}-mini" for p in new_products}
        model_of[catalog.product.pk] = "chat-model"

        # Developers: one with a big share of the apps, the others with ten each.
        big_apps = min(BIG_DEVELOPER_APPS, consumers)
        others = max(0, consumers - big_apps)
        developers = 1 + math.ceil(others / APPS_PER_DEVELOPER)
        unusable = make_password(None)
        users = User.objects.bulk_create(
            (
                User(username=f"dev{i:06d}", email=f"dev{i:06d}@example.com", password=unusable)
                for i in range(developers)
            ),
            batch_size=5000,
        )
        big = users[0]
        Membership.objects.bulk_create(
            (
                Membership(portal=portal, user=user, status=Membership.Status.APPROVED)
                for user in users
            ),
            batch_size=5000,
        )
        owners = [big] * big_apps + [users[1 + i // APPS_PER_DEVELOPER] for i in range(others)]
        apps = Consumer.objects.bulk_create(
            (
                Consumer(owner=owner, portal=portal, name=f"app-{i:06d}")
                for i, owner in enumerate(owners)
            ),
            batch_size=5000,
        )

        now = timezone.now()
        credentials: list[Credential] = []
        subscriptions: list[Subscription] = []
        subscribed: dict[int, list[int]] = {}
        for index, app in enumerate(apps):
            is_big = index < big_apps
            for k in range(3 if is_big else 1):
                credentials.append(
                    Credential(
                        consumer=app,
                        name=f"key-{k}",
                        key_hash=_key_hash(app.pk, k),
                        display_prefix=f"portico_{k}{app.pk:05d}"[:16],
                        revoked_at=now if k == 2 else None,
                    )
                )
            chosen = rnd.sample(all_products, 3 if is_big else 1)
            subscribed[app.pk] = [p.pk for p in chosen]
            subscriptions.extend(
                Subscription(
                    consumer=app,
                    product=p,
                    plan_id=free_plan[p.pk],
                    status=Subscription.Status.APPROVED,
                    decided_at=now,
                )
                for p in chosen
            )
        for batch in _batched(credentials, 5000):
            Credential.objects.bulk_create(batch)
        for batch in _batched(subscriptions, 5000):
            Subscription.objects.bulk_create(batch)

        # Usage: 80 % from the big developer's apps, over the last 30 days.
        big_ids = [app.pk for app in apps[:big_apps]]
        other_ids = [app.pk for app in apps[big_apps:]] or big_ids
        owner_of = {app.pk: app.owner_id for app in apps}
        records: list[UsageRecord] = []
        window = 30 * 86400
        for n in range(usage_records):
            consumer_id = rnd.choice(big_ids if n % 5 else other_ids)
            product_id = rnd.choice(subscribed[consumer_id])
            status = 200 if rnd.random() > 0.03 else rnd.choice((429, 500, 502))
            records.append(
                UsageRecord(
                    event_id=f"evt-{n}",
                    request_id=f"req-{n}",
                    ts=now - timedelta(seconds=rnd.random() * window),
                    gateway="gw-1",
                    route="chat",
                    consumer_id=consumer_id,
                    owner_id=owner_of[consumer_id],  # as the ingest stamps it
                    credential_id=None,
                    product_id=product_id,
                    model=model_of[product_id],
                    status=status,
                    latency_ms=rnd.uniform(20, 900),
                    prompt_tokens=rnd.randint(10, 2000),
                    completion_tokens=rnd.randint(1, 800),
                )
            )
            if len(records) == 5000:
                UsageRecord.objects.bulk_create(records)
                records.clear()
        UsageRecord.objects.bulk_create(records)
    # Raw records were bulk-loaded past the ingest path, so roll them up as a bulk
    # import would (the dashboard reads the hourly rollups).
    usage_hourly_rebuild()

    # Fresh statistics, as autovacuum (PostgreSQL) would have gathered by now.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # The visibility map lets PostgreSQL use index-only scans, as it would in a
            # database that has been running for a while.
            cursor.execute("VACUUM")

    return Seeded(
        products=products,
        published_by_kind={
            kind: sum(1 for p in all_products if p.kind == kind) for kind in Product.Kind.values
        },
        developers=developers,
        consumers=len(apps),
        credentials=len(credentials),
        subscriptions=len(subscriptions),
        usage_records=usage_records,
        big_developer_id=big.pk,
        big_app_id=apps[0].pk,
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------
# Measuring


def _fetch(client: Client, page: Page) -> tuple[int, int, float | None]:
    """Request ``page`` and read its body to the end: (status, size, seconds from the
    request to the first chunk of a streamed body, else None)."""
    started = time.perf_counter()
    response = client.get(page.url, headers=page.headers)
    if not getattr(response, "streaming", False):
        return response.status_code, len(response.content), None
    first, size = None, 0
    for chunk in response.streaming_content:  # type: ignore[attr-defined]
        if first is None:
            first = time.perf_counter() - started
        size += len(chunk)
    return response.status_code, size, first


def measure(client: Client, page: Page, samples: int) -> Measurement:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = []
    status, size = 0, 0
    for _ in range(WARMUP):
        with CaptureQueriesContext(connection) as captured:
            status, size, _ = _fetch(client, page)
        counts.append(len(captured))
    # Timed without capturing queries: the capture's bookkeeping is not server time.
    times, firsts = [], []
    steal_before, total_before = cpu_times()
    for _ in range(samples):
        started = time.perf_counter()
        status, size, first = _fetch(client, page)
        times.append((time.perf_counter() - started) * 1000)
        if first is not None:
            firsts.append(first * 1000)
    steal_after, total_after = cpu_times()
    times.sort()
    return Measurement(
        page=page,
        status=status,
        queries=counts[-1],
        queries_stable=len(set(counts)) == 1,
        p50_ms=percentile(times, 0.50),
        p95_ms=percentile(times, 0.95),
        max_ms=times[-1],
        size_bytes=size,
        first_p50_ms=percentile(firsts, 0.50) if firsts else None,
        first_p95_ms=percentile(firsts, 0.95) if firsts else None,
        steal_pct=100.0 * (steal_after - steal_before) / max(1, total_after - total_before),
    )


def pages(seeded: Seeded) -> list[Page]:
    from django.urls import reverse

    from catalog.views import PAGE_SIZE

    htmx = {"HX-Request": "true"}
    json_ = {"Accept": "application/json"}
    total = seeded.products
    middle = max(1, math.ceil(total / PAGE_SIZE) // 2)
    app = seeded.big_app_id
    catalog = reverse("portal:catalog")
    return [
        Page("catalog: all", catalog, {}),
        Page("catalog: models", reverse("portal:catalog_kind", args=["models"]), {}),
        Page("catalog: MCP servers", reverse("portal:catalog_kind", args=["mcp"]), {}),
        Page("catalog: agents", reverse("portal:catalog_kind", args=["agents"]), {}),
        Page("catalog: search, htmx partial", f"{catalog}?q=vision+fast", htmx),
        Page("catalog: search + category", f"{catalog}?q=chat&category=vision", {}),
        Page(f"catalog: page {middle}", f"{catalog}?page={middle}", {}),
        Page(f"catalog: page {middle}, htmx partial", f"{catalog}?page={middle}", htmx),
        Page("product detail (signed in)", reverse("portal:product", args=["p00003"]), {}),
        Page("my apps (1,000 apps)", reverse("portal:apps"), {}),
        Page("app detail", reverse("portal:app", args=[app]), {}),
        Page("usage: 7 days", reverse("portal:usage"), {}),
        Page("usage: 30 days", f"{reverse('portal:usage')}?window=30d", {}),
        Page("usage: 7 days, htmx partial", reverse("portal:usage"), htmx),
        Page("usage: one app, 30 days", f"{reverse('portal:usage')}?window=30d&app={app}", {}),
        Page("usage CSV: 24 hours", f"{reverse('portal:usage_csv')}?window=24h", {}),
        Page("usage CSV: 7 days", f"{reverse('portal:usage_csv')}?window=7d", {}),
        Page("API: products", "/api/v1/products/", json_),
        Page("API: products, search", "/api/v1/products/?q=vision&kind=model", json_),
        Page("API: products, offset 5000", "/api/v1/products/?offset=5000", json_),
        Page("API: apps", "/api/v1/apps/", json_),
        Page("API: apps, offset 950", "/api/v1/apps/?offset=950", json_),
        Page("API: app's keys", f"/api/v1/apps/{app}/keys/", json_),
        Page("API: app's subscriptions", f"/api/v1/apps/{app}/subscriptions/", json_),
    ]


def _database_label() -> str:
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
        return f"PostgreSQL {version}"
    import sqlite3

    return f"SQLite {sqlite3.sqlite_version} (embedded default)"


def report(seeded: Seeded, results: list[Measurement], samples: int, database: str) -> str:
    import django

    lines = [
        "## Portal pages at scale",
        "",
        f"Database: **{database}**. "
        + (
            "This is the production database: these are the figures that matter."
            if database.startswith("PostgreSQL")
            else "The embedded default; set `DATABASE_URL` to a PostgreSQL database for "
            "the figures that matter."
        ),
        "",
        f"Data: {seeded.products:,} published products "
        f"({', '.join(f'{n:,} {k}' for k, n in seeded.published_by_kind.items())}); "
        f"{seeded.consumers:,} apps of {seeded.developers:,} developers, the measured one "
        f"owning {min(BIG_DEVELOPER_APPS, seeded.consumers):,}; "
        f"{seeded.credentials:,} keys; {seeded.subscriptions:,} subscriptions; "
        f"{seeded.usage_records:,} usage records over 30 days. Seeded in "
        f"{seeded.seconds:.0f} s.",
        "",
        "Method: Django's test `Client` in-process (the whole middleware stack, no "
        "network), signed in as the developer with the most apps; "
        f"{WARMUP} warm-up requests (their queries counted with `CaptureQueriesContext`), "
        f"then {samples} timed requests each, to the last byte of the body (a streamed "
        "body is read chunk by chunk inside the timing; its first chunk is timed too). "
        f"Target for pages: p95 ≤ {TARGET_P95_MS:.0f} ms to the last byte, and a query "
        "count independent of the data (`tests/control/test_page_query_counts.py`). "
        "Target for the CSV downloads, which are streamed and grow with the data: first "
        f"byte p95 ≤ {TARGET_P95_MS:.0f} ms (the download starts); their last byte is "
        "reported. Steal: the share of the machine's CPU time the hypervisor gave to "
        "other guests while a page was timed (figures taken under high steal understate "
        f"what the code can do). Python {platform.python_version()}, "
        f"Django {django.get_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "| page | URL | p50 ms | p95 ms | max ms | first byte p50 / p95 ms | queries | KiB "
        "| steal % | ok |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :-: |",
    ]
    for m in results:
        queries = str(m.queries) if m.queries_stable else f"{m.queries} (varies)"
        status = "✓" if m.ok else ("✗" if m.status == 200 else f"✗ HTTP {m.status}")
        htmx = " (htmx)" if "HX-Request" in m.page.headers else ""
        first = (
            "—"
            if m.first_p50_ms is None or m.first_p95_ms is None
            else f"{m.first_p50_ms:.1f} / {m.first_p95_ms:.1f}"
        )
        lines.append(
            f"| {m.page.label} | `{m.page.url}`{htmx} | {m.p50_ms:.1f} | {m.p95_ms:.1f} | "
            f"{m.max_ms:.1f} | {first} | {queries} | {m.size_bytes / 1024:.0f} | "
            f"{m.steal_pct:.0f} | {status} |"
        )
    failing = [m for m in results if not m.ok]
    lines += [
        "",
        (
            f"All {len(results)} pages within target."
            if not failing
            else f"{len(failing)} of {len(results)} pages miss the target: "
            + ", ".join(m.page.label for m in failing)
            + "."
        ),
        "",
    ]
    return "\n".join(lines)


def run(
    products: int = 10_000,
    consumers: int = 100_000,
    samples: int = 50,
    *,
    usage_records: int = 200_000,
    var_dir: Path | None = None,
    keep: bool = False,
    seed_value: int = 1,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Seed a dedicated database, measure every developer page, return a Markdown section."""
    say = progress or (lambda message: None)
    setup_django(var_dir or DEFAULT_VAR_DIR)
    from django.contrib.auth.models import User
    from django.test import Client

    with _dedicated_database(keep=keep) as name:
        say(f"seeding {name}…")
        seeded = seed(
            products=products,
            consumers=consumers,
            usage_records=usage_records,
            rnd=random.Random(seed_value),
        )
        say(f"seeded in {seeded.seconds:.0f} s; measuring…")
        client = Client()
        client.force_login(User.objects.get(pk=seeded.big_developer_id))
        results = []
        for page in pages(seeded):
            result = measure(client, page, samples)
            first = (
                "" if result.first_p95_ms is None else f", first byte p95 {result.first_p95_ms:.1f}"
            )
            say(
                f"  {page.label}: p50 {result.p50_ms:.1f} p95 {result.p95_ms:.1f} "
                f"max {result.max_ms:.1f} ms{first}, {result.queries} queries"
            )
            results.append(result)
        database = _database_label()
    return report(seeded, results, samples, database)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--consumers", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--usage-records", type=int, default=200_000)
    parser.add_argument(
        "--var-dir",
        type=Path,
        default=DEFAULT_VAR_DIR,
        help="secrets and the SQLite database of this benchmark (default: var/bench-pages)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.products < 2 or args.consumers < 1 or args.samples < 1:
        parser.error("need at least 2 products, 1 consumer and 1 sample")
    section = run(
        args.products,
        args.consumers,
        args.samples,
        usage_records=args.usage_records,
        var_dir=args.var_dir.resolve(),
        keep=args.keep,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(section)


if __name__ == "__main__":
    main()
