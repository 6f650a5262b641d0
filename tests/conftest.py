"""Shared fixtures: personas (owner, another developer, staff, anonymous) and a catalog."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import connection

from catalog import services as catalog_services
from catalog.models import Plan, Product, Upstream
from config.env import env_list
from consumers import services as consumer_services
from consumers.models import Consumer, Subscription
from devstack.procs import Stack, free_port, wait_until
from portal.models import Portal

# The servers tests start listen on loopback, which the egress policy (gateway/egress.py)
# refuses unless allowed. Settings are loaded before this file, so they are told too;
# processes the tests start inherit the environment.
os.environ.setdefault("PORTICO_EGRESS_ALLOW", "127.0.0.0/8,::1")
django_settings.PORTICO_EGRESS_ALLOW = env_list("PORTICO_EGRESS_ALLOW", [])


@dataclass
class Catalog:
    portal: Portal
    upstream: Upstream
    product: Product
    plan: Plan


@pytest.fixture
def owner(db: None) -> User:
    return User.objects.create_user("alice", "alice@example.com", "alice-password-1")


@pytest.fixture
def outsider(db: None) -> User:
    return User.objects.create_user("mallory", "mallory@example.com", "mallory-password-1")


@pytest.fixture
def staff(db: None) -> User:
    return User.objects.create_superuser("root", "root@example.com", "root-password-1")


@pytest.fixture
def anonymous() -> AnonymousUser:
    return AnonymousUser()


def make_catalog(
    *,
    base_url: str = "http://127.0.0.1:9/v1",
    slug: str = "chat",
    secret: str = "sk-upstream-" + "x" * 24,
) -> Catalog:
    """A published model product ``slug`` routing ``<slug>-model`` to ``base_url``."""
    portal, _ = Portal.objects.get_or_create(
        slug="main", defaults={"name": "Main", "is_default": True}
    )
    upstream = catalog_services.upstream_create(
        name=f"upstream-{slug}", base_url=base_url, secret=secret
    )
    product = catalog_services.product_create(name=slug.title(), slug=slug, kind="model")
    catalog_services.model_route_create(
        product=product, name=f"{slug}-model", upstream=upstream, upstream_model="mock"
    )
    plan = catalog_services.plan_create(product=product, name="Free", requests_per_minute=60)
    catalog_services.product_publish(product=product, portals=[portal])
    return Catalog(portal=portal, upstream=upstream, product=product, plan=plan)


def make_subscribed_app(*, owner: User, catalog: Catalog, name: str = "app") -> Consumer:
    """An app of ``owner`` with an approved subscription to ``catalog``'s product."""
    app = consumer_services.consumer_create(owner=owner, name=name)
    sub = consumer_services.subscription_create(
        consumer=app, product=catalog.product, plan=catalog.plan
    )
    consumer_services.subscription_approve(subscription=sub)
    return app


@pytest.fixture
def catalog(db: None) -> Catalog:
    return make_catalog()


@pytest.fixture
def consumer(owner: User) -> Consumer:
    return consumer_services.consumer_create(owner=owner, name="Alice's app")


@pytest.fixture
def subscription(consumer: Consumer, catalog: Catalog) -> Subscription:
    sub = consumer_services.subscription_create(
        consumer=consumer, product=catalog.product, plan=catalog.plan
    )
    return consumer_services.subscription_approve(subscription=sub)


@pytest.fixture(autouse=True)
def _fast_password_hashing(request, settings):
    # PBKDF2's deliberate slowness protects real passwords, not test personas. End-to-end
    # tests keep the real hasher: the portal process they sign in to checks with it.
    if request.node.get_closest_marker("e2e") is None:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def pytest_report_header(config: pytest.Config) -> list[str]:
    from django.conf import settings

    return [
        f"portico database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}",
        f"portico broker: {'redis' if settings.REDIS_URL else 'file-system'}",
    ]


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    """A private redis-server on a free port (the binary CI installs)."""
    port = free_port()
    stack = Stack(log_dir=tmp_path / "redis-log")
    stack.start(
        "redis",
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
    )
    client = redis.Redis(port=port, socket_timeout=2)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(pings, timeout=10, what="redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        stack.stop_all()


def run_in_thread(fn: Callable[[], None], errors: list[BaseException]) -> threading.Thread:
    """A thread running ``fn`` with its own database connection; what it raises lands in
    ``errors`` for the test to report, instead of being lost with the thread."""

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    return threading.Thread(target=run)
