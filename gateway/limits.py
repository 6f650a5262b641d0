"""Rate limits and token quotas: checked before a call, reconciled after it.

Per key (the gateway passes the subscription id): requests per minute, tokens per
minute, tokens per UTC day, and a total token quota that never resets. A call first
*acquires*: its request is counted and its token estimate (prompt estimate plus the
most it may generate) is reserved in every token limit that is set, or it is refused
with nothing counted. When it ends (for a stream, when the stream ends) it is
*settled* with the tokens really used, which moves every token counter it reserved in
by the difference; a failed call settles with 0 and gives its reservation back. The
request count is never given back: a call that reached the upstream was a request.

Algorithm: fixed windows aligned to the clock (minutes on the minute, days at 00:00
UTC), one counter per key and window. Within a window the count is exact, which is
what "50 concurrent callers, limit 20: exactly 20 pass" needs and what a sliding-window
estimate would blur; and a window's end is one instant, which the OpenAI-style
``x-ratelimit-reset-*`` headers and ``retry-after`` describe exactly. The price is the
edge: a client may use a whole window's allowance at the end of one window and again at
the start of the next, so up to twice a limit can pass within any rolling 60 seconds
(never more than the limit within one aligned window). Refused clients are all told to
come back at the same instant, the start of the next window; OpenAI's clients add
jitter to their retries.

Admission, with ``tokens`` at least 1 (so that an empty window admits one call, not
many estimated at zero):

- a request limit refuses once ``used >= limit``;
- a token limit or the quota refuses when ``used > 0 and used + tokens > limit``. The
  ``used > 0`` exception lets one request whose estimate exceeds the whole limit pass in
  an empty window (estimates are inflated by ``max_tokens``, and refusing such a call
  forever would be worse than OpenAI's refusal, which at least says why), and it is
  why concurrent calls overshoot a token limit by at most one call's reservation.
  Settling with more tokens than reserved can push a counter past its limit by the
  underestimate; the next calls then wait for the window to end. For the quota, which
  never resets, such a call is refused for good once anything has been used.

Refusals carry the wait until the window that refused ends (the longest, when several
refuse); a quota refusal has no wait (``retry_after`` is ``None``, no ``retry-after``
header) because waiting does not help.

Implementations:

- :class:`LocalLimiter` keeps the counters in this process: dicts for the current
  minute and the current day, replaced when the window rolls over, so memory holds only
  keys seen in the current windows (plus one quota counter per key with a quota).
  ``acquire`` never awaits anything, so on one event loop check-then-reserve is atomic.
- :class:`RedisLimiter` (``REDIS_URL``) makes limits hold across gateway processes: one
  Lua script per acquire checks every limit and then reserves in all of them, atomically
  (``EVALSHA``, with ``EVAL`` when Redis has forgotten the script); one per settle. The
  window is chosen by the gateway's own clock and passed in as key names: gateways are
  NTP-synced, so at worst processes disagree about a boundary for the skew between
  their clocks, which can only add to the edge behaviour above. (Redis ``TIME`` would
  mean computing key names inside the script, which Redis Cluster does not allow.)
  Keys are ``portico:rl:{<key>}:m:<minute start>`` (a hash, fields ``r`` and ``t``),
  ``…:d:<day start>`` and ``…:q``; the braces keep a key's counters in one cluster
  slot. Window keys expire shortly after their window; the quota key never does. Redis
  must persist data (AOF or RDB) for quotas to survive a Redis restart.

When Redis fails, the gateway keeps serving: the call is decided by an in-process
:class:`LocalLimiter` instead (limits then hold per process), Redis is left alone for
:data:`_REDIS_PAUSE_SECONDS`, and a warning is logged at most every 30 seconds. A
ticket from that fallback settles locally. A settle that cannot reach Redis leaves the
reservation counted (stricter, never looser) and is logged the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.types import Headers

log = logging.getLogger("gateway.limits")

Clock = Callable[[], float]

_MINUTE = 60
_DAY = 86_400
# Window keys outlive their window by this much, so that a gateway whose clock lags a
# little still finds (rather than recreates) the key it reserved in.
_WINDOW_GRACE_MS = 10_000
# After a Redis failure, calls are decided locally for this long before Redis is tried
# again, so that an unreachable Redis costs one timeout, not one per request.
_REDIS_PAUSE_SECONDS = 2.0
_WARN_EVERY_SECONDS = 30.0
# Redis answers a limit check in well under a millisecond; a call waits no longer than
# this before it is decided locally instead.
_REDIS_TIMEOUT_SECONDS = 0.5
# A cap on connections per process: a slow Redis must not collect one connection per
# waiting request (Redis refuses clients past its maxclients, 10,000 by default).
_REDIS_MAX_CONNECTIONS = 256

# Which token counters a ticket reserved in.
_TPM, _TPD, _QUOTA = 1, 2, 4


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What one key may use; ``None`` means unlimited. Build one per plan, not per call."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    token_quota: int | None = None  # total tokens, never resets

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{field.name} must be a positive integer or None, not {value!r}")

    @property
    def unlimited(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.tokens_per_day is None
            and self.token_quota is None
        )


class Ticket:
    """What one acquire reserved. Opaque: hand it to ``settle`` of the limiter that gave
    it; settling a ticket a second time does nothing."""

    __slots__ = ("_day", "_flags", "_key", "_minute", "_remote", "_reserved", "_settled")

    def __init__(
        self, key: str, minute: int, day: int, reserved: int, flags: int, *, remote: bool
    ) -> None:
        self._key = key
        self._minute = minute
        self._day = day
        self._reserved = reserved
        self._flags = flags
        self._remote = remote
        self._settled = False

    def _close(self, tokens: int) -> int:
        """Mark the ticket settled; the change to its counters (0 when there is none)."""
        if self._settled or not self._flags:
            return 0
        self._settled = True
        return max(tokens, 0) - self._reserved


# What an acquire under no limits returns: nothing to settle.
_NOTHING_RESERVED = Ticket("", 0, 0, 0, 0, remote=False)


# What the headers are made of: the limits, the time, the minute and day windows, and
# the counts of requests, minute tokens, day tokens and quota tokens.
_Basis = tuple[Limits, float, int, int, tuple[int, int, int, int]]
_UNLIMITED: _Basis = (Limits(), 0.0, 0, 0, (0, 0, 0, 0))


class Decision:
    """The answer to an acquire; built by the limiters.

    ``limit_name`` names the limit that refused (a field of :class:`Limits`) and
    ``retry_after`` the seconds until it may pass (``None`` for the quota). ``headers``
    are the ``x-ratelimit-*`` headers of the limits that are set and, when refused with
    a wait, ``retry-after`` (whole seconds) and ``retry-after-ms``: ASGI style, to add to
    the response. They are formatted on first use, not on every acquire.
    """

    __slots__ = ("_basis", "_headers", "allowed", "limit_name", "retry_after", "ticket")

    def __init__(
        self,
        ticket: Ticket | None,
        basis: _Basis,
        limit_name: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.allowed = ticket is not None
        self.ticket = ticket
        self.limit_name = limit_name
        self.retry_after = retry_after
        self._basis = basis
        self._headers: Headers | None = None

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = _headers(self._basis, self.retry_after)
        return headers

    def __repr__(self) -> str:
        return (
            f"Decision(allowed={self.allowed}, limit_name={self.limit_name!r}, "
            f"retry_after={self.retry_after!r})"
        )


def _unlimited() -> Decision:
    return Decision(_NOTHING_RESERVED, _UNLIMITED)


class Limiter(Protocol):
    async def acquire(self, key: str, limits: Limits, tokens: int) -> Decision:
        """Count a request of ``key`` and reserve ``tokens`` (its estimate), or refuse."""
        ...

    async def settle(self, ticket: Ticket, tokens: int) -> None:
        """Replace the ticket's reservation by the ``tokens`` really used (0: none)."""
        ...

    async def close(self) -> None: ...


