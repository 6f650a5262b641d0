"""The deprecated HTTP+SSE transport (2024-11-05), served to clients that know no other.

A client opens ``GET /mcp/<product>`` (or ``/mcp``) asking for ``text/event-stream``
and no session; the first event names where to POST its messages (the same endpoint
with ``?sse_session=<id>``), and every reply arrives on the stream as a ``message``
event while the POST itself answers ``202 Accepted``.

The POST may reach another gateway process than the one holding the stream. Replies
therefore go to the stream's process over Redis publish/subscribe (one channel per
stream; a process subscribes for the streams it holds), or straight into the queue
when the stream is held here. Without Redis only the process holding the stream can
take its POSTs; others answer 404 as for an unknown session, which is what a client
of a single-process gateway never sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

log = logging.getLogger("gateway.mcp")

_CHANNEL = "portico:mcp:sse:"
_QUEUE_LIMIT = 256  # replies waiting for a slow reader before the stream is dropped


class StreamGone(Exception):
    """No process holds the stream (ended, never opened, or unreachable)."""


class SseHub:
    """The legacy SSE streams this process holds, and delivery to any process's."""

    def __init__(self, redis: Redis | None) -> None:
        self._redis = redis
        self._queues: dict[str, asyncio.Queue[bytes | None]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self.closing = asyncio.Event()

    async def open(self, stream_id: str) -> asyncio.Queue[bytes | None]:
        """A queue receiving the stream's messages (``None``: the stream must end)."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE_LIMIT)
        self._queues[stream_id] = queue
        if self._redis is not None:
            try:
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(_CHANNEL + stream_id)
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(self._pubsub))
            except (RedisError, OSError) as exc:
                # Still usable from this process; POSTs elsewhere will get 404.
                log.warning("could not share an MCP SSE stream through Redis: %s", exc)
        return queue

    async def close(self, stream_id: str) -> None:
        self._queues.pop(stream_id, None)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(_CHANNEL + stream_id)

    async def deliver(self, stream_id: str, message: bytes) -> None:
        """Send ``message`` down the stream, wherever it is held; raises
        :class:`StreamGone` when no process holds it."""
        if stream_id in self._queues:
            self._put(stream_id, message)
            return
        if self._redis is None:
            raise StreamGone
        try:
            receivers = await self._redis.publish(_CHANNEL + stream_id, message)
        except (RedisError, OSError) as exc:
            log.warning("could not reach an MCP SSE stream through Redis: %s", exc)
            raise StreamGone from None
        if not receivers:
            raise StreamGone

    async def shutdown(self) -> None:
        """End every stream (the gateway is stopping) and the subscription."""
        self.closing.set()
        for queue in list(self._queues.values()):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()

    def _put(self, stream_id: str, message: bytes | None) -> None:
        queue = self._queues.get(stream_id)
        if queue is None:
            return
        try:
            queue.put_nowait(message)
        except asyncio.QueueFull:
            # A client that reads nothing does not get to hold replies without bound.
            log.warning("an MCP SSE client stopped reading; ending its stream")
            self._queues.pop(stream_id, None)
            queue.get_nowait()
            queue.put_nowait(None)

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            try:
                if not pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("lost the Redis subscription of MCP SSE streams: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            data = message["data"]
            self._put(channel[len(_CHANNEL) :], data if isinstance(data, bytes) else None)
