"""The developer's own apps (consumers), their keys and their subscriptions."""

from __future__ import annotations

from django import forms as django_forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from catalog.models import Product
from catalog.selectors import product_list_published
from consumers import forms, selectors, services

# Apps per page of "My apps": a developer may own thousands, and the page must render
# in the same time whatever their number.
APPS_PAGE_SIZE = 50


@login_required
@require_http_methods(["GET", "POST"])
def app_list(request: HttpRequest) -> HttpResponse:
    form = forms.AppForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            app = services.consumer_create(
                owner=request.user,  # type: ignore[arg-type]
                name=form.cleaned_data["name"],
                portal=request.portal,  # type: ignore[attr-defined]
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Created the app “{app.name}”. Now create a key for it.")
            return redirect("portal:app", pk=app.pk)
    apps = selectors.consumer_list_for_user(user=request.user)  # type: ignore[arg-type]
    page = Paginator(apps.order_by("name", "pk"), APPS_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "consumers/app_list.html", {"page": page, "form": form})


@login_required
@require_GET
def app_detail(request: HttpRequest, pk: int) -> HttpResponse:
    app = selectors.consumer_get_for_user(user=request.user, pk=pk)
    return render(
        request,
        "consumers/app_detail.html",
        {
            "app": app,
            "keys": selectors.credentials_for_consumer(consumer=app),
            "subscriptions": selectors.subscriptions_for_consumer(consumer=app),
            "key_form": forms.KeyForm(),
            "rename_form": forms.AppForm(initial={"name": app.name}),
        },
    )


@login_required
@require_POST
def app_rename(request: HttpRequest, pk: int) -> HttpResponse:
    app = selectors.consumer_get_for_user(user=request.user, pk=pk)
    form = forms.AppForm(request.POST)
    if form.is_valid():
        try:
            services.consumer_rename(consumer=app, name=form.cleaned_data["name"])
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, "Renamed.")
    else:
        messages.error(request, "Give the app a name of up to 120 characters.")
    return redirect("portal:app", pk=app.pk)


@login_required
@require_POST
def app_delete(request: HttpRequest, pk: int) -> HttpResponse:
    app = selectors.consumer_get_for_user(user=request.user, pk=pk)
    name = app.name
    services.consumer_delete(consumer=app)
    messages.success(request, f"Deleted “{name}”; its keys no longer work.")
    return redirect("portal:apps")


@login_required
@require_POST
def key_create(request: HttpRequest, pk: int) -> HttpResponse:
    app = selectors.consumer_get_for_user(user=request.user, pk=pk)
    form = forms.KeyForm(request.POST)
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("portal:app", pk=app.pk)
    try:
        issued = services.credential_create(
            consumer=app, name=form.cleaned_data["name"], expires_at=form.cleaned_data["expires_at"]
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("portal:app", pk=app.pk)
    return _key_page(request, {"app": app, "issued": issued})


@login_required
@require_POST
def key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    credential = selectors.credential_get_for_user(user=request.user, pk=pk)
    services.credential_revoke(credential=credential)
    messages.success(request, f"Revoked “{credential.name}”. Calls with it are refused now.")
    return redirect("portal:app", pk=credential.consumer_id)


@login_required
@require_POST
def key_rotate(request: HttpRequest, pk: int) -> HttpResponse:
    credential = selectors.credential_get_for_user(user=request.user, pk=pk)
    form = forms.RotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose how long the old key keeps working.")
        return redirect("portal:app", pk=credential.consumer_id)
    try:
        issued = services.credential_rotate(
            credential=credential, grace_seconds=form.cleaned_data["grace_seconds"]
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("portal:app", pk=credential.consumer_id)
    return _key_page(request, {"app": credential.consumer, "issued": issued, "rotated": credential})


@login_required
@require_POST
def subscribe(request: HttpRequest, slug: str) -> HttpResponse:
    portal = request.portal  # type: ignore[attr-defined]
    product: Product | None = product_list_published(portal=portal).filter(slug=slug).first()
    if product is None:
        raise Http404("No such product on this portal.")
    form = forms.SubscribeForm(request.POST, user=request.user, product=product)  # type: ignore[arg-type]
    if not form.is_valid():
        messages.error(request, _form_errors(form))
        return redirect("portal:product", slug=slug)
    try:
        subscription = services.subscription_request(
            consumer=form.cleaned_data["app"],
            product=product,
            plan=form.cleaned_data["plan"],
            portal=portal,
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("portal:product", slug=slug)
    if subscription.status == subscription.Status.APPROVED:
        messages.success(request, f"“{subscription.consumer}” is subscribed to {product.name}.")
    else:
        messages.success(
            request, f"Requested access to {product.name}; an administrator will decide soon."
        )
    return redirect("portal:app", pk=subscription.consumer_id)


@login_required
@require_POST
def subscription_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    subscription = selectors.subscription_get_for_user(user=request.user, pk=pk)
    try:
        services.subscription_cancel(subscription=subscription)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Cancelled the subscription to {subscription.product}.")
    return redirect("portal:app", pk=subscription.consumer_id)


def _key_page(request: HttpRequest, context: dict[str, object]) -> HttpResponse:
    # The key is rendered into this one response and nowhere else, ever; no cache may
    # keep a copy of the page.
    response = render(request, "consumers/key_created.html", context, status=201)
    response["Cache-Control"] = "no-store"
    return response


def _form_errors(form: django_forms.Form) -> str:
    return "; ".join(str(error) for errors in form.errors.values() for error in errors)
