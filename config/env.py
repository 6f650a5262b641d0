"""Strict readers of environment variables: every setting comes through here.

Each helper fails at start with a message naming the variable, so a typo in a
deployment is an error at boot, not a surprise under load.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class ConfigurationError(RuntimeError):
    """A setting is missing or malformed."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, not {value!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, not {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, not {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def secret_from_env_or_file(
    name: str, path: Path, *, generate: bool, nbytes: int = 32, min_length: int = 32
) -> str:
    """The secret in ``name``; else, on the embedded defaults, one generated per install.

    A generated secret is written once to ``path`` (mode 0600, created exclusively so
    two processes starting together agree on one value) and reused afterwards. In
    production (``generate`` false) a missing secret is a configuration error.
    """
    value = os.environ.get(name)
    if value:
        if len(value) < min_length:
            raise ConfigurationError(f"{name} must be at least {min_length} characters long")
        return value
    if path.exists():
        return path.read_text().strip()
    if not generate:
        raise ConfigurationError(
            f"{name} is not set. Production requires it; generate one with "
            f"`python -c 'import secrets; print(secrets.token_urlsafe(48))'`."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()
