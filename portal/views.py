"""Portal-wide pages that belong to no other app."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from consumers.selectors import consumer_get_for_user
from oauth import selectors as oauth_selectors
from portal import playground as playground_module
from portal import selectors, services
from portal.forms import TokenForm


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness and database reachability of the control plane."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


@require_GET
def portal_logo(request: HttpRequest, slug: str, version: str) -> HttpResponse:
    """A portal's logo. The URL names the logo's version, so it can be cached for good."""
    logo = selectors.portal_logo_get(slug=slug, version=version)
    response = HttpResponse(bytes(logo.image), content_type="image/png")
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    # An image and nothing else, even if a browser is asked to treat it as a document.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


@login_required
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    """Try a subscribed model through the gateway with one of your apps."""
    targets = playground_module.targets_for(user=request.user)  # type: ignore[arg-type]
    return render(request, "portal/playground.html", {"targets": targets})


@login_required
@require_POST
async def playground_chat(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Stream the model's answer to the page as server-sent events."""
    user = await request.auser()
    try:
        app_id = int(request.POST.get("app", ""))
    except ValueError:
        raise Http404("No such app.") from None
    model = request.POST.get("model", "")
    message = request.POST.get("message", "").strip()[:8000]
    # The access helper decides whose app this is: anyone else's is a 404.
    consumer = await sync_to_async(consumer_get_for_user)(user=user, pk=app_id)
    targets = await sync_to_async(playground_module.targets_for)(user=consumer.owner)
    if not message or not any(t.app_id == consumer.pk and t.model == model for t in targets):
        return _refused_stream(
            "Choose one of your apps, a model it is subscribed to, and a message."
        )
    key = await sync_to_async(playground_module.playground_key)(consumer=consumer)
    return _event_stream(playground_module.chat_stream(key=key, model=model, message=message))


def _event_stream(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # let a proxy pass each event on at once
    return response


def _event_bytes(name: str, text: str) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'message': text})}\n\n".encode()


def _refused_stream(text: str) -> HttpResponse:
    """A refused playground call, as the one event the page's stream reader shows."""
    return HttpResponse(_event_bytes("error", text), status=400, content_type="text/event-stream")


class PlaygroundRequest(HttpRequest):
    """A request after HtmxMiddleware."""

    htmx: HtmxDetails


@login_required
@require_http_methods(["GET", "POST"])
async def playground_mcp(request: PlaygroundRequest) -> HttpResponse:
    """List and call the tools of a subscribed MCP server through the gateway.

    GET shows the page: ``target`` (``<app id>:<product slug>``) chooses the app and the
    server, or ``product`` alone preselects a server (the product page's link); ``tool``
    opens that tool's form. POST sends ``tools/call`` with the form's arguments, or
    ``tools/list`` (``method``) to show what the gateway lists to the app's key, and
    shows the reply: in the page, or as the result fragment for htmx.
    """
    if request.method == "GET":
        return await sync_to_async(_mcp_page)(request)
    prepared = await sync_to_async(_mcp_prepare)(request)
    if isinstance(prepared, HttpResponse):
        return prepared
    # No database connection is held while the tool runs (it may take a while).
    reply = await playground_module.mcp_request(
        key=prepared.key, slug=prepared.slug, method=prepared.method, params=prepared.params
    )
    return await sync_to_async(_mcp_render)(request, {**prepared.context, "reply": reply})


T = TypeVar("T", bound=playground_module.AppProduct)


def _pick(
    data: QueryDict, *, targets: list[T], get: Callable[[str], T | None], what: str
) -> dict[str, Any]:
    """Which of ``targets`` (app, product) a playground tab shows: ``target`` in ``data``
    (``<app id>:<slug>``, looked up by ``get``, which 404s anyone else's app), or the
    first of the user's apps subscribed to ``product`` (the product page's link), or the
    first target. ``what`` names the kind of product in what the page says."""
    value, slug = data.get("target", ""), data.get("product", "")
    selected: T | None = None
    unsubscribed = ""
    if value:
        selected = get(value)
        if selected is None:
            unsubscribed = f"That app has no approved subscription to that {what}."
    elif slug:
        selected = next((t for t in targets if t.product.slug == slug), None)
        if selected is None:
            unsubscribed = f"None of your apps is subscribed to this {what} yet."
    elif targets:
        selected = targets[0]
    if selected is not None and selected not in targets:
        targets.insert(0, selected)  # an admin trying someone else's app
    return {
        "targets": targets,
        "selected": selected,
        "unsubscribed": unsubscribed,
        # Linked to only when it is a slug (the URL pattern would refuse anything else).
        "product_slug": slug if playground_module.SLUG.fullmatch(slug) else "",
    }


def _mcp_context(request: PlaygroundRequest, data: QueryDict) -> dict[str, Any]:
    """The page's context for the choices in ``data`` (the query or the posted form)."""
    user = request.user
    picked = _pick(
        data,
        targets=playground_module.mcp_targets_for(user=user),  # type: ignore[arg-type]
        get=lambda value: playground_module.mcp_target_get(user=user, value=value),
        what="MCP server",
    )
    selected = picked["selected"]
    tools = playground_module.mcp_tools_for(target=selected) if selected else []
    wanted = data.get("tool", "")
    tool = next((t for t in tools if t.name == wanted), None)
    return {
        **picked,
        "tools": tools,
        "tool": tool,
        "unknown_tool": wanted if wanted and tool is None else "",
        "form": playground_module.ToolForm(schema=tool.schema) if tool else None,
    }


