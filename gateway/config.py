"""Gateway settings, read once from the environment and checked strictly.

Every variable, its default and what it does:

``PORTICO_GATEWAY_SECRET`` (required)
    The secret shared with the control plane, at least 32 characters. The bearer token
    both planes present and the key that seals upstream secrets are derived from it
    (``gateway.secrets``); it is never logged.
``PORTICO_GATEWAY_HOST`` (``127.0.0.1``)
    Address the public API listens on.
``PORTICO_GATEWAY_PORT`` (``8080``)
    Port the public API listens on.
``PORTICO_GATEWAY_WORKERS`` (``1``)
    Number of gateway processes (one per core is the sweet spot). Each process holds its
    own copy of the revision and its own admin listener.
``PORTICO_GATEWAY_ADMIN_HOST`` (``127.0.0.1``)
    Address of the per-process admin listener the control plane pushes revisions to.
    Keep it on a private interface.
``PORTICO_GATEWAY_ADMIN_PORT`` (``0``)
    Port of the admin listener. ``0`` picks a free port per process, so several
    processes on one host each get their own; a fixed port requires one worker.
``PORTICO_GATEWAY_ADMIN_URL`` (unset)
    The admin URL advertised in heartbeats, for when the control plane must reach the
    gateway through another name or address. ``{port}`` in it is replaced by the bound
    admin port. Default: ``http://<admin host>:<bound port>`` (the machine's host name
    when the admin host is a wildcard address).
``PORTICO_CONTROL_PLANE_URL`` (``http://127.0.0.1:8000``)
    Base URL of the control plane (heartbeats, usage ingest without Redis).
``PORTICO_GATEWAY_STATE_DIR`` (``var/gateway``)
    Where the last-known-good revision (``revision.json`` plus its delta log,
    ``revision.log``) and the usage spool
    (``spool/``) live. Created if missing.
``PORTICO_GATEWAY_HEARTBEAT_SECONDS`` (``5``)
    Interval between heartbeats.
``PORTICO_GATEWAY_USAGE_FLUSH_SECONDS`` (``1``)
    Interval between usage flushes (a flush also happens at 500 buffered events).
``PORTICO_GATEWAY_MAX_BODY_BYTES`` (``10485760``, 10 MiB)
    Largest request body accepted on the API; larger ones get 413.
``PORTICO_GATEWAY_DRAIN_SECONDS`` (``30``)
    On shutdown, how long running requests may take to finish before they are cut.
``PORTICO_GATEWAY_INSTANCE_ID`` (``<hostname>-<pid>-<random>``)
    Name of this process in heartbeats, usage events and spool files. With several
    workers, ``-<pid>`` is appended so every process keeps a distinct name.
``REDIS_URL`` (unset)
    When set, usage batches go to the Redis stream ``portico:usage`` instead of the
    control plane's HTTP ingest endpoint, and plan limits are counted in Redis, so they
    hold across gateway processes.
``PORTICO_GATEWAY_REDIS_TIMEOUT_SECONDS`` (``0.5``)
    How long a rate-limit check waits for Redis before the call is decided by this
    process's own counters instead (Redis is then left alone for two seconds).
``PORTICO_GATEWAY_ALLOWED_ORIGINS`` (unset)
    Comma-separated browser origins (``https://app.example.com``) that may call the MCP
    endpoints, besides loopback pages, the portal and the gateway's own public URL;
    ``*`` allows any. A request naming another ``Origin`` gets 403 (the MCP
    specification's defence against DNS rebinding).
``PORTICO_EGRESS_ALLOW`` (unset)
    Networks, addresses and host names upstreams may be reached at although they are
    not public (``10.0.0.0/8,ollama.internal``); every new upstream connection is
    checked (``gateway.connector``). Unset, only public addresses are dialled.
``PORTICO_LOG_LEVEL`` (``INFO``)
    ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.egress import EgressPolicy
from gateway.secrets import GatewayKeys

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_URL = re.compile(r"^https?://[^\s/]+")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything a gateway process is configured with (see the module docstring)."""

    keys: GatewayKeys = field(repr=False)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    admin_url: str | None = None
    control_plane_url: str = "http://127.0.0.1:8000"
    state_dir: Path = Path("var/gateway")
    heartbeat_seconds: float = 5.0
    usage_flush_seconds: float = 1.0
    max_body_bytes: int = 10 * 1024 * 1024
    drain_seconds: int = 30
    instance_id: str = ""
    # A Redis URL may carry a password, so it stays out of reprs.
    redis_url: str | None = field(default=None, repr=False)
    redis_timeout_seconds: float = 0.5
    cache_max_bytes: int = 64 * 1024 * 1024
    allowed_origins: frozenset[str] = frozenset()
    egress: EgressPolicy = field(default_factory=EgressPolicy)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        """Read and validate the settings; raises :class:`ConfigError` on any bad value."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        secret = env.get("PORTICO_GATEWAY_SECRET", "")
        if not secret:
            raise ConfigError(
                "PORTICO_GATEWAY_SECRET is required: set it to the same value as on the "
                "control plane (at least 32 random characters)"
            )
        if len(secret) < 32:
            raise ConfigError("PORTICO_GATEWAY_SECRET must be at least 32 characters long")
        workers = reader.integer("PORTICO_GATEWAY_WORKERS", 1, low=1, high=512)
        admin_port = reader.integer("PORTICO_GATEWAY_ADMIN_PORT", 0, low=0, high=65535)
        if admin_port and workers > 1:
            raise ConfigError(
                "PORTICO_GATEWAY_ADMIN_PORT must be 0 (a free port per process) when "
                "PORTICO_GATEWAY_WORKERS is above 1"
            )
        admin_url = env.get("PORTICO_GATEWAY_ADMIN_URL") or None
        if admin_url is not None and not _URL.match(admin_url):
            raise ConfigError("PORTICO_GATEWAY_ADMIN_URL must be an http:// or https:// URL")
        control_plane_url = env.get("PORTICO_CONTROL_PLANE_URL", "http://127.0.0.1:8000")
        if not _URL.match(control_plane_url):
            raise ConfigError("PORTICO_CONTROL_PLANE_URL must be an http:// or https:// URL")
        redis_url = env.get("REDIS_URL") or None
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("REDIS_URL must start with redis://, rediss:// or unix://")
        log_level = env.get("PORTICO_LOG_LEVEL", "INFO").upper()
        if log_level not in _LOG_LEVELS:
            raise ConfigError(f"PORTICO_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")
        return cls(
            keys=GatewayKeys.from_secret(secret),
            host=env.get("PORTICO_GATEWAY_HOST", "127.0.0.1"),
            port=reader.integer("PORTICO_GATEWAY_PORT", 8080, low=0, high=65535),
            workers=workers,
            admin_host=env.get("PORTICO_GATEWAY_ADMIN_HOST", "127.0.0.1"),
            admin_port=admin_port,
            admin_url=admin_url,
            control_plane_url=control_plane_url.rstrip("/"),
            state_dir=Path(env.get("PORTICO_GATEWAY_STATE_DIR", "var/gateway")),
            heartbeat_seconds=reader.seconds("PORTICO_GATEWAY_HEARTBEAT_SECONDS", 5.0),
            usage_flush_seconds=reader.seconds("PORTICO_GATEWAY_USAGE_FLUSH_SECONDS", 1.0),
            max_body_bytes=reader.integer(
                "PORTICO_GATEWAY_MAX_BODY_BYTES", 10 * 1024 * 1024, low=1, high=1 << 30
            ),
            drain_seconds=reader.integer("PORTICO_GATEWAY_DRAIN_SECONDS", 30, low=0, high=3600),
            instance_id=_instance_id(env.get("PORTICO_GATEWAY_INSTANCE_ID"), workers),
            redis_url=redis_url,
            redis_timeout_seconds=reader.seconds("PORTICO_GATEWAY_REDIS_TIMEOUT_SECONDS", 0.5),
            cache_max_bytes=reader.integer(
                "PORTICO_GATEWAY_CACHE_MAX_BYTES", 64 * 1024 * 1024, low=0, high=1 << 40
            ),
            allowed_origins=_origins(env.get("PORTICO_GATEWAY_ALLOWED_ORIGINS", "")),
            egress=_egress(env),
            log_level=log_level,
        )

    def advertised_admin_url(self, bound_port: int) -> str:
        """The admin URL to put in heartbeats once the listener knows its port."""
        if self.admin_url is not None:
            return self.admin_url.replace("{port}", str(bound_port)).rstrip("/")
        host = self.admin_host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - not binding, naming a wildcard
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{bound_port}"


def _egress(env: Mapping[str, str]) -> EgressPolicy:
    try:
        return EgressPolicy.from_env(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _origins(raw: str) -> frozenset[str]:
    origins = frozenset(item.strip().rstrip("/") for item in raw.split(",") if item.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^\s/]+", origin):
            raise ConfigError(
                "PORTICO_GATEWAY_ALLOWED_ORIGINS must list origins such as "
                f"https://app.example.com (or *), not {origin!r}"
            )
    return origins


class _Reader:
    """Strict parsers that name the offending variable in their errors."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
        return value

    def seconds(self, name: str, default: float) -> float:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
        if not 0.01 <= value <= 3600:
            raise ConfigError(f"{name} must be between 0.01 and 3600 seconds, got {value}")
        return value


def _instance_id(configured: str | None, workers: int) -> str:
    if configured:
        if not _INSTANCE_ID.match(configured):
            raise ConfigError(
                "PORTICO_GATEWAY_INSTANCE_ID may contain only letters, digits, '.', '_' "
                "and '-' (it names spool files), up to 200 characters"
            )
        # Several processes must never share a name: heartbeats and spool files are per process.
        return f"{configured}-{os.getpid()}" if workers > 1 else configured
    hostname = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100] or "gateway"
    return f"{hostname}-{os.getpid()}-{os.urandom(3).hex()}"
