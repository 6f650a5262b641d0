"""Writes of the sync machinery: publishing revisions, tracking gateway instances."""

from __future__ import annotations

import fcntl
import logging
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from consumers.models import Credential
from gateway import schema
from gateway.revision import RevisionError, decode_delta, decode_revision, encode
from gatewaysync import compiler, selectors
from gatewaysync.models import GatewayInstance, PendingChange, Revision

logger = logging.getLogger(__name__)

# Any constant works: it only has to be the same in every control-plane process.
_PUBLISH_LOCK_ID = 0x706F7274


def gateway_changed(*, credentials: Iterable[Credential] | None = None) -> None:
    """Record a change the gateways must learn and schedule a publish after commit.

    Every service that changes what the gateway must know calls this, inside its
    transaction. With ``credentials`` it says only those keys changed (created, revoked,
    expiry moved), and the publish sends just them as a delta built from their rows;
    without, anything may have changed and the publish compiles the whole state.
    The journal entry commits or rolls back with the change it describes.
    """
    from gatewaysync.tasks import revision_publish_task

    if credentials is None:
        PendingChange.objects.create()
    else:
        PendingChange.objects.bulk_create(
            [PendingChange(credential_id=c.pk, key_hash=c.key_hash) for c in credentials]
        )
    schedule = revision_publish_task.delay
    # Many writes in one transaction need one publish: it takes the whole journal.
    # (``run_on_commit`` holds ``(savepoint ids, callback, robust)``.)
    if any(entry[1] == schedule for entry in connection.run_on_commit):
        return
    transaction.on_commit(schedule)


def _lock_publishing() -> None:
    # SQLite serialises writers at BEGIN IMMEDIATE (settings), so only PostgreSQL
    # needs an explicit lock to keep two workers from numbering the same revision.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PUBLISH_LOCK_ID])


def _latest_head() -> Revision | None:
    """The latest revision without its (possibly ~100 MB) document."""
    return Revision.objects.defer("document").order_by("-number").first()


def _floor() -> int:
    # A gateway may hold a number this database never issued (the database was
    # restored from a backup, or emptied): numbering continues above it, or that
    # gateway would refuse every later revision as stale.
    return GatewayInstance.objects.aggregate(top=Max("applied_revision"))["top"] or 0


def revision_publish(
    *, keep: int, pending_only: bool = False, full: bool = False
) -> Revision | None:
    """Publish what changed as a new revision; ``None`` when nothing did.

    See :func:`_publish_locked`. A ``full`` publish compiles the state *before* taking
    the publish lock (a million keys take seconds to compile, and revocations must
    not queue behind that); the compile is used only if, once locked, nothing was
    published and nothing was journalled since it began — else it compiles again
    under the lock, as any full publish would.
    """
    revision, _ = _publish_locked(
        keep=keep, pending_only=pending_only, full=full, precompiled=_precompile() if full else None
    )
    return revision


def revision_reconcile_compile(*, keep: int) -> bool:
    """The periodic full compile, which never holds the publish lock while compiling.

    Compiles outside the lock; if anything was published or journalled meanwhile (the
    compile may have missed it), publishes the journal the usual way instead and
    returns ``False``: the caller retries the full compile on its next round. Returns
    ``True`` when the compiled state was checked against (and if need be, published
    over) the latest revision.
    """
    _, compiled = _publish_locked(
        keep=keep, pending_only=False, full=True, precompiled=_precompile(), defer=True
    )
    return compiled


def _precompile() -> tuple[int | None, compiler.CompiledState]:
    """The whole state, compiled without the publish lock, and the latest revision's
    number when the compile began (to tell whether anything was published meanwhile)."""
    return selectors.revision_latest_number(), compiler.compile_state()


@contextmanager
def heavy_work_slot(name: str) -> Iterator[bool]:
    """A non-blocking lock across every control-plane process: yields whether this one
    got it. Full compiles and document builds take it, so at most one runs at a time
    and the worker's other processes stay free to publish revocations."""
    if connection.vendor == "postgresql":
        key = zlib.crc32(name.encode())
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_PUBLISH_LOCK_ID, key])
            got = bool(cursor.fetchone()[0])
        try:
            yield got
        finally:
            if got:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_PUBLISH_LOCK_ID, key])
        return
    # The embedded SQLite lives on this machine: a file lock reaches all its processes.
    path = Path(settings.VAR_DIR) / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@transaction.atomic
