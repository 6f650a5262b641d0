"""AWS event streams (``application/vnd.amazon.eventstream``), decoded as they arrive.

Bedrock's streaming answers are binary frames, each::

    total length (uint32) | headers length (uint32) | prelude CRC32 (uint32)
    headers | payload | message CRC32 (uint32)

all big-endian; the prelude CRC covers the first 8 bytes and the message CRC everything
before it. A header is a name (uint8 length, then UTF-8), a type byte and a value: 0 and
1 are true and false, 2/3/4/5 signed integers of 1/2/4/8 bytes, 6 bytes and 7 a string
(both with a uint16 length), 8 a timestamp (int64 milliseconds) and 9 a UUID (16 bytes).

:class:`Decoder` takes the body in whatever pieces the network gives and returns whole
messages. A frame whose CRC does not match, or whose lengths cannot be right, means the
stream is corrupt: that is the upstream's failure (``SERVER``), and the rest of the
stream cannot be trusted, so decoding stops there.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from gateway.providers.base import FailureKind, UpstreamFailure

_PRELUDE = 12
_MIN_MESSAGE = 16  # a prelude and a message CRC, nothing else
# AWS's limits: 16 MiB a message, 128 KiB of headers.
_MAX_MESSAGE = 16 * 1024 * 1024
_MAX_HEADERS = 128 * 1024

HeaderValue = bool | int | bytes | str | uuid.UUID


@dataclass(frozen=True, slots=True)
class Message:
    headers: dict[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


class Decoder:
    """Incremental decoder: :meth:`feed` bytes, get the messages they complete."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _PRELUDE:
            total, headers_length, prelude_crc = struct.unpack_from(">III", self._buffer)
            if zlib.crc32(memoryview(self._buffer)[:8]) != prelude_crc:
                raise _corrupt("a frame's prelude checksum does not match")
            if not _MIN_MESSAGE <= total <= _MAX_MESSAGE or headers_length > min(
                _MAX_HEADERS, total - _MIN_MESSAGE
            ):
                raise _corrupt("a frame's lengths are impossible")
            if len(self._buffer) < total:
                break
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            (message_crc,) = struct.unpack_from(">I", frame, total - 4)
            if zlib.crc32(memoryview(frame)[: total - 4]) != message_crc:
                raise _corrupt("a frame's checksum does not match")
            headers = _headers(frame, _PRELUDE, _PRELUDE + headers_length)
            messages.append(Message(headers, frame[_PRELUDE + headers_length : total - 4]))
        return messages

    @property
    def pending(self) -> int:
        """Bytes received that do not make a whole message yet."""
        return len(self._buffer)


def _headers(frame: bytes, start: int, end: int) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    at = start
    try:
        while at < end:
            size = frame[at]
            name = frame[at + 1 : at + 1 + size].decode()
            at += 1 + size
            kind = frame[at]
            at += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _INTEGERS:
                fmt = _INTEGERS[kind]
                (value,) = struct.unpack_from(fmt, frame, at)
                at += struct.calcsize(fmt)
            elif kind in (6, 7):
                (length,) = struct.unpack_from(">H", frame, at)
                raw = frame[at + 2 : at + 2 + length]
                if len(raw) != length:
                    raise ValueError("header value runs past the headers")
                value = raw.decode() if kind == 7 else raw
                at += 2 + length
            elif kind == 9:
                value = uuid.UUID(bytes=frame[at : at + 16])
                at += 16
            else:
                raise ValueError(f"unknown header type {kind}")
            headers[name] = value
    except (IndexError, ValueError, struct.error):
        raise _corrupt("a frame's headers are malformed") from None
    if at != end:
        raise _corrupt("a frame's headers are malformed")
    return headers


# Type byte -> struct format; 8 is a timestamp in milliseconds, kept as an int.
_INTEGERS = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


def _corrupt(why: str) -> UpstreamFailure:
    return UpstreamFailure(FailureKind.SERVER, f"The upstream's event stream is corrupt: {why}.")
