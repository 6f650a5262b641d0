"""The API key format, shared by the planes.

A key is ``portico_`` + 40 random base62 characters + a 6-character base62 CRC32 of
them. The fixed prefix lets secret scanners recognise leaked keys; the checksum lets
them (and the gateway) tell a mistyped key from a real one without a lookup. Only the
SHA-256 of the whole key is stored anywhere.

:class:`SecretFormat` also serves the control plane's personal access tokens, which
have the same shape under their own prefix (``portico_pat_``), so scanners and people
can tell the two apart and the gateway can never take a token for a key.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib
from dataclasses import dataclass

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 40  # log2(62) * 40 ≈ 238 bits of entropy
_CHECK_LENGTH = 6


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECK_LENGTH)


def hash_key(key: str | bytes) -> str:
    """The SHA-256 hex digest under which a key (or token) is known everywhere.

    The gateway passes the header's bytes as they arrived; the control plane, strings.
    """
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()


@dataclass(frozen=True)
class SecretFormat:
    """A prefixed, checksummed CSPRNG secret format."""

    prefix: str

    @property
    def length(self) -> int:
        return len(self.prefix) + _BODY_LENGTH + _CHECK_LENGTH

    @property
    def display_length(self) -> int:
        return len(self.prefix) + 4

    def generate(self) -> str:
        """A new secret from the operating system's CSPRNG."""
        body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
        return self.prefix + body + _checksum(body)

    def is_well_formed(self, secret: str) -> bool:
        """True when ``secret`` has this format's shape and a matching checksum."""
        if len(secret) != self.length or not secret.startswith(self.prefix):
            return False
        body = secret[len(self.prefix) : len(self.prefix) + _BODY_LENGTH]
        return _checksum(body) == secret[-_CHECK_LENGTH:]

    def display_prefix(self, secret: str) -> str:
        """The part shown in lists so people can tell their secrets apart."""
        return secret[: self.display_length]


API_KEY = SecretFormat("portico_")
KEY_PREFIX = API_KEY.prefix
KEY_LENGTH = API_KEY.length
DISPLAY_PREFIX_LENGTH = API_KEY.display_length
generate_key = API_KEY.generate
is_well_formed = API_KEY.is_well_formed
display_prefix = API_KEY.display_prefix
