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


def revision_newest_document(*, up_to: int) -> tuple[int, bytes] | None:
    """(number, document) of the newest revision numbered ``up_to`` or lower that has
    its full document and content hash: the base that later deltas apply to."""
    base = (
        Revision.objects.filter(number__lte=up_to, document__isnull=False)
        .exclude(content_hash="")
        .order_by("-number")
        .values_list("number", "document")
        .first()
    )
    return (base[0], bytes(base[1])) if base is not None and base[1] is not None else None


def revision_delta_chain(*, after: int, up_to: int) -> list[tuple[int, bytes]] | None:
    """(number, delta) of every revision after ``after`` up to ``up_to``, in order, or
    ``None`` if one is missing or has no delta (the chain cannot be replayed)."""
    rows = list(
        Revision.objects.filter(number__gt=after, number__lte=up_to)
        .order_by("number")
        .values_list("number", "delta")
    )
    if [n for n, _ in rows] != list(range(after + 1, up_to + 1)):
        return None
    chain = [(n, bytes(delta)) for n, delta in rows if delta is not None]
    return chain if len(chain) == len(rows) else None


def revisions_after(number: int) -> QuerySet[Revision]:
    return Revision.objects.filter(number__gt=number).order_by("number")


def instances_live() -> QuerySet[GatewayInstance]:
    """Instances that heartbeated within the configured time-to-live."""
    cutoff = timezone.now() - timedelta(seconds=settings.PORTICO_GATEWAY_INSTANCE_TTL)
    return GatewayInstance.objects.filter(last_seen_at__gte=cutoff)


def instances_behind(latest: int) -> QuerySet[GatewayInstance]:
    return instances_live().exclude(applied_revision=latest)