def _publish_locked(
    *,
    keep: int,
    pending_only: bool,
    full: bool,
    precompiled: tuple[int | None, compiler.CompiledState] | None,
    defer: bool = False,
) -> tuple[Revision | None, bool]:
    """The publish itself, under the publish lock.

    The change journal decides how: only credential entries → an incremental revision
    (a delta built from just those rows on top of the latest revision); any other
    entry, ``full``, or an empty journal → compile the whole state and store it if its
    content hash differs. ``pending_only`` (the publish task) makes an empty journal
    mean "someone else already published it" and returns at once.

    Journal entries are read before anything else and deleted by id in the same
    transaction, under the publish lock: each is published exactly once, and an entry
    committed while this runs is left for the publish its own commit scheduled.
    """
    _lock_publishing()
    entries = list(
        PendingChange.objects.order_by("pk").values_list("pk", "credential_id", "key_hash")
    )
    stale = precompiled is not None and (
        bool(entries) or precompiled[0] != selectors.revision_latest_number()
    )
    if stale and defer:
        # The compile may have missed what landed meanwhile: publish the journal as a
        # publish task would, and leave the full compile for another round.
        full, precompiled = False, None
        if not entries:
            return None, False
    if not entries and pending_only and not full:
        return None, False
    outcome: Revision | None = None
    if (
        not full
        and entries
        and len(entries) <= _MAX_INCREMENTAL
        and all(credential_id is not None for _, credential_id, _ in entries)
    ):
        outcome = _publish_incremental(entries)
    compiled_fully = outcome is None
    if outcome is None:
        fresh = precompiled[1] if precompiled is not None and not stale else None
        outcome = _publish_full(fresh)
    _consume([pk for pk, _, _ in entries])
    if outcome is _UNCHANGED:
        return None, compiled_fully
    _prune(keep)
    return outcome, compiled_fully


# Past this many changed keys in one publish (a bulk import) a delta stops being small
# and a compile costs about as much: the full path handles it.
_MAX_INCREMENTAL = 5_000
# Below this many keys the full document of an incremental revision is produced at
# once (milliseconds); above, by ``revision_materialize`` off the revocation's path.
MATERIALIZE_INLINE_MAX = 20_000
# A sentinel: the state equals the latest revision's, so nothing is published.
_UNCHANGED = Revision(number=0)


def _consume(pks: list[int]) -> None:
    for start in range(0, len(pks), 500):
        PendingChange.objects.filter(pk__in=pks[start : start + 500]).delete()


def _prune(keep: int) -> None:
    # Deltas after the newest full document are how gateways reach the latest one
    # until it has its own document, so they are kept whatever ``keep`` says.
    newest_document = (
        Revision.objects.filter(document__isnull=False)
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
    )
    stale = Revision.objects.order_by("-number").values_list("number", flat=True)[keep:]
    doomed = [n for n in stale if newest_document is None or n < newest_document]
    Revision.objects.filter(number__in=doomed).delete()


def _publish_incremental(entries: list[tuple[int, int | None, str]]) -> Revision | None:
    """A delta from the latest revision carrying just the journalled keys.

    Returns ``None`` when the incremental path cannot be trusted here (no latest
    revision, no frame, a gateway ahead of it, a key whose consumer the latest
    revision does not know) so the caller compiles everything instead.
    """
    latest = Revision.objects.defer("document").order_by("-number").first()
    if latest is None or latest.frame is None or latest.number < _floor():
        return None
    try:
        frame = decode_revision(bytes(latest.frame))
    except RevisionError:
        return None  # written by another schema version: compile afresh
    if frame.schema != schema.SCHEMA_VERSION:
        return None
    ids = {credential_id for _, credential_id, _ in entries if credential_id is not None}
    hashes = {key_hash for _, _, key_hash in entries if key_hash}
    # The journal names every changed key's hash (it never changes), so a key that is
    # gone or no longer usable is removed, and the usable ones are upserted by the
    # same rule a full compile applies.
    now = timezone.now()
    upsert: dict[str, schema.Credential] = {}
    usable = compiler.usable_credential_rows(now).filter(pk__in=ids)
    for key_hash, entry in compiler.credential_entries(usable):
        if str(entry.consumer) not in frame.consumers:
            return None  # the consumer changed without a journal entry: compile
        upsert[key_hash] = entry
    remove = hashes - upsert.keys()
    if latest.credentials <= MATERIALIZE_INLINE_MAX:
        # Small enough to read the latest document: send only real differences, and
        # publish nothing when there are none (a key made for a suspended app).
        previous = _materialize(latest)
        if previous is None:
            return None
        upsert = {h: c for h, c in upsert.items() if previous.credentials.get(h) != c}
        remove = {h for h in remove if h in previous.credentials}
        if not upsert and not remove:
            return _UNCHANGED
    number = latest.number + 1
    delta = schema.Delta(
        schema=schema.SCHEMA_VERSION,
        base=latest.number,
        revision=number,
        created_at=timezone.now().isoformat(),
        credentials_upsert=dict(sorted(upsert.items(), key=lambda item: item[1].id)),
        credentials_remove=sorted(remove),
    )
    revision = Revision.objects.create(
        number=number,
        delta=encode(delta),
        frame=bytes(latest.frame),
        credentials=latest.credentials,
    )
    logger.info(
        "published revision %s (delta: %s upserted, %s removed)",
        number,
        len(delta.credentials_upsert),
        len(delta.credentials_remove),
    )
    if latest.credentials <= MATERIALIZE_INLINE_MAX:
        _materialize(revision)
    return revision


