"""The applied revision of this process, and its last-known-good copy on disk.

The ASGI app reads ``store.current`` once per request; the admin listener replaces it
with a single assignment. Requests in flight keep the revision object they started
with, so a swap never changes a decision half-way through a request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from gateway.revision import AppliedRevision, RevisionError, build, decode_revision
from gateway.secrets import GatewayKeys

log = logging.getLogger("gateway.store")

REVISION_FILE = "revision.json"


class RevisionStore:
    """Holds the applied revision; persists and reloads the last-known-good document."""

    __slots__ = ("current", "path")

    def __init__(self, state_dir: Path) -> None:
        self.current: AppliedRevision | None = None
        self.path = state_dir / REVISION_FILE

    @property
    def number(self) -> int | None:
        current = self.current
        return None if current is None else current.number

    async def load(self, keys: GatewayKeys) -> None:
        """Apply the revision saved on disk, if there is a valid one.

        A missing or invalid file leaves the store empty: the gateway then answers 503
        until the control plane pushes a revision, rather than guessing.
        """
        try:
            raw = await asyncio.to_thread(self.path.read_bytes)
        except FileNotFoundError:
            log.info("no last-known-good revision at %s; waiting for a push", self.path)
            return
        except OSError as exc:
            log.error("cannot read %s (%s); waiting for a push", self.path, exc.strerror)
            return
        try:
            applied = await asyncio.to_thread(_decode_and_build, raw, keys)
        except RevisionError as exc:
            log.error("ignoring last-known-good revision in %s: %s", self.path, exc)
            return
        self.current = applied
        log.info("serving last-known-good revision %d from %s", applied.number, self.path)

    async def persist(self, raw: bytes) -> None:
        """Write ``raw`` (a full revision document) as the last-known-good file."""
        await asyncio.to_thread(write_atomically, self.path, raw)


def _decode_and_build(raw: bytes, keys: GatewayKeys) -> AppliedRevision:
    return build(decode_revision(raw), keys)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole.

    The temporary name carries the pid because several gateway processes on one host
    share a state directory and may persist at the same moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    # Make the rename itself durable, so a crash cannot bring the old file back.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