def _mcp_page(request: PlaygroundRequest) -> HttpResponse:
    context = _mcp_context(request, request.GET)
    # A history restore needs the whole page, not the fragment.
    if request.htmx and not request.htmx.history_restore_request:
        response = render(request, "portal/playground_mcp.html#workspace", context)
    else:
        response = render(request, "portal/playground_mcp.html", context)
    # The same URL answers with a fragment or a page: caches must keep both apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


@dataclass(frozen=True)
class _McpCall:
    """A checked request of the playground, ready to send."""

    context: dict[str, Any]
    key: str
    slug: str
    method: str
    params: dict[str, Any]


def _mcp_prepare(request: PlaygroundRequest) -> _McpCall | HttpResponse:
    context = _mcp_context(request, request.POST)
    selected = context["selected"]
    if selected is None or context["unsubscribed"]:
        return _mcp_refuse(
            request, context, "Choose one of your apps and an MCP server it is subscribed to."
        )
    method = request.POST.get("method", "tools/call")
    if method == "tools/list":
        params: dict[str, Any] = {}
    elif method == "tools/call":
        tool = context["tool"]
        if tool is None:
            return _mcp_refuse(request, context, "Choose one of the tools listed for this app.")
        form = playground_module.ToolForm(request.POST, schema=tool.schema)
        context["form"] = form
        if not form.is_valid():
            return _mcp_refuse(request, context, "Some arguments are not valid; see below.")
        params = {"name": tool.name, "arguments": form.arguments()}
    else:
        return _mcp_refuse(request, context, "The playground sends tools/call or tools/list.")
    key = playground_module.playground_key(consumer=selected.consumer)
    return _McpCall(context, key, selected.product.slug, method, params)


def _mcp_refuse(request: PlaygroundRequest, context: dict[str, Any], text: str) -> HttpResponse:
    return _mcp_render(request, {**context, "refusal": text}, status=400)


def _mcp_render(
    request: PlaygroundRequest, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    """A POST's answer: the result fragment for htmx, else the page with the result."""
    template = "portal/playground_mcp.html"
    response = render(
        request, f"{template}#result" if request.htmx else template, context, status=status
    )
    response["Cache-Control"] = "no-store"
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_GET
def playground_agent(request: HttpRequest) -> HttpResponse:
    """Talk to a subscribed agent through the gateway with one of your apps: ``target``
    (``<app id>:<product slug>``) or ``product`` (the product page's link) preselects
    it. The messages go to :func:`playground_agent_send`."""
    user = request.user
    context = _pick(
        request.GET,
        targets=playground_module.agent_targets_for(user=user),  # type: ignore[arg-type]
        get=lambda value: playground_module.agent_target_get(user=user, value=value),
        what="agent",
    )
    return render(request, "portal/playground_agent.html", context)


@login_required
@require_POST
async def playground_agent_send(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Send one message to the agent and stream its events to the page as server-sent
    events (:func:`portal.playground.agent_stream`); ``context_id`` continues a
    conversation."""
    user = await request.auser()
    text = request.POST.get("message", "").strip()[:8000]
    context_id = request.POST.get("context_id", "")
    # Someone else's app is a 404 here (the access helper of apps decides).
    chosen = await sync_to_async(playground_module.agent_target_get)(
        user=user, value=request.POST.get("target", "")
    )
    if chosen is None or not text:
        return _refused_stream(
            "Choose one of your apps, an agent it is subscribed to, and a message."
        )
    if context_id and not playground_module.CONTEXT_ID.fullmatch(context_id):
        return _refused_stream("That conversation id is not one the gateway gave: start a new one.")
    key = await sync_to_async(playground_module.playground_key)(consumer=chosen.consumer)
    return _event_stream(
        playground_module.agent_stream(
            key=key, slug=chosen.product.slug, text=text, context_id=context_id
        )
    )


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    """Personal access tokens for the REST API: list, and create (shown once)."""
    user = request.user
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            token, plaintext = services.access_token_create(
                user=user,  # type: ignore[arg-type]
                name=form.cleaned_data["name"],
                expires_at=form.cleaned_data["expires_at"],
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            response = render(
                request, "portal/token_created.html", {"token": token, "plaintext": plaintext}
            )
            response.status_code = 201
            response["Cache-Control"] = "no-store"  # the token is in this page only
            return response
    rows = selectors.access_token_list_for_user(user=user)  # type: ignore[arg-type]
    grants = oauth_selectors.grant_list_for_user(user=user)  # type: ignore[arg-type]
    return render(request, "portal/tokens.html", {"tokens": rows, "form": form, "grants": grants})


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = selectors.access_token_get_for_user(user=request.user, pk=pk)  # type: ignore[arg-type]
    services.access_token_revoke(token=token)
    messages.success(request, f"Revoked “{token.name}”.")
    return redirect("portal:tokens")
