"""The embedded broker never shows a reader a half-written message."""

from __future__ import annotations

import os
from typing import cast

import pytest
from django.conf import settings
from kombu import Connection
from kombu.transport.virtual import Empty

from config import broker
from config.broker import Transport


def test_celery_uses_the_atomic_file_system_transport():
    from config.celery import app

    transport = app.connection_for_write().transport
    if settings.REDIS_URL:
        assert transport.driver_type == "redis"
    else:
        assert isinstance(transport, Transport)


def test_a_message_being_written_is_invisible_to_readers(tmp_path, monkeypatch):
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    with Connection(
        "filesystem://localhost/", transport=Transport, transport_options=options
    ) as conn:
        channel = cast(broker.Channel, conn.default_channel)
        seen_mid_write: list[str] = []
        real_replace = os.replace

        def replace_after_a_reader_looked(src: str, dst: str) -> None:
            # The moment between writing the bytes and publishing the file: a reader
            # polling now must find nothing rather than a partial message.
            with pytest.raises(Empty):
                channel._get("q")
            seen_mid_write.extend(os.listdir(tmp_path))
            real_replace(src, dst)

        monkeypatch.setattr(broker.os, "replace", replace_after_a_reader_looked)
        channel._put("q", {"body": "x" * 100_000})
        assert len(seen_mid_write) == 1
        assert seen_mid_write[0].endswith(".q.msg.tmp")
        assert channel._get("q") == {"body": "x" * 100_000}
