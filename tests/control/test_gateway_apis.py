"""The endpoints gateways call: heartbeat and usage ingest."""

import time
import uuid

import msgspec
import pytest

from consumers.models import Credential, UsageRecord
from consumers.services import credential_create
from gateway import schema
from gatewaysync.compiler import gateway_keys
from gatewaysync.models import GatewayInstance


@pytest.fixture
def gw_headers():
    return {"HTTP_AUTHORIZATION": f"Bearer {gateway_keys().auth_token}"}


def beat(**overrides):
    body = {
        "instance_id": "gw-test-1",
        "admin_url": "http://127.0.0.1:18081",
        "applied_revision": None,
        "version": "0.1.0",
        "pid": 123,
        "started_at": time.time(),
    }
    return {**body, **overrides}


def event(**overrides):
    body = {
        "id": uuid.uuid4().hex,
        "request_id": uuid.uuid4().hex,
        "ts": time.time(),
        "status": 200,
        "latency_ms": 12.5,
        "gateway": "gw-test-1",
        "route": "chat.completions",
        "model": "chat-model",
        "prompt_tokens": 7,
        "completion_tokens": 3,
    }
    return {**body, **overrides}


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic abc", "Bearer "])
@pytest.mark.parametrize("path", ["/api/v1/gateway/heartbeat", "/api/v1/gateway/usage"])
def test_gateway_endpoints_refuse_without_the_token(client, db, auth, path):
    extra = {"HTTP_AUTHORIZATION": auth} if auth else {}
    response = client.post(path, data=beat(), content_type="application/json", **extra)
    assert response.status_code in (401, 403)
    assert not GatewayInstance.objects.exists()


def test_heartbeat_registers_and_updates_an_instance(client, db, gw_headers):
    response = client.post(
        "/api/v1/gateway/heartbeat", data=beat(), content_type="application/json", **gw_headers
    )
    assert response.status_code == 200
    assert response.json() == {"latest_revision": None}
    client.post(
        "/api/v1/gateway/heartbeat",
        data=beat(applied_revision=4, admin_url="http://127.0.0.1:18082"),
        content_type="application/json",
        **gw_headers,
    )
    instance = GatewayInstance.objects.get()
    assert instance.applied_revision == 4
    assert instance.admin_url == "http://127.0.0.1:18082"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"{}", b'{"instance_id": "x", "admin_url": "file:///etc/passwd"}'],
)
def test_bad_heartbeat_is_a_400_and_changes_nothing(client, db, gw_headers, body):
    response = client.post(
        "/api/v1/gateway/heartbeat", data=body, content_type="application/json", **gw_headers
    )
    assert response.status_code == 400
    assert not GatewayInstance.objects.exists()


def test_usage_ingest_is_idempotent(client, db, gw_headers):
    events = [
        event(target="vendor-a/gpt-4o", cached=True, estimated=True),
        event(status=401, model=None, prompt_tokens=None),
    ]
    body = msgspec.json.encode({"events": events})
    for expected_stored in (2, 0):
        response = client.post(
            "/api/v1/gateway/usage", data=body, content_type="application/json", **gw_headers
        )
        assert response.status_code == 200
        assert response.json() == {"received": 2, "stored": expected_stored}
    assert UsageRecord.objects.count() == 2
    record = UsageRecord.objects.get(event_id=events[0]["id"])
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (7, 3, 200)
    assert (record.target, record.cached, record.tokens_estimated) == (
        "vendor-a/gpt-4o",
        True,
        True,
    )
    other = UsageRecord.objects.get(event_id=events[1]["id"])
    assert (other.target, other.cached, other.tokens_estimated) == ("", False, False)


def test_usage_updates_the_credential_last_used_time(client, consumer, gw_headers):
    issued = credential_create(consumer=consumer, name="k")
    ts = time.time()
    body = msgspec.json.encode({"events": [event(credential=issued.credential.pk, ts=ts)]})
    client.post("/api/v1/gateway/usage", data=body, content_type="application/json", **gw_headers)
    used = Credential.objects.get(pk=issued.credential.pk).last_used_at
    assert used is not None
    assert abs(used.timestamp() - ts) < 0.01


def test_malformed_usage_batch_stores_nothing(client, db, gw_headers):
    body = msgspec.json.encode({"events": [event(), {"id": "short"}]})
    response = client.post(
        "/api/v1/gateway/usage", data=body, content_type="application/json", **gw_headers
    )
    assert response.status_code == 400
    assert not UsageRecord.objects.exists()


def test_heartbeat_schema_is_the_gateways(db):
    # The control plane decodes with the data plane's own struct, so they cannot drift.
    assert msgspec.json.decode(msgspec.json.encode(beat()), type=schema.Heartbeat)
