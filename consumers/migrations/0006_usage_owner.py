"""Usage remembers whose app made each call: ``owner_id`` on the raw records and the
hourly rollups (part of the rollup's key); the daily and per-owner rollups; the indexes
the usage dashboards read. 0007 fills them from the data already stored."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0004_multi_vendor_routing"),
        ("consumers", "0005_usage_hourly_backfill"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageDaily",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("requests", models.BigIntegerField()),
                ("errors", models.BigIntegerField()),
                ("prompt_tokens", models.BigIntegerField()),
                ("completion_tokens", models.BigIntegerField()),
                ("latency_sum_ms", models.FloatField()),
                ("latency_max_ms", models.FloatField()),
                ("consumer_id", models.BigIntegerField()),
                ("owner_id", models.BigIntegerField(default=0)),
                ("product_id", models.BigIntegerField()),
                ("model", models.CharField(blank=True, max_length=200)),
                ("day", models.DateTimeField()),
            ],
        ),
        migrations.CreateModel(
            name="UsageOwnerDays",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("requests", models.BigIntegerField()),
                ("errors", models.BigIntegerField()),
                ("prompt_tokens", models.BigIntegerField()),
                ("completion_tokens", models.BigIntegerField()),
                ("latency_sum_ms", models.FloatField()),
                ("latency_max_ms", models.FloatField()),
                ("start", models.DateTimeField()),
                ("days", models.PositiveSmallIntegerField()),
                ("owner_id", models.BigIntegerField()),
                ("product_id", models.BigIntegerField()),
                ("model", models.CharField(blank=True, max_length=200)),
            ],
        ),
        migrations.CreateModel(
            name="UsageOwnerHourly",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("requests", models.BigIntegerField()),
                ("errors", models.BigIntegerField()),
                ("prompt_tokens", models.BigIntegerField()),
                ("completion_tokens", models.BigIntegerField()),
                ("latency_sum_ms", models.FloatField()),
                ("latency_max_ms", models.FloatField()),
                ("hour", models.DateTimeField()),
                ("owner_id", models.BigIntegerField()),
            ],
        ),
        migrations.RemoveConstraint(
            model_name="usagehourly",
            name="usage_hourly_key",
        ),
        migrations.RemoveIndex(
            model_name="usagehourly",
            name="usage_hourly_consumer",
        ),
        migrations.AddField(
            model_name="usagehourly",
            name="owner_id",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="owner_id",
            field=models.BigIntegerField(null=True),
        ),
        migrations.AddIndex(
            model_name="subscription",
            index=models.Index(
                fields=["consumer", "product"], name="subscription_consumer_product"
            ),
        ),
        migrations.AddIndex(
            model_name="usagehourly",
            index=models.Index(
                fields=["consumer_id", "hour"],
                include=(
                    "owner_id",
                    "product_id",
                    "model",
                    "requests",
                    "errors",
                    "prompt_tokens",
                    "completion_tokens",
                    "latency_sum_ms",
                    "latency_max_ms",
                ),
                name="usage_hourly_consumer",
            ),
        ),
        migrations.AddIndex(
            model_name="usagehourly",
            index=models.Index(
                fields=["owner_id", "hour", "consumer_id", "product_id", "model"],
                include=(
                    "requests",
                    "errors",
                    "prompt_tokens",
                    "completion_tokens",
                    "latency_sum_ms",
                    "latency_max_ms",
                ),
                name="usage_hourly_owner",
            ),
        ),
        migrations.AddConstraint(
            model_name="usagehourly",
            constraint=models.UniqueConstraint(
                fields=("hour", "consumer_id", "owner_id", "product_id", "model"),
                name="usage_hourly_key",
            ),
        ),
        migrations.AddConstraint(
            model_name="usagedaily",
            constraint=models.UniqueConstraint(
                fields=("owner_id", "day", "consumer_id", "product_id", "model"),
                name="usage_daily_key",
            ),
        ),
        migrations.AddIndex(
            model_name="usageownerdays",
            index=models.Index(
                fields=["owner_id", "days", "start"],
                include=(
                    "product_id",
                    "model",
                    "requests",
                    "errors",
                    "prompt_tokens",
                    "completion_tokens",
                    "latency_sum_ms",
                    "latency_max_ms",
                ),
                name="usage_owner_days_owner",
            ),
        ),
        migrations.AddConstraint(
            model_name="usageownerdays",
            constraint=models.UniqueConstraint(
                fields=("start", "days", "owner_id", "product_id", "model"),
                name="usage_owner_days_key",
            ),
        ),
        migrations.AddConstraint(
            model_name="usageownerdays",
            constraint=models.CheckConstraint(
                condition=models.Q(("days__in", [1, 7])), name="usage_owner_days_span"
            ),
        ),
        migrations.AddConstraint(
            model_name="usageownerhourly",
            constraint=models.UniqueConstraint(
                fields=("owner_id", "hour"), name="usage_owner_hourly_key"
            ),
        ),
    ]
