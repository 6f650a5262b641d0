"""Usage dashboards: a developer's calls over time, as charts, tables and CSV."""

from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC
from urllib.parse import urlencode

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET
from django_htmx.middleware import HtmxDetails

from consumers import usage as usage_selectors
from consumers.models import Consumer
from consumers.selectors import consumer_get_for_user
from consumers.usage import UsageScope, Window

# Ids are positive BIGINTs, written in ASCII digits ("²".isdigit() is True, int() rejects it).
_ID = re.compile(r"[0-9]{1,18}")

CSV_CHUNK_LINES = 500

CSV_HEADER = [
    "bucket_start",
    "app_id",
    "app",
    "product_id",
    "product",
    "model",
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "latency_avg_ms",
    "latency_max_ms",
]


class UsageRequest(HttpRequest):
    """A signed-in request after HtmxMiddleware."""

    htmx: HtmxDetails
    user: User


@dataclass(frozen=True)
class UsageFilters:
    """The dashboard's GET parameters, checked: a window, and maybe one app and one product."""

    window: Window
    app: Consumer | None
    product_id: int | None

    @property
    def query(self) -> str:
        """The filters as a query string, for the CSV link."""
        params = {"window": self.window.key}
        if self.app is not None:
            params["app"] = str(self.app.pk)
        if self.product_id is not None:
            params["product"] = str(self.product_id)
        return urlencode(params)

    @property
    def narrowed(self) -> bool:
        return self.app is not None or self.product_id is not None


def _filters(request: UsageRequest) -> UsageFilters:
    """Parse the filters. An app the user may not see is a 404 from the access helper;
    an unknown window or a malformed product id falls back to the default, so an old or
    hand-edited link still shows something."""
    window = usage_selectors.window_for(request.GET.get("window"))
    app = None
    app_param = request.GET.get("app", "")
    if app_param:
        if not _ID.fullmatch(app_param):
            raise Http404("No such app.")
        app = consumer_get_for_user(user=request.user, pk=int(app_param))
    product_param = request.GET.get("product", "")
    product_id = int(product_param) if _ID.fullmatch(product_param) else None
    return UsageFilters(window=window, app=app, product_id=product_id)


def _scope(request: UsageRequest, filters: UsageFilters) -> UsageScope:
    return usage_selectors.usage_for_user(
        user=request.user, consumer=filters.app, product_id=filters.product_id
    )


def _app_choices(user: User) -> list[tuple[int, str]]:
    apps = usage_selectors.usage_apps_for_user(user=user)
    if user.is_staff:
        # Staff see every developer's apps: the owner tells same-named apps apart.
        return [
            (pk, f"{name} ({owner})")
            for pk, name, owner in apps.values_list("pk", "name", "owner__username")
        ]
    return list(apps.values_list("pk", "name"))


@login_required
@require_GET
def usage(request: UsageRequest) -> HttpResponse:
    filters = _filters(request)
    report = usage_selectors.usage_report(scope=_scope(request, filters), window=filters.window)
    # Only an empty page asks whether there were ever any calls: it decides between
    # "make your first call" and "nothing matches these filters".
    has_any_calls = not report.is_empty or usage_selectors.usage_has_calls(
        scope=usage_selectors.usage_for_user(user=request.user)
    )
    context = {
        "filters": filters,
        "report": report,
        "chart_data": report.chart_data(),
        "has_any_calls": has_any_calls,
        "product_label": (
            None
            if filters.product_id is None
            else usage_selectors.product_label(filters.product_id)
        ),
    }
    # A history restore needs the whole page, not the fragment.
    if request.htmx and not request.htmx.history_restore_request:
        # The fragment has no filter form: its choices are not worth their queries.
        response = render(request, "portal/usage.html#dashboard", context)
    else:
        context |= {
            "windows": list(usage_selectors.WINDOWS.values()),
            # (pk, label) pairs for the filters' <select>s, rendered by
            # {% select_options %}: a developer may have a thousand apps and as many
            # products.
            "apps": _app_choices(request.user),
            "products": list(
                usage_selectors.usage_products_for_user(user=request.user).values_list("pk", "name")
            ),
        }
        response = render(request, "portal/usage.html", context)
    # The same URL answers with a fragment or a page: caches must keep both apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


class _Echo:
    """A file-like object whose ``write`` hands back the line, for ``csv.writer``."""

    def write(self, value: str) -> str:
        return value


def _cell(text: str) -> str:
    # App and model names are chosen by developers; a leading =, +, - or @ would run as a
    # formula when someone (an admin, too) opens the file in a spreadsheet.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


@login_required
@require_GET
def usage_csv(request: UsageRequest) -> StreamingHttpResponse:
    filters = _filters(request)
    # Hourly rows (daily for the 7- and 30-day windows) per app, product and model, from
    # the rollups like the page, so the file and the page agree; per-call detail stays in
    # the raw usage records. Read as the file is written (see usage_csv_rows): a month
    # of a thousand apps is tens of thousands of lines.
    rows = usage_selectors.usage_csv_rows(scope=_scope(request, filters), window=filters.window)
    writer = csv.writer(_Echo())

    def lines() -> Generator[str]:
        # Chunks of lines, not one yield per line: each chunk costs the response
        # machinery (encoding, the server's write) once, which was most of the time.
        chunk = [writer.writerow(CSV_HEADER)]
        bucket, stamp = None, ""
        # Closed with the response, also when the client goes away mid-file: that ends
        # the rows' read (its cursor and transaction) at once.
        with closing(rows):
            for row in rows:
                if len(chunk) >= CSV_CHUNK_LINES:
                    yield "".join(chunk)
                    chunk = []
                if row.bucket_start != bucket:  # rows come bucket by bucket
                    bucket = row.bucket_start
                    stamp = bucket.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                stats = row.stats
                chunk.append(
                    writer.writerow(
                        [
                            stamp,
                            "" if row.app_id is None else row.app_id,
                            _cell(row.app_name),
                            "" if row.product_id is None else row.product_id,
                            _cell(row.product_name),
                            _cell(row.model),
                            stats.requests,
                            stats.errors,
                            stats.prompt_tokens,
                            stats.completion_tokens,
                            _number(stats.latency_avg_ms),
                            _number(stats.latency_max_ms),
                        ]
                    )
                )
        yield "".join(chunk)

    chunks = lines()
    content = _from_thread(chunks) if isinstance(request, ASGIRequest) else chunks
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="portico-usage-{filters.window.key}.csv"'
    )
    return response


async def _from_thread(chunks: Generator[str]) -> AsyncIterator[str]:
    """``chunks`` for an ASGI server, made one at a time in the request's thread.

    Under ASGI, Django would read a synchronous iterator to its end into memory before
    sending a byte. Here each chunk is made by ``sync_to_async`` (thread-sensitive: the
    thread the view ran in, which holds the request's database connection and the
    server-side cursor) and sent before the next is read.
    """
    try:
        while (chunk := await sync_to_async(_next, thread_sensitive=True)(chunks)) is not None:
            yield chunk
    finally:
        # Also when the client went away: the cursor is closed in its own thread, now.
        await sync_to_async(chunks.close, thread_sensitive=True)()


def _next(chunks: Iterator[str]) -> str | None:
    return next(chunks, None)
