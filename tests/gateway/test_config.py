"""Gateway settings: sensible defaults, loud failures on bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewaySettings

SECRET = "config-test-secret-" + "z" * 20


def settings(**env: str) -> GatewaySettings:
    return GatewaySettings.from_env({"PORTICO_GATEWAY_SECRET": SECRET, **env})


def test_defaults_match_the_documentation() -> None:
    s = settings()
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8080, 1)
    assert (s.admin_host, s.admin_port, s.admin_url) == ("127.0.0.1", 0, None)
    assert s.control_plane_url == "http://127.0.0.1:8000"
    assert s.state_dir == Path("var/gateway")
    assert (s.heartbeat_seconds, s.usage_flush_seconds) == (5.0, 1.0)
    assert s.max_body_bytes == 10 * 1024 * 1024
    assert s.redis_url is None
    assert s.log_level == "INFO"
    assert s.instance_id


def test_missing_secret_fails_with_a_message_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="PORTICO_GATEWAY_SECRET is required"):
        GatewaySettings.from_env({})


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 32 characters"):
        GatewaySettings.from_env({"PORTICO_GATEWAY_SECRET": "too-short"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORTICO_GATEWAY_PORT", "http", "PORTICO_GATEWAY_PORT must be an integer"),
        ("PORTICO_GATEWAY_PORT", "70000", "PORTICO_GATEWAY_PORT must be between"),
        ("PORTICO_GATEWAY_WORKERS", "0", "PORTICO_GATEWAY_WORKERS must be between"),
        ("PORTICO_GATEWAY_HEARTBEAT_SECONDS", "soon", "must be a number of seconds"),
        ("PORTICO_GATEWAY_USAGE_FLUSH_SECONDS", "0", "must be between 0.01 and 3600"),
        ("PORTICO_GATEWAY_MAX_BODY_BYTES", "-1", "PORTICO_GATEWAY_MAX_BODY_BYTES must be"),
        ("PORTICO_CONTROL_PLANE_URL", "ftp://cp", "PORTICO_CONTROL_PLANE_URL must be an http"),
        ("PORTICO_GATEWAY_ADMIN_URL", "gw:9000", "PORTICO_GATEWAY_ADMIN_URL must be an http"),
        ("REDIS_URL", "localhost:6379", "REDIS_URL must start with"),
        ("PORTICO_LOG_LEVEL", "LOUD", "PORTICO_LOG_LEVEL must be one of"),
        ("PORTICO_GATEWAY_INSTANCE_ID", "a/b", "PORTICO_GATEWAY_INSTANCE_ID may contain only"),
    ],
)
def test_bad_values_fail_loudly(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(**{name: value})


def test_fixed_admin_port_with_several_workers_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be 0"):
        settings(PORTICO_GATEWAY_WORKERS="2", PORTICO_GATEWAY_ADMIN_PORT="9000")


def test_instance_ids_stay_distinct_across_workers() -> None:
    assert settings(PORTICO_GATEWAY_INSTANCE_ID="gw1").instance_id == "gw1"
    several = settings(PORTICO_GATEWAY_INSTANCE_ID="gw1", PORTICO_GATEWAY_WORKERS="4")
    assert several.instance_id.startswith("gw1-")
    assert several.instance_id != "gw1"
    assert settings().instance_id != settings().instance_id


def test_advertised_admin_url_uses_the_bound_port() -> None:
    assert settings().advertised_admin_url(41234) == "http://127.0.0.1:41234"
    custom = settings(PORTICO_GATEWAY_ADMIN_URL="https://gw-1.internal:{port}/")
    assert custom.advertised_admin_url(41234) == "https://gw-1.internal:41234"


def test_secrets_stay_out_of_the_settings_repr() -> None:
    s = settings(REDIS_URL="redis://:hunter2-redis-password@localhost:6379/0")
    assert SECRET not in repr(s)
    assert s.keys.auth_token not in repr(s)
    assert "hunter2" not in repr(s)
