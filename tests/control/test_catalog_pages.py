"""The catalog pages: search, tabs, filters, portal scoping, the product page and its guide."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from catalog import services
from catalog.models import Category, ModelRoute, Product
from portal.models import Portal, PortalDomain
from tests.conftest import Catalog, make_catalog

GATEWAY_URL = "https://gateway.example.test"


@pytest.fixture(autouse=True)
def _gateway_url(settings):
    settings.PORTICO_GATEWAY_PUBLIC_URL = GATEWAY_URL


def publish(
    catalog: Catalog,
    *,
    name: str,
    slug: str,
    kind: str = Product.Kind.MODEL,
    description: str = "",
    tags: list[str] | None = None,
    category: Category | None = None,
    guide: str = "",
    portals: list[Portal] | None = None,
) -> Product:
    product = services.product_create(name=name, slug=slug, kind=kind, description=description)
    services.product_set_listing(
        product=product,
        description=description,
        category=category,
        tags=tags or [],
        guide_markdown=guide,
    )
    services.product_publish(product=product, portals=portals or [catalog.portal])
    return product


def listed_slugs(response) -> list[str]:
    """The products a catalog response lists, in order, from their detail links."""
    return re.findall(r'href="/products/([a-z0-9-]+)/"', response.content.decode())


@pytest.fixture
def shelf(catalog: Catalog) -> Catalog:
    """The ``chat`` model product of ``catalog`` plus an embedding model, an MCP server
    and an agent, with categories and tags."""
    embeddings = services.category_create(name="Embeddings", slug="embeddings")
    tools = services.category_create(name="Developer tools", slug="developer-tools")
    embed = publish(
        catalog,
        name="Vector Lab",
        slug="vector-lab",
        description="Dense vectors for semantic retrieval.",
        tags=["rag", "multilingual"],
        category=embeddings,
    )
    services.model_route_create(
        product=embed, name="text-embed-3", upstream=catalog.upstream, upstream_model="e3"
    )
    publish(
        catalog,
        name="Repo Tools",
        slug="repo-tools",
        kind=Product.Kind.MCP,
        description="Browse and search git repositories.",
        tags=["git"],
        category=tools,
    )
    publish(
        catalog,
        name="Travel Agent",
        slug="travel-agent",
        kind=Product.Kind.AGENT,
        description="Books trains and hotels.",
        tags=["travel"],
    )
    return catalog


def catalog_get(client, params: dict[str, str] | None = None, *, kind: str | None = None, **extra):
    url = reverse("portal:catalog_kind", args=[kind]) if kind else reverse("portal:catalog")
    return client.get(url, params or {}, **extra)


# Search -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("vector", ["vector-lab"]),  # a word of the name
        ("RETRIEVAL", ["vector-lab"]),  # of the description, in another case
        ("multilingual", ["vector-lab"]),  # a tag
        ("text-embed-3", ["vector-lab"]),  # a model route's name
        ("chat-model", ["chat"]),  # the conftest product's route
        ("embeddings", ["vector-lab"]),  # the category's name
        ("git", ["repo-tools"]),
    ],
)
def test_search_matches_name_description_tags_models_and_category(client, shelf, q, expected):
    response = catalog_get(client, {"q": q})
    assert response.status_code == 200
    assert listed_slugs(response) == expected


def test_every_search_word_must_match(client, shelf):
    assert listed_slugs(catalog_get(client, {"q": "vector rag"})) == ["vector-lab"]
    assert listed_slugs(catalog_get(client, {"q": "vector git"})) == []
    assert listed_slugs(catalog_get(client, {"q": "  repo   git  "})) == ["repo-tools"]


def test_search_treats_like_wildcards_as_text(client, shelf):
    assert listed_slugs(catalog_get(client, {"q": "%"})) == []
    assert listed_slugs(catalog_get(client, {"q": "_"})) == []


def test_renaming_a_route_is_searchable_after_the_admin_saves(admin_client, shelf):
    # The admin saves routes in inlines; save_related refreshes the document.
    product = shelf.product
    route = ModelRoute.objects.get(product=product)
    url = reverse("admin:catalog_product_change", args=[product.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    data = {
        "name": product.name,
        "slug": product.slug,
        "kind": product.kind,
        "status": product.status,
        "portals": [shelf.portal.pk],
        "subscription_approval": "",
        "category": "",
        "tags": "fresh, Fresh ,  shiny ",
        "description": "",
        "guide_markdown": "",
        "model_routes-TOTAL_FORMS": "1",
        "model_routes-INITIAL_FORMS": "1",
        "model_routes-MIN_NUM_FORMS": "0",
        "model_routes-MAX_NUM_FORMS": "1000",
        "model_routes-0-id": str(route.pk),
        "model_routes-0-product": str(product.pk),
        "model_routes-0-name": "renamed-route",
        "model_routes-0-upstream": str(shelf.upstream.pk),
        "model_routes-0-upstream_model": "mock",
        "plans-TOTAL_FORMS": "0",
        "plans-INITIAL_FORMS": "1",
        "plans-MIN_NUM_FORMS": "0",
        "plans-MAX_NUM_FORMS": "1000",
    }
    # Keep the existing plan in the formset so the admin does not complain about it.
    data.update(
        {
            "plans-TOTAL_FORMS": "1",
            "plans-0-id": str(shelf.plan.pk),
            "plans-0-product": str(product.pk),
            "plans-0-name": shelf.plan.name,
            "plans-0-requests_per_minute": "60",
        }
    )
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    product.refresh_from_db()
    assert product.tags == ["fresh", "shiny"]
    client = admin_client
    assert listed_slugs(catalog_get(client, {"q": "renamed-route"})) == ["chat"]
    assert listed_slugs(catalog_get(client, {"q": "shiny"})) == ["chat"]
    assert listed_slugs(catalog_get(client, {"q": "chat-model"})) == []


# Tabs and filters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("models", ["chat", "vector-lab"]),
        ("mcp", ["repo-tools"]),
        ("agents", ["travel-agent"]),
        (None, ["chat", "repo-tools", "travel-agent", "vector-lab"]),
    ],
)
def test_kind_tabs_list_only_their_kind(client, shelf, kind, expected):
    response = catalog_get(client, kind=kind)
    assert response.status_code == 200
    assert listed_slugs(response) == expected


def test_home_is_the_whole_catalog(client, shelf):
    assert listed_slugs(client.get(reverse("portal:home"))) == [
        "chat",
        "repo-tools",
        "travel-agent",
        "vector-lab",
    ]


def test_unknown_kind_is_404(client, shelf):
    assert catalog_get(client, kind="widgets").status_code == 404


def test_category_filter(client, shelf):
    response = catalog_get(client, {"category": "embeddings"})
    assert listed_slugs(response) == ["vector-lab"]
    # Only categories with a published product here are offered.
    page = response.content.decode()
    assert '<option value="embeddings" selected>Embeddings</option>' in page
    assert '<option value="developer-tools">Developer tools</option>' in page


def test_category_filter_combines_with_kind_and_search(client, shelf):
    assert listed_slugs(catalog_get(client, {"category": "embeddings"}, kind="mcp")) == []
    assert listed_slugs(catalog_get(client, {"category": "embeddings", "q": "rag"})) == [
        "vector-lab"
    ]


def test_unknown_category_says_so_and_shows_everything(client, shelf):
    response = catalog_get(client, {"category": "nope"})
    assert response.status_code == 200
    assert "That category has no products here" in response.content.decode()
    assert len(listed_slugs(response)) == 4


def test_empty_search_says_what_to_do(client, shelf):
    page = catalog_get(client, {"q": "zzzz"}).content.decode()
    assert "No products match" in page
    assert "clear the search" in page


def test_empty_portal_says_nothing_is_published(client, db):
    Portal.objects.create(name="Empty", slug="empty", is_default=True)
    page = client.get(reverse("portal:catalog")).content.decode()
    assert "Nothing is published on this portal yet" in page


# htmx fragments ----------------------------------------------------------------------


def test_htmx_request_gets_only_the_results_fragment(client, shelf):
    response = catalog_get(client, {"q": "vector"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in body
    assert 'id="results"' not in body  # the fragment is what goes inside it
    assert listed_slugs(response) == ["vector-lab"]
    assert "HX-Request" in response["Vary"]


def test_normal_request_gets_the_full_page(client, shelf):
    response = catalog_get(client, {"q": "vector"})
    body = response.content.decode()
    assert body.lstrip().startswith("<!doctype html>")
    assert '<div id="results"' in body
    # The live search box: htmx attributes, and still a plain GET form without JS.
    assert 'hx-trigger="input changed delay:250ms, search"' in body
    assert 'hx-target="#results"' in body
    assert 'hx-push-url="true"' in body
    assert '<form class="catalog-search toolbar" method="get"' in body
    assert 'value="vector"' in body


def test_htmx_history_restore_gets_the_full_page(client, shelf):
    response = catalog_get(
        client, {"q": "vector"}, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    assert "<html" in response.content.decode()


# Pagination and query counts -----------------------------------------------------------


def bulk_publish(catalog: Catalog, count: int, *, prefix: str = "bulk") -> None:
    """``count`` published model products on ``catalog.portal``, each with a route."""
    products = Product.objects.bulk_create(
        Product(
            name=f"{prefix.title()} {i:05d}",
            slug=f"{prefix}-{i:05d}",
            kind=Product.Kind.MODEL,
            status=Product.Status.PUBLISHED,
            description="Bulk product for scale tests.",
            tags=["bulk"],
            search_document=f"{prefix} {i:05d}\nbulk product for scale tests.\nbulk",
        )
        for i in range(count)
    )
    Product.portals.through.objects.bulk_create(
        Product.portals.through(product_id=product.pk, portal_id=catalog.portal.pk)
        for product in products
    )
    ModelRoute.objects.bulk_create(
        ModelRoute(
            product=product,
            name=f"{product.slug}-model",
            upstream=catalog.upstream,
            upstream_model="m",
        )
        for product in products
    )


def test_pagination_keeps_the_query_and_category(client, catalog):
    bulk = services.category_create(name="Bulk", slug="bulk")
    bulk_publish(catalog, 30)
    Product.objects.filter(slug__startswith="bulk-").update(category=bulk)
    response = catalog_get(client, {"q": "bulk", "category": "bulk"})
    assert len(listed_slugs(response)) == 24
    body = response.content.decode()
    assert 'href="?q=bulk&amp;category=bulk&amp;page=2"' in body
    assert 'hx-get="?q=bulk&amp;category=bulk&amp;page=2"' in body
    second = catalog_get(client, {"q": "bulk", "category": "bulk", "page": "2"})
    assert listed_slugs(second) == [f"bulk-{i:05d}" for i in range(24, 30)]
    assert 'href="?q=bulk&amp;category=bulk&amp;page=1"' in second.content.decode()


def count_catalog_queries(client) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as queries:
        response = catalog_get(client, {"q": "bulk"}, kind="models")
    assert response.status_code == 200
    assert len(listed_slugs(response)) == min(24, Product.objects.count() - 1)
    return len(queries), [query["sql"] for query in queries.captured_queries]


def test_catalog_query_count_does_not_grow_with_the_catalog(client, catalog, owner):
    client.force_login(owner)  # count the session and user queries too
    bulk_publish(catalog, 10, prefix="small")
    Product.objects.filter(slug__startswith="small-").update(
        search_document="bulk small", category=services.category_create(name="C", slug="c")
    )
    small, _ = count_catalog_queries(client)

    Product.objects.filter(slug__startswith="small-").delete()
    bulk_publish(catalog, 10_000)
    large, large_sql = count_catalog_queries(client)

    assert small == large, "\n".join(large_sql)
    assert large <= 8, "\n".join(large_sql)


# Portal scoping ----------------------------------------------------------------------


@pytest.fixture
def other_portal(db) -> Portal:
    portal = Portal.objects.create(name="Partners", slug="partners")
    PortalDomain.objects.create(portal=portal, domain="partners.example.test")
    return portal


def test_product_of_another_portal_is_not_listed_nor_shown(client, catalog, other_portal):
    publish(catalog, name="Secret Sauce", slug="secret-sauce", portals=[other_portal])
    detail = reverse("portal:product", args=["secret-sauce"])

    assert listed_slugs(catalog_get(client)) == ["chat"]
    assert listed_slugs(catalog_get(client, {"q": "secret"})) == []
    assert client.get(detail).status_code == 404

    partners = "partners.example.test"
    assert listed_slugs(catalog_get(client, HTTP_HOST=partners)) == ["secret-sauce"]
    assert listed_slugs(catalog_get(client, {"q": "secret"}, HTTP_HOST=partners)) == [
        "secret-sauce"
    ]
    assert client.get(detail, HTTP_HOST=partners).status_code == 200
    chat = reverse("portal:product", args=["chat"])
    assert client.get(chat, HTTP_HOST=partners).status_code == 404


def test_without_any_portal_every_published_product_is_listed(client, db):
    # No Portal rows at all: request.portal is None.
    upstream = services.upstream_create(name="u", base_url="http://127.0.0.1:9/v1")
    for slug in ["alpha", "beta"]:
        product = services.product_create(name=slug.title(), slug=slug, kind="model")
        services.model_route_create(
            product=product, name=f"{slug}-m", upstream=upstream, upstream_model="m"
        )
        services.product_publish(product=product, portals=[])
    services.product_create(name="Gamma", slug="gamma", kind="model")  # a draft
    assert listed_slugs(catalog_get(client)) == ["alpha", "beta"]


@pytest.mark.parametrize("status", [Product.Status.DRAFT, Product.Status.RETIRED])
def test_unpublished_product_is_404_and_unlisted(client, catalog, status):
    Product.objects.filter(pk=catalog.product.pk).update(status=status)
    assert client.get(reverse("portal:product", args=["chat"])).status_code == 404
    assert listed_slugs(catalog_get(client)) == []


def test_missing_product_is_404(client, catalog):
    assert client.get(reverse("portal:product", args=["nope"])).status_code == 404


# The product page ----------------------------------------------------------------------


def product_page(client, slug: str) -> str:
    response = client.get(reverse("portal:product", args=[slug]))
    assert response.status_code == 200
    return response.content.decode()


def test_product_page_shows_listing_and_models(client, shelf):
    page = product_page(client, "vector-lab")
    assert "<h1>Vector Lab</h1>" in page
    assert "Model API" in page
    assert "Embeddings" in page
    assert ">multilingual</a>" in page
    assert "Dense vectors for semantic retrieval." in page
    assert '<th scope="row"><code>text-embed-3</code></th>' in page
    assert 'id="subscribe"' in page  # the subscription panel is still included


def test_model_quick_start_points_at_the_gateway_with_a_placeholder_key(client, shelf):
    page = product_page(client, "chat")
    assert f"curl {GATEWAY_URL}/v1/chat/completions" in page
    assert "Authorization: Bearer YOUR_API_KEY" in page
    assert "&quot;model&quot;: &quot;chat-model&quot;" in page  # curl's JSON body
    assert f"OpenAI(base_url=&quot;{GATEWAY_URL}/v1&quot;" in page
    assert f"Anthropic(base_url=&quot;{GATEWAY_URL}&quot;" in page
    assert "api_key=&quot;YOUR_API_KEY&quot;" in page
    assert "model=&quot;chat-model&quot;" in page
    assert "/mcp/" not in page
    assert 'class="secondary copy" data-copy="qs-curl"' in page
    assert "navigator.clipboard.writeText" in page


def test_quick_start_quotes_odd_model_names(client, catalog):
    ModelRoute.objects.filter(product=catalog.product).update(name='it\'s "odd"')
    page = product_page(client, "chat")
    # Shell: single quote closed and escaped; Python: a JSON string literal.
    assert "&quot;model&quot;: &quot;it&#x27;&quot;&#x27;&quot;&#x27;s \\&quot;odd\\&quot;" in page
    assert "model=&quot;it&#x27;s \\&quot;odd\\&quot;&quot;" in page


def test_mcp_quick_start_has_client_configs(client, shelf):
    page = product_page(client, "repo-tools")
    url = f"{GATEWAY_URL}/mcp/repo-tools"
    for client_name in ["Claude Desktop", "Cursor", "VS Code"]:
        assert f"<h3>{client_name}</h3>" in page
    assert f"&quot;url&quot;: &quot;{url}&quot;" in page  # Cursor and VS Code
    assert "&quot;mcp-remote&quot;" in page  # Claude Desktop bridges to the remote server
    assert "Authorization:${AUTH_HEADER}" in page
    assert "Bearer YOUR_API_KEY" in page
    assert "&quot;type&quot;: &quot;http&quot;" in page
    assert "Tools appear here once the server has been discovered" in page
    assert "chat/completions" not in page


def test_agent_quick_start_has_an_a2a_client(client, shelf):
    page = product_page(client, "travel-agent")
    assert f"AGENT_URL = &quot;{GATEWAY_URL}/agents/travel-agent&quot;" in page
    assert "create_client(AGENT_URL" in page  # a2a-sdk (see tests/control/test_agent_portal.py)
    assert "SendMessage" in page
    assert "Bearer YOUR_API_KEY" in page
    assert "appear here once the agent has been discovered" in page
    assert "chat/completions" not in page


def test_quick_start_never_contains_a_real_key(client, subscription, catalog):
    from consumers import services as consumer_services

    key = consumer_services.credential_create(consumer=subscription.consumer, name="k").key
    client.force_login(subscription.consumer.owner)
    page = product_page(client, "chat")
    assert key not in page
    assert "YOUR_API_KEY" in page


# The guide ---------------------------------------------------------------------------

HOSTILE_GUIDE = """\
# Getting started

