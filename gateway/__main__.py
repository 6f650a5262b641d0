"""``python -m gateway``: run the gateway under uvicorn (uvloop, httptools, N workers).

Settings come from the environment (see ``gateway.config``); a bad value stops the
process before it binds anything, with a message naming the variable.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from gateway.config import ConfigError, GatewaySettings
from gateway.realtime import MAX_MESSAGE_BYTES


def logging_config(level: str) -> dict[str, Any]:
    """Uvicorn's logging setup plus the gateway's own loggers, with pids in every line."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["default"]["fmt"] = (
        "%(asctime)s %(levelprefix)s [%(process)d] %(name)s: %(message)s"
    )
    config["loggers"]["uvicorn"]["level"] = level
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": level, "propagate": False}
    return config


def main() -> None:
    try:
        settings = GatewaySettings.from_env()
    except ConfigError as exc:
        print(f"portico gateway: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        # The Realtime API's WebSocket; no compression (base64 audio gains little for
        # the CPU it would cost).
        ws="websockets-sansio",
        ws_max_size=MAX_MESSAGE_BYTES,
        ws_per_message_deflate=False,
        lifespan="on",
        interface="asgi3",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # Drain window: on SIGTERM running requests (and streams) get this long to finish.
        timeout_graceful_shutdown=settings.drain_seconds,
        log_config=logging_config(settings.log_level),
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
