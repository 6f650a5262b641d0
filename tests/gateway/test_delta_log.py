"""The last-known-good state as a snapshot plus an append-only delta log.

What must hold: a delta is appended, never a rewrite of the snapshot; a restart serves
the snapshot with every complete logged delta; a torn or corrupt last line is dropped
(and cut, so later appends are read back); a log left over from another snapshot is
ignored; the log is compacted into a fresh snapshot once it grows; processes sharing
the directory never put an older state on disk over a newer one.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest

from devstack.procs import Stack, wait_until
from gateway.revision import build, encode
from gateway.schema import Credential, Delta
from gateway.store import LOG_FILE, REVISION_FILE, Appended, RevisionStore
from tests.gateway.conftest import ALICE, World, sha256, start_gateway


def _stop(gateway_service) -> None:
    # Uvicorn re-raises SIGTERM after its graceful shutdown, hence -15 rather than 0.
    assert gateway_service.stop() in (0, -signal.SIGTERM)


def _load(state_dir: Path, world: World) -> RevisionStore:
    store = RevisionStore(state_dir)
    asyncio.run(store.load(world.keys))
    return store


@pytest.mark.e2e
def test_delta_is_appended_to_the_log_and_survives_a_restart(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    gateway = start_gateway(stack, http, "gateway-log-append", tmp_path, world)
    try:
        assert gateway.push(world.revision(number=30)).status_code == 200
        snapshot = (tmp_path / REVISION_FILE).read_bytes()
        assert gateway.push_delta(world.delta(30, remove=(world.alice_key,))).status_code == 200
        added = "portico_added_by_delta_" + "q" * 24
        upsert = {sha256(added): Credential(id=98, consumer=ALICE)}
        assert gateway.push_delta(world.delta(31, upsert=upsert)).status_code == 200
        # The snapshot is untouched; the log holds a header and one line per delta.
        assert (tmp_path / REVISION_FILE).read_bytes() == snapshot
        assert len((tmp_path / LOG_FILE).read_bytes().splitlines()) == 3
    finally:
        _stop(gateway.service)

    again = start_gateway(stack, http, "gateway-log-restarted", tmp_path, world)
    try:
        assert http.get(again.url + "/readyz").json()["revision"] == 32
        assert again.chat(world.alice_key).status_code == 401
        assert again.chat(added).status_code == 200
        assert again.chat(world.alice_second_key).status_code == 200
        assert "2 deltas replayed" in again.output()
    finally:
        _stop(again.service)


@pytest.mark.e2e
def test_torn_last_line_is_ignored_and_later_deltas_still_survive_a_restart(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    gateway = start_gateway(stack, http, "gateway-log-torn", tmp_path, world)
    try:
        assert gateway.push(world.revision(number=40)).status_code == 200
        assert gateway.push_delta(world.delta(40, remove=(world.alice_key,))).status_code == 200
        assert gateway.push_delta(world.delta(41, remove=(world.bob_key,))).status_code == 200
    finally:
        _stop(gateway.service)
    # A crash in the middle of writing the last line.
    log = tmp_path / LOG_FILE
    data = log.read_bytes()
    last_line = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    torn = data[: len(data) - len(last_line) // 2]
    log.write_bytes(torn)

    again = start_gateway(stack, http, "gateway-log-torn-restarted", tmp_path, world)
    try:
        assert http.get(again.url + "/readyz").json()["revision"] == 41
        assert again.chat(world.alice_key).status_code == 401
        # The torn revocation of Bob's key is not applied: it never fully reached disk.
        assert (
            again.chat(world.bob_key, {"model": "other-model", "messages": []}).status_code == 200
        )
        assert "torn or corrupt tail" in again.output()
        # The torn bytes were cut, so a delta appended now is read back after a restart.
        assert again.push_delta(world.delta(41, remove=(world.bob_key,))).status_code == 200
    finally:
        _stop(again.service)
    store = _load(tmp_path, world)
    assert store.number == 42
    assert store.current is not None
    assert sha256(world.bob_key) not in store.current.credentials


def test_line_with_a_bad_checksum_ends_the_log(tmp_path: Path, world: World) -> None:
    asyncio.run(_save(tmp_path, world, 50))
    store = RevisionStore(tmp_path)
    store.current = build(world.revision(number=50), world.keys)
    assert asyncio.run(store.append_delta(world.delta(50, remove=(world.alice_key,)))) is (
        Appended.APPENDED
    )
    assert asyncio.run(store.append_delta(world.delta(51, remove=(world.bob_key,)))) is (
        Appended.APPENDED
    )
    log = tmp_path / LOG_FILE
    lines = log.read_bytes().splitlines(keepends=True)
    # Flip a byte inside the payload of the middle line: its checksum no longer matches.
    damaged = bytearray(lines[1])
    damaged[-5] ^= 0x01
    log.write_bytes(lines[0] + bytes(damaged) + lines[2])

    reloaded = _load(tmp_path, world)
    assert reloaded.number == 50
    assert reloaded.current is not None
    assert sha256(world.alice_key) in reloaded.current.credentials
    assert log.read_bytes() == lines[0]


def test_log_left_from_another_snapshot_is_ignored(tmp_path: Path, world: World) -> None:
    asyncio.run(_save(tmp_path, world, 60))
    store = RevisionStore(tmp_path)
    store.current = build(world.revision(number=60), world.keys)
    asyncio.run(store.append_delta(world.delta(60, remove=(world.alice_key,))))
    log_bytes = (tmp_path / LOG_FILE).read_bytes()
    # A crash after a newer snapshot was renamed into place, before its log was reset.
    asyncio.run(_save(tmp_path, world, 70))
    (tmp_path / LOG_FILE).write_bytes(log_bytes)

    reloaded = _load(tmp_path, world)
    assert reloaded.number == 70
    assert reloaded.current is not None
    assert sha256(world.alice_key) in reloaded.current.credentials


def test_processes_sharing_the_directory_never_write_an_older_state(
    tmp_path: Path, world: World
) -> None:
    first, second = RevisionStore(tmp_path), RevisionStore(tmp_path)
    asyncio.run(_save(tmp_path, world, 80, store=first))
    revocation = world.delta(80, remove=(world.alice_key,))
    assert asyncio.run(first.append_delta(revocation)) is Appended.APPENDED
    # The other process applies the same delta: it is on disk already.
    assert asyncio.run(second.append_delta(revocation)) is Appended.ALREADY_ON_DISK
    # A slow process persisting the older full revision does not replace the newer state.
    older = encode(world.revision(number=80))
    assert asyncio.run(second.save_snapshot(older, 80)) is False
    # A delta whose base is not what the disk holds asks for a full snapshot.
    gap = world.delta(85, remove=(world.bob_key,))
    assert asyncio.run(second.append_delta(gap)) is Appended.NEEDS_SNAPSHOT
    reloaded = _load(tmp_path, world)
    assert reloaded.number == 81
    assert reloaded.current is not None
    assert sha256(world.alice_key) not in reloaded.current.credentials


@pytest.mark.e2e
def test_growing_log_is_compacted_into_a_fresh_snapshot(
    stack: Stack, http: httpx.Client, world: World, tmp_path: Path
) -> None:
    gateway = start_gateway(stack, http, "gateway-log-compaction", tmp_path, world)
    number = 100
    try:
        assert gateway.push(world.revision(number=number)).status_code == 200
        # Enough one-key deltas (each a few hundred bytes) to pass the 64 KiB floor.
        for i in range(300):
            key_hash = sha256(f"portico_compaction_{i:04d}_" + "z" * 20)
            delta = Delta(
                schema=1,
                base=number,
                revision=number + 1,
                created_at="2026-11-24T12:00:02Z",
                credentials_upsert={key_hash: Credential(id=1000 + i, consumer=ALICE)},
            )
            assert gateway.push_delta(delta).status_code == 200
            number += 1
        revoke = gateway.push_delta(world.delta(number, remove=(world.alice_key,)))
        assert revoke.status_code == 200
        number += 1
        wait_until(
            lambda: "delta log compacted" in gateway.output(),
            timeout=20,
            what="the delta log to be compacted",
        )
    finally:
        _stop(gateway.service)
    assert len((tmp_path / LOG_FILE).read_bytes()) < 64 * 1024
    again = start_gateway(stack, http, "gateway-log-compacted", tmp_path, world)
    try:
        assert http.get(again.url + "/readyz").json()["revision"] == number
        assert again.chat(world.alice_key).status_code == 401
        assert again.chat("portico_compaction_0299_" + "z" * 20).status_code == 200
    finally:
        _stop(again.service)


async def _save(state_dir: Path, world: World, number: int, store: RevisionStore | None = None):
    store = store or RevisionStore(state_dir)
    assert await store.save_snapshot(encode(world.revision(number=number)), number)
