"""The demo's agents end to end, as ``make run`` sets them up: the demo A2A agent
(devstack/demo_agent.py, the a2a-sdk's own server) and the REST agent wrapped around
the mock LLM's chat endpoint, seeded by ``portal.demo``, served by the real gateway,
and used from a real browser: the agent product's page, and the playground's Agents tab
streaming the agent's reply through the gateway."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from catalog.models import AgentTarget, Plan
from consumers import services as consumer_services
from consumers.models import Consumer
from devstack.portico import Ports, start_demo_agent
from devstack.procs import free_port
from portal.agents import a2a_message_request
from portal.demo import DEMO_AGENT_SLUG, DEMO_REST_AGENT_SLUG, seed_demo, seed_demo_agents
from portal.models import Membership, Portal
from tests.conftest import run_in_thread
from tests.e2e.conftest import UPSTREAM_KEY, E2EStack, eventually
from tests.e2e.test_mcp_playground_browser import PASSWORD, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DEMO_AGENT_KEY = "demo-agent-e2e-" + "k" * 24


@pytest.fixture(scope="module")
def demo_agent(e2e_stack: E2EStack) -> Iterator[str]:
    """The demo agent on a free port, behind a backend credential, as ``make run``
    starts it."""
    ports = Ports(demo_agent=free_port())
    start_demo_agent(e2e_stack.stack, ports, require_key=DEMO_AGENT_KEY)
    try:
        yield ports.demo_agent_url
    finally:
        e2e_stack.stack.services.pop("demo-agent").stop()


@pytest.fixture
def seeded(e2e_stack: E2EStack, demo_agent: str, settings, tmp_path) -> Consumer:
    """The demo seeded as ``make run`` seeds it (its upstream keys those the processes
    above want), the agent's card fetched; a developer who can sign in, with an app
    subscribed to both agents."""
    settings.VAR_DIR = tmp_path
    secrets = {"upstream_key": UPSTREAM_KEY, "agent_upstream_key": DEMO_AGENT_KEY}
    (tmp_path / "demo-secrets.json").write_text(json.dumps(secrets))
    seed_demo(mock_llm_url=e2e_stack.mock_llm_url, demo_agent_url=demo_agent)
    # In a thread of its own: Playwright keeps an event loop running in this one, and
    # the card fetch runs one of its own.
    errors: list[BaseException] = []
    thread = run_in_thread(seed_demo_agents, errors)
    thread.start()
    thread.join(60)
    assert not errors, errors
    developer = User.objects.create_user("ana", "ana@example.com", PASSWORD)
    EmailAddress.objects.create(user=developer, email=developer.email, verified=True, primary=True)
    portal = Portal.objects.get(slug="demo")
    Membership.objects.create(portal=portal, user=developer, status="approved")
    app = consumer_services.consumer_create(owner=developer, name="Ana's app", portal=portal)
    for product in (DEMO_AGENT_SLUG, DEMO_REST_AGENT_SLUG):
        plan = Plan.objects.select_related("product").get(product__slug=product, name="Free")
        subscription = consumer_services.subscription_create(
            consumer=app, product=plan.product, plan=plan
        )
        consumer_services.subscription_approve(subscription=subscription)
    return app


def _send_message(gateway_url: str, slug: str, key: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{gateway_url}/agents/{slug}",
        json=a2a_message_request("SendMessage", text, message_id=str(uuid.uuid4())),
        headers={"Authorization": f"Bearer {key}", "A2A-Version": "1.0"},
        timeout=30,
    )


def test_the_demo_agents_answer_through_the_gateway_and_in_the_browser(
    e2e_stack: E2EStack, seeded: Consumer, page: Page, artifacts: Path
):
    gateway_url = e2e_stack.ports.gateway_url
    assert {t.health for t in AgentTarget.objects.filter(agent__product__slug=DEMO_AGENT_SLUG)} == {
        "healthy"
    }
    key = consumer_services.credential_create(consumer=seeded, name="e2e").key

    def answers(slug: str, text: str) -> bool:
        response = _send_message(gateway_url, slug, key, text)
        return response.status_code == 200 and "result" in response.json()

    eventually(lambda: answers(DEMO_AGENT_SLUG, "hello"), "the gateway to serve the demo agent")
    # The card the gateway serves is the agent's, pointed at the gateway.
    card = httpx.get(
        f"{gateway_url}/agents/{DEMO_AGENT_SLUG}/.well-known/agent-card.json", timeout=10
    ).json()
    assert card["name"] == "Trip Planner"
    assert card["supportedInterfaces"][0]["url"].startswith(f"{gateway_url}/agents/")

    # The REST agent: the mock LLM's chat endpoint, which repeats what it is told.
    eventually(lambda: answers(DEMO_REST_AGENT_SLUG, "ping"), "the gateway to serve the REST agent")
    reply = _send_message(gateway_url, DEMO_REST_AGENT_SLUG, key, "hello agent").json()
    assert reply["result"]["message"]["parts"][0]["text"] == "You said: hello agent"

    # The product page: the card, its skills, one health badge, the snippets.
    portal_url = e2e_stack.ports.portal_url
    sign_in(page, portal_url, "ana@example.com")
    page.goto(f"{portal_url}/products/{DEMO_AGENT_SLUG}/")
    expect(page.locator("#agent-name")).to_have_text("Trip Planner")
    expect(page.locator("#agent-health")).to_have_text("Healthy")
    expect(page.locator("#agent-skills")).to_contain_text("Plan a weekend in Lisbon")
    expect(page.locator("#agent-card-url")).to_have_text(
        f"{e2e_stack.env['PORTICO_GATEWAY_PUBLIC_URL']}/agents/{DEMO_AGENT_SLUG}"
        "/.well-known/agent-card.json"
    )
    expect(page.locator("#quick-start")).to_contain_text("create_client(AGENT_URL")
    page.screenshot(path=artifacts / "10-agent-product.png", full_page=True)

    # The playground: the agent's events stream in, through the gateway.
    page.get_by_role("link", name="Try in the playground").click()
    expect(page).to_have_url(re.compile(r"/playground/agents/\?product=demo-agent$"))
    page.locator("#agent-message").fill("Plan a weekend in Lisbon with 300 USD")
    page.get_by_role("button", name="Send").click()
    conversation = page.locator("#agent-conversation")
    # The first message waits for the new Playground key to reach the gateway.
    expect(conversation).to_contain_text("Checking the weather in Lisbon", timeout=30_000)
    expect(conversation.locator(".agent-artifact-text")).to_contain_text("300 USD is about")
    expect(conversation).to_contain_text("completed")
    expect(page.locator("#agent-context")).not_to_have_value("")

    # The next message continues the conversation (the gateway's contextId went back).
    page.locator("#agent-message").fill("And with 200 GBP?")
    page.get_by_role("button", name="Send").click()
    expect(conversation.locator(".agent-turn").nth(1)).to_contain_text(
        "Checking the weather in Lisbon"
    )
    expect(conversation.locator(".agent-turn").nth(1)).to_contain_text("200 GBP is about")
    page.screenshot(path=artifacts / "11-agent-playground.png", full_page=True)

    # The REST agent answers in the playground too, with a message.
    page.locator("#agent-target").select_option(f"{seeded.pk}:{DEMO_REST_AGENT_SLUG}")
    page.locator("#agent-message").fill("hello from the playground")
    page.get_by_role("button", name="Send").click()
    expect(conversation.locator(".agent-message")).to_have_text(
        "You said: hello from the playground"
    )
