"""Agent products in the portal: what a product page shows of an agent (its served
card, its skills, one health badge) and the quick start snippets that call it.

Developers see the card the gateway serves (``catalog.selectors.agent_served_card``)
and whether the agent answers at all: the targets behind it, their versions, weights
and upstreams are an administrator's business, so only their overall health is shown
(healthy when any target is).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Prefetch

from catalog.models import Agent, AgentTarget, Product
from catalog.selectors import agent_served_card
from catalog.templatetags.catalog_quickstart import API_KEY_PLACEHOLDER, Snippet, _curl, _py

CARD_PATH = "/.well-known/agent-card.json"
# The A2A protocol version the snippets and the playground speak (sent as A2A-Version).
A2A_VERSION = "1.0"
SNIPPET_MESSAGE = "Hello!"


@dataclass(frozen=True)
class Skill:
    """One skill of a served card, as the page shows it: text only."""

    id: str
    name: str
    description: str
    tags: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AgentListing:
    """What an agent product's page shows: the served card's parts and the health of
    the agent as a whole (``healthy``, ``unhealthy`` or ``unknown``)."""

    name: str
    description: str
    version: str
    provider: str
    provider_url: str
    streaming: bool
    skills: list[Skill]
    health: str
    last_checked_at: datetime | None
    url: str  # where apps call it, on the gateway
    card_url: str
    # False until an A2A agent's card has been fetched (a REST agent's is made).
    discovered: bool
    input_modes: list[str] = field(default_factory=list)
    output_modes: list[str] = field(default_factory=list)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _texts(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _skill(value: object) -> Skill | None:
    if not isinstance(value, dict):
        return None
    name = _text(value.get("name")) or _text(value.get("id"))
    if not name:
        return None
    return Skill(
        id=_text(value.get("id")),
        name=name,
        description=_text(value.get("description")),
        tags=_texts(value.get("tags")),
        examples=_texts(value.get("examples")),
    )


def overall_health(targets: list[AgentTarget]) -> str:
    """Healthy when any target is; unhealthy when none is and one has failed a check;
    unknown before any check."""
    states = {target.health for target in targets}
    if AgentTarget.Health.HEALTHY in states:
        return AgentTarget.Health.HEALTHY
    if AgentTarget.Health.UNHEALTHY in states:
        return AgentTarget.Health.UNHEALTHY
    return AgentTarget.Health.UNKNOWN


def agent_listing_for(*, product: Product, gateway_url: str) -> AgentListing | None:
    """The listing of an agent product served at ``gateway_url``; ``None`` for other
    kinds and before the product has an agent. Upstreams, credentials, versions and
    weights are not in it."""
    if product.kind != Product.Kind.AGENT:
        return None
    targets = AgentTarget.objects.select_related("upstream").order_by("position", "pk")
    agent = (
        Agent.objects.filter(product=product)
        .select_related("product")
        .prefetch_related(Prefetch("targets", queryset=targets))
        .first()
    )
    if agent is None:
        return None
    card: dict[str, Any] = agent_served_card(agent=agent)
    rows = list(agent.targets.all())
    provider = card.get("provider")
    provider = provider if isinstance(provider, dict) else {}
    capabilities = card.get("capabilities")
    capabilities = capabilities if isinstance(capabilities, dict) else {}
    skills = card.get("skills")
    checked = [target.last_checked_at for target in rows if target.last_checked_at]
    return AgentListing(
        name=_text(card.get("name")),
        description=_text(card.get("description")),
        version=_text(card.get("version")),
        provider=_text(provider.get("organization")),
        provider_url=_text(provider.get("url")),
        streaming=capabilities.get("streaming") is True,
        skills=[s for s in map(_skill, skills if isinstance(skills, list) else []) if s],
        health=overall_health(rows),
        last_checked_at=max(checked, default=None),
        url=agent_url(gateway_url=gateway_url, slug=product.slug),
        card_url=agent_card_url(gateway_url=gateway_url, slug=product.slug),
        discovered=any(target.is_rest or target.card for target in rows),
        input_modes=_texts(card.get("defaultInputModes")),
        output_modes=_texts(card.get("defaultOutputModes")),
    )


def agent_url(*, gateway_url: str, slug: str) -> str:
    """Where apps call the agent product ``slug`` (JSON-RPC; the REST binding below it)."""
    return f"{gateway_url.rstrip('/')}/agents/{slug}"


def agent_card_url(*, gateway_url: str, slug: str) -> str:
    return agent_url(gateway_url=gateway_url, slug=slug) + CARD_PATH


def a2a_message_request(
    method: str, text: str, *, message_id: str, context_id: str = ""
) -> dict[str, Any]:
    """A JSON-RPC request (A2A 1.0) of ``method`` (``SendMessage`` or
    ``SendStreamingMessage``) with one user text message; with ``context_id``, in that
    conversation."""
    message: dict[str, Any] = {
        "role": "ROLE_USER",
        "messageId": message_id,
        "parts": [{"text": text}],
    }
    if context_id:
        message["contextId"] = context_id
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": message}}


def agent_snippets(*, gateway_url: str, slug: str, example: str = "") -> list[Snippet]:
    """The A2A SDK's client (a2a-sdk 1.3) and curl: the card, then ``SendMessage``.

    ``example`` is the message they send (a skill's example reads better than "Hello").
    """
    url = agent_url(gateway_url=gateway_url, slug=slug)
    text = example or SNIPPET_MESSAGE
    bearer = f"Bearer {API_KEY_PLACEHOLDER}"
    python_sdk = f"""import asyncio
import uuid

import httpx
from a2a.client import ClientConfig, create_client
from a2a.types import Message, Part, Role, SendMessageRequest, TaskState

AGENT_URL = {_py(url)}
HEADERS = {{"Authorization": {_py(bearer)}}}


def text(parts) -> str:
    return "".join(part.text for part in parts)


async def main() -> None:
    async with httpx.AsyncClient(headers=HEADERS, timeout=60) as http:
        # Reads the agent card at AGENT_URL/.well-known/agent-card.json.
        config = ClientConfig(httpx_client=http)
        client = await create_client(AGENT_URL, client_config=config)
        request = SendMessageRequest(
            message=Message(
                role=Role.ROLE_USER,
                message_id=str(uuid.uuid4()),
                parts=[Part(text={_py(text)})],
            )
        )
        # Streamed when the agent can: its task, status updates and artifact chunks.
        async for event in client.send_message(request):
            kind = event.WhichOneof("payload")
            if kind == "message":
                print(text(event.message.parts))
            elif kind == "status_update":
                status = event.status_update.status
                print(TaskState.Name(status.state), text(status.message.parts))
            elif kind == "artifact_update":
                print(text(event.artifact_update.artifact.parts), end="")
        await client.close()


asyncio.run(main())
"""
    send = _curl(
        url,
        headers=[
            f"Authorization: {bearer}",
            "Content-Type: application/json",
            f"A2A-Version: {A2A_VERSION}",
        ],
        body=a2a_message_request(
            "SendMessage", text, message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, url))
        ),
    )
    card = _curl(url + CARD_PATH, headers=[])
    return [
        Snippet("qs-a2a-python", "Python · a2a-sdk", "python", python_sdk, "pip install a2a-sdk"),
        Snippet("qs-a2a-curl", "curl · SendMessage", "shell", send, "JSON-RPC, A2A 1.0"),
        Snippet("qs-a2a-card", "curl · agent card", "shell", card, "no key needed"),
    ]


def agent_quickstart_for(
    *, product: Product, gateway_url: str, listing: AgentListing | None
) -> list[Snippet]:
    """The snippets of an agent product's page, sending its first skill's first example."""
    example = next((s.examples[0] for s in (listing.skills if listing else []) if s.examples), "")
    return agent_snippets(gateway_url=gateway_url, slug=product.slug, example=example)
