"""Portal-wide pages that belong to no other app."""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from consumers.selectors import consumer_get_for_user
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
        text = "Choose one of your apps, a model it is subscribed to, and a message."
        return HttpResponse(
            _event_bytes("error", text), status=400, content_type="text/event-stream"
        )
    key = await sync_to_async(playground_module.playground_key)(consumer=consumer)
    response = StreamingHttpResponse(
        playground_module.chat_stream(key=key, model=model, message=message),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # let a proxy pass each event on at once
    return response


def _event_bytes(name: str, text: str) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'message': text})}\n\n".encode()


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
    return render(request, "portal/tokens.html", {"tokens": rows, "form": form})


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = selectors.access_token_get_for_user(user=request.user, pk=pk)  # type: ignore[arg-type]
    services.access_token_revoke(token=token)
    messages.success(request, f"Revoked “{token.name}”.")
    return redirect("portal:tokens")
