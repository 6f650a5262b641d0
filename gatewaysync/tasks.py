"""Celery tasks: thin wrappers that call services and delivery."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from gatewaysync import delivery, selectors, services


def _deliver_latest(instance_pk: int | None = None) -> None:
    latest = selectors.revision_latest()
    if latest is None:
        return
    instances = selectors.instances_behind(latest.number)
    if instance_pk is not None:
        instances = instances.filter(pk=instance_pk)
    delivery.deliver_to_all(list(instances), latest)


@shared_task(name="gatewaysync.revision_publish")
def revision_publish_task() -> None:
    """Compile and store a revision if the state changed, then deliver it."""
    services.revision_publish(keep=settings.PORTICO_REVISIONS_KEPT)
    _deliver_latest()


@shared_task(name="gatewaysync.revision_deliver")
def revision_deliver_task(instance_pk: int) -> None:
    _deliver_latest(instance_pk)


@shared_task(name="gatewaysync.revision_reconcile")
def revision_reconcile_task() -> None:
    """Periodic safety net: publish if nothing was ever published, re-deliver to laggards."""
    if selectors.revision_latest_number() is None:
        services.revision_publish(keep=settings.PORTICO_REVISIONS_KEPT)
    _deliver_latest()


@shared_task(name="gatewaysync.usage_drain")
def usage_drain_task() -> int:
    """Move usage events from the Redis stream into usage records."""
    if not settings.REDIS_URL:
        return 0
    from gatewaysync import usage_stream

    return usage_stream.drain()
