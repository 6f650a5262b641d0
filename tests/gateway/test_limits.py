"""Rate limits and quotas (``gateway.limits``), in one process and shared through Redis.

Every behaviour is checked against both limiters: :class:`LocalLimiter` and
:class:`RedisLimiter` on a private redis-server. Windows move only when a test moves
its clock; Redis tests also check that nothing fell back to per-process counting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from devstack.procs import free_port
from gateway.limits import (
    Decision,
    Limiter,
    Limits,
    LocalLimiter,
    RedisLimiter,
    create_limiter,
    format_duration,
)

ROOT = Path(__file__).resolve().parents[2]
DAY_START = 1_799_971_200.0  # 00:00:00 UTC, so also the start of a minute
KEY = "42"  # a subscription id, as the gateway passes it
T = TypeVar("T")


class Clock:
    """A wall clock that moves only when a test moves it."""

    def __init__(self, now: float = DAY_START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeLimiter = Callable[[Clock], Limiter]


@pytest.fixture(params=["local", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Iterator[MakeLimiter]:
    if request.param == "local":
        yield LocalLimiter
        return
    url = request.getfixturevalue("redis_url")
    caplog: pytest.LogCaptureFixture = request.getfixturevalue("caplog")
    # A loaded test machine can take longer than production's timeout to open 150
    # connections at once; a timeout here would fall back and fail the test.
    yield lambda clock: RedisLimiter(url, clock=clock, timeout=5.0)
    # A Redis test that passed on the per-process fallback would prove nothing.
    fallbacks = [r for r in caplog.get_records("call") if r.name == "gateway.limits"]
    assert not fallbacks, caplog.text


def drive(limiter: Limiter, scenario: Callable[[Limiter], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await scenario(limiter)
        finally:
            await limiter.close()

    return asyncio.run(main())


async def acquire_many(limiter: Limiter, limits: Limits, calls: int, tokens: int = 1) -> int:
    """How many of ``calls`` concurrent acquires were allowed."""
    decisions = await asyncio.gather(*(limiter.acquire(KEY, limits, tokens) for _ in range(calls)))
    return sum(decision.allowed for decision in decisions)


def assert_refused(decision: Decision, limit_name: str, retry_after: float | None) -> None:
    assert not decision.allowed
    assert decision.ticket is None
    assert decision.limit_name == limit_name
    if retry_after is None:
        assert decision.retry_after is None
    else:
        assert decision.retry_after == pytest.approx(retry_after, abs=1e-6)


def headers(decision: Decision) -> dict[bytes, bytes]:
    names = [name for name, _ in decision.headers]
    assert len(names) == len(set(names)), names
    return dict(decision.headers)


def test_50_concurrent_callers_get_exactly_the_requests_per_minute(
    make_limiter: MakeLimiter,
) -> None:
    async def scenario(limiter: Limiter) -> list[int]:
        limits = Limits(requests_per_minute=20)
        return [await acquire_many(limiter, limits, 50), await acquire_many(limiter, limits, 5)]

    assert drive(make_limiter(Clock(DAY_START + 30)), scenario) == [20, 0]


def test_two_processes_sharing_redis_admit_exactly_the_limit_of_50_concurrent_callers(
    redis_url: str,
) -> None:
    key, now = "two-processes", DAY_START + 30
    control = redis.Redis.from_url(redis_url, socket_timeout=40)
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.gateway.limits_worker",
                redis_url,
                key,
                "20",
                "25",
                str(now),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        # Both are connected and waiting before either starts: their acquires overlap.
        for _ in workers:
            assert control.blpop([f"{key}:ready"], 30), "a worker never became ready"
        control.rpush(f"{key}:go", 1, 1)
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=30)
            assert worker.returncode == 0, err.decode()
            assert not err, err.decode()  # nor a warning that Redis failed
            results.append(json.loads(out))
        counted = control.hget(f"portico:rl:{{{key}}}:m:{int(DAY_START)}", "r")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        control.close()
    assert counted == b"20"
    assert sum(r["allowed"] for r in results) == 20, results
    assert sum(r["refused"] for r in results) == 30, results
    assert all(r["allowed"] + r["refused"] == 25 for r in results), results


@pytest.mark.parametrize(
    ("limit", "wait"),
    [("tokens_per_minute", 55), ("tokens_per_day", 86_395), ("token_quota", None)],
)
def test_settling_replaces_the_reservation_by_the_tokens_used(
    make_limiter: MakeLimiter, limit: str, wait: float | None
) -> None:
    limits = Limits(**{limit: 1000})

    async def scenario(limiter: Limiter) -> None:
        first = await limiter.acquire(KEY, limits, 600)
        assert first.allowed
        assert first.ticket is not None
        assert not (await limiter.acquire(KEY, limits, 600)).allowed  # 1200 reserved
        await limiter.settle(first.ticket, 100)  # it used less than estimated
        second = await limiter.acquire(KEY, limits, 600)  # 100 + 600
        assert second.allowed
        assert second.ticket is not None
        assert not (await limiter.acquire(KEY, limits, 301)).allowed
        await limiter.settle(second.ticket, 900)  # and this one more: 100 + 900
        assert_refused(await limiter.acquire(KEY, limits, 1), limit, wait)

    drive(make_limiter(Clock(DAY_START + 5)), scenario)


def test_a_failed_call_gives_back_its_tokens_but_not_its_request(
    make_limiter: MakeLimiter,
) -> None:
    limits = Limits(requests_per_minute=2, tokens_per_minute=1000)

    async def scenario(limiter: Limiter) -> None:
        failed = await limiter.acquire(KEY, limits, 900)
        assert failed.ticket is not None
        assert not (await limiter.acquire(KEY, limits, 200)).allowed
        await limiter.settle(failed.ticket, 0)
        again = await limiter.acquire(KEY, limits, 1000)
        assert again.allowed
        assert headers(again)[b"x-ratelimit-remaining-tokens"] == b"0"
        assert headers(again)[b"x-ratelimit-remaining-requests"] == b"0"
        last = await limiter.acquire(KEY, limits, 1)
        assert last.limit_name in {"requests_per_minute", "tokens_per_minute"}

    drive(make_limiter(Clock()), scenario)


def test_settling_a_ticket_twice_changes_nothing_the_second_time(
    make_limiter: MakeLimiter,
) -> None:
    limits = Limits(tokens_per_minute=1000)

    async def scenario(limiter: Limiter) -> None:
        decision = await limiter.acquire(KEY, limits, 600)
        assert decision.ticket is not None
        await limiter.settle(decision.ticket, 100)
        await limiter.settle(decision.ticket, 100)  # would take the count to 0 (empty)
        assert not (await limiter.acquire(KEY, limits, 901)).allowed

    drive(make_limiter(Clock()), scenario)


def test_requests_per_minute_start_afresh_when_the_minute_turns(
    make_limiter: MakeLimiter,
) -> None:
    clock = Clock(DAY_START + 58.5)
    limits = Limits(requests_per_minute=2)

    async def scenario(limiter: Limiter) -> None:
        assert await acquire_many(limiter, limits, 3) == 2
        assert_refused(await limiter.acquire(KEY, limits, 1), "requests_per_minute", 1.5)
        clock.now = DAY_START + 60
        assert await acquire_many(limiter, limits, 3) == 2

    drive(make_limiter(clock), scenario)


def test_tokens_per_day_start_afresh_at_midnight_utc(make_limiter: MakeLimiter) -> None:
    clock = Clock(DAY_START + 10)
    limits = Limits(tokens_per_minute=1000, tokens_per_day=1500)

    async def scenario(limiter: Limiter) -> None:
        assert (await limiter.acquire(KEY, limits, 1000)).allowed
        clock.now += 60  # a new minute, the same day
        assert_refused(await limiter.acquire(KEY, limits, 600), "tokens_per_day", 86_400 - 70)
        assert (await limiter.acquire(KEY, limits, 500)).allowed
        clock.now = DAY_START + 86_400
        assert (await limiter.acquire(KEY, limits, 1000)).allowed

    drive(make_limiter(clock), scenario)


def test_the_token_quota_never_resets(make_limiter: MakeLimiter) -> None:
    clock = Clock()
    limits = Limits(tokens_per_minute=500, token_quota=1000)

    async def scenario(limiter: Limiter) -> None:
        for _ in range(2):
            decision = await limiter.acquire(KEY, limits, 500)
            assert decision.ticket is not None
            await limiter.settle(decision.ticket, 500)
            clock.now += 60
        clock.now += 400 * 86_400
        refused = await limiter.acquire(KEY, limits, 1)
        assert_refused(refused, "token_quota", None)  # waiting does not help
        assert b"retry-after" not in headers(refused)
        assert b"retry-after-ms" not in headers(refused)

    drive(make_limiter(clock), scenario)


def test_a_request_larger_than_the_limit_passes_only_in_an_empty_window(
    make_limiter: MakeLimiter,
) -> None:
    clock = Clock(DAY_START + 15)
    limits = Limits(tokens_per_minute=100)

    async def scenario(limiter: Limiter) -> None:
        # Of 50 concurrent oversized calls one passes: the overshoot is one call's worth.
        assert await acquire_many(limiter, limits, 50, tokens=500) == 1
        assert_refused(await limiter.acquire(KEY, limits, 1), "tokens_per_minute", 45)
        clock.now += 60
        assert (await limiter.acquire(KEY, limits, 10)).allowed
        assert not (await limiter.acquire(KEY, limits, 500)).allowed  # no longer empty

    drive(make_limiter(clock), scenario)


def test_an_estimate_of_zero_tokens_still_reserves_one(make_limiter: MakeLimiter) -> None:
    # Otherwise any number of zero estimates would pass the empty-window rule together.
    limits = Limits(tokens_per_minute=100)

    async def scenario(limiter: Limiter) -> None:
        assert await acquire_many(limiter, limits, 150, tokens=0) == 100

    drive(make_limiter(Clock()), scenario)


def test_headers_have_openai_names_and_formats(make_limiter: MakeLimiter) -> None:
    clock = Clock(DAY_START + 20.5)
    every = Limits(
        requests_per_minute=20, tokens_per_minute=1000, tokens_per_day=5000, token_quota=10**6
    )

    async def scenario(limiter: Limiter) -> None:
        decision = await limiter.acquire(KEY, every, 300)
        assert decision.headers == [
            (b"x-ratelimit-limit-requests", b"20"),
            (b"x-ratelimit-remaining-requests", b"19"),
            (b"x-ratelimit-reset-requests", b"39.5s"),
            (b"x-ratelimit-limit-tokens", b"1000"),
            (b"x-ratelimit-remaining-tokens", b"700"),
            (b"x-ratelimit-reset-tokens", b"39.5s"),
        ]
        # Only a daily token limit: the token headers describe the day.
        daily = await limiter.acquire("daily", Limits(tokens_per_day=5000), 300)
        assert daily.headers == [
            (b"x-ratelimit-limit-tokens", b"5000"),
            (b"x-ratelimit-remaining-tokens", b"4700"),
            (b"x-ratelimit-reset-tokens", b"23h59m39.5s"),
        ]
        requests_only = await limiter.acquire("requests", Limits(requests_per_minute=5), 300)
        assert [name for name, _ in requests_only.headers] == [
            b"x-ratelimit-limit-requests",
            b"x-ratelimit-remaining-requests",
            b"x-ratelimit-reset-requests",
        ]
        unlimited = await limiter.acquire("free", Limits(), 300)
        assert unlimited.allowed
        assert unlimited.headers == []

    drive(make_limiter(clock), scenario)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, b"0s"),
        (0.0004, b"1ms"),
        (0.02, b"20ms"),
        (0.999, b"999ms"),
        (1, b"1s"),
        (8.64, b"8.64s"),
        (59.2, b"59.2s"),
        (60, b"1m0s"),
        (61.25, b"1m1.25s"),
        (360, b"6m0s"),
        (3600, b"1h0m0s"),
        (86_399.5, b"23h59m59.5s"),
    ],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: bytes) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("offset", "retry_after", "retry_after_ms"),
    [(40.3, b"20", b"19700"), (59.9996, b"1", b"1"), (0, b"60", b"60000")],
)
def test_a_refusal_says_when_to_retry_in_whole_seconds_and_milliseconds(
    make_limiter: MakeLimiter, offset: float, retry_after: bytes, retry_after_ms: bytes
) -> None:
    limits = Limits(requests_per_minute=1)

    async def scenario(limiter: Limiter) -> None:
        assert (await limiter.acquire(KEY, limits, 1)).allowed
        refused = await limiter.acquire(KEY, limits, 1)
        assert_refused(refused, "requests_per_minute", 60 - offset)
        sent = headers(refused)
        assert sent[b"retry-after"] == retry_after
        assert sent[b"retry-after-ms"] == retry_after_ms
        assert sent[b"x-ratelimit-remaining-requests"] == b"0"

    drive(make_limiter(Clock(DAY_START + offset)), scenario)


def test_when_several_limits_refuse_the_longest_wait_is_given(
    make_limiter: MakeLimiter,
) -> None:
    limits = Limits(requests_per_minute=1, tokens_per_day=10)

    async def scenario(limiter: Limiter) -> None:
        assert (await limiter.acquire(KEY, limits, 10)).allowed
        refused = await limiter.acquire(KEY, limits, 10)
        assert_refused(refused, "tokens_per_day", 86_400 - 30)
        assert headers(refused)[b"retry-after"] == b"86370"

    drive(make_limiter(Clock(DAY_START + 30)), scenario)


def test_keys_are_limited_separately(make_limiter: MakeLimiter) -> None:
    limits = Limits(requests_per_minute=1)

    async def scenario(limiter: Limiter) -> list[bool]:
        return [(await limiter.acquire(key, limits, 1)).allowed for key in ("1", "2", "1")]

    assert drive(make_limiter(Clock()), scenario) == [True, True, False]


def test_settling_after_the_window_ended_leaves_the_new_window_alone(
    make_limiter: MakeLimiter,
) -> None:
    clock = Clock(DAY_START + 50)
    limits = Limits(tokens_per_minute=100)

    async def scenario(limiter: Limiter) -> None:
        old = await limiter.acquire(KEY, limits, 80)
        assert old.ticket is not None
        clock.now += 60
        assert (await limiter.acquire(KEY, limits, 50)).allowed
        await limiter.settle(old.ticket, 0)  # must not give 80 back to the new window
        assert not (await limiter.acquire(KEY, limits, 51)).allowed

    drive(make_limiter(clock), scenario)


def test_window_keys_expire_after_their_window_and_the_quota_key_never(redis_url: str) -> None:
    clock = Clock(DAY_START + 45)
    every = Limits(
        requests_per_minute=20, tokens_per_minute=1000, tokens_per_day=5000, token_quota=10**6
    )
    control = redis.Redis.from_url(redis_url)

    async def scenario(limiter: Limiter) -> None:
        decision = await limiter.acquire(KEY, every, 300)
        assert decision.ticket is not None
        minute_key = f"portico:rl:{{{KEY}}}:m:{int(DAY_START)}"
        day_key = f"portico:rl:{{{KEY}}}:d:{int(DAY_START)}"
        quota_key = f"portico:rl:{{{KEY}}}:q"
        assert control.hgetall(minute_key) == {b"r": b"1", b"t": b"300"}
        assert control.get(day_key) == b"300"
        assert control.get(quota_key) == b"300"
        assert 15_000 < control.pttl(minute_key) <= 25_000  # 15 s left, plus the grace
        assert 86_355_000 - 1000 < control.pttl(day_key) <= 86_365_000
        assert control.pttl(quota_key) == -1
        # Once a window key has expired, a late settle does not bring it back.
        control.delete(minute_key)
        await limiter.settle(decision.ticket, 400)
        assert not control.exists(minute_key)
        assert control.get(day_key) == b"400"
        assert control.get(quota_key) == b"400"

    try:
        drive(RedisLimiter(redis_url, clock=clock), scenario)
    finally:
        control.close()


def test_unlimited_calls_touch_no_counter(redis_url: str) -> None:
    control = redis.Redis.from_url(redis_url)

    async def scenario(limiter: Limiter) -> None:
        decision = await limiter.acquire(KEY, Limits(), 10_000)
        assert decision.allowed
        assert decision.ticket is not None
        await limiter.settle(decision.ticket, 20_000)

    try:
        drive(RedisLimiter(redis_url, clock=Clock()), scenario)
        assert control.dbsize() == 0
    finally:
        control.close()


def test_redis_forgetting_its_scripts_or_closing_connections_does_not_cause_a_fallback(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    control = redis.Redis.from_url(redis_url)
    limits = Limits(requests_per_minute=3, tokens_per_minute=1000)

    async def scenario(limiter: Limiter) -> None:
        first = await limiter.acquire(KEY, limits, 100)
        assert first.ticket is not None
        control.script_flush()
        control.client_kill_filter(_type="normal", skipme=True)
        await limiter.settle(first.ticket, 10)
        assert (await limiter.acquire(KEY, limits, 100)).allowed
        control.script_flush()
        assert (await limiter.acquire(KEY, limits, 100)).allowed
        assert not (await limiter.acquire(KEY, limits, 100)).allowed

    try:
        drive(RedisLimiter(redis_url, clock=Clock()), scenario)
        counts = control.hgetall(f"portico:rl:{{{KEY}}}:m:{int(DAY_START)}")
        assert counts == {b"r": b"3", b"t": b"210"}  # all three were counted in Redis
    finally:
        control.close()
    assert not [r for r in caplog.records if r.name == "gateway.limits"], caplog.text


def test_with_redis_down_calls_are_limited_per_process_and_one_warning_hides_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "limits-canary-password"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    limits = Limits(requests_per_minute=3, tokens_per_minute=1000)

    async def scenario(limiter: Limiter) -> None:
        decisions = [await limiter.acquire(KEY, limits, 400) for _ in range(5)]
        assert [d.allowed for d in decisions] == [True, True, False, False, False]
        assert decisions[2].limit_name == "tokens_per_minute"
        assert decisions[0].ticket is not None
        await limiter.settle(decisions[0].ticket, 0)  # settles in the fallback
        assert (await limiter.acquire(KEY, limits, 400)).allowed
        assert not (await limiter.acquire(KEY, limits, 1)).allowed  # 3 requests made

    with caplog.at_level(logging.DEBUG):
        drive(create_limiter(url, clock=Clock()), scenario)
    warnings = [
        r for r in caplog.records if r.name == "gateway.limits" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, caplog.text
    assert "ConnectionError" in warnings[0].getMessage()
    assert password not in caplog.text


def test_old_windows_are_dropped_from_memory() -> None:
    clock = Clock(DAY_START + 1)
    limiter = LocalLimiter(clock)
    windows = Limits(requests_per_minute=10, tokens_per_minute=1000, tokens_per_day=10_000)
    quota = Limits(token_quota=10_000)
    for key in range(10_000):
        limiter.acquire_now(str(key), windows, 10)
    limiter.acquire_now("quota", quota, 10)
    assert limiter.counters() == 30_001
    clock.now += 60
    limiter.acquire_now("0", windows, 10)
    assert limiter.counters() == 2 + 10_000 + 1  # this minute's; the day's; the quota
    clock.now += 86_400
    limiter.acquire_now("0", windows, 10)
    assert limiter.counters() == 3 + 1  # the quota is kept: it never resets


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_limits_must_be_positive_integers(value: object) -> None:
    with pytest.raises(ValueError, match="requests_per_minute must be a positive integer"):
        Limits(requests_per_minute=value)  # type: ignore[arg-type]
