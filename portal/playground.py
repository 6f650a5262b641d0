"""The try-it playground: chat with a subscribed model through the real gateway.

The playground calls the gateway exactly as the developer's code would, with a key of
the developer's own app. Keys are stored only as hashes, so the playground cannot use
an existing one: it issues a short-lived key named "Playground" for the app (visible
and revocable on the app's page like any other), keeps its plaintext only in the
server-side cache until shortly before it expires, and never sends it to the browser.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import httpx
import orjson
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.utils import timezone

from catalog.models import ModelRoute, Product
from consumers import services
from consumers.models import Consumer, Subscription

PLAYGROUND_KEY_NAME = "Playground"
_TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=30.0, pool=5.0)


@dataclass(frozen=True)
class Target:
    """A model the user can try, through one of their apps."""

    app_id: int
    app_name: str
    model: str
    product_name: str


def targets_for(*, user: User) -> list[Target]:
    """Every (app, model) pair the user's apps are approved for, on published products."""
    subscriptions = (
        Subscription.objects.filter(
            consumer__owner=user,
            consumer__status=Consumer.Status.ACTIVE,
            status=Subscription.Status.APPROVED,
            product__status=Product.Status.PUBLISHED,
            product__kind=Product.Kind.MODEL,
        )
        .select_related("consumer", "product")
        .prefetch_related("product__model_routes")
        .order_by("consumer__name", "product__name")
    )
    return [
        Target(sub.consumer_id, sub.consumer.name, route.name, sub.product.name)
        for sub in subscriptions
        for route in sub.product.model_routes.all()
        # The playground chats; embeddings models have nothing to say.
        if route.kind == ModelRoute.Kind.CHAT
    ]


def _cache_key(consumer: Consumer) -> str:
    return f"portico:playground-key:{consumer.pk}"


def playground_key(*, consumer: Consumer) -> str:
    """A working key of ``consumer`` for the playground, issued when none is cached."""
    cached = cache.get(_cache_key(consumer))
    if cached is not None:
        return str(cached)
    lifetime = settings.PORTICO_PLAYGROUND_KEY_SECONDS
    issued = services.credential_create(
        consumer=consumer,
        name=PLAYGROUND_KEY_NAME,
        expires_at=timezone.now() + timedelta(seconds=lifetime),
    )
    # Forget it a minute before it expires, so a chat never starts on a dying key.
    cache.set(_cache_key(consumer), issued.key, timeout=lifetime - 60)
    return issued.key


def _event(name: str, payload: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def _wait_until_known(client: httpx.AsyncClient, key: str, deadline: float) -> bool:
    # A key issued a moment ago reaches the gateway with the next revision.
    while time.monotonic() < deadline:
        response = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        if response.status_code == 200:
            return True
        await asyncio.sleep(0.25)
    return False


async def chat_stream(*, key: str, model: str, message: str) -> AsyncIterator[bytes]:
    """Relay a streamed chat completion as ``delta`` events, then ``done`` or ``error``."""
    try:
        async for event in _chat_events(key=key, model=model, message=message):
            yield event
    except httpx.HTTPError as exc:
        # The page must say what happened rather than wait forever on a dead stream.
        yield _event("error", {"message": f"Could not reach the gateway ({type(exc).__name__})."})


async def _chat_events(*, key: str, model: str, message: str) -> AsyncIterator[bytes]:
    base = str(settings.PORTICO_GATEWAY_INTERNAL_URL).rstrip("/")
    async with httpx.AsyncClient(base_url=base, timeout=_TIMEOUT) as client:
        if not await _wait_until_known(client, key, time.monotonic() + 15):
            yield _event("error", {"message": "The gateway has not received your key yet."})
            return
        body = {
            "model": model,
            "messages": [{"role": "user", "content": message}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {key}"}
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                detail = (await response.aread())[:2000]
                try:
                    text = orjson.loads(detail)["error"]["message"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    text = f"The gateway answered {response.status_code}."
                yield _event("error", {"message": text, "status": response.status_code})
                return
            usage: object = None
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = orjson.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield _event("delta", {"text": text})
            yield _event("done", {"usage": usage})
