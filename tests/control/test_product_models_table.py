"""The product page's model table and quick start: what developers learn about the
models they may call, and nothing about where the gateway sends them."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from catalog import services
from catalog.models import ModelRoute, RouteTarget, Upstream
from tests.conftest import Catalog

GATEWAY_URL = "https://gateway.example.test"
AZURE_URL = "https://secret-deployment.openai.azure.com"


@pytest.fixture(autouse=True)
def _gateway_url(settings):
    settings.PORTICO_GATEWAY_PUBLIC_URL = GATEWAY_URL


@pytest.fixture
def priced(catalog: Catalog) -> Catalog:
    """``chat-model`` priced and sized, with a second target on a named Azure upstream;
    an embeddings model with a price; a model with nothing known."""
    route = ModelRoute.objects.get(name="chat-model")
    route.context_window = 128_000
    route.max_output_tokens = 16_384
    route.input_price_per_mtok = Decimal("2.5")
    route.output_price_per_mtok = Decimal("10")
    route.save()
    azure = services.upstream_create(
        name="Contoso Azure East",
        vendor=Upstream.Vendor.AZURE_OPENAI,
        base_url=AZURE_URL,
        secret="azure-key-" + "k" * 20,
    )
    RouteTarget.objects.create(route=route, upstream=azure, upstream_model="gpt-4o-prod-deploy")
    services.model_route_create(
        product=catalog.product,
        name="chat-embed",
        upstream=catalog.upstream,
        upstream_model="text-embedding-internal",
        kind=ModelRoute.Kind.EMBEDDINGS,
        input_price_per_mtok=Decimal("0.075"),
    )
    services.model_route_create(
        product=catalog.product, name="chat-mystery", upstream=catalog.upstream, upstream_model="m"
    )
    return catalog


def product_page(client, slug: str = "chat") -> str:
    response = client.get(reverse("portal:product", args=[slug]))
    assert response.status_code == 200
    return response.content.decode()


def table_rows(page: str) -> list[list[str]]:
    """The model table's rows as lists of cell texts."""
    body = page.split('<table class="model-table">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)
        ]
        for row in rows
    ]


def test_product_page_lists_models_with_kind_sizes_and_prices(client, priced):
    assert table_rows(product_page(client)) == [
        ["chat-embed", "Embeddings", "—", "—", "$0.075 / —"],
        ["chat-model", "Chat", "128,000", "16,384", "$2.50 / $10.00"],
        ["chat-mystery", "Chat", "—", "—", "— / —"],
    ]


def test_product_page_never_shows_where_models_are_routed(client, priced):
    page = product_page(client)
    for hidden in [
        "upstream-chat",  # upstream names
        "Contoso Azure East",
        "127.0.0.1:9",  # base URLs
        AZURE_URL,
        "gpt-4o-prod-deploy",  # models' names upstream
        "text-embedding-internal",
        "azure_openai",  # vendors
        "Azure OpenAI",
        "sk-upstream-",  # secrets
        "azure-key-",
    ]:
        assert hidden not in page, hidden


def test_product_page_takes_the_same_queries_however_many_models(client, priced):
    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            product_page(client)
        return len(queries)

    few = count()
    for i in range(10):
        services.model_route_create(
            product=priced.product,
            name=f"bulk-{i}",
            upstream=priced.upstream,
            upstream_model="m",
            input_price_per_mtok=Decimal(i),
        )
    assert count() == few


def test_quick_start_has_chat_anthropic_and_embeddings_examples(client, priced):
    page = product_page(client)
    # Chat examples name a chat model, never the embeddings one.
    assert f"curl {GATEWAY_URL}/v1/chat/completions" in page
    assert f"Anthropic(base_url=&quot;{GATEWAY_URL}&quot;" in page
    assert "client.messages.create(" in page
    assert "model=&quot;chat-model&quot;" in page  # the first chat model by name
    assert f"curl {GATEWAY_URL}/v1/embeddings" in page
    assert "client.embeddings.create(model=&quot;chat-embed&quot;" in page


def test_embeddings_only_product_gets_no_chat_examples(client, catalog):
    ModelRoute.objects.filter(name="chat-model").update(kind=ModelRoute.Kind.EMBEDDINGS)
    page = product_page(client)
    assert "/v1/embeddings" in page
    assert "chat/completions" not in page
    assert "Anthropic(" not in page
