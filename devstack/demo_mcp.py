"""The demo MCP server of ``make run``: a few useful tools that need no internet.

Run it with ``python -m devstack.demo_mcp --port 9200`` and register
``http://127.0.0.1:9200/mcp`` as an upstream of vendor "MCP server". It is the official
SDK's ``MCPServer`` on Streamable HTTP, so it speaks both protocol eras (2025-11-25
sessions and 2026-07-28).

- ``get_weather(city)``: today's weather, made up but always the same for a city;
- ``convert_currency(amount, from_currency, to_currency)``: fixed demo exchange rates;
- the prompt ``trip_briefing(city)`` and the resource ``demo://currencies`` (the rates).

``--require-key KEY`` answers 401 unless ``Authorization: Bearer KEY`` is sent, the way
a hosted server checks the backend credential the gateway injects (the app's own key
never reaches it). ``GET /healthz`` stays open for readiness checks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from argparse import ArgumentParser, Namespace
from collections.abc import Awaitable, Callable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Literal

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from devstack.fakes._asgi import Receive, Scope, Send, respond

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_JSON = [(b"content-type", b"application/json")]

# US dollars per unit of each currency: fixed, so answers are predictable.
RATES_IN_USD: dict[str, Decimal] = {
    "USD": Decimal("1"),
    "EUR": Decimal("1.08"),
    "GBP": Decimal("1.27"),
    "JPY": Decimal("0.0067"),
    "CHF": Decimal("1.13"),
    "CAD": Decimal("0.73"),
    "AUD": Decimal("0.66"),
    "CNY": Decimal("0.14"),
    "INR": Decimal("0.012"),
}
CONDITIONS = ["sunny", "partly cloudy", "cloudy", "light rain", "showers", "windy", "fog"]


class Weather(BaseModel):
    city: str
    condition: str
    temperature_c: int
    humidity_percent: int
    wind_kph: int


class Conversion(BaseModel):
    amount: float
    from_currency: str
    to_currency: str
    rate: float
    converted: float


def weather_for(city: str) -> Weather:
    """The demo's weather: derived from the city's name, so it never changes."""
    digest = hashlib.sha256(" ".join(city.lower().split()).encode()).digest()
    return Weather(
        city=city.strip(),
        condition=CONDITIONS[digest[0] % len(CONDITIONS)],
        temperature_c=-5 + digest[1] % 36,
        humidity_percent=20 + digest[2] % 75,
        wind_kph=digest[3] % 45,
    )


def convert(amount: float, from_currency: str, to_currency: str) -> Conversion:
    source, target = from_currency.strip().upper(), to_currency.strip().upper()
    for code in (source, target):
        if code not in RATES_IN_USD:
            # A ToolError's message reaches the model (any other exception's does not).
            raise ToolError(
                f"Unknown currency {code!r}; the demo knows {', '.join(sorted(RATES_IN_USD))}."
            )
    rate = RATES_IN_USD[source] / RATES_IN_USD[target]
    converted = (Decimal(str(amount)) * rate).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    return Conversion(
        amount=amount,
        from_currency=source,
        to_currency=target,
        rate=float(rate.quantize(Decimal("0.000001"))),
        converted=float(converted),
    )


def build_server() -> MCPServer:
    server = MCPServer(
        "Portico demo tools",
        instructions="Demo tools with made-up but stable data: weather by city and currency "
        "conversion at fixed rates.",
        version="1.0",
    )

    @server.tool(annotations=ToolAnnotations(title="Weather", read_only_hint=True))
    def get_weather(
        city: Annotated[str, Field(description="A city name, e.g. Lisbon")],
    ) -> Weather:
        """Today's weather in a city: condition, temperature, humidity and wind."""
        return weather_for(city)

    @server.tool(annotations=ToolAnnotations(title="Currency converter", read_only_hint=True))
    def convert_currency(
        amount: Annotated[float, Field(description="How much to convert")],
        from_currency: Annotated[str, Field(description="ISO 4217 code, e.g. USD")],
        to_currency: Annotated[str, Field(description="ISO 4217 code, e.g. EUR")],
    ) -> Conversion:
        """Convert an amount between currencies at the demo's fixed exchange rates."""
        return convert(amount, from_currency, to_currency)

    @server.prompt(description="A short travel briefing that uses the weather tool.")
    def trip_briefing(city: str) -> str:
        return (
            f"Write a three-sentence travel briefing for {city}. Call get_weather for today's "
            "weather first, and suggest what to pack."
        )

    @server.resource(
        "demo://currencies",
        name="currencies",
        description="The demo's exchange rates, in US dollars per unit.",
        mime_type="application/json",
    )
    def currencies() -> str:
        return json.dumps({code: str(rate) for code, rate in RATES_IN_USD.items()})

    return server


def with_key_and_health(
    app: ASGIApp, require_key: str | None, *, open_paths: frozenset[str] = frozenset()
) -> ASGIApp:
    """``app`` behind a backend-credential check, with an open ``GET /healthz`` (and
    ``open_paths``, which need no key either)."""
    expected = f"Bearer {require_key}".encode() if require_key else None

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the SDK's session manager starts there
            await app(scope, receive, send)
            return
        if scope["path"] == "/healthz":
            await respond(send, 200, b'{"status":"ok"}', _JSON)
            return
        if expected is not None and scope["path"] not in open_paths:
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(sent, expected):
                challenge = (b"www-authenticate", b'Bearer error="invalid_token"')
                await respond(send, 401, b'{"error":"invalid_token"}', [*_JSON, challenge])
                return
        await app(scope, receive, send)

    return wrapped


def demo_parser(description: str, *, port: int, key_header: str = "bearer") -> ArgumentParser:
    """The demo upstreams' command line: ``--host``, ``--port``, ``--require-key`` (sent
    as ``key_header``) and ``--log-level``."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--require-key", help=f"answer 401 unless this {key_header} key is sent")
    parser.add_argument("--log-level", default="warning")
    return parser


def run_demo(app: ASGIApp, args: Namespace, *, lifespan: Literal["on", "off"] = "off") -> None:
    """Serve a demo upstream as :func:`demo_parser`'s ``args`` say."""
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        lifespan=lifespan,
        ws="none",
        access_log=False,
        log_level=args.log_level,
    )


def main(argv: list[str] | None = None) -> None:
    args = demo_parser("The demo MCP server of make run", port=9200).parse_args(argv)
    server = build_server()
    app = with_key_and_health(server.streamable_http_app(host=args.host), args.require_key)
    # The SDK's session manager starts in the lifespan.
    run_demo(app, args, lifespan="on")


if __name__ == "__main__":
    main()
