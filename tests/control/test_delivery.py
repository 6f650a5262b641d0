"""Delivering revisions from the control plane to a real gateway process (no Celery)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings
from django.utils import timezone

from consumers import services as consumer_services
from devstack.portico import Ports, start_gateway
from devstack.procs import Stack, free_port
from gatewaysync import delivery
from gatewaysync import services as sync_services
from gatewaysync.models import GatewayInstance, Revision
from tests.conftest import make_catalog, make_subscribed_app

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(tmp_path) -> Iterator[tuple[Stack, Ports, str]]:
    ports = Ports(portal=free_port(), gateway=free_port(), mock_llm=free_port())
    admin_port = free_port()
    stack = Stack(log_dir=tmp_path / "log")
    start_gateway(
        stack,
        ports,
        {
            "PORTICO_GATEWAY_SECRET": settings.PORTICO_GATEWAY_SECRET,
            "PORTICO_GATEWAY_ADMIN_PORT": str(admin_port),
            "PORTICO_GATEWAY_STATE_DIR": str(tmp_path / "state"),
            "REDIS_URL": "",
        },
    )
    try:
        yield stack, ports, f"http://127.0.0.1:{admin_port}"
    finally:
        stack.stop_all()


def latest() -> Revision:
    revision = Revision.objects.order_by("-number").first()
    assert revision is not None
    return revision


def models_status(ports: Ports, key: str) -> int:
    return httpx.get(
        f"{ports.gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}
    ).status_code


def test_full_revision_then_revocation_as_delta(gateway, owner):
    stack, ports, admin_url = gateway
    app = make_subscribed_app(owner=owner, catalog=make_catalog())
    issued = consumer_services.credential_create(consumer=app, name="k")
    sync_services.revision_publish(keep=5)
    instance = GatewayInstance.objects.create(
        instance_id="gw-under-test", admin_url=admin_url, last_seen_at=timezone.now()
    )

    delivery.deliver_to_all([instance], latest())
    instance.refresh_from_db()
    assert instance.applied_revision == latest().number
    assert instance.last_delivery_error == ""
    assert models_status(ports, issued.key) == 200

    consumer_services.credential_revoke(credential=issued.credential)
    revocation = sync_services.revision_publish(keep=5)
    assert revocation is not None
    assert revocation.delta is not None
    delivery.deliver_to_all([instance], revocation)
    instance.refresh_from_db()
    assert instance.applied_revision == revocation.number
    assert models_status(ports, issued.key) == 401
    log = stack.services["gateway"].log_path.read_text()
    assert f"applied delta {revocation.number}" in log


def test_gateway_too_far_behind_for_deltas_gets_the_full_revision(gateway, owner):
    _stack, ports, admin_url = gateway
    app = make_subscribed_app(owner=owner, catalog=make_catalog())
    keys = [consumer_services.credential_create(consumer=app, name=f"k{i}") for i in range(3)]
    sync_services.revision_publish(keep=5)
    instance = GatewayInstance.objects.create(
        instance_id="gw-late", admin_url=admin_url, last_seen_at=timezone.now()
    )
    delivery.deliver_to_all([instance], latest())
    # The instance says it applied revision 1; pretend the record is stale (a missed
    # heartbeat) so the delta chain starts from the wrong base: the gateway answers
    # 409 and the full revision settles it.
    for issued in keys[:2]:
        consumer_services.credential_revoke(credential=issued.credential)
        sync_services.revision_publish(keep=5)
    GatewayInstance.objects.filter(pk=instance.pk).update(applied_revision=latest().number - 1)
    instance.refresh_from_db()
    delivery.deliver_to_all([instance], latest())
    instance.refresh_from_db()
    assert instance.applied_revision == latest().number
    assert [models_status(ports, k.key) for k in keys] == [401, 401, 200]


def test_unreachable_gateway_is_recorded_not_raised(gateway, owner):
    stack, _ports, admin_url = gateway
    make_subscribed_app(owner=owner, catalog=make_catalog())
    sync_services.revision_publish(keep=5)
    stack.services["gateway"].stop()
    instance = GatewayInstance.objects.create(
        instance_id="gw-gone", admin_url=admin_url, last_seen_at=timezone.now()
    )
    delivery.deliver_to_all([instance], latest())
    instance.refresh_from_db()
    assert instance.applied_revision is None
    assert "ConnectError" in instance.last_delivery_error


def test_rejected_revision_is_recorded_and_the_gateway_keeps_its_own(gateway, owner):
    stack, ports, admin_url = gateway
    app = make_subscribed_app(owner=owner, catalog=make_catalog())
    issued = consumer_services.credential_create(consumer=app, name="k")
    good = sync_services.revision_publish(keep=5)
    assert good is not None
    instance = GatewayInstance.objects.create(
        instance_id="gw-picky", admin_url=admin_url, last_seen_at=timezone.now()
    )
    delivery.deliver_to_all([instance], good)
    bad = Revision.objects.create(
        number=good.number + 1,
        content_hash="0" * 64,
        document=bytes(good.document or b"").replace(b'"schema":1', b'"schema":99'),
    )
    instance.refresh_from_db()
    delivery.deliver_to_all([instance], bad)
    instance.refresh_from_db()
    assert instance.applied_revision == good.number
    assert "400" in instance.last_delivery_error
    assert models_status(ports, issued.key) == 200
    assert stack.services["gateway"].is_running()
