"""Fixtures of the control-plane tests: one world every access matrix runs over."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from catalog.models import Plan, Product
from consumers import services
from consumers.models import Consumer, Credential, Subscription
from portal import services as portal_services
from portal.models import Membership, PersonalAccessToken
from tests.conftest import Catalog, make_catalog


@dataclass
class World:
    catalog: Catalog
    app: Consumer
    key: Credential
    subscription: Subscription  # approved, on catalog.product
    pending: Subscription  # awaiting review, on the "review" product
    extra_product: Product  # published, automatic approval, not subscribed yet
    extra_plan: Plan
    token: PersonalAccessToken  # the owner's
    token_plaintext: str

    def ids(self) -> dict[str, Any]:
        return {
            "app": self.app.pk,
            "key": self.key.pk,
            "sub": self.subscription.pk,
            "pending": self.pending.pk,
            "token": self.token.pk,
            "extra_plan": self.extra_plan.pk,
        }


@pytest.fixture
def world(owner, outsider, staff) -> World:
    catalog = make_catalog()
    for user in (owner, outsider):
        Membership.objects.create(portal=catalog.portal, user=user, status="approved")
    app = services.consumer_create(owner=owner, name="alice-app", portal=catalog.portal)
    key = services.credential_create(consumer=app, name="k").credential
    sub = services.subscription_create(consumer=app, product=catalog.product, plan=catalog.plan)
    services.subscription_approve(subscription=sub)
    review = make_catalog(slug="review").product
    review.subscription_approval = "manual"
    review.save(update_fields=["subscription_approval"])
    pending = services.subscription_create(consumer=app, product=review, plan=review.plans.get())
    extra = make_catalog(slug="extra")
    services.consumer_create(owner=outsider, name="mallory-app", portal=catalog.portal)
    token, plaintext = portal_services.access_token_create(user=owner, name="laptop")
    return World(
        catalog=catalog,
        app=app,
        key=key,
        subscription=sub,
        pending=pending,
        extra_product=extra.product,
        extra_plan=extra.plan,
        token=token,
        token_plaintext=plaintext,
    )
