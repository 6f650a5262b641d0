"""Pieces every benchmark suite shares: pinning, percentiles, Django set-up and the
revision a bench gateway is given."""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
from pathlib import Path

from gateway import schema
from gateway.keys import hash_key
from gateway.secrets import GatewayKeys


def pin(pid: int, core: int) -> None:
    """Pin ``pid`` (0: the calling process) to ``core`` where the machine has more than one."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(pid, {core})


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[7], sum(values)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (NaN for no values): with 50 samples, p99 is the worst but one."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def setup_django(var_dir: Path) -> None:
    """Configure Django for this process with the benchmark's own var dir (secrets,
    broker folder, SQLite file), apart from `make run`'s and the tests', unless the
    caller already did."""
    from django.conf import settings

    if not settings.configured:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
        os.environ["PORTICO_VAR_DIR"] = str(var_dir)
        var_dir.mkdir(parents=True, exist_ok=True)
        # Stale broker messages of an earlier run would be delivered to this one.
        shutil.rmtree(var_dir / "celery", ignore_errors=True)
    import django

    django.setup()


def bench_revision(
    keys: GatewayKeys,
    *,
    mock_url: str,
    upstream_key: str,
    app_key: str,
    models: dict[str, str],
    plan: schema.Plan,
    consumers: int = 1,
    more_credentials: dict[str, schema.Credential] | None = None,
) -> schema.Revision:
    """One product ``bench`` routing ``models`` (public → upstream name) to the mock,
    ``consumers`` apps subscribed to it under ``plan``, and ``app_key`` (app 1) plus
    ``more_credentials`` as its keys."""
    return schema.Revision(
        schema=schema.SCHEMA_VERSION,
        revision=1,
        created_at=dt.datetime.now(dt.UTC).isoformat(),
        upstreams={
            "mock": schema.Upstream(
                vendor="openai", base_url=mock_url, secret=keys.seal(upstream_key)
            )
        },
        products={
            "bench": schema.Product(
                id=1,
                slug="bench",
                kind="model",
                models={
                    public: schema.ModelRoute(upstream="mock", upstream_model=upstream)
                    for public, upstream in models.items()
                },
            )
        },
        consumers={
            str(c): schema.Consumer(
                id=c, subscriptions={"bench": schema.Subscription(id=c, plan=plan)}
            )
            for c in range(1, consumers + 1)
        },
        credentials={
            hash_key(app_key): schema.Credential(id=1, consumer=1),
            **(more_credentials or {}),
        },
    )
