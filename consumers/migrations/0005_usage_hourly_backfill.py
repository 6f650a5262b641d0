"""Fill the hourly usage rollups from the usage records stored before they existed.

A frozen copy of ``consumers.services._usage_hourly_build`` (a migration must not follow
later changes of the code it would import). Records ingested by an older release while
this runs are not in the rollups: run ``usage_hourly_rebuild(since=...)`` from
``consumers.services`` for those hours afterwards.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

from django.db import migrations
from django.db.models import Count, Max, Min, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncHour

DAYS_PER_PASS = 7


def backfill(apps: Any, schema_editor: Any) -> None:
    UsageRecord = apps.get_model("consumers", "UsageRecord")
    UsageHourly = apps.get_model("consumers", "UsageHourly")
    db = schema_editor.connection.alias
    records = UsageRecord.objects.using(db).order_by()
    bounds = records.aggregate(first=Min("ts"), last=Max("ts"))
    if bounds["first"] is None:
        return
    start = bounds["first"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    # A few days per pass: memory is bounded by the rollup rows of those days.
    while start <= bounds["last"]:
        end = start + timedelta(days=DAYS_PER_PASS)
        rows = (
            records.filter(ts__gte=start, ts__lt=end)
            .annotate(
                bucket=TruncHour("ts", tzinfo=UTC),
                # The rollup's "none" is 0 (see UsageHourly): NULLs would never conflict.
                app=Coalesce("consumer_id", Value(0)),
                product=Coalesce("product_id", Value(0)),
            )
            .values("bucket", "app", "product", "model")
            .annotate(
                n=Count("pk"),
                n_errors=Count("pk", filter=Q(status__gte=400)),
                prompt=Coalesce(Sum("prompt_tokens"), Value(0)),
                completion=Coalesce(Sum("completion_tokens"), Value(0)),
                latency_sum=Sum("latency_ms"),
                latency_max=Max("latency_ms"),
            )
            .order_by()
        )
        UsageHourly.objects.using(db).bulk_create(
            [
                UsageHourly(
                    hour=row["bucket"],
                    consumer_id=row["app"],
                    product_id=row["product"],
                    model=row["model"],
                    requests=row["n"],
                    errors=row["n_errors"],
                    prompt_tokens=row["prompt"],
                    completion_tokens=row["completion"],
                    latency_sum_ms=row["latency_sum"],
                    latency_max_ms=row["latency_max"],
                )
                for row in rows
            ],
            batch_size=1000,
        )
        start = end


def forget(apps: Any, schema_editor: Any) -> None:
    apps.get_model("consumers", "UsageHourly").objects.using(
        schema_editor.connection.alias
    ).all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("consumers", "0004_usage_hourly"),
    ]

    operations = [migrations.RunPython(backfill, forget, elidable=False)]