def _publish_full(state: compiler.CompiledState | None = None) -> Revision | None:
    latest = _latest_head()
    floor = _floor()
    if state is None:
        state = compiler.compile_state()
    if latest is not None and not latest.content_hash:
        _materialize(latest)  # its content hash is what this compile is compared with
    if latest is not None and latest.content_hash == state.content_hash and latest.number >= floor:
        return _UNCHANGED
    # An empty table starts at the current Unix time rather than 1: a database that was
    # emptied or replaced then cannot reissue a number a gateway already holds with other
    # content (the gateway would take the push as the revision it has and ignore it).
    number = max(latest.number + 1 if latest else int(time.time()), floor + 1)
    doc = state.to_revision(number)
    delta = None
    if latest is not None and latest.content_hash and latest.number == number - 1:
        previous = _materialize(latest)
        if previous is not None and compiler.only_credentials_changed(previous, state):
            delta = encode(compiler.credential_delta(previous, state, number))
    revision = Revision.objects.create(
        number=number,
        content_hash=state.content_hash,
        document=encode(doc),
        delta=delta,
        frame=encode(msgspec.structs.replace(doc, credentials={})),
        credentials=len(state.credentials),
    )
    logger.info(
        "published revision %s (%s credentials, %s)",
        number,
        len(state.credentials),
        "delta" if delta else "full",
    )
    return revision


def revision_document(revision: Revision) -> schema.Revision | None:
    """The full document of ``revision``, materializing it first if it has none yet."""
    return _materialize(revision)


# Materializing a million-key document costs seconds of CPU and a ~100 MB write, so the
# reconcile does it only once the deltas since the newest document pile up or age.
MATERIALIZE_AFTER_DELTAS = 100
MATERIALIZE_AFTER_SECONDS = 60


def revision_materialize_due() -> bool:
    """Whether the latest revision should get its full document now (see above)."""
    latest = _latest_head()
    if latest is None or latest.content_hash:
        return False
    if latest.credentials <= MATERIALIZE_INLINE_MAX:
        return True
    newest = (
        Revision.objects.filter(document__isnull=False)
        .exclude(content_hash="")
        .order_by("-number")
        .values_list("number", flat=True)
        .first()
    )
    oldest_pending = (
        Revision.objects.filter(content_hash="")
        .order_by("number")
        .values_list("created_at", flat=True)
        .first()
    )
    return (
        newest is None
        or latest.number - newest >= MATERIALIZE_AFTER_DELTAS
        or oldest_pending is None
        or (timezone.now() - oldest_pending).total_seconds() >= MATERIALIZE_AFTER_SECONDS
    )


def revision_materialize() -> Revision | None:
    """Give the latest revision its full document and content hash, if it lacks them.

    The newest full document plus the deltas after it make the latest document: the
    same content a compile would give (the periodic full compile checks exactly that
    through the content hash). Reads only immutable rows, so it needs no publish lock
    and runs beside publishes; returns the revision it completed, or ``None``.
    """
    latest = _latest_head()
    if latest is None or latest.content_hash:
        return None
    return latest if _materialize(latest) is not None else None


def _materialize(revision: Revision) -> schema.Revision | None:
    """Decode ``revision``'s document, building and storing it first when missing.

    Returns ``None`` when it cannot be built (its base or a delta was pruned or is
    missing): only a full compile can then say what the document is.
    """
    if revision.content_hash:
        raw = revision.document  # loads it if the query deferred it
        return decode_revision(bytes(raw)) if raw is not None else None
    base = selectors.revision_newest_document(up_to=revision.number - 1)
    if base is None:
        return None
    base_number, base_document = base
    deltas = selectors.revision_delta_chain(after=base_number, up_to=revision.number)
    if deltas is None:
        return None
    doc = decode_revision(base_document)
    credentials = dict(doc.credentials)
    created_at = doc.created_at
    for _, raw_delta in deltas:
        delta = decode_delta(raw_delta)
        for key_hash in delta.credentials_remove:
            credentials.pop(key_hash, None)
        credentials.update(delta.credentials_upsert)
        created_at = delta.created_at
    # In compile order (by key id), so the document reads as a compiled one would.
    doc = msgspec.structs.replace(
        doc,
        revision=revision.number,
        created_at=created_at,
        credentials=dict(sorted(credentials.items(), key=lambda item: item[1].id)),
    )
    content_hash = compiler.document_content_hash(doc)
    document = encode(doc)
    Revision.objects.filter(pk=revision.pk, content_hash="").update(
        document=document, content_hash=content_hash, credentials=len(credentials)
    )
    revision.document = document
    revision.content_hash = content_hash
    revision.credentials = len(credentials)
    logger.info("materialized revision %s from %s", revision.number, base_number)
    return doc


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
