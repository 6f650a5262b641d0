"""The usage spool: a batch is removed from disk only once delivered, and none is lost."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import msgspec

from gateway.schema import UsageBatch, UsageEvent
from gateway.usage import (
    BATCH_SIZE,
    DeliveryError,
    UsageReporter,
    append_line,
    claim_spool_file,
    release_spool_file,
)


def test_file_keeps_exactly_the_lines_not_yet_delivered(tmp_path: Path) -> None:
    path = tmp_path / "gw.jsonl"
    for n in range(3):
        append_line(path, b'{"line":%d}' % n)
    claim = claim_spool_file(path)
    assert claim is not None
    fd, lines = claim
    assert lines == [b'{"line":0}', b'{"line":1}', b'{"line":2}']
    release_spool_file(path, fd, lines[2:])  # the first two went out
    assert path.read_bytes() == b'{"line":2}\n'
    fd, lines = claim_spool_file(path) or (0, [])
    release_spool_file(path, fd, [])
    assert not path.exists()


def test_a_file_being_drained_is_skipped_by_other_drainers(tmp_path: Path) -> None:
    path = tmp_path / "gw.jsonl"
    append_line(path, b"{}")
    first = claim_spool_file(path)
    assert first is not None
    assert claim_spool_file(path) is None
    release_spool_file(path, first[0], first[1])
    assert claim_spool_file(tmp_path / "missing.jsonl") is None


def test_appender_blocked_by_a_drain_writes_to_the_new_file_not_the_removed_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.jsonl"
    append_line(path, b'{"old":1}')
    claim = claim_spool_file(path)
    assert claim is not None
    appender = threading.Thread(target=append_line, args=(path, b'{"new":1}'))
    appender.start()
    time.sleep(0.2)  # the appender now waits on the drainer's lock
    assert appender.is_alive()
    release_spool_file(path, claim[0], [])  # everything was delivered: the file goes
    appender.join(timeout=5)
    assert not appender.is_alive()
    assert path.read_bytes() == b'{"new":1}\n'


def test_unreadable_lines_are_set_aside_not_retried_forever(tmp_path: Path) -> None:
    path = tmp_path / "gw.jsonl"
    append_line(path, b'{"ok":1}')
    with path.open("ab") as handle:
        handle.write(b'{"cut short by a cra\n')
    claim = claim_spool_file(path)
    assert claim is not None
    assert claim[1] == [b'{"ok":1}']
    release_spool_file(path, claim[0], [])
    assert (tmp_path / "gw.corrupt").read_bytes() == b'{"cut short by a cra\n'


class FlakySink:
    """Stands in for the control plane: refuses batches until told otherwise."""

    name = "test sink"

    def __init__(self) -> None:
        self.up = False
        self.received: list[bytes] = []

    async def deliver(self, payload: bytes) -> None:
        if not self.up:
            raise DeliveryError("down")
        self.received.append(payload)


def test_reporter_spools_during_an_outage_and_delivers_everything_after(tmp_path: Path) -> None:
    sink = FlakySink()
    total = BATCH_SIZE * 2 + 7

    async def scenario() -> None:
        reporter = UsageReporter(
            sink=sink, state_dir=tmp_path, instance_id="gw-test", flush_seconds=60
        )
        for n in range(total):
            reporter.record(
                UsageEvent(id=f"event-{n:06d}", request_id="r", ts=0.0, status=200, latency_ms=1.0)
            )
        await reporter.flush()
        assert len((tmp_path / "spool" / "gw-test.jsonl").read_bytes().splitlines()) == 3
        sink.up = True
        reporter.record(
            UsageEvent(id="event-after", request_id="r", ts=0.0, status=200, latency_ms=1.0)
        )
        await reporter.flush()

    asyncio.run(scenario())
    delivered = [
        event.id
        for payload in sink.received
        for event in msgspec.json.decode(payload, type=UsageBatch).events
    ]
    assert sorted(delivered) == sorted([f"event-{n:06d}" for n in range(total)] + ["event-after"])
    assert not list((tmp_path / "spool").glob("*.jsonl"))
