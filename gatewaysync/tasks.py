"""Celery tasks: thin wrappers that call services and delivery."""

from __future__ import annotations

import time

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from gatewaysync import delivery, services

# How often the reconcile task compiles the whole state even though the journal says
# nothing else changed: it catches what no journal entry describes (keys that expired,
# a change made behind the services' back) and verifies that the documents built from
# deltas hash exactly as a compile of the same state does.
_FULL_COMPILE_AT = "portico:sync:full-compile-at"


@shared_task(name="gatewaysync.revision_publish")
def revision_publish_task() -> None:
    """Publish what the change journal holds, then deliver it.

    Many of these may be queued for one burst of changes; the first takes the whole
    journal and the others find it empty and only check on delivery.
    """
    services.revision_publish(keep=settings.PORTICO_REVISIONS_KEPT, pending_only=True)
    delivery.deliver_latest()


@shared_task(name="gatewaysync.revision_deliver")
def revision_deliver_task(instance_pk: int) -> None:
    delivery.deliver_latest(instance_pk)


@shared_task(name="gatewaysync.revision_reconcile")
def revision_reconcile_task() -> None:
    """Periodic safety net.

    Publishes a first revision or whatever the journal still holds (a publish task
    that was lost), gives the latest revision its full document once the deltas
    published without one pile up or age, compiles everything every
    ``PORTICO_FULL_COMPILE_SECONDS``, and re-delivers to every instance that is behind.
    """
    keep = settings.PORTICO_REVISIONS_KEPT
    services.revision_publish(keep=keep, pending_only=True)
    # The heavy parts run in one process at a time (a reconcile outlasting the beat
    # interval must not start a second one), leaving the worker's other processes free
    # for the publishes that carry revocations.
    with services.heavy_work_slot("reconcile") as mine:
        if mine:
            if _full_compile_due() and services.revision_reconcile_compile(keep=keep):
                cache.set(_FULL_COMPILE_AT, time.time(), timeout=None)
            if services.revision_materialize_due():
                services.revision_materialize()
    delivery.deliver_latest()


def _full_compile_due() -> bool:
    last = cache.get(_FULL_COMPILE_AT)
    return last is None or time.time() - last >= settings.PORTICO_FULL_COMPILE_SECONDS


@shared_task(name="gatewaysync.usage_drain")
def usage_drain_task() -> int:
    """Move usage events from the Redis stream into usage records."""
    if not settings.REDIS_URL:
        return 0
    from gatewaysync import usage_stream

    return usage_stream.drain()
