"""The access matrix of the portal's pages: every page by {anonymous, owner, another
developer, admin}. Its REST API twin is in test_rest_api.py.

Each row names a page (a ``portal:`` URL), a method and what each persona gets: a
status, ``LOGIN`` (sent to sign in), or ``To(name)`` (a redirect to that page after
the action). Another developer's attempts must also change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client
from django.urls import URLPattern, resolve, reverse

from consumers.models import Consumer, Credential, Subscription
from portal import urls as portal_urls
from portal.models import PersonalAccessToken, Portal, PortalLogo
from tests.control.conftest import World

PERSONAS = ["anonymous", "owner", "outsider", "staff"]


@dataclass(frozen=True)
class To:
    """A redirect to the page ``name`` (the action was taken, or refused with a message)."""

    name: str


LOGIN = To("account_login")
PUBLIC = (200, 200, 200, 200)
SIGNED_IN = (LOGIN, 200, 200, 200)

# (page, method, path arguments, form data, expected for anonymous, owner, outsider, staff)
PAGES: list[tuple[str, str, tuple[str, ...], dict[str, str], tuple[Any, Any, Any, Any]]] = [
    ("home", "get", (), {}, PUBLIC),
    ("healthz", "get", (), {}, PUBLIC),
    ("logo", "get", ("{portal_slug}", "{logo_version}"), {}, PUBLIC),
    ("catalog", "get", (), {}, PUBLIC),
    ("catalog_kind", "get", ("models",), {}, PUBLIC),
    ("product", "get", ("chat",), {}, PUBLIC),
    ("apps", "get", (), {}, SIGNED_IN),
    ("apps", "post", (), {"name": "new"}, (LOGIN, To("app"), To("app"), To("app"))),
    ("app", "get", ("{app}",), {}, (LOGIN, 200, 404, 200)),
    ("app_rename", "post", ("{app}",), {"name": "x"}, (LOGIN, To("app"), 404, To("app"))),
    ("key_create", "post", ("{app}",), {"name": "ci"}, (LOGIN, 201, 404, 201)),
    ("key_rotate", "post", ("{key}",), {"grace_seconds": "0"}, (LOGIN, 201, 404, 201)),
    ("key_revoke", "post", ("{key}",), {}, (LOGIN, To("app"), 404, To("app"))),
    (
        "subscribe",
        "post",
        ("extra",),
        {"app": "{app}", "plan": "{extra_plan}"},
        # The form offers only one's own apps: anyone else is sent back with an error.
        (LOGIN, To("app"), To("product"), To("product")),
    ),
    ("subscription_cancel", "post", ("{sub}",), {}, (LOGIN, To("app"), 404, To("app"))),
    ("app_delete", "post", ("{app}",), {}, (LOGIN, To("apps"), 404, To("apps"))),
    ("tokens", "get", (), {}, SIGNED_IN),
    ("tokens", "post", (), {"name": "laptop"}, (LOGIN, 201, 201, 201)),
    # Tokens are personal: staff revoke other people's in the admin, not here.
    ("token_revoke", "post", ("{token}",), {}, (LOGIN, To("tokens"), 404, 404)),
    ("playground", "get", (), {}, SIGNED_IN),
    (
        "playground_chat",
        "post",
        (),
        {"app": "{app}", "model": "chat-model", "message": "hi"},
        (LOGIN, 200, 404, 200),
    ),
    ("playground_mcp", "get", (), {}, SIGNED_IN),
    ("playground_mcp", "get", (), {"target": "{app}:chat"}, (LOGIN, 200, 404, 200)),
    (
        "playground_mcp",
        "post",
        (),
        {"target": "{app}:chat", "method": "tools/list"},
        (LOGIN, 400, 404, 400),
    ),
    ("playground_agent", "get", (), {}, SIGNED_IN),
    ("playground_agent", "get", (), {"target": "{app}:chat"}, (LOGIN, 200, 404, 200)),
    (
        "playground_agent_send",
        "post",
        (),
        {"target": "{app}:chat", "message": "hi"},  # chat is no agent: refused
        (LOGIN, 400, 404, 400),
    ),
    ("usage", "get", (), {}, SIGNED_IN),
    ("usage", "get", (), {"app": "{app}"}, (LOGIN, 200, 404, 200)),
    ("usage_csv", "get", (), {}, SIGNED_IN),
    ("usage_csv", "get", (), {"app": "{app}"}, (LOGIN, 200, 404, 200)),
]


@pytest.fixture
def ids(world: World) -> dict[str, str]:
    portal = world.catalog.portal
    PortalLogo.objects.create(portal=portal, image=b"\x89PNG", width=1, height=1)
    Portal.objects.filter(pk=portal.pk).update(logo_version="v1")
    return {
        **{name: str(value) for name, value in world.ids().items()},
        "portal_slug": portal.slug,
        "logo_version": "v1",
    }


def fill(value: str, ids: dict[str, str]) -> str:
    return value.format(**ids)


def client_for(request: pytest.FixtureRequest, persona: str) -> Client:
    client = Client()
    if persona != "anonymous":
        client.force_login(request.getfixturevalue(persona))
    return client


def drain(response: Any) -> bytes:
    if not response.is_async:
        return b"".join(response.streaming_content)

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)()


def redirected_to(location: str) -> str | None:
    """The name of the page a redirect goes to."""
    match = resolve(location.split("?", 1)[0])
    return match.url_name if match.namespace in ("", "portal") else None


def snapshot(world: World) -> tuple[object, ...]:
    """What another developer's refused attempts must leave exactly as it was."""
    return (
        tuple(Consumer.objects.order_by("pk").values_list("pk", "name", "status")),
        tuple(Credential.objects.order_by("pk").values_list("pk", "revoked_at", "expires_at")),
        tuple(Subscription.objects.order_by("pk").values_list("pk", "status", "plan_id")),
        tuple(PersonalAccessToken.objects.order_by("pk").values_list("pk", "revoked_at")),
    )


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize(
    ("name", "method", "args", "data", "expected"),
    [
        pytest.param(*row, id=f"{row[1]}-{row[0]}{'-app' if 'app' in row[3] else ''}")
        for row in PAGES
    ],
)
def test_page_access_matrix(request, world, ids, persona, name, method, args, data, expected):
    url = reverse(f"portal:{name}", args=[fill(a, ids) for a in args])
    form = {k: fill(v, ids) for k, v in data.items()}
    want = expected[PERSONAS.index(persona)]
    before = snapshot(world)

    response = getattr(client_for(request, persona), method)(url, form)
    if response.streaming:
        drain(response)  # run a streamed answer to its end

    if isinstance(want, To):
        assert response.status_code == 302, (url, response.status_code)
        assert redirected_to(response["Location"]) == want.name, response["Location"]
    else:
        assert response.status_code == want, (url, response.status_code)
    if persona == "anonymous" or (persona == "outsider" and want in (404, To("product"))):
        assert snapshot(world) == before, f"{persona} changed something through {url}"


def test_matrix_covers_every_page():
    pages = {p.name for p in portal_urls.urlpatterns if isinstance(p, URLPattern)}
    assert {row[0] for row in PAGES} == pages


def admin_pages() -> list[str]:
    from django.contrib import admin

    pages = [reverse("admin:index")]
    for model in admin.site._registry:
        meta = model._meta
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
    return pages


@pytest.mark.parametrize("persona", PERSONAS)
def test_only_admins_reach_the_admin(request, world, persona):
    client = client_for(request, persona)
    for url in admin_pages():
        response = client.get(url)
        if persona == "staff":
            assert response.status_code == 200, url
        else:
            assert response.status_code == 302, url
            assert response["Location"].startswith(reverse("admin:login") + "?next="), url
