"""The try-it playground: who may use which app and model, and the key it issues."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from consumers import services
from consumers.models import Credential
from portal.playground import PLAYGROUND_KEY_NAME, playground_key, targets_for
from tests.conftest import make_subscribed_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def test_anonymous_visitors_are_sent_to_sign_in(client, db):
    response = client.get(reverse("portal:playground"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_page_offers_only_your_approved_models(client, owner, outsider, catalog):
    mine = make_subscribed_app(owner=owner, catalog=catalog, name="mine")
    pending = services.consumer_create(owner=owner, name="pending")
    services.subscription_create(consumer=pending, product=catalog.product, plan=catalog.plan)
    make_subscribed_app(owner=outsider, catalog=catalog, name="theirs")
    assert [(t.app_name, t.model) for t in targets_for(user=owner)] == [("mine", "chat-model")]
    client.force_login(owner)
    page = client.get(reverse("portal:playground")).content.decode()
    assert f'data-app="{mine.pk}"' in page
    assert "theirs" not in page
    assert "pending" not in page


def test_chatting_through_another_developers_app_is_a_404(client, owner, outsider, catalog):
    theirs = make_subscribed_app(owner=outsider, catalog=catalog)
    client.force_login(owner)
    response = client.post(
        reverse("portal:playground_chat"),
        {"app": theirs.pk, "model": "chat-model", "message": "hi"},
    )
    assert response.status_code == 404
    assert not Credential.objects.filter(name=PLAYGROUND_KEY_NAME).exists()


def test_a_model_the_app_is_not_subscribed_to_is_refused(client, owner, catalog):
    app = services.consumer_create(owner=owner, name="unsubscribed")
    client.force_login(owner)
    response = client.post(
        reverse("portal:playground_chat"), {"app": app.pk, "model": "chat-model", "message": "hi"}
    )
    assert response.status_code == 400
    assert response.content.startswith(b"event: error\n")
    assert not Credential.objects.filter(name=PLAYGROUND_KEY_NAME).exists()


def test_playground_key_is_short_lived_reused_and_never_stored(owner, catalog, settings):
    app = make_subscribed_app(owner=owner, catalog=catalog)
    key = playground_key(consumer=app)
    assert playground_key(consumer=app) == key  # reused while it has time left
    credential = Credential.objects.get(consumer=app, name=PLAYGROUND_KEY_NAME)
    assert credential.expires_at is not None
    lifetime = timedelta(seconds=settings.PORTICO_PLAYGROUND_KEY_SECONDS)
    assert credential.expires_at <= timezone.now() + lifetime
    assert key not in str(Credential.objects.filter(pk=credential.pk).values().get())


@pytest.mark.anyio
async def test_an_unreachable_gateway_becomes_an_error_event(settings):
    from devstack.procs import free_port
    from portal.playground import chat_stream

    settings.PORTICO_GATEWAY_INTERNAL_URL = f"http://127.0.0.1:{free_port()}"
    events = [e async for e in chat_stream(key="portico_x", model="m", message="hi")]
    assert len(events) == 1
    assert events[0].startswith(b"event: error\n")
    assert b"Could not reach the gateway" in events[0]