def create_limiter(
    redis_url: str | None, *, clock: Clock = time.time, timeout: float = _REDIS_TIMEOUT_SECONDS
) -> Limiter:
    """The limiter a gateway process uses: shared through Redis when there is one."""
    if redis_url:
        return RedisLimiter(redis_url, clock=clock, timeout=timeout)
    return LocalLimiter(clock)


class LocalLimiter:
    """Limits held in this process (see the module docstring)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._minute = -1
        self._day = -1
        self._requests: dict[str, int] = {}
        self._minute_tokens: dict[str, int] = {}
        self._day_tokens: dict[str, int] = {}
        self._quota: dict[str, int] = {}

    async def acquire(self, key: str, limits: Limits, tokens: int) -> Decision:
        return self.acquire_now(key, limits, tokens)

    async def settle(self, ticket: Ticket, tokens: int) -> None:
        self.settle_now(ticket, tokens)

    async def close(self) -> None:
        pass

    def counters(self) -> int:
        """How many counters are held (for tests and monitoring)."""
        return (
            len(self._requests)
            + len(self._minute_tokens)
            + len(self._day_tokens)
            + len(self._quota)
        )

    def acquire_now(self, key: str, limits: Limits, tokens: int) -> Decision:
        """``acquire`` without the coroutine (it never waits)."""
        rpm = limits.requests_per_minute
        tpm = limits.tokens_per_minute
        tpd = limits.tokens_per_day
        quota = limits.token_quota
        if rpm is None and tpm is None and tpd is None and quota is None:
            return _unlimited()
        if tokens < 1:
            tokens = 1
        now = self._clock()
        second = int(now)
        minute = second - second % _MINUTE
        if minute != self._minute:
            self._roll_over(minute, second - second % _DAY)
        r = t = d = q = 0
        if rpm is not None:
            r = self._requests.get(key, 0)
        if tpm is not None:
            t = self._minute_tokens.get(key, 0)
        if tpd is not None:
            d = self._day_tokens.get(key, 0)
        if quota is not None:
            q = self._quota.get(key, 0)
        ticket = None
        if _admits(limits, tokens, r, t, d, q):
            flags = 0
            if rpm is not None:
                r += 1
                self._requests[key] = r
            if tpm is not None:
                t += tokens
                self._minute_tokens[key] = t
                flags = _TPM
            if tpd is not None:
                d += tokens
                self._day_tokens[key] = d
                flags |= _TPD
            if quota is not None:
                q += tokens
                self._quota[key] = q
                flags |= _QUOTA
            ticket = Ticket(key, minute, self._day, tokens, flags, remote=False)
        return _decide(limits, tokens, now, minute, self._day, (r, t, d, q), ticket)

    def settle_now(self, ticket: Ticket, tokens: int) -> None:
        """``settle`` without the coroutine."""
        delta = ticket._close(tokens)
        if not delta:
            return
        flags, key = ticket._flags, ticket._key
        # A ticket from an earlier window changes nothing: that window no longer limits.
        if flags & _TPM and ticket._minute == self._minute:
            _adjust(self._minute_tokens, key, delta)
        if flags & _TPD and ticket._day == self._day:
            _adjust(self._day_tokens, key, delta)
        if flags & _QUOTA:
            _adjust(self._quota, key, delta)

    def _roll_over(self, minute: int, day: int) -> None:
        # Replacing the dicts drops every counter of the old window at once; a clock
        # stepped back also starts afresh, a one-off leniency rather than a long wait.
        self._minute = minute
        self._requests = {}
        self._minute_tokens = {}
        if day != self._day:
            self._day = day
            self._day_tokens = {}


def _adjust(counts: dict[str, int], key: str, delta: int) -> None:
    used = counts.get(key)
    if used is not None:
        counts[key] = max(used + delta, 0)


# KEYS: minute hash (fields r, t), day counter, quota counter.
# ARGV: requests/min, tokens/min, tokens/day, quota (0 when not set), tokens,
#       minute key TTL (ms), day key TTL (ms).
# Returns {allowed, requests, minute tokens, day tokens, quota tokens}: the counts after
# the reservation when allowed, before it when refused. Mirrors _admits below.
_ACQUIRE_LUA = """
local rpm, tpm, tpd, quota = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
    tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local counts = redis.call('HMGET', KEYS[1], 'r', 't')
