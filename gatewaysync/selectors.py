"""Reads of the sync machinery."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from gatewaysync.models import GatewayInstance, Revision


def revision_latest() -> Revision | None:
    return Revision.objects.order_by("-number").first()


def revision_latest_number() -> int | None:
    return Revision.objects.order_by("-number").values_list("number", flat=True).first()


def revisions_after(number: int) -> QuerySet[Revision]:
    return Revision.objects.filter(number__gt=number).order_by("number")


def instances_live() -> QuerySet[GatewayInstance]:
    """Instances that heartbeated within the configured time-to-live."""
    cutoff = timezone.now() - timedelta(seconds=settings.PORTICO_GATEWAY_INSTANCE_TTL)
    return GatewayInstance.objects.filter(last_seen_at__gte=cutoff)


def instances_behind(latest: int) -> QuerySet[GatewayInstance]:
    return instances_live().exclude(applied_revision=latest)
