"""A developer's first five minutes, in a real browser against the real processes.

Sign up → verify the email → browse the catalog → create an app → subscribe → get a
key → call the gateway with it. And an admin approving a pending subscription in the
admin, after which the developer's key works. Screenshots of the main pages are kept
in ``<var>/artifacts/``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import openai
import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from consumers import services as consumer_services
from consumers.models import Subscription, UsageRecord
from portal.models import Membership
from tests.conftest import make_catalog
from tests.e2e.conftest import UPSTREAM_KEY, E2EStack, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long and private passphrase 42"


def verification_link(mail_dir: Path, email: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in sorted(mail_dir.glob("*.log")) if mail_dir.exists() else []:
            text = message.read_text()
            if email in text:
                found = re.search(r"https?://\S+/accounts/confirm-email/\S+/", text)
                if found:
                    return found.group(0)
        time.sleep(0.2)
    pytest.fail(f"no verification email for {email} within {timeout:.0f}s")


def gateway_accepts(gateway_url: str, key: str) -> bool:
    response = httpx.get(
        f"{gateway_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5
    )
    return response.status_code == 200


def test_developer_signs_up_subscribes_and_calls_the_gateway(
    e2e_stack: E2EStack, page: Page, artifacts: Path
):
    portal_url = e2e_stack.ports.portal_url
    catalog = make_catalog(base_url=e2e_stack.mock_llm_url, slug="journey", secret=UPSTREAM_KEY)

    page.goto(f"{portal_url}/accounts/signup/")
    page.fill("input[name=email]", "ada@example.com")
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.screenshot(path=artifacts / "01-sign-up.png", full_page=True)
    page.locator("form button[type=submit]").last.click()
    expect(page.locator("body")).to_contain_text("Verify")

    page.goto(verification_link(e2e_stack.mail_dir, "ada@example.com"))
    page.locator("form button[type=submit]").last.click()
    expect(page).to_have_url(re.compile(r"/apps/$"))

    page.goto(f"{portal_url}/catalog/")
    expect(page.locator("body")).to_contain_text(catalog.product.name)
    page.screenshot(path=artifacts / "02-catalog.png", full_page=True)

    page.goto(f"{portal_url}/apps/")
    page.fill("input[name=name]", "Ada's app")
    page.get_by_role("button", name="Create app").click()
    expect(page.locator("h1")).to_contain_text("Ada's app")

    page.goto(f"{portal_url}/products/{catalog.product.slug}/")
    page.screenshot(path=artifacts / "03-product.png", full_page=True)
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("body")).to_contain_text("is subscribed to")

    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text().strip()
    assert key.startswith("portico_")
    page.screenshot(path=artifacts / "04-new-key.png", full_page=True)

    gateway_url = e2e_stack.ports.gateway_url
    eventually(lambda: gateway_accepts(gateway_url, key), "the new key to reach the gateway")
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key, max_retries=0)
    reply = client.chat.completions.create(
        model="journey-model", messages=[{"role": "user", "content": "first call"}]
    )
    assert "first call" in (reply.choices[0].message.content or "")

    page.goto(f"{portal_url}/apps/")
    page.get_by_role("link", name="Ada's app").click()
    expect(page.locator("body")).not_to_contain_text(key)  # shown once, never again
    page.screenshot(path=artifacts / "05-app.png", full_page=True)

    # The call shows up in the developer's usage dashboard once its event is ingested.
    eventually(
        lambda: UsageRecord.objects.filter(
            route="chat.completions", model="journey-model"
        ).exists(),
        "the call's usage record",
    )
    page.goto(f"{portal_url}/usage/?window=24h")
    expect(page.locator("table.usage-table").first).to_contain_text("journey-model")
    requests_total = page.locator(".usage-totals dd").first.inner_text()
    assert int(requests_total.replace(",", "")) >= 1
    page.wait_for_timeout(300)  # let the charts draw before the screenshot
    page.screenshot(path=artifacts / "06-usage.png", full_page=True)

    # The playground streams an answer through the gateway with the app's own key.
    page.goto(f"{portal_url}/playground/")
    page.fill("#message", "hello playground")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#answer")).to_contain_text("hello playground", timeout=30_000)
    expect(page.locator("#answer-meta")).to_contain_text("completion tokens")
    page.screenshot(path=artifacts / "07-playground.png", full_page=True)


def test_admin_approves_a_pending_subscription_in_the_admin(
    e2e_stack: E2EStack, page: Page, artifacts: Path
):
    catalog = make_catalog(base_url=e2e_stack.mock_llm_url, slug="gated", secret=UPSTREAM_KEY)
    catalog.product.subscription_approval = "manual"
    catalog.product.save(update_fields=["subscription_approval"])
    developer = User.objects.create_user("grace", "grace@example.com", PASSWORD)
    Membership.objects.create(portal=catalog.portal, user=developer, status="approved")
    app = consumer_services.consumer_create(owner=developer, name="Grace's app")
    subscription = consumer_services.subscription_request(
        consumer=app, product=catalog.product, plan=catalog.plan, portal=catalog.portal
    )
    assert subscription.status == "pending"
    key = consumer_services.credential_create(consumer=app, name="k").key
    User.objects.create_superuser("boss", "boss@example.com", PASSWORD)

    portal_url = e2e_stack.ports.portal_url
    page.goto(f"{portal_url}/admin/login/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", PASSWORD)
    page.locator("input[type=submit]").click()
    expect(page).to_have_url(re.compile(r"/admin/$"))
    page.goto(f"{portal_url}/admin/consumers/subscription/?status__exact=pending")
    page.check(f"input[name=_selected_action][value='{subscription.pk}']")
    page.select_option("select[name=action]", "approve")
    page.screenshot(path=artifacts / "08-admin-pending.png", full_page=True)
    page.locator("button[name=index]").click()
    expect(page.locator("body")).to_contain_text("Approved 1 subscriptions")

    assert Subscription.objects.get(pk=subscription.pk).status == "approved"
    eventually(
        lambda: gateway_accepts(e2e_stack.ports.gateway_url, key),
        "the approval to reach the gateway",
    )
