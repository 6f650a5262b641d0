"""Draining usage batches from the Redis stream: idempotent, and nothing lost."""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest
import redis

from consumers.models import UsageRecord
from gatewaysync import usage_stream


def batch(*request_ids: str) -> bytes:
    return msgspec.json.encode(
        {
            "events": [
                {
                    "id": uuid.uuid4().hex,
                    "request_id": rid,
                    "ts": time.time(),
                    "status": 200,
                    "latency_ms": 3.0,
                    "prompt_tokens": 5,
                    "completion_tokens": 8,
                }
                for rid in request_ids
            ]
        }
    )


@pytest.fixture
def stream(settings, redis_url):
    settings.REDIS_URL = redis_url
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_batches_become_usage_records_and_are_acknowledged(db, stream):
    stream.xadd("portico:usage", {"batch": batch("a", "b")})
    stream.xadd("portico:usage", {"batch": batch("c")})
    assert usage_stream.drain() == 3
    assert set(UsageRecord.objects.values_list("request_id", flat=True)) == {"a", "b", "c"}
    pending = stream.xpending("portico:usage", "portico-ingest")
    assert pending["pending"] == 0
    assert usage_stream.drain() == 0


def test_the_same_batch_delivered_twice_is_counted_once(db, stream):
    payload = batch("once")
    stream.xadd("portico:usage", {"batch": payload})
    stream.xadd("portico:usage", {"batch": payload})
    assert usage_stream.drain() == 1
    assert UsageRecord.objects.filter(request_id="once").count() == 1


def test_malformed_entry_is_set_aside_without_blocking_the_rest(db, stream):
    stream.xadd("portico:usage", {"batch": b"{not json"})
    stream.xadd("portico:usage", {"batch": batch("after")})
    assert usage_stream.drain() == 1
    assert UsageRecord.objects.filter(request_id="after").exists()


def test_entries_a_dead_worker_left_pending_are_claimed_again(db, stream, monkeypatch):
    stream.xgroup_create("portico:usage", "portico-ingest", id="0", mkstream=True)
    stream.xadd("portico:usage", {"batch": batch("orphan")})
    # A worker read the entry and died before acknowledging it.
    stream.xreadgroup("portico-ingest", "dead-worker", {"portico:usage": ">"}, count=10)
    assert usage_stream.drain() == 0  # not idle long enough to be taken from its owner
    monkeypatch.setattr(usage_stream, "_CLAIM_IDLE_MS", 0)
    assert usage_stream.drain() == 1
    assert UsageRecord.objects.filter(request_id="orphan").exists()
    assert stream.xpending("portico:usage", "portico-ingest")["pending"] == 0
