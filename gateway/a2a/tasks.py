"""What the gateway remembers about tasks, in Redis when there is one (so that every
gateway process knows), else in this process.

- Which tasks each app was given on each product, newest first: ``ListTasks`` answers
  from this, since an agent would list every app's tasks (they all reach it as the
  gateway). The newest :data:`KEPT_PER_APP` per app and product are kept, for
  :data:`OWNED_SECONDS`.
- The tasks the gateway made for REST agents (``reply_as: task``), which ``GetTask``
  returns: kept for :data:`STORED_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("gateway.a2a")

KEPT_PER_APP = 1000
OWNED_SECONDS = 7 * 86400
STORED_SECONDS = 86400
_LOCAL_STORED = 10_000
_OWNED = "portico:a2a:owned:"
_STORED = "portico:a2a:task:"


class TaskBook:
    def __init__(self, redis: Redis | None) -> None:
        self._redis = redis
        self._owned: dict[tuple[int, int], OrderedDict[str, float]] = {}
        self._stored: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def note(self, product: int, consumer: int, task_id: str) -> None:
        """``task_id`` (the app's id for it) was given to ``consumer`` on ``product``."""
        now = time.time()
        if self._redis is not None:
            key = f"{_OWNED}{product}:{consumer}"
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(key, {task_id: now}, nx=True)
                    pipe.zremrangebyrank(key, 0, -KEPT_PER_APP - 1)
                    pipe.expire(key, OWNED_SECONDS)
                    await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                log.warning("could not record an A2A task in Redis: %s", exc)
        owned = self._owned.setdefault((product, consumer), OrderedDict())
        owned.setdefault(task_id, now)
        while len(owned) > KEPT_PER_APP:
            owned.popitem(last=False)

    async def page(
        self, product: int, consumer: int, start: int, size: int
    ) -> tuple[list[str], int]:
        """Task ids ``start`` to ``start + size`` of the app's, newest first, and how
        many there are."""
        if self._redis is not None:
            key = f"{_OWNED}{product}:{consumer}"
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.zrevrange(key, start, start + size - 1)
                    pipe.zcard(key)
                    members, total = await pipe.execute()
                return [m.decode() if isinstance(m, bytes) else str(m) for m in members], int(total)
            except (RedisError, OSError) as exc:
                log.warning("could not list A2A tasks from Redis: %s", exc)
        owned = list(reversed(self._owned.get((product, consumer), OrderedDict())))
        return owned[start : start + size], len(owned)

    async def store(self, product: int, upstream: str, task: dict[str, Any]) -> None:
        """Keep a task the gateway made (its ids are the agent-side ones)."""
        key = f"{_STORED}{product}:{upstream}:{task['id']}"
        value = orjson.dumps(task)
        if self._redis is not None:
            try:
                await self._redis.set(key, value, ex=STORED_SECONDS)
                return
            except (RedisError, OSError) as exc:
                log.warning("could not store an A2A task in Redis: %s", exc)
        self._stored[key] = (time.time() + STORED_SECONDS, value)
        while len(self._stored) > _LOCAL_STORED:
            self._stored.popitem(last=False)

    async def stored(self, product: int, upstream: str, task_id: str) -> dict[str, Any] | None:
        key = f"{_STORED}{product}:{upstream}:{task_id}"
        raw: bytes | None = None
        if self._redis is not None:
            try:
                found = await self._redis.get(key)
                raw = found if isinstance(found, bytes) else None
            except (RedisError, OSError) as exc:
                log.warning("could not read an A2A task from Redis: %s", exc)
        if raw is None:
            local = self._stored.get(key)
            if local is not None and local[0] > time.time():
                raw = local[1]
        if raw is None:
            return None
        task = orjson.loads(raw)
        return task if isinstance(task, dict) else None
