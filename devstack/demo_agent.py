"""The demo A2A agent of ``make run``: a trip planner that needs no internet.

Run it with ``python -m devstack.demo_agent --port 9202`` and register
``http://127.0.0.1:9202`` as an upstream of vendor "A2A agent" (its card is at
``/.well-known/agent-card.json``). It is the a2a-sdk's own server (Starlette routes
under uvicorn), so it speaks A2A 1.0 over JSON-RPC and HTTP+JSON, and 0.3 over JSON-RPC.

Ask it for a trip ("Plan a weekend in Lisbon with 300 USD") and it answers as a task:
a ``working`` status with a message, the plan as an artifact streamed in three chunks
(the weather and the budget come from the demo MCP server's made-up data), then
``completed``. A message without a city plans for the city last named in the same
conversation (``contextId``). "hello" gets a plain message back, no task.

``--require-key KEY`` answers 401 unless ``Authorization: Bearer KEY`` is sent, the way
a hosted agent checks the backend credential the gateway injects (the app's own key
never reaches it). The agent card and ``GET /healthz`` stay open, as an agent's card is
public and readiness checks carry no key.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from decimal import Decimal

from a2a.helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from devstack.demo_mcp import (
    RATES_IN_USD,
    convert,
    demo_parser,
    run_demo,
    weather_for,
    with_key_and_health,
)

CARD_PATH = "/.well-known/agent-card.json"
DEFAULT_CITY = "Lisbon"
# The local currency of the cities the planner knows by name; others get euros.
CURRENCIES = {
    "lisbon": "EUR",
    "porto": "EUR",
    "paris": "EUR",
    "berlin": "EUR",
    "madrid": "EUR",
    "rome": "EUR",
    "london": "GBP",
    "tokyo": "JPY",
    "zurich": "CHF",
    "geneva": "CHF",
    "toronto": "CAD",
    "sydney": "AUD",
    "beijing": "CNY",
    "shanghai": "CNY",
    "mumbai": "INR",
    "delhi": "INR",
    "new york": "USD",
    "chicago": "USD",
}
_CITY_AFTER = re.compile(r"\b(?:in|to|for|visit|visiting)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)?)")
_BUDGET = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]{3})\b")
_GREETINGS = {"hello", "hi", "hey"}
_PACKING = {
    "sunny": "sunglasses and sunscreen",
    "partly cloudy": "a light jacket",
    "cloudy": "a warm layer",
    "light rain": "an umbrella",
    "showers": "a rain jacket",
    "windy": "a windproof jacket",
    "fog": "a warm layer and good shoes",
}


@dataclass(frozen=True)
class Plan:
    """A trip plan, in the chunks the agent streams it in."""

    city: str
    chunks: tuple[str, ...]


def city_in(text: str) -> str | None:
    """The city a request names: after "in", "to", "for"..., else a known city's name."""
    found = _CITY_AFTER.search(text)
    if found:
        return found.group(1)
    lowered = text.lower()
    return next((name.title() for name in CURRENCIES if name in lowered), None)


def plan_trip(text: str, city: str) -> Plan:
    """The plan for ``city``: weather and packing, then a budget in the local currency
    when the request names an amount (``300 USD``)."""
    weather = weather_for(city)
    local = CURRENCIES.get(city.lower(), "EUR")
    packing = _PACKING.get(weather.condition, "a warm layer")
    chunks = [
        f"Trip plan for {weather.city}\n",
        f"Weather today: {weather.condition}, {weather.temperature_c}°C, wind "
        f"{weather.wind_kph} km/h. Pack {packing}.\n",
    ]
    budget = _BUDGET.search(text)
    if budget and budget.group(2).upper() in RATES_IN_USD:
        amount, currency = float(Decimal(budget.group(1))), budget.group(2).upper()
        converted = convert(amount, currency, local)
        chunks.append(
            f"Budget: {amount:g} {currency} is about {converted.converted:,.2f} {local} "
            f"(rate {converted.rate:g}).\n"
        )
    else:
        chunks.append(f"Money: the local currency is {local}; tell me a budget to convert.\n")
    return Plan(city=weather.city, chunks=tuple(chunks))


class TripPlanner(AgentExecutor):
    """Answers "hello" with a message and anything else with a streamed task."""

    def __init__(self, *, delay: float = 0.2) -> None:
        self.delay = delay
        # The city each conversation is about, so "and with 200 EUR?" follows on.
        self.cities: dict[str, str] = {}

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input().strip()
        context_id = context.context_id or ""
        if text.lower().strip("!. ") in _GREETINGS:
            await event_queue.enqueue_event(
                new_text_message(
                    "Hello! I plan trips: tell me where you are going, and your budget.",
                    context_id=context_id,
                )
            )
            return
        if context.message is None:  # pragma: no cover - the SDK always passes one
            return
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        city = city_in(text) or self.cities.get(task.context_id) or DEFAULT_CITY
        self.cities[task.context_id] = city
        await updater.start_work(
            updater.new_agent_message([new_text_part(f"Checking the weather in {city}…")])
        )
        plan = plan_trip(text, city)
        last = len(plan.chunks) - 1
        for index, chunk in enumerate(plan.chunks):
            await asyncio.sleep(self.delay)
            await updater.add_artifact(
                [new_text_part(chunk)],
                artifact_id="plan",
                name="Trip plan" if index == 0 else None,
                append=index > 0,
                last_chunk=index == last,
            )
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


def agent_card(url: str) -> AgentCard:
    """The planner's card, its interfaces at ``url`` (the agent's public base URL)."""
    return AgentCard(
        name="Trip Planner",
        description="Plans a day out in any city: the weather, what to pack, and your "
        "budget in the local currency (made-up but stable demo data).",
        version="1.0.0",
        provider=AgentProvider(organization="Portico demo", url=url),
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="HTTP+JSON", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="0.3"),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="plan_trip",
                name="Plan a trip",
                description="Today's weather in a city and what to pack for it.",
                tags=["travel", "weather"],
                examples=["Plan a weekend in Lisbon", "What should I pack for Tokyo?"],
            ),
            AgentSkill(
                id="budget",
                name="Travel budget",
                description="Your budget converted to the city's currency at the demo's "
                "fixed rates.",
                tags=["travel", "currency"],
                examples=["Three days in Zurich with 500 USD", "And with 200 GBP?"],
            ),
        ],
        security_schemes={
            "bearer": SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="bearer", description="The agent's API key"
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList(list=[])})],
    )


def build_app(url: str, *, delay: float = 0.2) -> Starlette:
    """The agent at ``/`` (JSON-RPC, both versions) and the v1.0 REST paths, its card at
    ``/.well-known/agent-card.json``."""
    card = agent_card(url)
    handler = DefaultRequestHandler(
        agent_executor=TripPlanner(delay=delay), task_store=InMemoryTaskStore(), agent_card=card
    )
    # The SDK adds a Mount('/{tenant}') for multi-tenant agents; this one has none.
    rest: list[BaseRoute] = [
        route
        for route in create_rest_routes(handler, enable_v0_3_compat=True)
        if not isinstance(route, Mount)
    ]
    routes: list[BaseRoute] = [
        *create_agent_card_routes(card, card_url=CARD_PATH),
        *create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True),
        *rest,
    ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    parser = demo_parser("The demo A2A agent of make run", port=9202)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds between chunks")
    args = parser.parse_args(argv)
    app = build_app(f"http://{args.host}:{args.port}", delay=args.delay)
    run_demo(with_key_and_health(app, args.require_key, open_paths=frozenset({CARD_PATH})), args)


if __name__ == "__main__":
    main()
