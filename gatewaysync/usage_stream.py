"""Draining usage batches from the Redis stream the gateways write to.

Entries are read through a consumer group and acknowledged only after their events
are stored, so a worker that dies mid-batch leaves them pending; the next drain claims
entries idle for longer than ``_CLAIM_IDLE_MS`` and ingests them again, which the
idempotent ingest turns into no double counting.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import cast

import msgspec
import redis
from django.conf import settings

from consumers.services import usage_records_ingest
from gatewaysync.services import decode_usage_batch

logger = logging.getLogger(__name__)

_CLAIM_IDLE_MS = 60_000
_READ_COUNT = 200


def _client() -> redis.Redis:
    assert settings.REDIS_URL, "the usage stream needs REDIS_URL"
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)


def _ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(
            settings.PORTICO_USAGE_STREAM, settings.PORTICO_USAGE_GROUP, id="0", mkstream=True
        )
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _ingest(client: redis.Redis, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
    stored = 0
    ids = []
    for entry_id, fields in entries:
        ids.append(entry_id)
        raw = fields.get(b"batch")
        if raw is None:
            continue
        try:
            events = decode_usage_batch(raw)
        except msgspec.DecodeError:
            # A malformed entry can never succeed; acknowledging it keeps the stream
            # moving, and the log keeps the id for whoever investigates.
            logger.error("dropping malformed usage stream entry %s", entry_id.decode())
            continue
        stored += usage_records_ingest(events=events)
    if ids:
        client.xack(settings.PORTICO_USAGE_STREAM, settings.PORTICO_USAGE_GROUP, *ids)
    return stored


def drain(*, budget_seconds: float = 5.0) -> int:
    """Ingest what is waiting in the stream (for at most ``budget_seconds``)."""
    client = _client()
    _ensure_group(client)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    stream, group = settings.PORTICO_USAGE_STREAM, settings.PORTICO_USAGE_GROUP
    stored = 0
    claimed = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]",
        client.xautoclaim(stream, group, consumer, min_idle_time=_CLAIM_IDLE_MS, count=_READ_COUNT)[
            1
        ],
    )
    if claimed:
        stored += _ingest(client, claimed)
    deadline = time.monotonic() + budget_seconds
    while time.monotonic() < deadline:
        response = cast(
            "list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]",
            client.xreadgroup(group, consumer, {stream: ">"}, count=_READ_COUNT),
        )
        if not response:
            break
        for _, entries in response:
            stored += _ingest(client, entries)
    return stored
