"""Envelope encryption of upstream secrets at rest.

Each secret gets its own random data key (DEK); the DEK encrypts the secret with
AES-256-GCM and is itself wrapped by the key-encryption key (KEK) of a
:class:`KeyProvider`. Rotating the KEK re-wraps DEKs without touching ciphertexts,
and a KMS provider can replace :class:`LocalKeyProvider` without a schema change.

The stored form is a JSON object naming the provider, so each ciphertext says which
KEK opens it.
"""

from __future__ import annotations

import base64
import json
import os
from functools import cache
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


class KeyProvider(Protocol):
    """Wraps and unwraps data keys under a key-encryption key it never reveals."""

    name: str

    def wrap(self, dek: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


class LocalKeyProvider:
    """A KEK derived from a local secret (``PORTICO_KEK`` or the per-install key file)."""

    name = "local"

    def __init__(self, secret: str) -> None:
        self._kek = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"portico kek v1"
        ).derive(secret.encode())

    def wrap(self, dek: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self._kek).encrypt(nonce, dek, b"dek")

    def unwrap(self, wrapped: bytes) -> bytes:
        return AESGCM(self._kek).decrypt(wrapped[:12], wrapped[12:], b"dek")


@cache
def key_provider() -> KeyProvider:
    return LocalKeyProvider(settings.PORTICO_KEK)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def encrypt_secret(plaintext: str) -> str:
    provider = key_provider()
    dek = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext.encode(), None)
    return json.dumps(
        {
            "v": 1,
            "kek": provider.name,
            "dek": _b64(provider.wrap(dek)),
            "nonce": _b64(nonce),
            "ct": _b64(ciphertext),
        }
    )


def decrypt_secret(stored: str) -> str:
    envelope = json.loads(stored)
    provider = key_provider()
    if envelope.get("v") != 1 or envelope.get("kek") != provider.name:
        raise ValueError("secret was encrypted by an unknown key provider")
    dek = provider.unwrap(base64.urlsafe_b64decode(envelope["dek"]))
    nonce = base64.urlsafe_b64decode(envelope["nonce"])
    return AESGCM(dek).decrypt(nonce, base64.urlsafe_b64decode(envelope["ct"]), None).decode()
