"""The whole path on real processes: control plane → Celery → gateway → upstream → usage.

Deadlines here are generous on purpose: how fast a revision propagates is a
benchmark figure (bench/), not something a test on a busy CI machine should time.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from consumers import services as consumer_services
from consumers.models import UsageRecord
from gatewaysync.models import GatewayInstance, Revision
from tests.conftest import make_catalog, make_subscribed_app
from tests.e2e.conftest import UPSTREAM_KEY, E2EStack, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def models_status(gateway_url: str, key: str) -> int:
    return httpx.get(
        f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5
    ).status_code


def test_key_issued_in_the_control_plane_works_through_the_gateway_until_revoked(
    e2e_stack: E2EStack, django_user_model
):
    gateway_url = e2e_stack.ports.gateway_url
    catalog = make_catalog(base_url=e2e_stack.mock_llm_url, slug="e2e", secret=UPSTREAM_KEY)
    product = catalog.product
    developer = django_user_model.objects.create_user("dev", "dev@example.com", "pw-dev-12345")
    app = make_subscribed_app(owner=developer, catalog=catalog)
    doomed = consumer_services.credential_create(consumer=app, name="doomed")
    spare = consumer_services.credential_create(consumer=app, name="spare")

    eventually(
        lambda: models_status(gateway_url, doomed.key) == 200,
        "the revision with the new key to reach the gateway",
    )
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=doomed.key, max_retries=0)
    assert [m.id for m in client.models.list()] == ["e2e-model"]

    reply = client.chat.completions.create(
        model="e2e-model", messages=[{"role": "user", "content": "hello gateway"}]
    )
    assert reply.choices[0].message.content
    assert "hello gateway" in reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="e2e-model",
            messages=[{"role": "user", "content": "stream please"}],
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream please" in streamed
    # The client did not ask for usage, so the gateway's own usage chunk is stripped.
    assert all(c.usage is None for c in chunks)

    chat_records = UsageRecord.objects.filter(
        credential_id=doomed.credential.pk, route="chat.completions", status=200
    )

    def usage_recorded() -> bool:
        records = list(chat_records.all())
        return len(records) == 2 and all(r.prompt_tokens and r.completion_tokens for r in records)

    eventually(usage_recorded, "usage records of both calls")
    records = list(chat_records.all())
    assert {r.stream for r in records} == {False, True}
    assert {r.product_id for r in records} == {product.pk}
    assert all(r.consumer_id == app.pk for r in records)

    latest = Revision.objects.order_by("-number").first()
    assert latest is not None
    eventually(
        lambda: GatewayInstance.objects.filter(applied_revision=latest.number).exists(),
        "the gateway instance to report the latest revision",
    )

    consumer_services.credential_revoke(credential=doomed.credential)
    eventually(
        lambda: models_status(gateway_url, doomed.key) == 401, "the revoked key to be refused"
    )
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="e2e-model", messages=[{"role": "user", "content": "still there?"}]
        )
    assert models_status(gateway_url, spare.key) == 200
    revocation = Revision.objects.order_by("-number").first()
    assert revocation is not None
    assert revocation.delta is not None  # it travelled as a delta, not a full reload


def test_gateway_restarted_with_the_control_plane_down_serves_its_last_revision(
    e2e_stack: E2EStack, django_user_model
):
    gateway_url = e2e_stack.ports.gateway_url
    catalog = make_catalog(base_url=e2e_stack.mock_llm_url, slug="lkg", secret=UPSTREAM_KEY)
    developer = django_user_model.objects.create_user("dev2", "dev2@example.com", "pw-dev-12345")
    app = make_subscribed_app(owner=developer, catalog=catalog)
    issued = consumer_services.credential_create(consumer=app, name="k")
    eventually(
        lambda: models_status(gateway_url, issued.key) == 200, "the key to reach the gateway"
    )

    e2e_stack.stop_control_plane()
    try:
        e2e_stack.restart_gateway()
        client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=issued.key, max_retries=0)
        reply = client.chat.completions.create(
            model="lkg-model", messages=[{"role": "user", "content": "are you there?"}]
        )
        assert "are you there?" in (reply.choices[0].message.content or "")
    finally:
        e2e_stack.start_control_plane()
