"""The embedded-default Celery broker: kombu's file-system transport, made safe.

kombu's file-system transport creates a message file and then writes it, while a
worker may list, move and read the same file in between, read it empty, and die on
the JSON error (seen here: the worker's ``Unrecoverable error: JSONDecodeError``).
This transport writes each message under a name no reader picks up and renames it
into place, which is atomic on one file system, so a reader sees whole messages only.

Production uses Redis (``REDIS_URL``) and never loads this module.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    # kombu's stubs name the second argument differently in its two base classes, so
    # no signature satisfies both.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # "<name>.tmp" does not end in ".<queue>.msg", so readers skip it.
        partial = final + ".tmp"
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
