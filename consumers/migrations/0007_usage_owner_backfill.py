"""Fill in whose app made the calls already stored, and the daily and per-owner rollups.

The owner is the app's owner now: calls of apps deleted before this migration have no
known owner (``owner_id`` stays NULL in the records, 0 in the rollups) and stay out of
every developer's dashboard, as they were before it; staff still see them.

Those rollups are summed from the hourly ones, a week at a time, as
``consumers.services`` does (a frozen copy here: a migration must not follow later
changes of the code it would import). Calls ingested by an older release while this
runs are not in them: run ``usage_hourly_rebuild(since=...)`` from
``consumers.services`` for those hours afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import migrations
from django.db.models import F, Max, Min, OuterRef, Subquery, Sum
from django.db.models.functions import TruncDay, TruncWeek

SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_sum_ms")
PAIR = ("owner_id", "product_id", "model")


def backfill(apps: Any, schema_editor: Any) -> None:
    db = schema_editor.connection.alias
    Consumer = apps.get_model("consumers", "Consumer")
    UsageRecord = apps.get_model("consumers", "UsageRecord")
    UsageHourly = apps.get_model("consumers", "UsageHourly")
    consumers = Consumer.objects.using(db)
    owner_of = Subquery(consumers.filter(pk=OuterRef("consumer_id")).values("owner_id")[:1])
    living = consumers.values("pk")
    UsageRecord.objects.using(db).filter(consumer_id__in=living).update(owner_id=owner_of)
    # Adding the owner keeps the hourly keys unique: it is a function of the app here.
    UsageHourly.objects.using(db).filter(consumer_id__in=living).update(owner_id=owner_of)

    hourly = UsageHourly.objects.using(db).order_by()
    daily = apps.get_model("consumers", "UsageDaily").objects.using(db)
    owner_hourly = apps.get_model("consumers", "UsageOwnerHourly").objects.using(db)
    owner_days = apps.get_model("consumers", "UsageOwnerDays").objects.using(db)
    by_day = TruncDay("hour", tzinfo=UTC)
    _sum_hourly(hourly, daily, "day", by_day, ("consumer_id", *PAIR), {})
    _sum_hourly(hourly, owner_hourly, "hour", F("hour"), ("owner_id",), {})
    _sum_hourly(hourly, owner_days, "start", by_day, PAIR, {"days": 1})
    _sum_hourly(hourly, owner_days, "start", TruncWeek("hour", tzinfo=UTC), PAIR, {"days": 7})


def _sum_hourly(
    hourly: Any,
    rollup: Any,
    period: str,
    bucket: Any,
    keys: tuple[str, ...],
    fixed: dict[str, int],
) -> None:
    bounds = hourly.aggregate(first=Min("hour"), last=Max("hour"))
    if bounds["first"] is None:
        return
    start = _monday(bounds["first"])
    # A week per pass: memory is bounded by its rollup rows, and no week is split.
    while start <= bounds["last"]:
        end = start + timedelta(days=7)
        rows = (
            hourly.filter(hour__gte=start, hour__lt=end)
            .annotate(bucket=bucket)
            .values("bucket", *keys)
            .annotate(
                **{f"sum_{name}": Sum(name) for name in SUMS},
                sum_latency_max_ms=Max("latency_max_ms"),
            )
            .order_by()
        )
        rollup.bulk_create(
            [
                rollup.model(
                    **{period: row["bucket"]},
                    **fixed,
                    **{key: row[key] for key in keys},
                    **{name: row[f"sum_{name}"] for name in (*SUMS, "latency_max_ms")},
                )
                for row in rows
            ],
            batch_size=1000,
        )
        start = end


def _monday(ts: datetime) -> datetime:
    day = ts.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def forget(apps: Any, schema_editor: Any) -> None:
    # The columns and the tables go with 0006.
    for name in ("UsageDaily", "UsageOwnerHourly", "UsageOwnerDays"):
        apps.get_model("consumers", name).objects.using(schema_editor.connection.alias).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("consumers", "0006_usage_owner"),
    ]

    operations = [migrations.RunPython(backfill, forget, elidable=False)]
