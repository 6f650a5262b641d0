"""The API key format, shared by the planes.

A key is ``portico_`` + 40 random base62 characters + a 6-character base62 CRC32 of
them. The fixed prefix lets secret scanners recognise leaked keys; the checksum lets
them (and the gateway) tell a mistyped key from a real one without a lookup. Only the
SHA-256 of the whole key is stored anywhere.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

KEY_PREFIX = "portico_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 40  # log2(62) * 40 ≈ 238 bits of entropy
_CHECK_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + _BODY_LENGTH + _CHECK_LENGTH
DISPLAY_PREFIX_LENGTH = len(KEY_PREFIX) + 4


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LENGTH)


def generate_key() -> str:
    """A new key from the operating system's CSPRNG."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    return KEY_PREFIX + body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """True when ``key`` has the Portico shape and a matching checksum."""
    if len(key) != KEY_LENGTH or not key.startswith(KEY_PREFIX):
        return False
    body = key[len(KEY_PREFIX) : len(KEY_PREFIX) + _BODY_LENGTH]
    return _checksum(body) == key[-_CHECK_LENGTH:]


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is known to both planes."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]
