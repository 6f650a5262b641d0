"""Portal-wide pages that belong to no other app."""

from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from consumers.selectors import consumer_get_for_user
from portal import playground as playground_module


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness and database reachability of the control plane."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


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