Read the [docs](https://docs.example.test/start) first.

<script>alert("script")</script>
<img src="x" onerror="alert('onerror')">
[click me](javascript:alert('js-link'))
<a href="JaVaScRiPt:alert('mixed-case')">mixed</a>
<iframe src="https://evil.example.test/frame">framed</iframe>
<p style="color:red" onclick="alert('click')">styled</p>

```python
print("<b>not bold</b>")
```
"""


def test_guide_is_rendered_from_markdown_and_sanitised(client, catalog):
    services.product_set_listing(
        product=catalog.product,
        description="",
        category=None,
        tags=[],
        guide_markdown=HOSTILE_GUIDE,
    )
    page = product_page(client, "chat")
    guide = page[page.index('id="guide"') :]
    guide = guide[: guide.index("</section>")]
    assert "<h1>Getting started</h1>" in guide
    assert '<a href="https://docs.example.test/start" rel="noopener noreferrer">docs</a>' in guide
    assert "&lt;b&gt;not bold&lt;/b&gt;" in guide  # code stays code
    for forbidden in [
        "<script",
        "alert(",
        "onerror",
        "onclick",
        "javascript:",
        "JaVaScRiPt",
        "<iframe",
        "evil.example.test",
        "framed",
        "style=",
    ]:
        assert forbidden not in guide, forbidden
    # The page's own script (the copy button) is the only one on the page.
    assert page.count("<script") == 1 + page.count("<script src=")


def test_guide_can_break_nothing_out_of_its_section(client, catalog):
    services.product_set_listing(
        product=catalog.product,
        description="",
        category=None,
        tags=[],
        guide_markdown="</section></div><form action='https://evil.example.test'><input></form>",
    )
    page = product_page(client, "chat")
    assert "evil.example.test" not in page
    assert "<form action" not in page


# Search documents ----------------------------------------------------------------------


def test_search_document_follows_category_rename_and_delete(admin_client, shelf):
    embeddings = Category.objects.get(slug="embeddings")
    response = admin_client.post(
        reverse("admin:catalog_category_change", args=[embeddings.pk]),
        {"name": "Vectorstores", "slug": "embeddings"},
    )
    assert response.status_code == 302
    assert listed_slugs(catalog_get(admin_client, {"q": "vectorstores"})) == ["vector-lab"]
    assert listed_slugs(catalog_get(admin_client, {"q": "embeddings"})) == []

    response = admin_client.post(
        reverse("admin:catalog_category_delete", args=[embeddings.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert listed_slugs(catalog_get(admin_client, {"q": "vectorstores"})) == []
    assert Product.objects.get(slug="vector-lab").category is None


def test_listing_changes_do_not_publish_a_gateway_revision(catalog, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(services, "gateway_changed", lambda: calls.append("changed"))
    services.product_set_listing(
        product=catalog.product,
        description="New words",
        category=services.category_create(name="Chat", slug="chat"),
        tags=["a"],
        guide_markdown="# hi",
    )
    assert calls == []
    # ...while a change the gateway serves still does.
    services.model_route_create(
        product=catalog.product, name="second", upstream=catalog.upstream, upstream_model="m"
    )
    assert calls == ["changed"]


def test_product_admin_lists_without_n_plus_one(admin_client, catalog):
    bulk_publish(catalog, 5, prefix="few")
    category = services.category_create(name="Few", slug="few")
    Product.objects.update(category=category)
    url = reverse("admin:catalog_product_changelist")
    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(url).status_code == 200
    bulk_publish(catalog, 40, prefix="many")
    Product.objects.update(category=category)
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(url).status_code == 200
    assert len(few) == len(many)


def test_tags_are_validated(catalog):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        services.product_set_listing(
            product=catalog.product,
            description="",
            category=None,
            tags=["x" * 40],
            guide_markdown="",
        )
    with pytest.raises(ValidationError):
        services.product_set_listing(
            product=catalog.product,
            description="",
            category=None,
            tags=[f"t{i}" for i in range(20)],
            guide_markdown="",
        )


def test_make_catalog_products_are_searchable_by_route(client, db):
    make_catalog(slug="other")
    assert listed_slugs(catalog_get(client, {"q": "other-model"})) == ["other"]
