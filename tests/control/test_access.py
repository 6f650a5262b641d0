"""The access matrix: owner and staff reach a developer's objects; others get 404."""

import pytest
from django.http import Http404

from consumers import selectors, services


@pytest.fixture
def objects(consumer, subscription):
    credential = services.credential_create(consumer=consumer, name="k").credential
    return {
        selectors.consumer_get_for_user: consumer.pk,
        selectors.credential_get_for_user: credential.pk,
        selectors.subscription_get_for_user: subscription.pk,
    }


@pytest.mark.parametrize("persona", ["owner", "staff"])
def test_owner_and_staff_reach_every_object(request, objects, persona):
    user = request.getfixturevalue(persona)
    for getter, pk in objects.items():
        assert getter(user=user, pk=pk).pk == pk


@pytest.mark.parametrize("persona", ["outsider", "anonymous"])
def test_other_developers_and_visitors_get_404(request, objects, persona):
    user = request.getfixturevalue(persona)
    for getter, pk in objects.items():
        with pytest.raises(Http404):
            getter(user=user, pk=pk)


def test_consumer_list_shows_only_own_apps(owner, outsider, consumer):
    services.consumer_create(owner=outsider, name="Mallory's app")
    assert list(selectors.consumer_list_for_user(user=owner)) == [consumer]
