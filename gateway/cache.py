"""The exact-match response cache of model calls (opt-in per product).

A product with a ``cache`` policy (``gateway.schema.ResponseCache``) has its successful
answers kept for ``ttl_seconds`` under a key made of who may reuse them (the consumer,
or the product when the policy is ``shared``), the API path, the pinned upstream and the
exact request body. An identical request within the TTL is answered with the same bytes,
streams included (the whole event stream is kept and replayed), without reaching an
upstream and without consuming tokens. Only complete 200 answers are kept: an error, a
stream that broke off or a client that left stores nothing.

Clients steer it per request, as with HTTP caches:

- ``Cache-Control: no-cache`` or ``x-portico-cache: refresh``: do not answer from the
  cache, but keep the fresh answer;
- ``Cache-Control: no-store`` or ``x-portico-cache: skip``: neither.

Answers say ``x-portico-cache: hit`` (with ``age``), ``miss`` or ``skip``.

Entries live in this process (bounded by bytes, least recently used out first) or, with
``REDIS_URL``, in Redis, shared by every gateway process; when Redis fails, calls go to
the upstream as if the cache were empty.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict
from typing import Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.types import Message, Send

log = logging.getLogger("gateway.cache")

# Answers larger than this are not kept (a cache entry is held whole in memory).
MAX_ENTRY_BYTES = 1 << 20
_KEY_PREFIX = "portico:cache:"
_WARN_EVERY_SECONDS = 60.0


class Directive:
    """What a request asks of the cache."""

    USE = 0  # answer from the cache when possible, keep the answer
    REFRESH = 1  # do not answer from the cache, keep the answer
    SKIP = 2  # leave the cache alone


def directive(value: bytes | None) -> int:
    """The :class:`Directive` of a ``Cache-Control`` or ``x-portico-cache`` header value."""
    if not value:
        return Directive.USE
    lowered = value.lower()
    if b"no-store" in lowered or lowered.strip() == b"skip":
        return Directive.SKIP
    if b"no-cache" in lowered or lowered.strip() == b"refresh":
        return Directive.REFRESH
    return Directive.USE


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """A kept answer: its body exactly as sent, and what its headers need."""

    content_type: bytes
    target: str
    stored_at: float
    body: bytes


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Entry).decode


def cache_key(scope: str, path: str, pin: str | None, body: bytes) -> str:
    """The key of a request: who may reuse the answer, and everything that shapes it."""
    digest = hashlib.sha256()
    for part in (scope, path, pin or ""):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(body)
    return digest.hexdigest()


class ResponseCache(Protocol):
    async def get(self, key: str) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, ttl_seconds: int) -> None: ...

    async def close(self) -> None: ...


def create_cache(redis_url: str | None, *, max_bytes: int, timeout: float) -> ResponseCache:
    """The cache a gateway process uses: shared through Redis when there is one."""
    if redis_url:
        return RedisCache(redis_url, timeout=timeout)
    return LocalCache(max_bytes)


class LocalCache:
    """Entries in this process, at most ``max_bytes`` of bodies, least recently used out."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, tuple[float, Entry]] = OrderedDict()

    async def get(self, key: str) -> Entry | None:
        held = self._entries.get(key)
        if held is None:
            return None
        expires, entry = held
        if expires <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: Entry, ttl_seconds: int) -> None:
        size = len(entry.body)
        if size > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + ttl_seconds, entry)
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        _, entry = self._entries.pop(key)
        self._bytes -= len(entry.body)


class RedisCache:
    """Entries in Redis with their TTL, shared by every gateway process."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._redis = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self._warned_at = -math.inf

    async def get(self, key: str) -> Entry | None:
        try:
            raw = await self._redis.get(_KEY_PREFIX + key)
        except (RedisError, OSError) as exc:
            self._warn(exc)
            return None
        if not isinstance(raw, bytes):  # absent
            return None
        try:
            return _decode(raw)
        except msgspec.DecodeError:  # written by another version: treat as absent
            return None

    async def put(self, key: str, entry: Entry, ttl_seconds: int) -> None:
        try:
            await self._redis.set(_KEY_PREFIX + key, _encode(entry), ex=ttl_seconds)
        except (RedisError, OSError) as exc:
            self._warn(exc)

    async def close(self) -> None:
        await self._redis.aclose()

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("response cache unavailable, serving without it: %s", exc)


class Recorder:
    """An ASGI ``send`` that passes everything on and keeps a copy of a 200 answer."""

    __slots__ = ("complete", "content_type", "parts", "send", "size", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.content_type = b"application/json"
        self.parts: list[bytes] | None = []
        self.size = 0
        self.complete = False

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            for name, value in message.get("headers", ()):
                if name == b"content-type":
                    self.content_type = bytes(value)
            if self.status != 200:
                self.parts = None
        elif kind == "http.response.body" and self.parts is not None:
            body = message.get("body", b"")
            self.size += len(body)
            if self.size > MAX_ENTRY_BYTES:
                self.parts = None
            else:
                self.parts.append(body)
                self.complete = not message.get("more_body", False)
        await self.send(message)

    def entry(self, target: str) -> Entry | None:
        """The answer to keep, if it was a complete 200 small enough to keep."""
        if self.parts is None or not self.complete or self.status != 200:
            return None
        return Entry(self.content_type, target, time.time(), b"".join(self.parts))
