"""The task and context ids the gateway hands to apps.

An agent's own ids never reach an app. The gateway gives out ``pt1.<payload>.<mac>``
instead: the payload says which product, which consumer, which target (the upstream
id) and the agent's own id, and the MAC (HMAC-SHA-256 with a key derived from the
shared gateway secret) makes it unforgeable. So any gateway process can route a
``GetTask`` or ``CancelTask`` back to the agent that owns the task without shared
storage, and an id that is malformed, forged, from another product or another
consumer's is simply not found: the call reaches no agent.

Ids are bound to the consumer (the app), not to the key, so a rotated key still
reaches the app's tasks. Contexts work the same way; a context id the app made up
itself (the protocol lets clients start one) is kept apart per consumer by prefixing
it before it goes to the agent (:func:`IdCodec.own_context`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

import orjson

PREFIX = "pt1."
MAX_ID_LENGTH = 2000
TASK = "t"
CONTEXT = "c"


@dataclass(frozen=True, slots=True)
class AgentId:
    """What a gateway id stands for."""

    kind: str  # TASK or CONTEXT
    product: int
    consumer: int
    target: str  # the upstream id of the target that owns it
    value: str  # the agent's own id


class IdCodec:
    def __init__(self, seal_key: bytes) -> None:
        self._key = hmac.new(seal_key, b"portico a2a ids v1", hashlib.sha256).digest()

    def wrap(self, ident: AgentId) -> str:
        payload = orjson.dumps(
            [ident.kind, ident.product, ident.consumer, ident.target, ident.value]
        )
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return f"{PREFIX}{_b64(payload)}.{_b64(mac)}"

    def unwrap(self, text: object, kind: str, product: int, consumer: int) -> AgentId | None:
        """What ``text`` stands for, if it is a gateway id of ``kind`` that this consumer
        got from this product; ``None`` for anything else."""
        if not isinstance(text, str) or not text.startswith(PREFIX) or len(text) > MAX_ID_LENGTH:
            return None
        encoded, _, signature = text[len(PREFIX) :].partition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded + "==")
            mac = base64.urlsafe_b64decode(signature + "==")
        except (binascii.Error, ValueError):
            return None
        expected = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            return None
        try:
            fields = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(fields, list) or len(fields) != 5:
            return None
        ident = AgentId(*fields)
        if ident.kind != kind or ident.product != product or ident.consumer != consumer:
            return None
        return ident

    @staticmethod
    def own_context(consumer: int, value: str) -> str:
        """The context id the agent sees for one an app made up itself: apps cannot
        reach each other's contexts by choosing the same id."""
        return f"portico-{consumer}-{value}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
