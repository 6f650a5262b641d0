"""The shared secret between the planes, and what is derived from it.

One secret (``PORTICO_GATEWAY_SECRET``) is configured on both planes. Two keys are
derived from it with HKDF so that neither use leaks the other:

- the bearer token each plane presents to the other (revision pushes, heartbeats,
  usage ingest);
- the AES-256-GCM key that seals upstream secrets inside a revision, so they cross the
  channel and rest on disk (last-known-good file) encrypted;
- the HMAC key that signs the OAuth access tokens of the MCP endpoints
  (``gateway.access_tokens``): the portal mints them, gateways check them.

This module is part of the data plane's contract: the control plane imports it to
seal secrets when it compiles a revision. It must not import Django.
"""

from __future__ import annotations

import base64
import hmac
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED_PREFIX = "v1."
_NONCE_BYTES = 12


class SecretError(ValueError):
    """A sealed value could not be opened (wrong key, tampered or malformed)."""


def _derive(secret: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())


@dataclass(frozen=True, slots=True)
class GatewayKeys:
    """Keys derived from the shared gateway secret."""

    # Kept out of reprs so that logging a settings object can never print them.
    auth_token: str = field(repr=False)
    seal_key: bytes = field(repr=False)
    token_key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: str) -> GatewayKeys:
        if len(secret) < 32:
            raise ValueError("the gateway secret must be at least 32 characters long")
        token = _derive(secret, b"portico gateway auth v1").hex()
        return cls(
            auth_token=token,
            seal_key=_derive(secret, b"portico revision secrets v1"),
            token_key=_derive(secret, b"portico mcp access tokens v1"),
        )

    def check_bearer(self, header_value: str | None) -> bool:
        """Constant-time check of an ``Authorization`` header value."""
        if not header_value or not header_value.startswith("Bearer "):
            return False
        return hmac.compare_digest(header_value[7:].encode(), self.auth_token.encode())

    def seal(self, plaintext: str) -> str:
        return seal(plaintext, self.seal_key)

    def unseal(self, sealed: str) -> str:
        return unseal(sealed, self.seal_key)


def seal(plaintext: str, key: bytes) -> str:
    """Encrypt ``plaintext`` as ``v1.<nonce>.<ciphertext>`` (URL-safe base64)."""
    nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext.encode(), None)
    return (
        SEALED_PREFIX
        + base64.urlsafe_b64encode(nonce).decode()
        + "."
        + base64.urlsafe_b64encode(ciphertext).decode()
    )


def unseal(sealed: str, key: bytes) -> str:
    """Open a value made by :func:`seal`; raises :class:`SecretError` if it cannot."""
    if not sealed.startswith(SEALED_PREFIX):
        raise SecretError("sealed secret has an unknown format")
    try:
        nonce_b64, ct_b64 = sealed[len(SEALED_PREFIX) :].split(".", 1)
        nonce = base64.urlsafe_b64decode(nonce_b64)
        ciphertext = base64.urlsafe_b64decode(ct_b64)
        return AESGCM(key).decrypt(nonce, ciphertext, None).decode()
    except Exception as exc:  # InvalidTag, binascii.Error, ValueError, UnicodeDecodeError
        raise SecretError("sealed secret could not be opened") from exc
