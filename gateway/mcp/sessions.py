"""Session ids of the session-based MCP era (2025-11-25 and older).

A session id carries what the session is, signed: 16 random bytes, the credential that
opened it, the endpoint it was opened on, the protocol version agreed and when. Any
gateway process checks it with the shared gateway secret, so sessions work across
processes without shared storage, and a session id used with another key or on another
endpoint is unknown (404, as for any unknown session: it reveals nothing).

Sessions last ``LIFETIME_SECONDS``; after that, or after the client ends one with
``DELETE``, the id answers 404 and clients open a new session, as the specification
has them do. Ended ids are remembered until they would have expired anyway: in this
process, and in Redis when there is one, so that every process knows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import struct
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("gateway.mcp")

LIFETIME_SECONDS = 24 * 3600
# Protocol versions of the session era, oldest first; a session id holds an index.
SESSION_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
_PAYLOAD = struct.Struct(">16sQIB8s")
_PREFIX = "ps1."
_ENDED_PREFIX = "portico:mcp:ended:"
_NOTE_PREFIX = "portico:mcp:note:"


class SessionError(Exception):
    """The session id is not one this credential may use (invalid, foreign, expired or
    ended): all answer the same."""


def _endpoint_tag(endpoint: str) -> bytes:
    return hashlib.sha256(endpoint.encode()).digest()[:8]


class Sessions:
    def __init__(self, seal_key: bytes, redis_url: str | None = None, timeout: float = 0.5):
        self._key = hmac.new(seal_key, b"portico mcp sessions v1", hashlib.sha256).digest()
        self._ended: dict[str, float] = {}
        self._notes: dict[tuple[str, str], str] = {}
        self._redis = (
            Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
            if redis_url
            else None
        )

    @property
    def redis(self) -> Redis | None:
        """The Redis client sessions share (the legacy SSE streams use it too)."""
        return self._redis

    def open(self, credential: int, endpoint: str, version: str) -> str:
        payload = _PAYLOAD.pack(
            os.urandom(16),
            credential,
            int(time.time()),
            SESSION_VERSIONS.index(version),
            _endpoint_tag(endpoint),
        )
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return _PREFIX + base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")

    async def check(self, session_id: str, credential: int, endpoint: str) -> str:
        """The protocol version of a session this credential may use on this endpoint;
        raises :class:`SessionError` otherwise."""
        if not session_id.startswith(_PREFIX) or len(session_id) > 200:
            raise SessionError
        try:
            raw = base64.urlsafe_b64decode(session_id[len(_PREFIX) :] + "==")
        except ValueError:
            raise SessionError from None
        if len(raw) != _PAYLOAD.size + 16:
            raise SessionError
        payload, mac = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
        if not hmac.compare_digest(mac, hmac.new(self._key, payload, hashlib.sha256).digest()[:16]):
            raise SessionError
        _, owner, issued, version, tag = _PAYLOAD.unpack(payload)
        if (
            owner != credential
            or not hmac.compare_digest(tag, _endpoint_tag(endpoint))
            or time.time() - issued > LIFETIME_SECONDS
            or version >= len(SESSION_VERSIONS)
            or await self._is_ended(session_id)
        ):
            raise SessionError
        return SESSION_VERSIONS[version]

    async def end(self, session_id: str) -> None:
        now = time.time()
        self._ended[session_id] = now + LIFETIME_SECONDS
        if len(self._ended) > 100_000:
            self._ended = {sid: until for sid, until in self._ended.items() if until > now}
        if self._redis is not None:
            try:
                await self._redis.set(_ENDED_PREFIX + session_id, b"1", ex=LIFETIME_SECONDS)
            except (RedisError, OSError) as exc:
                log.warning("could not share the end of an MCP session: %s", exc)

    async def note(self, session_id: str, name: str, value: str) -> None:
        """Remember something a session's client said (its log level, its
        capabilities), here and, with Redis, for every process."""
        self._notes[(session_id, name)] = value
        if len(self._notes) > 100_000:
            self._notes.clear()  # a bound, not a policy: the store below still has them
        if self._redis is not None:
            try:
                await self._redis.set(
                    f"{_NOTE_PREFIX}{name}:{session_id}", value, ex=LIFETIME_SECONDS
                )
            except (RedisError, OSError) as exc:
                log.warning("could not share what an MCP session's client said: %s", exc)

    async def recall(self, session_id: str, name: str) -> str | None:
        """What :meth:`note` remembered for the session, if anything."""
        value = self._notes.get((session_id, name))
        if value is not None or self._redis is None:
            return value
        try:
            stored = await self._redis.get(f"{_NOTE_PREFIX}{name}:{session_id}")
        except (RedisError, OSError) as exc:
            log.warning("could not read what an MCP session's client said: %s", exc)
            return None
        return stored.decode() if isinstance(stored, bytes) else None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def _is_ended(self, session_id: str) -> bool:
        if session_id in self._ended:
            return True
        if self._redis is None:
            return False
        try:
            return bool(await self._redis.exists(_ENDED_PREFIX + session_id))
        except (RedisError, OSError) as exc:
            log.warning("could not check an MCP session against Redis: %s", exc)
            return False
