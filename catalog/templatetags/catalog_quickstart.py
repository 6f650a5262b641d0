"""``{% quickstart_snippets product gateway_url as snippets %}``: copy-paste starters.

The snippets are built in Python, not by interpolating into template text, so every
value is quoted for the language it lands in (JSON, Python, shell). The key is always
the placeholder ``YOUR_API_KEY``: the page never holds a real key.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from django import template

from catalog.models import ModelRoute, Product

register = template.Library()

API_KEY_PLACEHOLDER = "YOUR_API_KEY"
MODEL_PLACEHOLDER = "MODEL_NAME"
MCP_PROTOCOL_VERSION = "2025-06-18"


@dataclass(frozen=True)
class Snippet:
    id: str
    title: str
    language: str
    code: str
    where: str = ""


def _py(value: str) -> str:
    # A JSON string literal is a valid Python string literal with the same value.
    return json.dumps(value)


def _json(value: object) -> str:
    return json.dumps(value, indent=2)


def _curl(url: str, *, headers: list[str], body: object | None = None) -> str:
    lines = [f"curl {shlex.quote(url)}"]
    lines += [f"-H {shlex.quote(header)}" for header in headers]
    if body is not None:
        lines.append(f"-d {shlex.quote(json.dumps(body))}")
    return " \\\n  ".join(lines)


def model_snippets(*, gateway_url: str, model: str) -> list[Snippet]:
    """Chat: OpenAI's chat completions (curl and SDK) and Anthropic's Messages API (SDK).

    The Anthropic SDK adds ``/v1/messages`` to its base URL itself and sends the key as
    ``x-api-key``, which the gateway accepts as well as a bearer token.
    """
    messages = [{"role": "user", "content": "Hello!"}]
    curl = _curl(
        f"{gateway_url}/v1/chat/completions",
        headers=[f"Authorization: Bearer {API_KEY_PLACEHOLDER}", "Content-Type: application/json"],
        body={"model": model, "messages": messages},
    )
    openai_sdk = f"""from openai import OpenAI

client = OpenAI(base_url={_py(gateway_url + "/v1")}, api_key={_py(API_KEY_PLACEHOLDER)})
response = client.chat.completions.create(
    model={_py(model)},
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(response.choices[0].message.content)
"""
    anthropic_sdk = f"""from anthropic import Anthropic

client = Anthropic(base_url={_py(gateway_url)}, api_key={_py(API_KEY_PLACEHOLDER)})
message = client.messages.create(
    model={_py(model)},
    max_tokens=1024,
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(message.content[0].text)
"""
    return [
        Snippet("qs-curl", "curl", "shell", curl),
        Snippet("qs-openai", "Python · openai SDK", "python", openai_sdk, "pip install openai"),
        Snippet(
            "qs-anthropic",
            "Python · Anthropic SDK",
            "python",
            anthropic_sdk,
            "pip install anthropic",
        ),
    ]


def embedding_snippets(*, gateway_url: str, model: str) -> list[Snippet]:
    """Embeddings: OpenAI's embeddings API (curl and SDK); Anthropic's has none."""
    curl = _curl(
        f"{gateway_url}/v1/embeddings",
        headers=[f"Authorization: Bearer {API_KEY_PLACEHOLDER}", "Content-Type: application/json"],
        body={"model": model, "input": "Hello!"},
    )
    openai_sdk = f"""from openai import OpenAI

client = OpenAI(base_url={_py(gateway_url + "/v1")}, api_key={_py(API_KEY_PLACEHOLDER)})
response = client.embeddings.create(model={_py(model)}, input="Hello!")
print(len(response.data[0].embedding))
"""
    return [
        Snippet("qs-curl-embeddings", "curl · embeddings", "shell", curl),
        Snippet(
            "qs-openai-embeddings",
            "Python · openai SDK · embeddings",
            "python",
            openai_sdk,
            "pip install openai",
        ),
    ]


def mcp_snippets(*, gateway_url: str, slug: str) -> list[Snippet]:
    url = f"{gateway_url}/mcp/{slug}"
    bearer = f"Bearer {API_KEY_PLACEHOLDER}"
    curl = _curl(
        url,
        headers=[
            f"Authorization: {bearer}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
        ],
        body={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "curl", "version": "1.0"},
            },
        },
    )
    # Claude Desktop's config file starts local (stdio) servers only; mcp-remote bridges
    # to a remote server. The header goes through an env variable because some clients
    # split arguments on spaces.
    claude_desktop = {
        "mcpServers": {
            slug: {
                "command": "npx",
                "args": ["-y", "mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
                "env": {"AUTH_HEADER": bearer},
            }
        }
    }
    cursor = {"mcpServers": {slug: {"url": url, "headers": {"Authorization": bearer}}}}
    vscode = {"servers": {slug: {"type": "http", "url": url, "headers": {"Authorization": bearer}}}}
    # The official SDK's client: streamable HTTP, which speaks either protocol era.
    python_sdk = f"""import asyncio

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

URL = {_py(url)}
HEADERS = {{"Authorization": {_py(bearer)}}}


async def main() -> None:
    async with (
        create_mcp_http_client(headers=HEADERS) as http,
        Client(streamable_http_client(URL, http_client=http)) as client,
    ):
        listed = await client.list_tools()
        for tool in listed.tools:
            print(tool.name, "-", tool.description)


asyncio.run(main())
"""
    return [
        Snippet(
            "qs-claude-desktop",
            "Claude Desktop",
            "json",
            _json(claude_desktop),
            "claude_desktop_config.json (needs Node.js for npx)",
        ),
        Snippet("qs-cursor", "Cursor", "json", _json(cursor), "~/.cursor/mcp.json"),
        Snippet("qs-vscode", "VS Code", "json", _json(vscode), ".vscode/mcp.json"),
        Snippet("qs-mcp-python", "Python · mcp SDK", "python", python_sdk, "pip install mcp"),
        Snippet("qs-curl", "curl", "shell", curl),
    ]


def quickstart_for(product: Product, gateway_url: str) -> list[Snippet]:
    """The snippets for ``product``'s kind, pointing at ``gateway_url``."""
    base = gateway_url.rstrip("/")
    if product.kind == Product.Kind.MCP:
        return mcp_snippets(gateway_url=base, slug=product.slug)
    if product.kind == Product.Kind.AGENT:
        # An agent's page sends one of its skills' examples: portal.agents makes those.
        return []
    # Uses the prefetched routes when the view prefetched them (no extra query).
    routes = list(product.model_routes.all())
    chat = next((r.name for r in routes if r.kind == ModelRoute.Kind.CHAT), None)
    embeddings = next((r.name for r in routes if r.kind == ModelRoute.Kind.EMBEDDINGS), None)
    snippets = []
    if chat is not None or embeddings is None:
        snippets += model_snippets(gateway_url=base, model=chat or MODEL_PLACEHOLDER)
    if embeddings is not None:
        snippets += embedding_snippets(gateway_url=base, model=embeddings)
    return snippets


@register.simple_tag
def quickstart_snippets(product: Product, gateway_url: str) -> list[Snippet]:
    return quickstart_for(product, gateway_url)
