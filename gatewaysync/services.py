"""Writes of the sync machinery: publishing revisions, tracking gateway instances."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import msgspec
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from gateway import schema
from gateway.revision import decode_revision, encode
from gatewaysync import compiler
from gatewaysync.models import GatewayInstance, Revision

logger = logging.getLogger(__name__)

# Any constant works: it only has to be the same in every control-plane process.
_PUBLISH_LOCK_ID = 0x706F7274


def gateway_changed() -> None:
    """Schedule a revision publish once the current transaction commits.

    Every service that changes what the gateway must know calls this. Publishing is
    idempotent: a compile that finds nothing new makes no revision, so calling it for
    a change the gateway does not care about costs one compile and nothing more.
    """
    from gatewaysync.tasks import revision_publish_task

    schedule = revision_publish_task.delay
    # Many writes in one transaction need one publish: the compile reads the whole
    # state anyway. (``run_on_commit`` holds ``(savepoint ids, callback, robust)``.)
    if any(entry[1] == schedule for entry in connection.run_on_commit):
        return
    transaction.on_commit(schedule)


def _lock_publishing() -> None:
    # SQLite serialises writers at BEGIN IMMEDIATE (settings), so only PostgreSQL
    # needs an explicit lock to keep two workers from numbering the same revision.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PUBLISH_LOCK_ID])


@transaction.atomic
def revision_publish(*, keep: int) -> Revision | None:
    """Compile the desired state; store it as a new revision if it changed.

    Returns the new revision, or ``None`` when the state equals the latest revision.
    When only credentials changed, the revision also carries a delta from its
    predecessor so gateways can apply it without a full reload.
    """
    _lock_publishing()
    latest = Revision.objects.order_by("-number").first()
    # A gateway may hold a number this database never issued (the database was
    # restored from a backup, or emptied): numbering continues above it, or that
    # gateway would refuse every later revision as stale.
    floor = GatewayInstance.objects.aggregate(top=Max("applied_revision"))["top"] or 0
    state = compiler.compile_state()
    if latest is not None and latest.content_hash == state.content_hash and latest.number >= floor:
        return None
    # An empty table starts at the current Unix time rather than 1: a database that was
    # emptied or replaced then cannot reissue a number a gateway already holds with other
    # content (the gateway would take the push as the revision it has and ignore it).
    number = max(latest.number + 1 if latest else int(time.time()), floor + 1)
    doc = state.to_revision(number)
    delta = None
    if latest is not None and latest.number == number - 1:
        previous = decode_revision(bytes(latest.document))
        if compiler.only_credentials_changed(previous, state):
            delta = encode(compiler.credential_delta(previous, state, number))
    revision = Revision.objects.create(
        number=number,
        content_hash=state.content_hash,
        document=encode(doc),
        delta=delta,
        credentials=len(state.credentials),
    )
    stale = Revision.objects.order_by("-number").values_list("number", flat=True)[keep:]
    Revision.objects.filter(number__in=list(stale)).delete()
    logger.info(
        "published revision %s (%s credentials, %s)",
        number,
        len(state.credentials),
        "delta" if delta else "full",
    )
    return revision


def instance_heartbeat(*, beat: schema.Heartbeat) -> GatewayInstance:
    """Record a gateway process's heartbeat (creating the instance on first sight)."""
    started = datetime.fromtimestamp(beat.started_at, tz=UTC) if beat.started_at else None
    instance, _ = GatewayInstance.objects.update_or_create(
        instance_id=beat.instance_id,
        defaults={
            "admin_url": beat.admin_url,
            "applied_revision": beat.applied_revision,
            "version": beat.version,
            "pid": beat.pid,
            "started_at": started,
            "last_seen_at": timezone.now(),
        },
    )
    return instance


def instance_record_delivery(
    *, instance: GatewayInstance, applied: int | None, error: str = ""
) -> None:
    """Note what a delivery attempt learned about an instance."""
    fields = ["last_delivery_error"]
    instance.last_delivery_error = error[:2000]
    if applied is not None:
        instance.applied_revision = applied
        fields.append("applied_revision")
    instance.save(update_fields=fields)


_batch_decoder = msgspec.json.Decoder(schema.UsageBatch)


def decode_usage_batch(raw: bytes) -> list[schema.UsageEvent]:
    """Decode a batch from a gateway; raises ``msgspec.ValidationError`` on bad input."""
    return _batch_decoder.decode(raw).events