local r, t = tonumber(counts[1]) or 0, tonumber(counts[2]) or 0
local d, q = 0, 0
if tpd > 0 then d = tonumber(redis.call('GET', KEYS[2])) or 0 end
if quota > 0 then q = tonumber(redis.call('GET', KEYS[3])) or 0 end
local function fits(used, limit)
  return limit == 0 or used == 0 or used + tokens <= limit
end
if (rpm > 0 and r >= rpm) or not (fits(t, tpm) and fits(d, tpd) and fits(q, quota)) then
  return {0, r, t, d, q}
end
if rpm > 0 then r = redis.call('HINCRBY', KEYS[1], 'r', 1) end
if tpm > 0 then t = redis.call('HINCRBY', KEYS[1], 't', tokens) end
if rpm > 0 or tpm > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
if tpd > 0 then
  d = redis.call('INCRBY', KEYS[2], tokens)
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
if quota > 0 then q = redis.call('INCRBY', KEYS[3], tokens) end
return {1, r, t, d, q}
"""

# KEYS: as for acquire. ARGV: delta, then 1/0 for the minute, day and quota counters.
# A window key that has expired is not recreated: its window no longer limits anything.
_SETTLE_LUA = """
local delta = tonumber(ARGV[1])
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HINCRBY', KEYS[1], 't', delta) < 0 then redis.call('HSET', KEYS[1], 't', 0) end
end
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('INCRBY', KEYS[2], delta) < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
end
if ARGV[4] == '1' then
  if redis.call('INCRBY', KEYS[3], delta) < 0 then redis.call('SET', KEYS[3], 0) end
