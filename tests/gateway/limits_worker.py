"""One process of the multi-process rate-limit test (``test_limits.py``).

Run as ``python -m tests.gateway.limits_worker REDIS_URL KEY LIMIT CALLS NOW``: it says
it is ready (``RPUSH <KEY>:ready``), waits for the test's start signal
(``BLPOP <KEY>:go``), then makes CALLS concurrent acquires of KEY under a limit of
LIMIT requests per minute, all at the fixed instant NOW so that no minute boundary can
fall inside the test, and prints ``{"allowed": n, "refused": m}``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from redis.asyncio import Redis

from gateway.limits import Limits, RedisLimiter

START_TIMEOUT_SECONDS = 30


async def main(redis_url: str, key: str, limit: int, calls: int, now: float) -> dict[str, int]:
    limits = Limits(requests_per_minute=limit)
    limiter = RedisLimiter(redis_url, clock=lambda: now)
    control = Redis.from_url(redis_url)
    try:
        await control.rpush(f"{key}:ready", 1)
        if not await control.blpop([f"{key}:go"], START_TIMEOUT_SECONDS):
            raise SystemExit("no start signal")
        decisions = await asyncio.gather(*(limiter.acquire(key, limits, 1) for _ in range(calls)))
    finally:
        await control.aclose()
        await limiter.close()
    allowed = sum(decision.allowed for decision in decisions)
    return {"allowed": allowed, "refused": calls - allowed}


if __name__ == "__main__":
    url, key, limit, calls, now = sys.argv[1:]
    print(json.dumps(asyncio.run(main(url, key, int(limit), int(calls), float(now)))))
