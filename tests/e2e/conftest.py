"""Real processes for the end-to-end tests: mock LLM, portal, Celery worker and beat,
gateway — against the test database and the configured broker (Redis when REDIS_URL
is set, else the file-system broker)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import connection
from django.test import TransactionTestCase
from playwright.sync_api import Browser, Page, sync_playwright

from devstack.portico import (
    Ports,
    start_beat,
    start_gateway,
    start_mock_llm,
    start_portal,
    start_worker,
)
from devstack.procs import Stack, free_port, wait_until

UPSTREAM_KEY = "sk-e2e-upstream-" + "u" * 24
CHROMIUM = "/usr/bin/chromium"


def _test_database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "", safe="")
    password = quote(db.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = db.get("HOST") or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{db['NAME']}"


@dataclass
class E2EStack:
    stack: Stack
    ports: Ports
    env: dict[str, str]
    mock_llm_url: str
    beat_schedule: str
    mail_dir: Path

    def start_control_plane(self) -> None:
        start_portal(self.stack, self.ports)
        start_worker(self.stack)
        start_beat(self.stack, self.beat_schedule)

    def stop_control_plane(self) -> None:
        for name in ("beat", "worker", "portal"):
            self.stack.services.pop(name).stop()

    def restart_gateway(self) -> None:
        self.stack.services.pop("gateway").stop()
        start_gateway(self.stack, self.ports, self.env)


@pytest.fixture(scope="session")
def e2e_stack(
    django_db_setup: None, django_db_blocker: pytest.FixtureRequest, tmp_path_factory
) -> Iterator[E2EStack]:
    tmp: Path = tmp_path_factory.mktemp("e2e")
    ports = Ports(portal=free_port(), gateway=free_port(), mock_llm=free_port())
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        database_url = _test_database_url()
    env = {
        "DATABASE_URL": database_url,
        "PORTICO_VAR_DIR": str(settings.VAR_DIR),
        "PORTICO_GATEWAY_SECRET": settings.PORTICO_GATEWAY_SECRET,
        "PORTICO_GATEWAY_STATE_DIR": str(tmp / "gateway"),
        "PORTICO_GATEWAY_HEARTBEAT_SECONDS": "1",
        "PORTICO_GATEWAY_USAGE_FLUSH_SECONDS": "0.5",
        "PORTICO_RECONCILE_SECONDS": "1",
        "PORTICO_GATEWAY_PUBLIC_URL": ports.gateway_url,
        # The OAuth issuer the gateway's protected resource metadata names.
        "PORTICO_PORTAL_URL": ports.portal_url,
        # Mail lands in files the tests read (verification links).
        "PORTICO_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
        "PORTICO_EMAIL_FILE_PATH": str(tmp / "mail"),
    }
    stack = Stack(log_dir=tmp / "log")
    stack.base_env = {**stack.base_env, **env}
    e2e = E2EStack(
        stack=stack,
        ports=ports,
        env=env,
        mock_llm_url=ports.mock_llm_url,
        beat_schedule=str(tmp / "beat-schedule"),
        mail_dir=tmp / "mail",
    )
    try:
        start_mock_llm(stack, ports, require_key=UPSTREAM_KEY)
        e2e.start_control_plane()
        start_gateway(stack, ports)
        yield e2e
    finally:
        stack.stop_all()
        with django_db_blocker.unblock():  # type: ignore[attr-defined]
            _wait_for_other_sessions_to_end()


def _wait_for_other_sessions_to_end(timeout: float = 10.0) -> None:
    """The processes are gone, but PostgreSQL may not have noticed all their sessions
    yet (and a worker's pool child killed mid-task can outlive its parent); the test
    database cannot be dropped while any remains. Wait for them, then end stragglers."""
    if connection.vendor != "postgresql":
        return
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if not cursor.fetchall():
                return
            time.sleep(0.2)
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    connection.close()


# Not in the type stubs: Django's flush of the database after a transactional test.
_flush = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]


def _flush_retrying_deadlocks(self: TransactionTestCase) -> None:
    """The end-to-end tests' processes keep writing in the background (usage drained
    every second, revisions reconciled); a flush's TRUNCATE of every table can deadlock
    with such a transaction, and PostgreSQL may pick the flush to abort. Try again: the
    other transaction is done by then."""
    for attempt in range(5):
        try:
            _flush(self)
            return
        except CommandError as exc:
            if "deadlock detected" not in str(exc.__cause__) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


setattr(TransactionTestCase, "_fixture_teardown", _flush_retrying_deadlocks)  # noqa: B010


@pytest.fixture(scope="module")
def browser(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Browser]:
    """Debian's headless Chromium driven by Playwright (its own download cannot work here).

    Module-scoped: Playwright's sync API keeps an event loop running in this thread
    while it is open, which later tests that start their own loop must not inherit.
    """
    # The tests' ORM calls are ordinary blocking calls made between page actions, which
    # Django must allow while that loop exists.
    monkeypatch_module.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots of the main pages are kept after the run."""
    path = Path(settings.VAR_DIR) / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` until it holds. Deadlines are generous on purpose: how fast things
    propagate is a benchmark figure (bench/), not something a test on a busy CI
    machine should time."""
    wait_until(check, timeout=timeout, interval=0.2, what=what)