end
return 1
"""


class _Script:
    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


_ACQUIRE = _Script(_ACQUIRE_LUA)
_SETTLE = _Script(_SETTLE_LUA)


class RedisLimiter:
    """Limits shared by every gateway process using one Redis (see the module docstring)."""

    def __init__(
        self, url: str, *, clock: Clock = time.time, timeout: float = _REDIS_TIMEOUT_SECONDS
    ) -> None:
        # One immediate retry, on connection errors only, covers a pooled connection that
        # Redis closed. Timeouts are not retried: the call would wait twice, and the
        # script may have run. (A retry after a reply was lost can count a call twice:
        # stricter, never looser.)
        self._redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            max_connections=_REDIS_MAX_CONNECTIONS,
        )
        self._clock = clock
        self._fallback = LocalLimiter(clock)
        self._paused_until = 0.0
        self._warned_at = -math.inf
        self._failing = False

    async def acquire(self, key: str, limits: Limits, tokens: int) -> Decision:
        if limits.unlimited:
            return _unlimited()
        if self._failing and time.monotonic() < self._paused_until:
            return self._fallback.acquire_now(key, limits, tokens)
        if tokens < 1:
            tokens = 1
        now = self._clock()
        second = int(now)
        minute = second - second % _MINUTE
        day = second - second % _DAY
        args = (
            limits.requests_per_minute or 0,
            limits.tokens_per_minute or 0,
            limits.tokens_per_day or 0,
            limits.token_quota or 0,
            tokens,
            math.ceil((minute + _MINUTE - now) * 1000) + _WINDOW_GRACE_MS,
            math.ceil((day + _DAY - now) * 1000) + _WINDOW_GRACE_MS,
        )
        try:
            reply = await self._run(_ACQUIRE, _redis_keys(key, minute, day), args)
        except (RedisError, OSError) as exc:
            self._failed(exc, "deciding calls in this process until it is back")
            return self._fallback.acquire_now(key, limits, tokens)
        if self._failing:
            self._failing = False
            log.info("Redis is back; rate limits are shared by all gateway processes again")
        allowed, r, t, d, q = (int(value) for value in reply)
        ticket = None
        if allowed:
            flags = (
                (_TPM if limits.tokens_per_minute else 0)
                | (_TPD if limits.tokens_per_day else 0)
                | (_QUOTA if limits.token_quota else 0)
            )
            ticket = Ticket(key, minute, day, tokens, flags, remote=True)
        return _decide(limits, tokens, now, minute, day, (r, t, d, q), ticket)

    async def settle(self, ticket: Ticket, tokens: int) -> None:
        if not ticket._remote:
            self._fallback.settle_now(ticket, tokens)
            return
        delta = ticket._close(tokens)
        if not delta:
            return
        flags = ticket._flags
        args = (delta, _bit(flags, _TPM), _bit(flags, _TPD), _bit(flags, _QUOTA))
        try:
            await self._run(_SETTLE, _redis_keys(ticket._key, ticket._minute, ticket._day), args)
        except (RedisError, OSError) as exc:
            self._failed(exc, "a call's reserved tokens stay counted instead of what it used")

    async def close(self) -> None:
        await self._redis.aclose()

    async def _run(self, script: _Script, keys: Sequence[str], args: Sequence[int]) -> Any:
        try:
            reply = await self._redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis restarted or its script cache was flushed; EVAL caches it again.
            reply = await self._redis.eval(script.source, len(keys), *keys, *args)
        return reply

    def _failed(self, exc: BaseException, consequence: str) -> None:
        now = time.monotonic()
        self._failing = True
        self._paused_until = now + _REDIS_PAUSE_SECONDS
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            # Only the exception's type: nothing of the URL, which may hold a password.
            log.warning("rate limiting: Redis failed (%s); %s", type(exc).__name__, consequence)


def _redis_keys(key: str, minute: int, day: int) -> tuple[str, str, str]:
    base = f"portico:rl:{{{key}}}"
    return f"{base}:m:{minute}", f"{base}:d:{day}", f"{base}:q"


def _bit(flags: int, flag: int) -> int:
    return 1 if flags & flag else 0


def _fits(used: int, tokens: int, limit: int | None) -> bool:
    return limit is None or used == 0 or used + tokens <= limit


def _admits(limits: Limits, tokens: int, r: int, t: int, d: int, q: int) -> bool:
    """Whether a call reserving ``tokens`` passes, given the counts so far (see the module
    docstring; ``_ACQUIRE_LUA`` does the same in Redis)."""
    rpm = limits.requests_per_minute
    return (
        (rpm is None or r < rpm)
        and _fits(t, tokens, limits.tokens_per_minute)
        and _fits(d, tokens, limits.tokens_per_day)
        and _fits(q, tokens, limits.token_quota)
    )


def _decide(
    limits: Limits,
    tokens: int,
    now: float,
    minute: int,
    day: int,
    used: tuple[int, int, int, int],
    ticket: Ticket | None,
) -> Decision:
    """The decision on counts read (refused) or updated (allowed) in these windows."""
    basis = (limits, now, minute, day, used)
    if ticket is not None:
        return Decision(ticket, basis)
    return Decision(None, basis, *_refusal(basis, tokens))


def _headers(basis: _Basis, retry_after: float | None) -> Headers:
    limits, now, minute, day, (r, t, d, _) = basis
    headers: Headers = []
    rpm, tpm, tpd = limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day
    minute_reset = b""
    if rpm is not None or tpm is not None:
        minute_reset = format_duration(minute + _MINUTE - now)
    if rpm is not None:
        headers += (
            (b"x-ratelimit-limit-requests", b"%d" % rpm),
            (b"x-ratelimit-remaining-requests", b"%d" % max(rpm - r, 0)),
            (b"x-ratelimit-reset-requests", minute_reset),
        )
    # OpenAI reports one token limit: the per-minute one when both are set.
    if tpm is not None:
        headers += _token_headers(tpm, t, minute_reset)
    elif tpd is not None:
        headers += _token_headers(tpd, d, format_duration(day + _DAY - now))
    if retry_after is not None:
        ms = max(_ceil_ms(retry_after), 1)
        headers += (
            (b"retry-after", b"%d" % -(-ms // 1000)),
            (b"retry-after-ms", b"%d" % ms),
        )
    return headers


def _token_headers(limit: int, used: int, reset: bytes) -> Headers:
    return [
        (b"x-ratelimit-limit-tokens", b"%d" % limit),
        (b"x-ratelimit-remaining-tokens", b"%d" % max(limit - used, 0)),
        (b"x-ratelimit-reset-tokens", reset),
    ]


def _ceil_ms(seconds: float) -> int:
    # A microsecond of slack keeps float noise (a unix time has about 0.2 µs of
    # resolution) from adding a millisecond to a wait of 19.7 s.
    return math.ceil(seconds * 1000 - 0.001)


def _refusal(basis: _Basis, tokens: int) -> tuple[str, float | None]:
    """The limit that refused and the wait until it may pass (the longest, when several
    refused; ``None`` for the quota, which waiting does not help)."""
    limits, now, minute, day, (_, t, d, q) = basis
    if not _fits(q, tokens, limits.token_quota):
        return "token_quota", None
    if not _fits(d, tokens, limits.tokens_per_day):
        return "tokens_per_day", day + _DAY - now
    if not _fits(t, tokens, limits.tokens_per_minute):
        return "tokens_per_minute", minute + _MINUTE - now
    return "requests_per_minute", minute + _MINUTE - now


def format_duration(seconds: float) -> bytes:
    """A duration as OpenAI writes its reset headers (Go's style, to the millisecond):
    ``20ms``, ``1s``, ``59.2s``, ``6m0s``, ``23h59m59.5s``."""
    ms = _ceil_ms(seconds)
    if ms < 60_000:  # the per-minute windows' case, on every response: kept quick
        if ms <= 0:
            return b"0s"
        if ms < 1000:
            return b"%dms" % ms
        whole, ms = divmod(ms, 1000)
        return (b"%d.%03d" % (whole, ms)).rstrip(b"0") + b"s" if ms else b"%ds" % whole
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    whole, ms = divmod(ms, 1000)
    text = f"{whole}.{ms:03d}".rstrip("0") if ms else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s".encode()
    if minutes:
        return f"{minutes}m{text}s".encode()
    return f"{text}s".encode()
