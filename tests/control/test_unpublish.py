"""Unpublishing a product from one portal withdraws the access that portal's apps had."""

from __future__ import annotations

from django.urls import reverse

from catalog import services as catalog_services
from catalog.models import Product
from consumers.models import Subscription
from gateway.keys import hash_key
from gatewaysync import services as sync_services
from portal.models import Portal
from tests.conftest import make_subscribed_app


def app_on(portal, owner, catalog, name):
    app = make_subscribed_app(owner=owner, catalog=catalog, name=name)
    app.portal = portal
    app.save(update_fields=["portal"])
    return app


def test_unpublishing_from_one_portal_revokes_only_that_portals_access(owner, catalog):
    other = Portal.objects.create(name="Partners", slug="partners")
    catalog_services.product_publish(product=catalog.product, portals=[other])
    here = app_on(catalog.portal, owner, catalog, "here")
    there = app_on(other, owner, catalog, "there")

    catalog_services.product_unpublish(product=catalog.product, portal=catalog.portal)

    assert Subscription.objects.get(consumer=here).status == "revoked"
    assert "withdrawn" in Subscription.objects.get(consumer=here).decision_reason
    assert Subscription.objects.get(consumer=there).status == "approved"
    catalog.product.refresh_from_db()
    assert catalog.product.status == Product.Status.PUBLISHED  # still offered on Partners
    assert list(catalog.product.portals.all()) == [other]


def test_unpublished_everywhere_goes_back_to_draft_and_off_the_gateway(owner, catalog):
    from consumers import services

    app = app_on(catalog.portal, owner, catalog, "here")
    issued = services.credential_create(consumer=app, name="k")
    catalog_services.product_unpublish(product=catalog.product, portal=catalog.portal)
    catalog.product.refresh_from_db()
    assert catalog.product.status == Product.Status.DRAFT
    revision = sync_services.revision_publish(keep=5)
    assert revision is not None
    document = bytes(revision.document or b"")
    assert b'"chat"' not in document
    assert hash_key(issued.key).encode() in document  # the key lives on; the access does not


def test_removing_a_portal_in_the_admin_withdraws_access_there(client, staff, owner, catalog):
    app = app_on(catalog.portal, owner, catalog, "here")
    other = Portal.objects.create(name="Partners", slug="partners")
    catalog_services.product_publish(product=catalog.product, portals=[other])
    client.force_login(staff)
    url = reverse("admin:catalog_product_change", args=[catalog.product.pk])
    page = client.get(url)
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {
        name: (value if value is not None else "")
        for name, value in form.initial.items()
        if not isinstance(value, list)
    }
    data.update(
        {
            "portals": [other.pk],
            "tags": "",
            "model_routes-TOTAL_FORMS": "0",
            "model_routes-INITIAL_FORMS": "0",
            "plans-TOTAL_FORMS": "0",
            "plans-INITIAL_FORMS": "0",
        }
    )
    data["category"] = ""
    response = client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Subscription.objects.get(consumer=app).status == "revoked"
